"""Training data for tinygpt: text corpora as one token stream, chat files as masked conversations.

Design notes
- Plain text (files, URLs, Hub or local datasets) never sits in RAM whole. It becomes a `datasets.Dataset` of
  ~1M-character chunks in datasets' cache (`text_documents`); tinygpt.token_stream tokenizes it once and reads
  training windows from the memory-mapped result.
- Conversations (ShareGPT or messages form, JSON or JSONL) are rendered with the tokenizer's chat template, the
  same one generation uses, and only the assistant's replies and the <EOS> that closes each reply carry labels
  (nanochat's rule): the model learns to answer, not to imitate the user.
- Every bad input raises `DataError`: a ValueError whose one-line message names the file, record or value and
  the fix, so train.py can print it without a traceback.
"""

import json
import re
from pathlib import Path

import datasets

from .tokenization_tinygpt import IGNORE_INDEX, DataError, _first_line, encode_conversations

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
CHUNK_BOUNDARY = re.compile(r"(?<=\S)\n(?=\S)")  # where cut_text may cut the text
CHUNK_FEATURES = datasets.Features({"text": datasets.Value("large_string")})  # one type, so sources concatenate
CHUNK_CHARS = 1 << 20  # characters a chunk row holds, about: small enough to tokenize in a few MB of RAM


# ----------------------------------------------------------------------------------------------------------------
# Text corpora


def text_documents(
    text_files: list[str] | None = None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    text_column: str = "text",
    dataset_split: str = "train",
) -> datasets.Dataset:
    """The corpus as a datasets.Dataset of one "text" column: the text files / URLs in order, then the dataset's
    `text_column`, each cut into chunks of about `CHUNK_CHARS` characters at lone newlines (see `cut_text`).

    `dataset_name` is a Hub dataset id (e.g. "Salesforce/wikitext" with config "wikitext-103-raw-v1"), a local
    folder or data file `datasets` can read (parquet, json, jsonl, csv, txt), or "tiny_shakespeare" (the char-rnn
    file, downloaded). Documents are joined with a newline between two where the first does not end with one, so
    the chunks concatenated are the corpus. Files are read a block at a time into datasets' cache
    (`Dataset.from_generator`, keyed by path, size and modification time): a second run reads nothing again.
    """
    if not text_files and not dataset_name:
        raise DataError("no training text: pass --text_file PATH_OR_URL or --dataset_name NAME.")
    sources = list(text_files or []) + ([TINY_SHAKESPEARE_URL] if dataset_name == "tiny_shakespeare" else [])
    rows = None
    if dataset_name and dataset_name != "tiny_shakespeare":
        rows = _dataset_column(dataset_name, dataset_config, text_column, dataset_split)
    parts = []
    if sources:
        parts.append(_file_chunks(sources, followed=rows is not None))
    if rows is not None:
        last = len(rows) - 1
        parts.append(
            rows.map(
                lambda batch, indices: {
                    "text": [
                        c
                        for t, i in zip(batch[text_column], indices, strict=True)
                        for c in cut_text(_joinable(t, i < last))
                    ]
                },
                with_indices=True,
                batched=True,
                batch_size=64,
                remove_columns=rows.column_names,
                features=CHUNK_FEATURES,
                desc="Cutting documents into chunks",
            )
        )
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _joinable(text: str, followed: bool) -> str:
    """A document as it goes into the joined corpus: a newline added where another follows and it has none."""
    return text + "\n" if followed and not text.endswith("\n") else text


def _file_chunks(sources: list[str], followed: bool) -> datasets.Dataset:
    """Local files and URLs as chunk rows, through datasets' cache; bad files are caught before it runs."""
    keyed = []
    for n, source in enumerate(sources):
        # datasets may shard a list of gen_kwargs across calls: each source carries all it needs
        followed_here = followed or n < len(sources) - 1
        if _is_url(source):
            keyed.append({"source": source, "followed": followed_here})
        else:
            _check_text_file(Path(source))
            stat = Path(source).stat()  # in the cache key: an edited file is read again
            keyed.append(
                {
                    "source": str(Path(source).resolve()),
                    "followed": followed_here,
                    "size": stat.st_size,
                    "mtime_ns": stat.st_mtime_ns,
                }
            )
    try:
        return datasets.Dataset.from_generator(
            _chunk_rows,
            features=CHUNK_FEATURES,
            gen_kwargs={"sources": keyed},
            writer_batch_size=16,  # rows of ~1 MB: datasets' default of 1,000 rows a write held 1 GB in memory
        )
    except datasets.exceptions.DatasetGenerationError as error:
        cause = error.__cause__
        if isinstance(cause, DataError):
            raise cause from None
        if isinstance(cause, UnicodeDecodeError):
            raise DataError(_not_utf8(Path(cause.path), "pass a plain text file")) from error
        raise DataError(f"cannot read the text files: {_first_line(cause or error)}") from error


def _chunk_rows(sources: list[dict]):
    """{"text": chunk} rows of each source in order; local files are read a block at a time, never whole."""
    for source in sources:
        joined_after = source["followed"]
        if "size" not in source:  # a URL
            yield from ({"text": c} for c in cut_text(_joinable(_read_url(source["source"]), joined_after)))
            continue
        path = source["source"]
        with open(path, encoding="utf-8") as f:
            buffer = ""
            try:
                while block := f.read(CHUNK_CHARS):
                    buffer += block
                    *chunks, buffer = cut_text(buffer, CHUNK_CHARS, final=False)
                    yield from ({"text": c} for c in chunks)
            except UnicodeDecodeError as error:
                error.path = path  # for the message: datasets re-raises it as the cause of its own error
                raise
            tail = _joinable(buffer, joined_after)
        if tail:
            yield {"text": tail}


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://", "hf://"))


