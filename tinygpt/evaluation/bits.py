"""Bits per byte: a model's summed negative log-likelihood of a text, in bits, over the text's UTF-8 bytes.

It compares models whatever their tokenizers (a char model's loss per token and a GPT-2 model's are not
comparable; per byte of the same text they are), and it is lm-eval's `bits_per_byte`. Training reports it for
its validation split too (`eval_bits_per_byte`): there the loss is a mean per token, so it is scaled by the
validation text's bytes per token, counted once when the data is built (`bytes_per_token`).
"""

import math

LN2 = math.log(2)
DECODE_PIECE = 1 << 16  # tokens decoded at a time when counting bytes
MAX_COUNTED_TOKENS = 1 << 22  # bytes per token of a longer validation split: from its first this many tokens


def bits_per_byte(nats: float, num_bytes: int) -> float:
    """Summed negative log-likelihood `nats` of a text of `num_bytes` UTF-8 bytes, in bits per byte."""
    return nats / LN2 / num_bytes


def loss_bits_per_byte(loss: float, bytes_per_token: float) -> float:
    """A mean loss per token (nats) in bits per byte, for a text of `bytes_per_token`."""
    return loss / LN2 / bytes_per_token


def utf8_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def decoded_bytes(tokenizer, ids, skip_special_tokens: bool = False) -> int:
    """UTF-8 bytes of the text `ids` stand for (a 1-D tensor, array or list), decoded a piece at a time.

    A piece boundary inside a multi-byte character costs a replacement character's 3 bytes instead of its own:
    a few bytes in a million tokens."""
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    return sum(
        utf8_bytes(
            tokenizer.decode(
                ids[start : start + DECODE_PIECE],
                skip_special_tokens=skip_special_tokens,
                clean_up_tokenization_spaces=False,
            )
        )
        for start in range(0, len(ids), DECODE_PIECE)
    )


def stream_bytes_per_token(tokenizer, ids) -> float | None:
    """Bytes per token of a validation token stream (pass at most its first MAX_COUNTED_TOKENS tokens: a longer
    split's bytes per token is taken from those); None when it is empty."""
    return decoded_bytes(tokenizer, ids) / len(ids) if len(ids) else None


def labelled_bytes_per_token(tokenizer, input_ids: list[list[int]], labels: list[list[int]]) -> float | None:
    """Bytes per labelled token of conversations: the replies' text (special tokens such as <EOS> have no bytes,
    though their loss counts) over the labelled tokens the loss is taken on (every label but the first's)."""
    total_bytes = total_tokens = 0
    for ids, row_labels in zip(input_ids, labels, strict=True):
        labelled = [token for token, label in zip(ids, row_labels, strict=True) if label != -100]
        total_bytes += decoded_bytes(tokenizer, labelled, skip_special_tokens=True)
        total_tokens += sum(label != -100 for label in row_labels[1:])
    return total_bytes / total_tokens if total_tokens and total_bytes else None


__all__ = [
    "LN2",
    "MAX_COUNTED_TOKENS",
    "bits_per_byte",
    "decoded_bytes",
    "labelled_bytes_per_token",
    "loss_bits_per_byte",
    "stream_bytes_per_token",
    "utf8_bytes",
]
