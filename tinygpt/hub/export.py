"""Export a TinyGPT model as plain GPT-2 (transformers, vLLM, TGI, transformers.js) or as GGUF (llama.cpp, ollama).

A TinyGPT with its tied head IS GPT-2: same blocks, same names. Written out as one, it runs wherever GPT-2 runs,
with no tinygpt and no remote code.

Design notes
- hf: transformers' own `GPT2LMHeadModel` + `GPT2Config` save the weights (safetensors) and the config. GPT-2
  keeps its Linear layers as `Conv1D` with (in, out) weights, so those are transposed (the reverse of
  `TinyGPTForCausalLM.from_gpt2`); a model built with bias=False gets zero biases, which is the same function.
  "gelu_new" (tanh) and "gelu" (exact) are both GPT-2 activations, so either maps across unchanged.
- The tokenizer becomes a `PreTrainedTokenizerFast` built with the `tokenizers` library. The char tokenizer is a
  BPE model with no merges: tokenizers then splits each piece into Unicode characters and looks each one up,
  unknown ones becoming `<unk>` one by one (fuse_unk=False), which is exactly `list(text)` + a dict lookup; the
  special tokens are added tokens with their own ids, split out first as the slow tokenizer does. A GPT-2 BPE
  tokenizer already is a tokenizers object (GPT-2's vocab plus the chat tokens): it is wrapped as it is.
- gguf: written with the `gguf` package, the writer llama.cpp's own converter uses, as architecture "gpt2".
  llama.cpp only knows byte-level BPE for GPT-2, so a char vocab is re-spelled in GPT-2's byte alphabet and given
  merges that rebuild each multi-byte character from its bytes (hand-written here: no library converts a char
  vocab to byte-level BPE). llama.cpp has no `<unk>` for BPE: a character outside the vocab is dropped there.
  llama.cpp's gpt2 graph uses the tanh GELU; a model trained with the exact GELU runs there with that
  approximation (the logits move slightly), and the export says so.
- Either format is written into a hidden folder beside the destination and renamed into place at the end: a
  failed export (a full disk, a file-size limit) leaves nothing half-written.
- An input that cannot be exported is an `ExportError` whose message is one line naming the problem and the fix.
"""

import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from tokenizers import AddedToken, Tokenizer, decoders, models
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
from transformers.utils import logging as transformers_logging

from tinygpt.hub.card import model_card
from tinygpt.hub.checks import ModelLoadError
from tinygpt.hub.loader import load
from tinygpt.hub.remote import HubError
from tinygpt.hub.space import space_url
from tinygpt.modeling_tinygpt import TinyGPTForCausalLM
from tinygpt.tokenization_tinygpt import ASSISTANT, BOS, CHAT_TEMPLATE, EOS, PAD, UNK, USER, TinyGPTCharTokenizer

logger = logging.getLogger(__name__)

FORMATS = ("hf", "gguf")
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
GGUF_DTYPES = ("f32", "f16")  # what llama.cpp's gpt2 loads without quantizing
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class ExportError(Exception):
    """A model cannot be exported; str() is one line naming the problem and the fix."""


