"""The gguf export: one .gguf file for llama.cpp and ollama. tinygpt.hub.export writes it into place.

Design notes
- written with the `gguf` package, the writer llama.cpp's own converter uses, as architecture "gpt2".
  llama.cpp only knows byte-level BPE for GPT-2, so a char vocab is re-spelled in GPT-2's byte alphabet and given
  merges that rebuild each multi-byte character from its bytes (hand-written here: no library converts a char
  vocab to byte-level BPE). llama.cpp has no `<unk>` for BPE: a character outside the vocab is dropped there.
  llama.cpp's gpt2 graph uses the tanh GELU; a model trained with the exact GELU runs there with that
  approximation (the logits move slightly), and the export says so.
"""

import json
import logging
from pathlib import Path

import torch

from tinygpt.hub.export_hf import ExportError, check_vocabulary
from tinygpt.modeling_tinygpt import TinyGPTForCausalLM
from tinygpt.tokenization_tinygpt import CHAT_TEMPLATE, TinyGPTCharTokenizer

logger = logging.getLogger(__name__)

GGUF_DTYPES = ("f32", "f16")  # what llama.cpp's gpt2 loads without quantizing


def export_gguf(model: TinyGPTForCausalLM, tokenizer, out: Path, *, dtype: str = "f16") -> None:
    """Write one .gguf file: architecture gpt2, byte-level BPE tokenizer, chat template, f32 or f16 weights."""
    try:
        import gguf  # the `export` extra
    except ImportError:
        raise ExportError("GGUF export needs the gguf package: pip install 'tinygpt[export]'.") from None

    check_vocabulary(tokenizer)
    config = model.config
    if config.activation_function == "gelu":
        logger.warning(
            "note: llama.cpp's gpt2 computes the tanh GELU and this model was trained with the exact one: "
            "its logits there differ by about 1e-3."
        )
    tokens, token_types, merges = byte_level_vocab(tokenizer, config.vocab_size, gguf.TokenType)
    file_type = gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32
    writer = gguf.GGUFWriter(str(out), "gpt2")
    writer.add_name(out.stem)
    writer.add_context_length(config.n_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(4 * config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_file_type(file_type)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    for add, token_id in (
        (writer.add_bos_token_id, config.bos_token_id),
        (writer.add_eos_token_id, config.eos_token_id),
        (writer.add_pad_token_id, config.pad_token_id),
        (writer.add_unk_token_id, tokenizer.unk_token_id),
    ):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(False)  # the chat template writes <BOS> itself
    writer.add_chat_template(tokenizer.chat_template or CHAT_TEMPLATE)
    for name, tensor in gguf_tensors(model):
        array = tensor.detach().float().numpy()  # nn.Linear's (out, in) is ggml's {in, out}: no transpose
        if dtype == "f16" and array.ndim == 2:  # norms and biases stay f32, as llama.cpp's converter keeps them
            array = array.astype("float16")
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def gguf_tensors(model: TinyGPTForCausalLM):
    """(llama.cpp name, tensor) for every weight; missing biases (bias=False) as zeros. The head is the embedding
    (llama.cpp's gpt2 reuses token_embd when there is no output.weight)."""
    state = model.state_dict()

    def weight_and_bias(prefix: str, width: int):
        yield state[f"{prefix}.weight"]
        yield state.get(f"{prefix}.bias", torch.zeros(width))

    yield "token_embd.weight", state["transformer.wte.weight"]
    yield "position_embd.weight", state["transformer.wpe.weight"]
    C = model.config.n_embd
    for i in range(model.config.n_layer):
        block = f"transformer.h.{i}"
        for ours, theirs, width in (
            ("ln_1", "attn_norm", C),
            ("attn.c_attn", "attn_qkv", 3 * C),
            ("attn.c_proj", "attn_output", C),
            ("ln_2", "ffn_norm", C),
            ("mlp.c_fc", "ffn_up", 4 * C),
            ("mlp.c_proj", "ffn_down", C),
        ):
            weight, bias = weight_and_bias(f"{block}.{ours}", width)
            yield f"blk.{i}.{theirs}.weight", weight
            yield f"blk.{i}.{theirs}.bias", bias
    weight, bias = weight_and_bias("transformer.ln_f", C)
    yield "output_norm.weight", weight
    yield "output_norm.bias", bias


def byte_level_vocab(tokenizer, vocab_size: int, token_type) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of a byte-level BPE with `vocab_size` rows, as llama.cpp's gpt2 reads it.

    GPT-2 BPE: its own vocab and merges (already in the byte alphabet). Char vocab: each character spelled in
    the byte alphabet, with merges that rebuild every multi-byte character byte by byte (prefix + next byte).
    Special tokens are CONTROL; the embedding's spare rows get UNUSED placeholders."""
    special_ids = set(tokenizer.all_special_ids)
    if isinstance(tokenizer, TinyGPTCharTokenizer):
        byte_char = bytes_to_unicode()
        spelled, merges = {}, {}
        for token, index in tokenizer.get_vocab().items():
            if index in special_ids:
                spelled[index] = token
                continue
            pieces = [byte_char[b] for b in token.encode("utf-8")]
            spelled[index] = "".join(pieces)
            for end in range(1, len(pieces)):  # "ä ½", then "ä½ ł": a dict keeps the first rank of each merge
                merges.setdefault(f"{''.join(pieces[:end])} {pieces[end]}", None)
        # llama.cpp refuses a BPE vocab without merges (an ASCII-only corpus has none): give it one that never
        # applies to UTF-8 text, an ASCII byte followed by a continuation byte.
        merges = list(merges) or [f"{byte_char[ord('!')]} {byte_char[0x80]}"]
    else:
        state = json.loads(tokenizer.backend_tokenizer.to_str())
        spelled = {index: token for token, index in state["model"]["vocab"].items()}
        spelled.update({added["id"]: added["content"] for added in state["added_tokens"]})
        merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in state["model"]["merges"]]
    if max(spelled) >= vocab_size:
        raise ExportError(f"the tokenizer has ids up to {max(spelled)} but the model only {vocab_size} rows.")
    tokens, types = [], []
    for index in range(vocab_size):
        if index in spelled:
            tokens.append(spelled[index])
            types.append(token_type.CONTROL if index in special_ids else token_type.NORMAL)
        else:
            tokens.append(f"[PAD{index}]")
            types.append(token_type.UNUSED)
    return tokens, [int(t) for t in types], merges


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte alphabet: each byte as a printable character (printable bytes as themselves). Written here:
    transformers 5 no longer exports it, and tokenizers keeps it inside its Rust ByteLevel."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            alphabet[byte] = chr(byte)
        else:
            alphabet[byte] = chr(256 + extra)
            extra += 1
    return alphabet


__all__ = ["GGUF_DTYPES", "export_gguf"]
