"""Training data for tinygpt: text corpora as one token stream, chat files as masked conversations.

Design notes
- Plain text (files, URLs, Hub or local datasets) goes through `datasets`: the "text" builder for files and URLs
  (one row per file, so the exact text is kept), `load_dataset(name)` for anything else. The documents are joined
  in order, tokenized once into a 1-D tensor and split like nanoGPT: first 90% train, last 10% validation.
  Training samples random windows of that stream (`TokenWindows`); the tensor lives on the training device when it
  fits, so a batch is one gather (`WindowCollator`) with no host-to-device copy.
- Conversations (ShareGPT or messages form, JSON or JSONL) are rendered with the tokenizer's chat template, the
  same one generation uses, and only the assistant's replies and the <EOS> that closes each reply carry labels
  (nanochat's rule): the model learns to answer, not to imitate the user.
- Every bad input raises `DataError`: a ValueError whose one-line message names the file, record or value and
  the fix, so train.py can print it without a traceback.
"""

import hashlib
import json
import re
from pathlib import Path

import datasets
import torch

from .tokenization_tinygpt import IGNORE_INDEX, DataError, _first_line, encode_conversations

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
CHUNK_BOUNDARY = re.compile(r"(?<=\S)\n(?=\S)")  # where encode_text may cut the text


# ----------------------------------------------------------------------------------------------------------------
# Text corpora


def read_text_sources(
    text_files: list[str] | None = None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    text_column: str = "text",
    dataset_split: str = "train",
) -> str:
    """The whole corpus as one string: the text files / URLs in order, then the dataset's `text_column`.

    `dataset_name` is a Hub dataset id (e.g. "Salesforce/wikitext" with config "wikitext-103-raw-v1"), a local
    folder or data file `datasets` can read (parquet, json, jsonl, csv, txt), or "tiny_shakespeare" (the char-rnn
    file, downloaded). Documents are joined with a newline between two where the first does not end with one.
    """
    if not text_files and not dataset_name:
        raise DataError("no training text: pass --text_file PATH_OR_URL or --dataset_name NAME.")
    documents = []
    for source in text_files or []:
        documents.append(_read_text_file(source))
    if dataset_name == "tiny_shakespeare":
        documents.append(_read_text_file(TINY_SHAKESPEARE_URL))
    elif dataset_name:
        documents.extend(_read_dataset_column(dataset_name, dataset_config, text_column, dataset_split))
    parts = []
    for document in documents:
        if parts and not parts[-1].endswith("\n"):
            parts.append("\n")
        parts.append(document)
    return "".join(parts)


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://", "hf://"))


def _read_text_file(source: str) -> str:
    """One file or URL, read by datasets' "text" builder as a single document (newlines kept)."""
    if not _is_url(source):
        _check_text_file(Path(source))
    try:
        rows = datasets.load_dataset("text", data_files=[source], sample_by="document", split="train")
    except datasets.exceptions.DatasetGenerationError as error:
        if isinstance(error.__cause__, UnicodeDecodeError):
            if _is_url(source):
                raise DataError(f"{source} is not UTF-8 text; pass a UTF-8 text file.") from error
            raise DataError(_not_utf8(Path(source), "pass a plain text file")) from error
        raise DataError(f"cannot read {source}: {_first_line(error.__cause__ or error)}") from error
    except ImportError as error:  # datasets reads http(s) URLs through fsspec, whose HTTP support is optional
        raise DataError(f"reading {source} needs fsspec's HTTP support: pip install 'fsspec[http]'.") from error
    except (OSError, ValueError) as error:  # a URL that 404s, no network (ConnectionError is an OSError)
        raise DataError(
            f"cannot read {source}: {_first_line(error)}; check the path or URL and your network, "
            "or download the file and pass its local path."
        ) from error
    text = rows[0]["text"]
    if not text.strip():
        raise DataError(f"{source} is empty; give it some text.")
    return text


def _check_text_file(path: Path) -> None:
    """Missing, empty and binary files, caught before datasets turns them into a traceback."""
    if not path.exists():
        raise DataError(f"{path}: no such file; check the path (or pass an http(s) URL).")
    if not path.is_file():
        raise DataError(f"{path} is not a file; pass a text file (one --text_file per file).")
    with open(path, "rb") as f:
        head = f.read(8192)
    if not head:
        raise DataError(f"{path} is empty; give it some text.")
    if b"\0" in head:
        raise DataError(f"{path} is not UTF-8 text (looks binary); pass a plain text file.")