def export_model(model_dir, out, *, format: str = "hf", dtype: str = "f32") -> Path:
    """Export the saved TinyGPT model in `model_dir` to `out` (a new folder for hf, a .gguf file for gguf)."""
    if format not in FORMATS:
        raise ExportError(f"unknown format {format!r}: use one of {', '.join(FORMATS)}.")
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}.")
    if format == "gguf" and dtype not in GGUF_DTYPES:
        raise ExportError(f"GGUF export writes {' or '.join(GGUF_DTYPES)}, not {dtype}: pass --dtype f16 or f32.")
    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise ExportError(f"{out} already exists: export into a new path (or remove it first).")
    model, tokenizer = load_for_export(model_dir)
    if format == "gguf" and out.suffix != ".gguf":
        raise ExportError(f"{out}: a GGUF export is one file: name it with .gguf (e.g. {out.name}.gguf).")
    # Written in a new hidden folder beside `out`, then renamed into place: a failed export leaves nothing behind
    # and touches no other file.
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as error:
        raise ExportError(f"cannot write {out}: {error.strerror or error}.") from None
    try:
        written = staging / out.name
        if format == "hf":
            export_hf(model, tokenizer, written, dtype=dtype)
        else:
            export_gguf(model, tokenizer, written, dtype=dtype)
        if out.is_dir():
            out.rmdir()  # the empty folder it was allowed to fill
        written.rename(out)
    except (OSError, SafetensorError) as error:  # a full disk, a file-size limit, a folder it may not write
        raise ExportError(f"cannot write {out}: {getattr(error, 'strerror', None) or error}.") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def load_for_export(model_dir):
    """(model, tokenizer) of a saved TinyGPT folder; ExportError if it is not one."""
    if not Path(model_dir).is_dir():
        raise ExportError(f"{model_dir} is not a folder: pass the folder a TinyGPT model was saved to.")
    transformers_logging.disable_progress_bar()
    try:
        return load(model_dir)
    except (ModelLoadError, HubError) as error:
        raise ExportError(str(error)) from None


# -- hf: GPT2LMHeadModel + PreTrainedTokenizerFast -------------------------------------------------------------


def export_hf(model: TinyGPTForCausalLM, tokenizer, out: Path, *, dtype: str = "f32", **card_settings):
    """Write the plain GPT-2 folder: config, safetensors, tokenizer.json + chat template, generation config, card.

    `card_settings` (repo_id, space_id, subfolder, endpoint) only change the model card: the repo it shows, the
    Space it links."""
    check_vocabulary(tokenizer)
    fast = fast_tokenizer(tokenizer, model.config.n_positions)
    gpt2 = to_gpt2(model).to(DTYPES[dtype])
    gpt2.generation_config = generation_config(model.config)
    out.mkdir(parents=True, exist_ok=True)
    gpt2.save_pretrained(out)
    fast.save_pretrained(out)
    name_tokenizer_class(out / "tokenizer_config.json")
    card_settings.setdefault("repo_id", out.name)
    card = plain_card(gpt2.config, tokenizer, **card_settings)
    (out / "README.md").write_text(card, encoding="utf-8")


def gpt2_config(config) -> GPT2Config:
    dropout = float(config.dropout)
    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=4 * config.n_embd,
        activation_function=config.activation_function,  # "gelu_new" or "gelu": GPT-2 has both
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        layer_norm_epsilon=config.layer_norm_epsilon,
        initializer_range=config.initializer_range,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        tie_word_embeddings=True,
        use_cache=True,
    )


def to_gpt2(model: TinyGPTForCausalLM) -> GPT2LMHeadModel:
    """The same function as a GPT2LMHeadModel (fp32, eval mode)."""
    if not model.config.tie_word_embeddings:
        raise ExportError("the model's head is not tied to its embedding, so it is not a GPT-2: cannot export it.")
    gpt2 = GPT2LMHeadModel(gpt2_config(model.config)).eval()
    ours = model.state_dict()
    state = {}
    for name, tensor in gpt2.state_dict().items():
        if name in ours:
            source = ours[name].float()
            state[name] = source.t().contiguous() if name.endswith(CONV1D_WEIGHTS) else source
        elif name.endswith(".bias"):  # bias=False: GPT-2 always has biases, zeros are the same function
            state[name] = torch.zeros_like(tensor)
        else:
            raise ExportError(f"GPT-2 needs {name}, which the model lacks: re-save it with this tinygpt.")
    gpt2.load_state_dict(state, strict=True)
    gpt2.tie_weights()
    return gpt2


