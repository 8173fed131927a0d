"""The text `tinygpt eval` scores: files and/or a datasets corpus, read as train.py reads its corpus
(tinygpt.data.text.text_documents: one document, the sources joined with a newline where one has none), tokenized
once into datasets' cache (tinygpt.data.token_stream.tokenize_corpus) with no special tokens added.
"""

from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from tinygpt.data.errors import DataError
from tinygpt.data.text import text_documents
from tinygpt.data.token_stream import TokenStream, tokenize_corpus
from tinygpt.evaluation.bits import utf8_bytes


@dataclass
class EvalText:
    documents: datasets.Dataset  # chunks of the joined text ("text" column)
    description: str  # what was read, in words: the files' names and the dataset
    dataset_type: str  # for the card's model-index: the dataset id, or "text" for files
    dataset_config: str | None = None
    dataset_split: str | None = None


def read_eval_text(
    text_files: list[str] | None,
    dataset_name: str | None,
    dataset_config: str | None = None,
    text_column: str = "text",
    dataset_split: str = "test",
) -> EvalText:
    """The text, read and checked (a missing, empty or binary file, an unknown column: DataError) before any model
    is loaded."""
    documents = text_documents(
        text_files=text_files or None,
        dataset_name=dataset_name,
        dataset_config=dataset_config,
        text_column=text_column,
        dataset_split=dataset_split,
    )
    named = [Path(path).name for path in text_files or []]
    if dataset_name:
        named.append(f"{dataset_name}" + (f" ({dataset_config})" if dataset_config else "") + f" [{dataset_split}]")
    return EvalText(
        documents=documents,
        description=", ".join(named),
        dataset_type=dataset_name if dataset_name and not text_files else "text",
        dataset_config=dataset_config if dataset_name else None,
        dataset_split=dataset_split if dataset_name else None,
    )


def text_bytes(documents: datasets.Dataset) -> int:
    """UTF-8 bytes of the joined text, a few chunks at a time."""
    return sum(utf8_bytes(text) for batch in documents.iter(batch_size=16) for text in batch["text"])


def tokenize_text(tokenizer, text: EvalText) -> tuple[torch.Tensor, int]:
    """(ids, UTF-8 bytes) of the text: ids as a 1-D int32 tensor, no special tokens added."""
    tokens, _ = tokenize_corpus(tokenizer, text.documents)
    stream = TokenStream(tokens)
    num_bytes = text_bytes(text.documents)
    if len(stream) == 0 or num_bytes == 0:
        raise DataError(f"{text.description} holds no text to score; give it some.")
    return stream.to_tensor(), num_bytes


__all__ = ["EvalText", "read_eval_text", "text_bytes", "tokenize_text"]
