"""Conversations for training: read from a chat file (ShareGPT or messages form, JSON or JSONL), rendered with the
chat template, and labelled for the loss: only the assistant's replies and the <EOS> that closes each carry labels
(nanochat's rule), so a model learns to answer, not to ask.
"""

import json
from pathlib import Path

import datasets

from tinygpt.data.errors import DataError
from tinygpt.data.text import not_utf8
from tinygpt.tokenization_tinygpt import ASSISTANT

IGNORE_INDEX = -100  # label of positions that carry no loss (transformers' convention)

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
        raise DataError(not_utf8(path, "pass a JSON or JSONL chat file")) from error
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


def encode_conversations(tokenizer, conversations: list[list[dict]], max_length: int) -> dict:
    """{"input_ids": [[...], ...], "labels": [[...], ...]}: chat-template renderings, labelled only on replies.

    The template renders each assistant turn as "<assistant>:" reply "<EOS>", so the labelled ids are those after
    each <assistant>: token up to and including the next <EOS>; the <assistant>: token itself (which generation's
    prompt supplies), system and user turns get -100. (transformers' `return_assistant_tokens_mask` would need
    {% generation %} tags and a fast tokenizer; the char tokenizer is not one.) Both lists are cut to `max_length`. The
    messages must have been checked (tinygpt.data checks them as it reads them).
    A whole batch is rendered and tokenized at once: far fewer Python calls than one conversation at a time.
    """
    texts = tokenizer.apply_chat_template(conversations, tokenize=False)
    all_input_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    assistant_id, eos_id = tokenizer.convert_tokens_to_ids(ASSISTANT), tokenizer.eos_token_id
    all_labels = []
    for input_ids in all_input_ids:
        labels, in_reply = [], False
        for token in input_ids:
            labels.append(token if in_reply else IGNORE_INDEX)
            if token == assistant_id:
                in_reply = True
            elif token == eos_id:
                in_reply = False
        all_labels.append(labels)
    return {"input_ids": [ids[:max_length] for ids in all_input_ids], "labels": [ls[:max_length] for ls in all_labels]}


__all__ = ["IGNORE_INDEX", "conversation_dataset", "encode_conversations", "one_json_object", "read_conversations"]