def check_vocabulary(tokenizer) -> None:
    """Refuse a vocabulary that no exported file can hold as it is: two tokens sharing one id (an exported
    tokenizer would keep one of them, and decode the other's text as its), or a token holding a lone surrogate
    (a "\\ud800" escape in vocab.json, which no UTF-8 file can hold)."""
    owner: dict[int, str] = {}
    for token, index in tokenizer.get_vocab().items():
        if index in owner:
            raise ExportError(
                f"the tokenizer gives id {index} to both {owner[index]!r} and {token!r}: give each token its own id "
                "in vocab.json (or retrain the tokenizer), then export."
            )
        owner[index] = token
        try:
            token.encode("utf-8")
        except UnicodeEncodeError:
            raise ExportError(
                f"the tokenizer's token {token.encode('utf-8', 'backslashreplace').decode()!r} (id {index}) holds a "
                "lone surrogate, which no exported file can store: remove it from vocab.json."
            ) from None


def fast_tokenizer(tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    """A PreTrainedTokenizerFast giving the same ids as `tokenizer`, with its special tokens and chat template."""
    if isinstance(tokenizer, TinyGPTCharTokenizer):
        backend = char_backend(tokenizer.get_vocab())
    elif getattr(tokenizer, "backend_tokenizer", None) is not None:  # GPT-2 BPE + chat tokens: already tokenizers
        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    else:
        raise ExportError(
            f"cannot export a {type(tokenizer).__name__}: only tinygpt's char tokenizer and tokenizers-based "
            "ones (GPT-2 BPE) have a tokenizer.json form."
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        pad_token=tokenizer.pad_token,
        unk_token=tokenizer.unk_token,
        extra_special_tokens=[USER, ASSISTANT],
        chat_template=tokenizer.chat_template or CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
    if fast.get_vocab() != tokenizer.get_vocab():
        raise ExportError("the rebuilt tokenizer's vocabulary differs from the model's: please report this.")
    return fast


def name_tokenizer_class(tokenizer_config: Path) -> None:
    """transformers 5 saves the class as "TokenizersBackend", a name transformers 4 does not know;
    "PreTrainedTokenizerFast" loads the same tokenizer.json on both."""
    settings = json.loads(tokenizer_config.read_text(encoding="utf-8"))
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    tokenizer_config.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def char_backend(vocab: dict[str, int]) -> Tokenizer:
    """tinygpt's char tokenizer as a tokenizers object: a BPE with no merges is one token per character."""
    specials = {BOS, EOS, PAD, UNK, USER, ASSISTANT}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK, fuse_unk=False))
    backend.decoder = decoders.Fuse()  # characters join with nothing between them
    backend.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in vocab if token in specials]
    )
    return backend


def generation_config(config) -> GenerationConfig:
    """Stops at <EOS>; pads with <pad> (GPT-2's own has no pad token)."""
    return GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )


def plain_card(config: GPT2Config, tokenizer, *, repo_id: str, space_id=None, subfolder=None, endpoint=None) -> str:
    """The export's card (tinygpt.hub.card): how to load it with transformers alone, and with vLLM."""
    card = model_card(
        config,
        title=repo_id,
        where=repo_id,
        tokenizer="character-level" if isinstance(tokenizer, TinyGPTCharTokenizer) else "GPT-2 BPE",
        plain=True,
        space_id=space_id,
        space_url=space_url(space_id, endpoint or "https://huggingface.co") if space_id else None,
        subfolder=subfolder,
    )
    return str(card)


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


def export_to_temp(model, tokenizer, **hf_kwargs) -> Path:
    """An hf export in a new temporary folder (the caller removes it with shutil.rmtree)."""
    folder = Path(tempfile.mkdtemp(prefix="tinygpt-export-"))
    try:
        export_hf(model, tokenizer, folder, **hf_kwargs)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


__all__ = ["DTYPES", "ExportError", "FORMATS", "export_gguf", "export_hf", "export_model", "to_gpt2"]
