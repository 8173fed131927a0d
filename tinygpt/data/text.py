"""Text corpora for training: files, URLs, Hub or local datasets, read into datasets' cache.

Design notes
- Plain text never sits in RAM whole. It becomes a `datasets.Dataset` of ~1M-character chunks in datasets' cache
  (`text_documents`); tinygpt.data.token_stream tokenizes it once and reads training windows from the
  memory-mapped result. Chat files are tinygpt.data.conversations.
- Every bad input raises `DataError`: a ValueError whose one-line message names the file, record or value and
  the fix, so train.py can print it without a traceback.
"""

import re
from pathlib import Path

import datasets

from tinygpt.data.errors import DataError, first_line

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
CHUNK_BOUNDARY = re.compile(r"(?<=\S)\n(?=\S)")  # where cut_text may cut the text
CHUNK_FEATURES = datasets.Features({"text": datasets.Value("large_string")})  # one type, so sources concatenate
CHUNK_CHARS = 1 << 20  # characters a chunk row holds, about: small enough to tokenize with little RAM


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
            writer_batch_size=16,  # rows are big chunks: datasets' default rows per write would hold them all in RAM
        )
    except datasets.exceptions.DatasetGenerationError as error:
        cause = error.__cause__
        if isinstance(cause, DataError):
            raise cause from None
        if isinstance(cause, UnicodeDecodeError):
            raise DataError(not_utf8(Path(cause.path), "pass a plain text file")) from error
        raise DataError(f"cannot read the text files: {first_line(cause or error)}") from error


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
        raise DataError(f"cannot read {source}: {first_line(error.__cause__ or error)}") from error
    except ImportError as error:  # datasets reads http(s) URLs through fsspec, whose HTTP support is optional
        raise DataError(f"reading {source} needs fsspec's HTTP support: pip install 'fsspec[http]'.") from error
    except (OSError, ValueError) as error:  # a URL that 404s, no network (ConnectionError is an OSError)
        raise DataError(
            f"cannot read {source}: {first_line(error)}; check the path or URL and your network, "
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


def not_utf8(path: Path, fix: str) -> str:
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
            f"cannot load dataset {name!r} (config {config!r}, split {split!r}): {first_line(error)}"
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


__all__ = ["TINY_SHAKESPEARE_URL", "cut_text", "not_utf8", "streamed_windows", "text_documents"]