def _read_url(source: str) -> str:
    """One URL, downloaded by datasets' "text" builder (into its cache) as a single document (newlines kept)."""
    try:
        rows = datasets.load_dataset("text", data_files=[source], sample_by="document", split="train")
    except datasets.exceptions.DatasetGenerationError as error:
        if isinstance(error.__cause__, UnicodeDecodeError):
            raise DataError(f"{source} is not UTF-8 text; pass a UTF-8 text file.") from error
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


def _dataset_column(
    name: str, config: str | None, column: str, split: str, streaming: bool = False
) -> datasets.Dataset | datasets.IterableDataset:
    """A Hub dataset, local dataset folder or local data file, reduced to its non-empty `column` rows."""
    path = Path(name)
    builders = {".txt": "text", ".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
    if path.is_file() and path.suffix not in builders:
        raise DataError(f"{name}: cannot tell the format; use one of {', '.join(builders)} or a dataset folder.")
    try:
        if path.is_file():  # load_dataset reads folders and Hub ids by name, single files through their builder
            rows = datasets.load_dataset(
                builders[path.suffix], data_files=[str(path)], split=split, streaming=streaming
            )
        else:
            rows = datasets.load_dataset(name, config, split=split, streaming=streaming)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as error:
        raise DataError(
            f"cannot load dataset {name!r} (config {config!r}, split {split!r}): {_first_line(error)}"
        ) from error
    features = rows.features  # None for a stream whose files do not declare them: checked as rows arrive
    if features is not None and column not in features:
        raise DataError(f"dataset {name!r} has no column {column!r}; pick one of {list(features)} with --text_column.")
    dtype = getattr(features[column], "dtype", type(features[column]).__name__) if features else "string"
    if dtype not in ("string", "large_string"):
        raise DataError(f"dataset {name!r}: column {column!r} holds {dtype}, not text; pick another.")
    rows = rows.select_columns([column]).filter(lambda batch: [bool(t) for t in batch[column]], batched=True)
    if not streaming and len(rows) == 0:
        raise DataError(f"dataset {name!r}: column {column!r} of split {split!r} is empty.")
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Cutting text into chunks


def cut_text(text: str, chunk_chars: int = CHUNK_CHARS, final: bool = True) -> list[str]:
    """The text in pieces of about `chunk_chars` characters, each cut after a lone newline between two non-space
    characters, where GPT-2-style pre-tokenization splits anyway: the pieces' ids are those of the whole text.

    With final=False the last item is the remainder that has no cut after `chunk_chars` yet ("" at most).
    """
    chunks, start = [], 0
    while cut := CHUNK_BOUNDARY.search(text, start + chunk_chars):
        chunks.append(text[start : cut.end()])
        start = cut.end()
    if start < len(text) or not final:
        chunks.append(text[start:])
    return chunks


def streamed_windows(
    tokenizer, name: str, config: str | None, column: str, split: str, block_size: int
) -> datasets.IterableDataset:
    """Windows of block_size tokens read from a dataset streamed (`load_dataset(streaming=True)`), for corpora
    larger than the disk: nothing is cached, each document is tokenized as it arrives, and consecutive windows are
    cut from the joined stream (run_clm's `group_texts`) as {"input_ids", "labels"} tensors."""
    documents = _dataset_column(name, config, column, split, streaming=True)

    def windows(batch: dict) -> dict:
        ids = tokenizer([_joinable(t, True) for t in batch[column]], add_special_tokens=False)["input_ids"]
        stream = [token for row in ids for token in row]
        cut = [stream[i : i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]
        return {"input_ids": cut, "labels": cut}  # a batch's leftover (< block_size tokens) is dropped

    return documents.map(windows, batched=True, batch_size=256, remove_columns=[column]).with_format("torch")


# ----------------------------------------------------------------------------------------------------------------
# Conversations

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def read_conversations(chat_file: str) -> list[list[dict]]:
    """Conversations from a JSON list, JSONL or a single (pretty-printed) record, each as [{"role", "content"}, ...].

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
    if (record := one_json_object(text)) is not None:
        records = [record]
    elif text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as error:  # RecursionError: nested past Python's limit
            raise DataError(
                f"{chat_file} is not valid JSON ({error}); fix it or write one record per line (JSONL)."
            ) from None
    else:
        records = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, RecursionError) as error:
                reason = error.msg if isinstance(error, json.JSONDecodeError) else "nested too deeply"
                raise DataError(
                    f"{chat_file}: line {line_number} is not valid JSON ({reason}); fix that line."
                ) from None
    conversations = [_record_messages(record, f"{chat_file}: record {i}") for i, record in enumerate(records)]
    if not conversations:
        raise DataError(f"{chat_file} holds no conversations.")
    return conversations


def one_json_object(text: str) -> dict | None:
    """The record of a file holding one JSON object over several lines (pretty-printed), else None (JSONL, whose
    first line alone is an object, fails here at once on the second)."""
    if not text.lstrip().startswith("{") or len(text.strip().splitlines()) < 2:
        return None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


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
        role = SHAREGPT_ROLES.get(turn.get(role_key)) if isinstance(turn.get(role_key), str) else None
        if role is None:
            raise DataError(f"{where}, turn {t}: unknown role {turn.get(role_key)!r}; use {', '.join(SHAREGPT_ROLES)}.")
        try:
            turn[content_key].encode("utf-8")
        except UnicodeEncodeError:  # JSON's "\ud800" escape: a lone surrogate, which no text file can hold
            raise DataError(
                f"{where}, turn {t}: its text holds an unpaired surrogate (a \\ud800-style escape)."
            ) from None
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
    "conversation_dataset",
    "cut_text",
    "encode_conversation",
    "read_conversations",
    "streamed_windows",
    "text_documents",
]
