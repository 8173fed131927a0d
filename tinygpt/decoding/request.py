"""What the engine decodes: a `Request` (a prompt and how to decode after it), its state in the loop (`Live`), and
the one rule for its context once the window is full (`sliding_context_length`)."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

INT64_MAX = (1 << 63) - 1
MAX_TEMPERATURE = 100.0  # already all but uniform; far larger ones overflow the engine's float32 settings


@dataclass
class Request:
    """One text to continue: prompt token ids and how to decode after them."""

    prompt_ids: Sequence[int]
    max_new_tokens: int = 256
    min_new_tokens: int = 0  # stop tokens are banned until this many new tokens
    temperature: float = 0.0  # 0 = greedy
    top_k: int | None = None  # None / 0: no top-k filter
    top_p: float | None = None  # None / 1: no nucleus filter
    stop_ids: Sequence[int] = ()
    seed: int | None = None  # the sampling noise's seed (None: one from torch's generator)

    def __post_init__(self):
        if len(self.prompt_ids) == 0:
            raise ValueError("Engine: the prompt is empty; pass at least one token (e.g. the <BOS> id).")
        if self.max_new_tokens < 0 or self.min_new_tokens < 0:
            raise ValueError("Engine: max_new_tokens and min_new_tokens must be 0 or more.")
        if not 0 <= self.temperature <= MAX_TEMPERATURE:
            raise ValueError(
                f"Engine: temperature must be from 0 (greedy) to {MAX_TEMPERATURE:g}, got {self.temperature}."
            )
        counts = {"max_new_tokens": self.max_new_tokens, "min_new_tokens": self.min_new_tokens, "top_k": self.top_k}
        for name, value in counts.items():  # each lands in an int64 slot of the engine's state
            if value is not None and value > INT64_MAX:
                raise ValueError(f"Engine: {name} must be at most {INT64_MAX}, got {value}.")
        if self.seed is not None and not -INT64_MAX - 1 <= self.seed <= INT64_MAX:
            raise ValueError(f"Engine: seed must be a 64-bit integer, got {self.seed}.")


def sliding_context_length(sequence_length: int, window: int) -> int:
    """How many of the latest tokens to encode before generating more: all of them while there is room in the
    window for another token, else the last 3/4 of the window (more kept, more re-encoding per slide)."""
    return sequence_length if sequence_length < window else max(1, window * 3 // 4)


@dataclass(eq=False)
class Live:
    """A request in the loop, as the host sees it."""

    request: Request
    cancelled: Callable[[], bool]  # true once its caller gave up on it
    index: int = 0  # its place in a run's list
    tokens: list[int] = field(default_factory=list)  # prompt + what was read so far (the context a slide re-encodes)
    position: int = 0  # where the slot's newest token (on the device) will be fed
    queued: int = 0  # new tokens computed so far, read or not
    produced: int = 0  # new tokens read
    finished: bool = False
    deliver: Callable | None = None  # where a Scheduler sends its tokens

    def __post_init__(self):
        self.tokens = self.tokens or list(self.request.prompt_ids)


__all__ = ["INT64_MAX", "Live", "Request", "sliding_context_length"]
