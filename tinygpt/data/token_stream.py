"""Text as one stream of token ids: tokenized once, cached, memory-mapped, read as random windows.

Design notes
- A corpus (tinygpt.data's chunks) is tokenized once by `Dataset.map(num_proc=...)` into a uint16 column where the
  vocabulary fits (`tokenize_corpus`); later runs on the same text with the same tokenizer reuse those Arrow files
  in datasets' cache. The cache key is the text's fingerprint and a hash of the tokenizer, not datasets' own hash
  of the map function (which pickles the tokenizer, and does not give a stable key).
- Training reads random windows (`TokenWindows`) of the joined ids straight from the memory-mapped files
  (`TokenStream`), which datasets already maps: no copy of the corpus in RAM. A corpus small enough is copied to
  the GPU instead, so a batch there is one gather (`WindowCollator`) with no host work.
- The split is nanoGPT's: first 90% train, last 10% validation. (A Hub corpus larger than the disk is streamed
  instead: tinygpt.data's `streamed_windows`.)
"""

import hashlib
import os
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets.fingerprint import Hasher

from tinygpt.data.errors import DataError
from tinygpt.data.text import cut_text


def encode_text(tokenizer, text: str, chunk_chars: int = 1 << 18) -> torch.Tensor:
    """(N,) LongTensor of the text's ids, no special tokens added; the chunks (`cut_text`) are encoded as one
    batch, which fast tokenizers run in parallel."""
    chunks = cut_text(text, chunk_chars)
    if not chunks:
        return torch.empty(0, dtype=torch.long)
    encoded = tokenizer(chunks, add_special_tokens=False)["input_ids"]
    return torch.tensor([token for chunk in encoded for token in chunk], dtype=torch.long)


def split_point(num_tokens: int, val_fraction: float = 0.1) -> int:
    """nanoGPT's split: the first (1 - val_fraction) of the stream trains, the rest validates."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val_fraction must be in [0, 1), got {val_fraction}.")
    return num_tokens - int(num_tokens * val_fraction)


def split_train_val(ids: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) of a token tensor, split at `split_point`."""
    n_train = split_point(len(ids), val_fraction)
    return ids[:n_train], ids[n_train:]


def token_dtype(tokenizer) -> str:
    """The narrowest unsigned type that holds every id: uint16 for vocabularies up to 65,536 (GPT-2's included)."""
    return "uint16" if len(tokenizer) <= 1 << 16 else "uint32"


def tokenizer_fingerprint(tokenizer) -> str:
    """What decides the ids: the tokenizer's class, vocabulary and (fast tokenizers) its whole pipeline."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return Hasher.hash(
        [type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()), backend.to_str() if backend else None]
    )


def _encode_rows(batch: dict, tokenizer, dtype: str) -> dict:
    ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
    return {"input_ids": [np.asarray(row, dtype=dtype) for row in ids]}  # numpy: no Python int per token kept


def tokenize_corpus(
    tokenizer, documents: datasets.Dataset, num_proc: int | None = None
) -> tuple[datasets.Dataset, bool]:
    """(tokens, reused): the chunks' ids as an "input_ids" column of `token_dtype`, one row per chunk, written
    once by `Dataset.map(num_proc=...)` into datasets' cache beside the chunks, and reused by every later run
    on the same text with the same tokenizer.

    The cache key is the chunks' fingerprint (their source), the tokenizer's and the dtype's: datasets' own
    fingerprint of the map function would hash the tokenizer object, which is not stable from run to run.
    """
    dtype = token_dtype(tokenizer)
    fingerprint = Hasher.hash([documents._fingerprint, tokenizer_fingerprint(tokenizer), dtype])
    folder = Path(documents.cache_files[0]["filename"]).parent
    reused = any(folder.glob(f"tokens-{fingerprint}*.arrow"))
    num_proc = num_proc or min(os.cpu_count() or 1, len(documents))
    tokens = documents.map(
        _encode_rows,
        fn_kwargs={"tokenizer": tokenizer, "dtype": dtype},
        batched=True,
        batch_size=8,  # a few chunks at a time: each process holds little text and few ids in memory
        writer_batch_size=8,
        remove_columns=["text"],
        features=datasets.Features({"input_ids": datasets.Sequence(datasets.Value(dtype))}),
        num_proc=num_proc if num_proc > 1 else None,
        cache_file_name=str(folder / f"tokens-{fingerprint}.arrow"),
        new_fingerprint=fingerprint,
        desc="Tokenizing",
    )
    return tokens, reused


def _characters(batch: dict) -> dict:
    characters = set()
    for text in batch["text"]:
        characters.update(text)
    return {"characters": ["".join(sorted(characters))]}


def corpus_characters(documents: datasets.Dataset, num_proc: int | None = None) -> str:
    """Every character of the chunks, once each: what a char tokenizer's vocabulary is built from. Found by one
    `map` written into datasets' cache beside the chunks, so a later run on the same text reads back a row of
    characters per batch of chunks instead of scanning the whole text again."""
    fingerprint = Hasher.hash([documents._fingerprint, "characters"])
    folder = Path(documents.cache_files[0]["filename"]).parent
    num_proc = num_proc or min(os.cpu_count() or 1, len(documents))
    found = documents.map(
        _characters,
        batched=True,
        batch_size=8,
        remove_columns=["text"],
        num_proc=num_proc if num_proc > 1 else None,
        cache_file_name=str(folder / f"characters-{fingerprint}.arrow"),
        new_fingerprint=fingerprint,
        desc="Listing characters",
    )
    return "".join(sorted(set().union(*found["characters"])))


class TokenStream:
    """The tokenized corpus as one stream of ids, read in place from the memory-mapped Arrow files of
    `tokenize_corpus`: RAM holds only the pages the windows touch.

    `datasets` reads rows (chunks), but a window at a random offset crosses chunk boundaries. Arrow keeps a list
    column's values contiguous in each record batch, so each batch's values are viewed as a numpy array without a
    copy (read-only: it is the file), and a window is a slice, or two joined where it crosses one.
    """

    def __init__(self, tokens: datasets.Dataset):
        values = [batch.flatten().to_numpy() for batch in tokens.data.column("input_ids").chunks]
        self.pieces = [piece for piece in values if len(piece)]
        self.starts = np.cumsum([0] + [len(piece) for piece in self.pieces])  # piece i holds ids starts[i]..

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """(length,) ids from `start`, in the stream's dtype."""
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        begin = start - int(self.starts[i])
        if begin + length <= len(self.pieces[i]):
            return self.pieces[i][begin : begin + length]
        parts, needed = [], length
        while needed:
            part = self.pieces[i][begin : begin + needed]
            parts.append(part)
            needed, begin, i = needed - len(part), 0, i + 1
        return np.concatenate(parts)

    def windows(self, offsets: list[int], length: int) -> torch.Tensor:
        """(B, length) LongTensor of the windows starting at `offsets`."""
        return torch.from_numpy(np.stack([self.read(offset, length) for offset in offsets]).astype(np.int64))

    def to_tensor(self) -> torch.Tensor:
        """(N,) int32 tensor of the whole stream, in RAM: for a corpus small enough to live on the GPU."""
        return torch.from_numpy(np.concatenate(self.pieces).astype(np.int32))


