"""A tokenizer for training, from train.py's --tokenizer: "char" (built from the corpus), "gpt2", "bpe" (a
byte-level BPE trained on the corpus with `tokenizers`) or a saved folder. Each carries the chat tokens and the
chat template of tinygpt.tokenization_tinygpt, so a model trained with any of them chats the same way.
"""

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tinygpt.data.errors import DataError, first_line
from tinygpt.tokenization_tinygpt import (
    ASSISTANT,
    BOS,
    CHAT_TEMPLATE,
    EOS,
    PAD,
    SPECIAL_TOKENS,
    UNK,
    USER,
    TinyGPTCharTokenizer,
    load_gpt2_chat_tokenizer,
)


def build_tokenizer(spec: str, corpus: str | Iterable[str] | None, bpe_vocab_size: int = 1024):
    """A tokenizer with the chat tokens and template: "char", "gpt2", "bpe" (trained on `corpus`) or a folder.

    A folder is either GPT-2's vocab.json + merges.txt or a tokenizer saved with `save_pretrained` (e.g. a
    previous run's output).
    """
    if spec == "char":
        return TinyGPTCharTokenizer.from_corpus(_required_corpus(spec, corpus))
    if spec == "gpt2":
        try:
            return load_gpt2_chat_tokenizer("gpt2")
        except OSError as error:
            raise DataError(
                f"cannot load the 'gpt2' tokenizer from the Hub ({first_line(error)}); "
                "pass --tokenizer with a folder holding GPT-2's vocab.json + merges.txt."
            ) from error
    if spec == "bpe":
        return train_bpe_tokenizer(_required_corpus(spec, corpus), bpe_vocab_size)
    folder = Path(spec)
    if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
        return _load_saved_tokenizer(folder)
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return load_gpt2_chat_tokenizer(folder)
    raise DataError(
        f"--tokenizer {spec!r} is not char, gpt2, bpe or a folder with a saved tokenizer "
        "(tokenizer_config.json) or GPT-2's vocab.json + merges.txt."
    )


def _required_corpus(spec: str, corpus: str | Iterable[str] | None) -> str | Iterable[str]:
    if corpus is None:
        raise DataError(f"--tokenizer {spec} is built from the training text, but there is none.")
    return corpus


def _load_saved_tokenizer(folder: Path):
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot load the tokenizer saved in {folder}: {first_line(error)}") from error
    vocab = tokenizer.get_vocab()
    if any(token not in vocab for token in SPECIAL_TOKENS):
        if (folder / "tokenizer.json").is_file():
            return load_gpt2_chat_tokenizer(folder)  # adds the chat tokens to any BPE tokenizer
        missing = [token for token in SPECIAL_TOKENS if token not in vocab]
        raise DataError(f"the tokenizer in {folder} lacks the chat tokens {missing}; save it from tinygpt again.")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def train_bpe_tokenizer(corpus: str | Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """GPT-2-style byte-level BPE trained on `corpus` with `tokenizers`; the chat tokens come first (ids 0-5)."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise DataError(f"--bpe_vocab_size {vocab_size} is below the 256 bytes + {len(SPECIAL_TOKENS)} chat tokens.")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is a token: no text is unknown
        show_progress=False,
    )
    bpe.train_from_iterator([corpus] if isinstance(corpus, str) else corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        extra_special_tokens=[USER, ASSISTANT],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
