"""Tokenizers for TinyGPT: a character-level one built from a corpus, and GPT-2's BPE with chat tokens.

Both carry the same chat tokens, each a single id, and the same chat template:

    <BOS>{system}<EOS><user>:{question}<EOS><assistant>:{answer}<EOS> ...

so a conversation renders identically whichever tokenizer a model uses, and training renders conversations
with this very template (`apply_chat_template`). Generation stops at `<EOS>`.

`TinyGPTCharTokenizer` is hand-written because no library ships a character-level `PreTrainedTokenizer` that
builds its vocabulary from a corpus; the base class does the rest (special-token splitting, padding, saving).

This file is uploaded with every model as remote code, so it holds the tokenizers and their template only; what
builds a tokenizer for training (train.py's --tokenizer, BPE training) lives in tinygpt.data.tokenizers.
"""

import json
import os
from collections.abc import Iterable
from pathlib import Path

from transformers import PreTrainedTokenizer

PAD, UNK, BOS, EOS, USER, ASSISTANT = "<pad>", "<unk>", "<BOS>", "<EOS>", "<user>:", "<assistant>:"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, USER, ASSISTANT]  # the char tokenizer gives them ids 0..5

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}{{ eos_token }}"
    "{% elif message['role'] == 'user' %}" + USER + "{{ message['content'] }}{{ eos_token }}"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT + "{{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('unknown chat role ' ~ message['role'] ~ ': use system, user or assistant') }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


class TinyGPTCharTokenizer(PreTrainedTokenizer):
    """One token per Unicode character seen in the corpus, plus the six special tokens (ids 0-5).

    Characters the corpus never showed become `<unk>`; nothing raises. decode(encode(s)) == s for text made of
    known characters.
    """

    vocab_files_names = {"vocab_file": "vocab.json"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file=None, vocab: dict[str, int] | None = None, **kwargs):
        # The vocabulary must exist before super().__init__(), which looks the special tokens up in it.
        if vocab is None:
            if vocab_file is None:
                raise ValueError("TinyGPTCharTokenizer needs a vocab: use TinyGPTCharTokenizer.from_corpus(text).")
            try:
                with open(vocab_file, encoding="utf-8") as f:
                    vocab = json.load(f)
            except (OSError, json.JSONDecodeError) as error:
                raise ValueError(f"TinyGPTCharTokenizer: cannot read vocab file {vocab_file}: {error}") from error
        missing = [token for token in SPECIAL_TOKENS if token not in vocab]
        if missing:
            raise ValueError(
                f"TinyGPTCharTokenizer: vocab lacks special tokens {missing}; rebuild it with from_corpus()."
            )
        self.encoder = dict(vocab)
        self.decoder = {i: token for token, i in self.encoder.items()}
        kwargs.setdefault("chat_template", CHAT_TEMPLATE)
        kwargs.setdefault("clean_up_tokenization_spaces", False)  # spaces are characters like any other
        super().__init__(
            pad_token=PAD,
            unk_token=UNK,
            bos_token=BOS,
            eos_token=EOS,
            extra_special_tokens=[USER, ASSISTANT],
            **{
                k: v
                for k, v in kwargs.items()
                if k not in ("pad_token", "unk_token", "bos_token", "eos_token", "extra_special_tokens")
            },
        )

    @classmethod
    def from_corpus(cls, corpus: str | Iterable[str], **kwargs) -> "TinyGPTCharTokenizer":
        """Build the vocabulary from a string or an iterable of strings (e.g. a `datasets` column)."""
        chars = set()
        for text in [corpus] if isinstance(corpus, str) else corpus:
            chars.update(text)
        if not chars:
            raise ValueError("TinyGPTCharTokenizer.from_corpus: the corpus is empty; pass some text.")
        vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
        for char in sorted(chars):
            vocab.setdefault(char, len(vocab))
        return cls(vocab=vocab, **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.encoder)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return list(text)  # special tokens were already split out by the base class

    def _convert_token_to_id(self, token: str) -> int:
        return self.encoder.get(token, self.encoder[UNK])

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        # One dict lookup per character: the base class goes through several calls per token, which made
        # encoding a whole corpus slow. Special tokens are in self.encoder too.
        if isinstance(tokens, str):
            return self._convert_token_to_id(tokens)
        unk_id = self.encoder[UNK]
        return [self.encoder.get(token, unk_id) for token in tokens]

    def _convert_id_to_token(self, index: int) -> str:
        return self.decoder.get(index, UNK)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + "vocab.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.encoder, f, ensure_ascii=False, indent=0)
        return (path,)


def load_gpt2_chat_tokenizer(name_or_dir: str | os.PathLike = "gpt2"):
    """GPT-2's byte-level BPE with the chat tokens, a pad token and the chat template added.

    `name_or_dir` is a Hub id ("gpt2", needs the network), a folder holding GPT-2's vocab.json + merges.txt (as
    the Hub's "gpt2" repo does), or a folder a tokenizer was saved to. Models built on it resize their
    embeddings to `len(tokenizer)` padded to a multiple of 64.
    """
    from transformers import AutoTokenizer, GPT2Tokenizer

    path = Path(name_or_dir)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            # vocab=/merges= (not vocab_file=/merges_file=, which build an empty tokenizer in transformers 5).
            tokenizer = GPT2Tokenizer(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"))
        else:
            raise ValueError(
                f"{path} holds neither tokenizer.json nor vocab.json + merges.txt; point at a GPT-2 tokenizer folder."
            )
    else:
        tokenizer = GPT2Tokenizer.from_pretrained(str(name_or_dir))
    tokenizer.add_special_tokens(
        {
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "unk_token": UNK,
            "extra_special_tokens": [USER, ASSISTANT],
        }
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "TinyGPTCharTokenizer", "load_gpt2_chat_tokenizer"]
