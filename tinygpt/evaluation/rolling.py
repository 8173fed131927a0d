"""The negative log-likelihood of a token stream, scored in windows of the model's context, batched.

Default scoring is lm-eval's `loglikelihood_rolling` (lm_eval.models.huggingface.HFLM with
lm_eval.utils.get_rolling_token_windows): the stream is preceded by the tokenizer's prefix token (HFLM's
`prefix_token_id`: BOS, else EOS); the first window is [prefix] + tokens[:W-1] predicting tokens[:W], and each
later window predicts the next W tokens from the token before them and all but the last of them (disjoint windows:
a window's first token sees one token of context, its last W); the last, shorter span is predicted from a whole
window of W inputs. Every token is scored exactly once. With a stride S < W the windows slide: after the first,
each window scores only its last S tokens, so each of those is predicted from at least W - S tokens of context
(W / S times the forward passes). Every window past the first is W tokens long, so a batch is a plain (B, W)
tensor: no padding, no attention mask.
"""

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tinygpt.evaluation.bits import bits_per_byte
from tinygpt.evaluation.errors import EvalError


@dataclass(frozen=True)
class Window:
    """Input seq[start:end-1] predicts seq[start+1:end]; targets from seq[first_scored] on count. `seq` is the
    prefix token followed by the stream, so seq index i > 0 is the stream's token i - 1."""

    start: int
    end: int
    first_scored: int


@dataclass
class Score:
    """What scoring a text gave: its summed negative log-likelihood and what it is per token and per byte."""

    tokens: int
    bytes: int
    nats: float  # summed negative log-likelihood
    seconds: float  # scoring time (forward passes), tokenization not included
    window: int
    stride: int

    @property
    def rolling(self) -> bool:
        return self.stride == self.window

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.nats, self.bytes)

    @property
    def nats_per_token(self) -> float:
        return self.nats / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats_per_token) if self.nats_per_token < 700 else math.inf

    def scoring(self) -> str:
        if self.rolling:
            return f"rolling: disjoint windows of {self.window} tokens, every token scored once (lm-eval's loglikelihood_rolling)"
        return (
            f"sliding: windows of {self.window} tokens, stride {self.stride} (every token after the first window "
            f"predicted from at least {self.window - self.stride} tokens of context)"
        )


def prefix_token_id(tokenizer) -> int:
    """The token before the text, as lm-eval's HFLM chooses it: BOS, else EOS."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise EvalError("the model's tokenizer has neither a BOS nor an EOS token to put before the text: set one.")
    return token


def windows(num_tokens: int, window: int, stride: int | None = None) -> list[Window]:
    """The windows scoring a stream of `num_tokens` (seq = prefix + stream, targets seq[1..num_tokens])."""
    stride = window if stride is None else stride
    if not 0 < stride <= window:
        raise ValueError(f"the stride must be between 1 and the window ({window}), got {stride}")
    found, scored = [], 0  # scored: stream tokens scored so far
    while scored < num_tokens:
        new = min(window if scored == 0 else stride, num_tokens - scored)
        end = scored + new + 1  # exclusive, in seq: targets up to seq[scored + new]
        found.append(Window(start=max(0, end - 1 - window), end=end, first_scored=scored + 1))
        scored += new
    return found


def score_stream(
    model,
    ids: torch.Tensor,
    prefix_id: int,
    num_bytes: int,
    *,
    stride: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> Score:
    """Score the 1-D stream `ids` (of a text of `num_bytes` UTF-8 bytes) with `model`, on the model's device, in
    bf16 autocast on CUDA. Log-probabilities are taken in float32 and summed in float64."""
    window = model.config.n_positions
    device = next(model.parameters()).device
    seq = torch.cat([torch.tensor([prefix_id], dtype=ids.dtype), ids.cpu()])  # int32 from a token stream: rows go long
    planned = windows(len(ids), window, stride)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    nats = 0.0
    started = time.perf_counter()
    bar = tqdm(total=len(planned), unit="window", desc="Scoring", disable=not progress or len(planned) <= batch_size)
    with torch.inference_mode(), autocast:
        for first in range(0, len(planned), batch_size):
            batch = planned[first : first + batch_size]
            rows = [seq[w.start : w.end] for w in batch]  # input and targets: all one length (see windows())
            tokens = torch.stack(rows).to(device, torch.long, non_blocking=True)
            logits = model(input_ids=tokens[:, :-1], use_cache=False).logits
            batch_nats = torch.zeros((), device=device)
            for row, w in enumerate(batch):  # a row at a time: float32 log-probabilities of one window's logits
                skip = w.first_scored - (w.start + 1)  # targets before these were scored by an earlier window
                batch_nats += F.cross_entropy(logits[row, skip:].float(), tokens[row, 1 + skip :], reduction="sum")
            nats += batch_nats.item()
            bar.update(len(batch))
    bar.close()
    return Score(
        tokens=len(ids),
        bytes=num_bytes,
        nats=nats,
        seconds=time.perf_counter() - started,
        window=window,
        stride=window if stride is None else stride,
    )


__all__ = ["Score", "Window", "prefix_token_id", "score_stream", "windows"]
