"""The engine's device plumbing on CUDA: steps recorded as CUDA graphs, and tokens copied to the host while the
next replay runs.

Why: a small model's decode step is many small kernels; launched one by one from Python they cost more than
they compute (the README's performance section). Recorded once as a graph, a step (or several) is one launch. And the host must read each
replay's tokens without waiting for the replay queued after it: pinned buffers and one event per copy.
"""

from collections.abc import Callable, Sequence

import torch


@torch.no_grad()
def captured(step: Callable[[], None]) -> torch.cuda.CUDAGraph:
    """Record `step` as a CUDA graph: afterwards it is one launch. It runs a few times first, off the capturing
    stream (warm-up, and compilation for a compiled step)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def graph_on_first_use(step: Callable[[], None], state: Sequence[torch.Tensor]) -> Callable[[], None]:
    """`step` as a CUDA graph captured when it first runs, so an engine compiles only what it uses. Capturing runs
    the step a few times: the tensors in `state` are put back afterwards (what else it wrote must not matter)."""
    graph = None

    def replay():
        nonlocal graph
        if graph is None:
            saved = [tensor.clone() for tensor in state]
            graph = captured(step)
            for tensor, before in zip(state, saved, strict=True):
                tensor.copy_(before)
        graph.replay()

    return replay


class HostCopies:
    """Token ids on their way to the host: `start(tokens)` queues the copy of a (rows, B) tensor into a pinned
    buffer, `read(handle)` waits for that copy only (not for work queued after it) and returns it as lists.

    Each copy in flight holds a buffer of its own until it is read (the engine may have two replays and a prefill
    per new request in flight); read buffers are reused. On a CPU the copy is done at once."""

    def __init__(self, shape: tuple[int, int], device: torch.device):
        self.shape, self.on_cuda = shape, device.type == "cuda"
        self.spare: list[tuple[torch.Tensor, torch.cuda.Event | None]] = []  # read buffers, free again

    def start(self, tokens: torch.Tensor):
        if self.spare:
            buffer, copied = self.spare.pop()
        else:
            buffer = torch.zeros(self.shape, dtype=torch.long, pin_memory=self.on_cuda)
            copied = torch.cuda.Event() if self.on_cuda else None
        buffer[: len(tokens)].copy_(tokens, non_blocking=self.on_cuda)
        if copied is not None:
            copied.record()
        return buffer, copied, len(tokens)

    def read(self, handle) -> list[list[int]]:
        buffer, copied, rows = handle
        if copied is not None:
            copied.synchronize()
        tokens = buffer[:rows].tolist()
        self.spare.append((buffer, copied))
        return tokens


__all__ = ["HostCopies", "captured", "graph_on_first_use"]