def _not_utf8(path: Path, fix: str) -> str:
    """Why a file that is not UTF-8 cannot be read: binary, or text in a legacy 8-bit encoding.

    Text has no NUL bytes and few control characters. Every byte string decodes as latin-1, so such text is not
    decoded on a guess (Windows-1252 differs in 0x80-0x9F and would come out wrong, silently): the message names
    the likely encoding and the command that converts it.
    """
    data = path.read_bytes()
    controls = sum(data.count(bytes([b])) for b in (*range(0, 9), 11, 12, *range(14, 32), 127))
    if b"\0" in data or controls > len(data) // 100:
        return f"{path} is not UTF-8 text (looks binary); {fix}."
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        where = f"byte 0x{data[error.start]:02x} at offset {error.start}"
    else:
        return f"{path} is not UTF-8 text; {fix}."
    # Windows-1252 puts its curly quotes and dashes in 0x80-0x9F, where latin-1 has only control characters.
    encoding = "cp1252" if any(0x80 <= b <= 0x9F for b in data) else "latin1"
    return (
        f"{path} is not UTF-8 text ({where}; it looks like {encoding}); convert it to UTF-8, "
        f"e.g. iconv -f {encoding} -t utf-8 {path} > utf8.txt"
    )


def _read_dataset_column(name: str, config: str | None, column: str, split: str) -> list[str]:
    """The `column` of a Hub dataset, local dataset folder or local data file, one string per row."""
    path = Path(name)
    builders = {".txt": "text", ".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
    if path.is_file() and path.suffix not in builders:
        raise DataError(f"{name}: cannot tell the format; use one of {', '.join(builders)} or a dataset folder.")
    try:
        if path.is_file():  # load_dataset reads folders and Hub ids by name, single files through their builder
            rows = datasets.load_dataset(builders[path.suffix], data_files=[str(path)], split=split)
        else:
            rows = datasets.load_dataset(name, config, split=split)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as error:
        raise DataError(
            f"cannot load dataset {name!r} (config {config!r}, split {split!r}): {_first_line(error)}"
        ) from error
    if column not in rows.column_names:
        raise DataError(
            f"dataset {name!r} has no column {column!r}; pick one of {rows.column_names} with --text_column."
        )
    if rows.features[column].dtype not in ("string", "large_string"):
        raise DataError(
            f"dataset {name!r}: column {column!r} holds {rows.features[column].dtype}, not text; pick another."
        )
    texts = [text for text in rows[column] if text]
    if not texts:
        raise DataError(f"dataset {name!r}: column {column!r} of split {split!r} is empty.")
    return texts


# ----------------------------------------------------------------------------------------------------------------
# Token streams: encode, split, random windows


def encode_text(tokenizer, text: str, chunk_chars: int = 1 << 18) -> torch.Tensor:
    """(N,) LongTensor of the text's ids, no special tokens added.

    The text is cut every ~256K characters and the chunks are encoded as one batch, which fast tokenizers run in
    parallel. Each cut falls after a lone newline between two non-space characters, where GPT-2-style
    pre-tokenization splits anyway, so the ids are those of the whole text.
    """
    chunks, start = [], 0
    while start < len(text):
        cut = CHUNK_BOUNDARY.search(text, start + chunk_chars)
        end = cut.end() if cut else len(text)
        chunks.append(text[start:end])
        start = end
    if not chunks:
        return torch.empty(0, dtype=torch.long)
    encoded = tokenizer(chunks, add_special_tokens=False)["input_ids"]
    return torch.tensor([token for chunk in encoded for token in chunk], dtype=torch.long)


def split_train_val(ids: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """nanoGPT's split: the first (1 - val_fraction) of the stream trains, the rest validates."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val_fraction must be in [0, 1), got {val_fraction}.")
    n_train = len(ids) - int(len(ids) * val_fraction)
    return ids[:n_train], ids[n_train:]


class TokenWindows(torch.utils.data.Dataset):
    """`num_windows` random windows of block_size tokens over a 1-D token tensor; item i is {"offset": int}.

    Offset i is a hash of (seed, i): the same window in every run with that seed (a resumed run sees the same
    data), computed when asked for, so a million-step run holds no table of offsets. Items hold only offsets:
    `WindowCollator` gathers the tokens.
    """

    def __init__(self, tokens: torch.Tensor, block_size: int, num_windows: int, seed: int = 0):
        if len(tokens) < block_size + 1:
            raise DataError(
                f"the corpus has {len(tokens)} tokens but a context of {block_size} needs at least {block_size + 1}; "
                f"pass a smaller --block_size (at most {max(len(tokens) - 1, 1)}) or more text."
            )
        self.num_offsets = len(tokens) - block_size
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
    """Gathers a batch of windows in one indexing op on the tokens' device: {"input_ids", "labels"}, both (B, T).

    labels == input_ids: the model shifts them by one position for next-token prediction.
    """

    def __init__(self, tokens: torch.Tensor, block_size: int):
        self.tokens = tokens
        self.positions = torch.arange(block_size, device=tokens.device)  # (T,)

    def __call__(self, features: list[dict]) -> dict:
        offsets = torch.tensor([f["offset"] for f in features])  # (B,) on the host
        if self.tokens.is_cuda:
            # From pinned memory the copy is queued behind the GPU's work; from pageable memory CUDA would first
            # wait for that work to finish, and the host could never run a step ahead.
            offsets = offsets.pin_memory()
        offsets = offsets.to(self.tokens.device, non_blocking=True)
        batch = self.tokens[offsets[:, None] + self.positions]  # (B, T)
        return {"input_ids": batch, "labels": batch}


# ----------------------------------------------------------------------------------------------------------------
# Conversations

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def read_conversations(chat_file: str) -> list[list[dict]]:
    """Conversations from a JSON list or JSONL file, each as [{"role", "content"}, ...].

    A record is ShareGPT form ({"conversations": [{"from", "value"}]}, from in human/user, gpt/assistant, system)
    or messages form ({"messages": [{"role", "content"}]}). The file is parsed with `json` rather than datasets'
    json builder so that a bad record is reported by its number instead of as an Arrow schema error.
    """
    path = Path(chat_file)
    if not path.is_file():
        raise DataError(f"{chat_file}: no such chat file; check the path.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(_not_utf8(path, "pass a JSON or JSONL chat file")) from error
    if not text.strip():
        raise DataError(f"{chat_file} is empty; give it conversations in ShareGPT or messages form.")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{chat_file} is not valid JSON ({error}); fix it or write one record per line (JSONL)."
            ) from error
    else:
        records = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(
                    f"{chat_file}: line {line_number} is not valid JSON ({error.msg}); fix that line."
                ) from error
    conversations = [_record_messages(record, f"{chat_file}: record {i}") for i, record in enumerate(records)]
    if not conversations:
        raise DataError(f"{chat_file} holds no conversations.")
    return conversations


def _record_messages(record, where: str) -> list[dict]:
    """One record as [{"role", "content"}]; `where` ("file: record i") starts every error message."""
    if isinstance(record, dict) and isinstance(record.get("conversations"), list):
        turns, role_key, content_key = record["conversations"], "from", "value"
    elif isinstance(record, dict) and isinstance(record.get("messages"), list):
        turns, role_key, content_key = record["messages"], "role", "content"
    else:
        raise DataError(f"{where} has no 'conversations' (ShareGPT) or 'messages' list; give one of them.")
    messages = []
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get(content_key), str):
            raise DataError(f"{where}, turn {t}: needs {role_key!r} and a text {content_key!r}.")
        role = SHAREGPT_ROLES.get(turn.get(role_key))
        if role is None:
            raise DataError(f"{where}, turn {t}: unknown role {turn.get(role_key)!r}; use {', '.join(SHAREGPT_ROLES)}.")
        messages.append({"role": role, "content": turn[content_key]})
    _check_messages(messages, where)
    return messages


def _check_messages(messages: list[dict], where: str) -> None:
    for t, message in enumerate(messages):
        if message.get("role") not in ("system", "user", "assistant"):
            raise DataError(f"{where}, turn {t}: unknown role {message.get('role')!r}; use system, user or assistant.")
    if not any(message["role"] == "assistant" for message in messages):
        raise DataError(f"{where} has no assistant turn; there is nothing to learn from it.")


def encode_conversation(tokenizer, messages: list[dict], max_length: int) -> dict:
    """{"input_ids": [...], "labels": [...]} of one conversation; see `encode_conversations`."""
    _check_messages(messages, "conversation 0")
    encoded = encode_conversations(tokenizer, [messages], max_length)
    return {"input_ids": encoded["input_ids"][0], "labels": encoded["labels"][0]}


def conversation_dataset(tokenizer, conversations: list[list[dict]], max_length: int) -> datasets.Dataset:
    """A datasets.Dataset of encoded conversations ("input_ids", "labels"), encoded with a batched `datasets.map`.

    Conversations whose replies all lie past `max_length` are dropped (they would carry no loss). Batches are
    padded by `DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)`.
    """
    for i, messages in enumerate(conversations):
        _check_messages(messages, f"conversation {i}")
    rows = datasets.Dataset.from_dict({"messages": conversations})
    encoded = rows.map(
        lambda batch: encode_conversations(tokenizer, batch["messages"], max_length),
        batched=True,
        remove_columns=["messages"],
        desc="Encoding conversations",
    )
    kept = encoded.filter(
        lambda batch: [any(label != IGNORE_INDEX for label in ls) for ls in batch["labels"]], batched=True
    )
    if len(kept) == 0:
        raise DataError(f"no conversation has an assistant reply within {max_length} tokens; raise --block_size.")
    return kept


__all__ = [
    "DataError",
    "TINY_SHAKESPEARE_URL",
    "TokenWindows",
    "WindowCollator",
    "conversation_dataset",
    "encode_conversation",
    "encode_text",
    "read_conversations",
    "read_text_sources",
    "split_train_val",
]