class TokenWindows(torch.utils.data.Dataset):
    """`num_windows` random windows of block_size tokens over a stream of `num_tokens`; item i is {"offset": int}.

    Offset i is a hash of (seed, i): the same window in every run with that seed (a resumed run sees the same
    data), computed when asked for, so a million-step run holds no table of offsets. Items hold only offsets:
    `WindowCollator` gathers the tokens.
    """

    def __init__(self, num_tokens: int, block_size: int, num_windows: int, seed: int = 0):
        if num_tokens < block_size + 1:
            raise DataError(
                f"the corpus has {num_tokens} tokens but a context of {block_size} needs at least {block_size + 1}; "
                f"pass a smaller --block_size (at most {max(num_tokens - 1, 1)}) or more text."
            )
        self.num_offsets = num_tokens - block_size
        self.num_windows = num_windows
        self.seed = seed

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.num_windows:
            raise IndexError(f"window {i} of {self.num_windows}")
        digest = hashlib.blake2b(f"{self.seed}:{i}".encode(), digest_size=8).digest()
        return {"offset": int.from_bytes(digest, "little") % self.num_offsets}


class WindowCollator:
    """Gathers a batch of windows: {"input_ids", "labels"}, both (B, T) int64.

    `tokens` is a `TokenStream` (windows read from the memory map on the host; the Trainer moves the batch) or a
    1-D tensor on the training device, where a batch is one indexing op with no host-to-device copy of tokens.
    labels == input_ids: the model shifts them by one position for next-token prediction.
    """

    def __init__(self, tokens: "TokenStream | torch.Tensor", block_size: int):
        self.tokens = tokens
        self.block_size = block_size
        if isinstance(tokens, torch.Tensor):
            self.positions = torch.arange(block_size, device=tokens.device)  # (T,)

    def __call__(self, features: list[dict]) -> dict:
        offsets = [f["offset"] for f in features]
        if isinstance(self.tokens, TokenStream):
            batch = self.tokens.windows(offsets, self.block_size)  # (B, T)
            return {"input_ids": batch, "labels": batch}
        offsets = torch.tensor(offsets)  # (B,) on the host
        if self.tokens.is_cuda:
            # From pinned memory the copy is queued behind the GPU's work; from pageable memory CUDA would first
            # wait for that work to finish, and the host could never run a step ahead.
            offsets = offsets.pin_memory()
        offsets = offsets.to(self.tokens.device, non_blocking=True)
        batch = self.tokens[offsets[:, None] + self.positions].long()  # (B, T)
        return {"input_ids": batch, "labels": batch}


__all__ = [
    "TokenStream",
    "TokenWindows",
    "WindowCollator",
    "encode_text",
    "split_point",
    "split_train_val",
    "token_dtype",
    "tokenize_corpus",
]
