"""The hf export: a TinyGPT as plain GPT-2 (transformers' GPT2LMHeadModel and a PreTrainedTokenizerFast), which
runs wherever GPT-2 runs (transformers, vLLM, TGI, transformers.js) with no tinygpt and no remote code; and the
checks every export makes first (`ExportError`, `check_vocabulary`). tinygpt.hub.export writes it into place.

Design notes
- transformers' own `GPT2LMHeadModel` + `GPT2Config` save the weights (safetensors) and the config. GPT-2
  keeps its Linear layers as `Conv1D` with (in, out) weights, so those are transposed (the reverse of
  `TinyGPTForCausalLM.from_gpt2`); a model built with bias=False gets zero biases, which is the same function.
  "gelu_new" (tanh) and "gelu" (exact) are both GPT-2 activations, so either maps across unchanged.
- The tokenizer becomes a `PreTrainedTokenizerFast` built with the `tokenizers` library. The char tokenizer is a
  BPE model with no merges: tokenizers then splits each piece into Unicode characters and looks each one up,
  unknown ones becoming `<unk>` one by one (fuse_unk=False), which is exactly `list(text)` + a dict lookup; the
  special tokens are added tokens with their own ids, split out first as the slow tokenizer does. A GPT-2 BPE
  tokenizer already is a tokenizers object (GPT-2's vocab plus the chat tokens): it is wrapped as it is.
"""

import json
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from tinygpt.hub.card import model_card
from tinygpt.hub.space import space_url
from tinygpt.modeling_tinygpt import TinyGPTForCausalLM
from tinygpt.tokenization_tinygpt import ASSISTANT, BOS, CHAT_TEMPLATE, EOS, PAD, UNK, USER, TinyGPTCharTokenizer

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class ExportError(Exception):
    """A model cannot be exported; str() is one line naming the problem and the fix."""


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


__all__ = ["DTYPES", "ExportError", "check_vocabulary", "export_hf", "to_gpt2"]
