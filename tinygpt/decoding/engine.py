"""The decoding engine: every text tinygpt writes comes out of `Engine` (chat and the app, `tinygpt generate` and
`serve`, the exam and the sample after training, the benchmarks).

Why not `generate()`? For a small model the model is the cheap part: per token, `generate()` runs logits
processors, stopping criteria and cache bookkeeping in Python, which costs more than a few small transformer
layers. `generate()`, pipelines and streamers still work on the model (they are HF's own); this loop keeps only
what a text needs and puts everything that decides how text is decoded in one object:

- Slots: one KV cache with `max_batch` rows (tinygpt.decoding.slot_cache). Each request decodes in its own slot at its own
  position; a step feeds every live slot's newest token at once, over the smallest batch bucket (1, 2, 4, ...)
  covering them, so one request alone costs what it did in an engine of one slot.
- One loop (`decode`), two drivers: `run()` decodes a list of requests in the caller's thread; a Scheduler
  (tinygpt.decoding.scheduler) drives it from its own thread for requests arriving from many threads. Between replays
  the loop admits new requests while the others' replays are still in flight (up to one window of prompt tokens
  a turn, so a burst of long prompts stalls the others by one window's prefill at most), drops cancelled
  requests and, once every token is read, slides full windows.
- Each request keeps its own sampling settings (tinygpt.decoding.sampling), stop tokens (not returned), max_new_tokens and
  min_new_tokens (stop tokens banned until then, as generate()'s MinNewTokensLength processor).
- The window: learned positions end at n_positions. A slot that fills it re-encodes its last 3/4 window
  (positions from 0 again) and goes on, as nanoGPT crops its context. This is the only sliding rule in tinygpt.
- Placement and speed: `device="auto"` puts the model on a CUDA GPU in bf16 when there is one. On CUDA each step
  is compiled and `steps_per_replay` of them are captured as one CUDA graph, one per batch bucket and step kind
  (when first used): a replay decodes several tokens per slot, and the host reads them at once while the next
  replay runs. A token past a request's stop, its max_new_tokens or the window's end costs a little GPU time and
  is dropped (a slot that reaches the window's end slides before its next replay). A prefill is one graph too,
  over the context right-padded to the shortest span (64, 128, ... the window) that holds it. On a CPU compiling
  is optional (`compile=True`: inductor turns each one-row matrix product into a fused multiply-and-sum);
  `int8_weights=True` decodes with an int8-weight copy of the model (tinygpt.decoding.quantization), small enough to stay
  in the CPU's cache.
- The model runs its own `forward`, handed the slot cache through the `cache.update(k, v, layer_idx)` contract
  of transformers' caches, with positions and a mask built here, so its greedy tokens are those of `generate()`
  inside the window (tests check it).
"""

import functools
import heapq
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from tinygpt.decoding.cuda_graphs import HostCopies, graph_on_first_use
from tinygpt.decoding.placement import batch_buckets, place
from tinygpt.decoding.request import Live, Request, sliding_context_length
from tinygpt.decoding.sampling import sample_next_token
from tinygpt.decoding.slot_cache import SlotCache


class Engine:
    """Decodes requests for one model, up to `max_batch` at once. One run at a time: for many threads, put a
    `Scheduler` in front of it.

    `compile`: None compiles on CUDA (each step a CUDA graph) and for int8 weights, not otherwise on a CPU.
    `steps_per_replay`: decode steps run per call of the device (one CUDA graph replay); None is 8 on CUDA, where
    the host's work per replay would otherwise bound a small model, and 1 on a CPU.
    """

    def __init__(
        self,
        model,
        *,
        max_batch: int = 1,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        compile: bool | None = None,
        int8_weights: bool = False,
        steps_per_replay: int | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"Engine: max_batch must be 1 or more, got {max_batch}.")
        if steps_per_replay is not None and steps_per_replay < 1:
            raise ValueError(f"Engine: steps_per_replay must be 1 or more, got {steps_per_replay}.")
        model, device, use_compile = place(model, device, dtype, compile, int8_weights)
        self.model = model.eval()
        self.config, self.device, self.max_batch = model.config, device, max_batch
        self.int8_weights, self.compiled = int8_weights, use_compile
        self.steps_per_replay = steps_per_replay or (8 if device.type == "cuda" else 1)
        self.window, V, B, K = self.config.n_positions, self.config.vocab_size, max_batch, self.steps_per_replay
        if self.window < 2:  # a token fed at position 0 would already need a slide, and no slide makes room
            raise ValueError(f"Engine: the model's window (n_positions={self.window}) must hold 2 positions or more.")
        # A slot slides when its newest token would be fed at the window's last position, as generate() ends a
        # window: a forward never holds more than n_positions - 1 tokens of context.
        self.last_position = self.window - 1
        self.cache = SlotCache(self.config, B, self.window, device, model.dtype)
        self.key_positions = torch.arange(self.window, device=device)  # (S,)

        # Each slot's state, in fixed device buffers: what a step reads and writes (and a CUDA graph needs).
        self.tokens = torch.zeros((B, 1), dtype=torch.long, device=device)  # the newest token, fed next
        self.replay_tokens = torch.zeros((K, B), dtype=torch.long, device=device)  # each step's tokens in a replay
        self.positions = torch.zeros((B,), dtype=torch.long, device=device)  # where it will be fed
        self.generated = torch.zeros((B,), dtype=torch.long, device=device)  # new tokens so far
        self.min_new = torch.zeros((B,), dtype=torch.long, device=device)
        self.is_stop = torch.zeros((B, V), dtype=torch.bool, device=device)
        self.temperature = torch.zeros((B, 1), device=device)
        self.top_k = torch.full((B, 1), V, dtype=torch.long, device=device)
        self.top_p = torch.ones((B, 1), device=device)
        self.seeds = torch.zeros((B, 1), dtype=torch.long, device=device)
        self.slot = torch.zeros((1,), dtype=torch.long, device=device)  # the slot a prefill encodes
        self.last = torch.zeros((1,), dtype=torch.long, device=device)  # its context's last index

        # In a compiled CPU step the math attention fuses with everything around it; the flash kernel stays a
        # separate call that costs more than the arithmetic at one query.
        self.math_attention = use_compile and device.type == "cpu"
        self.buckets = batch_buckets(max_batch)
        kinds = {"greedy": self._greedy_step, "sampled": self._sampled_step}
        self.encode = self._encode_exact  # eager: a prefill is one forward over exactly its tokens
        self.prompt_spans: list[int] = []  # on CUDA, the lengths a prefill graph is padded to
        if use_compile:
            kinds = {kind: self._compiled(step) for kind, step in kinds.items()}
        # A replay for each kind and bucket: steps[kind, rows]() decodes the first `rows` slots K times.
        self.steps = {
            (kind, rows): functools.partial(self._replay, step, rows)
            for kind, step in kinds.items()
            for rows in self.buckets
        }
        if use_compile and device.type == "cuda":
            # Eager, a prefill launches kernels like a run of decode steps: encode it as one graph over the
            # context right-padded to a fixed length instead, the shortest of a few spans (64, 128, ... the window)
            # that holds it (the padding's keys land past the context, where no step looks).
            self.padded_prompt = torch.zeros((1, self.window), dtype=torch.long, device=device)
            state = (self.tokens, self.positions, self.generated)  # what capturing a step must leave as it was
            self.steps = {key: graph_on_first_use(step, state) for key, step in self.steps.items()}
            self.encode = self._encode_padded
            encode_span = self._compiled(self._encode_padded_prompt)
            self.prompt_spans = batch_buckets(self.window, smallest=64)
            self.prefills = {
                span: graph_on_first_use(functools.partial(encode_span, span), state) for span in self.prompt_spans
            }
        self.host_copies = HostCopies((K, B), device)  # a replay's tokens come back while the next one runs
        self.busy = threading.Lock()  # held by the one loop decoding (a run, or a Scheduler's turn)

    # -- device work ------------------------------------------------------------------------------------------

    def _compiled(self, step):
        # Each bucket is its own static graph (dynamic=False: batch 1 keeps its 1-row kernels), and dynamo counts
        # every engine's buckets against one code object: allow them all.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        if self.device.type != "cpu":
            return torch.compile(step, fullgraph=True, dynamic=False)
        options = {"cpp_wrapper": True}  # the step's kernels called from C++, not a Python wrapper
        if self.int8_weights:
            # inductor's C++ GEMM template for int8 weights: chosen by max_autotune, and only for weights that
            # freezing has made constants of the graph (they are this engine's own copy, never changed).
            options |= {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN", "freezing": True}
        else:
            options["post_grad_fusion_options"] = {"decompose_mm_pass": {}}  # 1-row matmuls -> multiply-and-sum
        return torch.compile(step, fullgraph=True, dynamic=False, options=options)

    def _logits(self, ids, positions, mask, cache, keep=1):
        """ids (b, T), positions (b, T) -> fp32 logits (b, V) of the position `keep` picks (default the last)."""
        with sdpa_kernel(SDPBackend.MATH) if self.math_attention else nullcontext():
            out = self.model(
                input_ids=ids,
                position_ids=positions,
                attention_mask=mask,
                cache=cache,
                use_cache=True,
                logits_to_keep=keep,
            )
        return out.logits[:, -1, :].float()

    def _decode_logits(self, rows: int):
        """The first `rows` slots' newest tokens at their positions -> (rows, V) logits; each slot attends its own row
        up to there."""
        positions = self.positions[:rows]
        mask = (self.key_positions[None, :] <= positions[:, None])[:, None, None, :]  # (rows, 1, 1, S)
        return self._logits(self.tokens[:rows], positions[:, None], mask, self.cache.decoding(positions))

    def _advance(self, next_tokens):
        rows = next_tokens.shape[0]
        self.tokens[:rows].copy_(next_tokens)
        self.positions[:rows].add_(1).clamp_(max=self.window - 1)  # a finished slot idles in place until reused
        self.generated[:rows].add_(1)

    def _greedy_step(self, rows: int):
        """One decode step for the first `rows` slots, in place: the likeliest next token (stop tokens banned until
        min_new)."""
        slots = slice(0, rows)
        self._advance(self._allowed(self._decode_logits(rows), slots).argmax(dim=-1, keepdim=True))

    def _sampled_step(self, rows: int):
        """As _greedy_step, drawing each slot's next token with its sampling knobs."""
        self._advance(self._pick(self._decode_logits(rows), slice(0, rows)))

    def _replay(self, step, rows: int):
        """steps_per_replay decode steps of the first `rows` slots; step k's tokens land in replay_tokens[k]. A slot
        whose position reaches the window's last one stays there (its further tokens are the host's to drop)."""
        for k in range(self.steps_per_replay):
            step(rows)
            self.replay_tokens[k, :rows].copy_(self.tokens[:rows, 0])

    def _allowed(self, logits, slots):
        """Stop tokens banned for the slots that have not reached their min_new_tokens."""
        banned = self.is_stop[slots] & (self.generated[slots] < self.min_new[slots])[:, None]
        return logits.masked_fill(banned, float("-inf"))

    def _pick(self, logits, slots):
        knobs = self.temperature[slots], self.top_k[slots], self.top_p[slots]
        return sample_next_token(
            self._allowed(logits, slots), *knobs, self.seeds[slots], self.generated[slots][:, None]
        )

    def _finish_prefill(self, logits):
        """The prefilled slot's first token, drawn like every other, and its position after the context."""
        self.tokens.index_copy_(0, self.slot, self._pick(logits, self.slot))
        self.positions.index_copy_(0, self.slot, self.last + 1)
        self.generated.index_add_(0, self.slot, torch.ones_like(self.slot))

    def _encode_exact(self, context: list[int]):
        ids = torch.tensor([context], device=self.device)  # (1, T)
        positions = torch.arange(len(context), device=self.device)[None, :]
        self._finish_prefill(self._logits(ids, positions, None, self.cache.prefilling(self.slot)))

    def _encode_padded_prompt(self, span: int):
        positions = self.key_positions[None, :span]  # (1, span): the context, right-padded
        cache = self.cache.prefilling(self.slot)
        self._finish_prefill(self._logits(self.padded_prompt[:, :span], positions, None, cache, keep=self.last))

    def _encode_padded(self, context: list[int]):
        self.padded_prompt[0, : len(context)].copy_(torch.tensor(context), non_blocking=True)
        self.prefills[next(span for span in self.prompt_spans if span >= len(context))]()

    def _copy_out(self, replay: bool = False):
        """Start moving tokens to the host: the last replay's, a row per step, or (after a prefill) every slot's
        newest token as one row; `host_copies.read` waits for that copy only."""
        return self.host_copies.start(self.replay_tokens if replay else self.tokens.T)  # (K or 1, B)

    # -- the host loop ----------------------------------------------------------------------------------------

    def _prefill(self, slot: int, live: Live) -> int:
        """Encode a slot's context (the latest tokens, slid to fit the window) and draw its next token; returns the
        context's length."""
        context = live.tokens[-sliding_context_length(len(live.tokens), self.window) :]
        self.slot.fill_(slot)
        self.last.fill_(len(context) - 1)
        self.generated[slot].fill_(live.queued)
        self.encode(context)
        live.position, live.queued = len(context), live.queued + 1
        return len(context)

    def _admit(self, slot: int, live: Live) -> int:
        """Write the slot's settings and prefill it. Nothing here waits for the device: each setting is a fill_
        (`tensor[i] = number` on a 1-D CUDA tensor copies a host scalar and synchronizes, stalling the replays in
        flight), and the stop row is copied from the host without waiting."""
        request, V = live.request, self.config.vocab_size
        self.temperature[slot].fill_(request.temperature)
        self.top_k[slot].fill_(min(request.top_k, V) if request.top_k and request.top_k > 0 else V)
        self.top_p[slot].fill_(request.top_p if request.top_p is not None and 0 < request.top_p < 1 else 1.0)
        self.min_new[slot].fill_(min(request.min_new_tokens, request.max_new_tokens))
        self.seeds[slot].fill_(request.seed if request.seed is not None else int(torch.randint(1 << 62, ())))
        is_stop = torch.zeros(V, dtype=torch.bool)
        is_stop[[i for i in request.stop_ids if 0 <= i < V]] = True
        self.is_stop[slot].copy_(is_stop, non_blocking=True)
        return self._prefill(slot, live)

    def run(
        self, requests: Sequence[Request], cancelled: Callable[[int], bool] | None = None
    ) -> Iterator[tuple[int, int]]:
        """Decode `requests`, up to max_batch at a time; yield (request index, token id) as tokens are read.

        A request whose `cancelled(index)` turns true ends before its next token and frees its slot.
        """
        if not self.busy.acquire(blocking=False):
            raise RuntimeError("Engine: it is already decoding; give each thread its own engine, or use a Scheduler.")
        cancelled = cancelled or (lambda index: False)
        waiting = deque(
            Live(request, functools.partial(cancelled, index), index)
            for index, request in enumerate(requests)
            if request.max_new_tokens > 0
        )
        try:
            for entry, tokens in self.decode(lambda idle: waiting.popleft() if waiting else None):
                for token in tokens or ():
                    if entry.cancelled():  # a replay's tokens come at once: stop inside them too
                        break
                    yield entry.index, token
        finally:
            self.busy.release()

    @torch.no_grad()
    def decode(self, take: Callable[[bool], Live | None]) -> Iterator[tuple[Live, list[int] | None]]:
        """The batch loop: requests that `take` hands over join free slots while the others decode; every step
        decodes all live slots. Yields (request, its new tokens) as a replay's tokens are read and (request, None)
        when a request ends (done, stopped or cancelled). `take(idle)` returns the next request or None; `idle` says
        that nothing is decoding, and None then ends the loop. The caller holds `busy`.

        The device runs what the host queues in order, so a prefill queued behind the replays in flight lands
        before the next one, which then includes its slot: requests join without the batch draining first."""
        free = list(range(self.max_batch))  # a heap: the lowest free slot first, so live slots stay packed low
        live: dict[int, Live] = {}
        # Tokens on their way to the host, oldest first: (copy, {slot: (its request, how many of the copy's rows are
        # its tokens)}, whether a replay made them).
        copies: deque[tuple[object, dict[int, tuple[Live, int]], bool]] = deque()

        def leave(slot: int) -> Live:
            entry = live.pop(slot)
            entry.finished = True
            heapq.heappush(free, slot)
            return entry

        while True:
            if not copies:  # nothing in flight: every token is read, so a full window can slide
                for slot in [slot for slot, entry in live.items() if entry.cancelled()]:
                    yield leave(slot), None
                for slot, entry in live.items():
                    if entry.position == self.last_position and entry.queued < entry.request.max_new_tokens:
                        self._prefill(slot, entry)  # slide: re-encode the latest tokens
                        copies.append((self._copy_out(), {slot: (entry, 1)}, False))
            if all(replay for _, _, replay in copies):  # the last prefills are read: admit more
                budget = self.window  # prompt tokens encoded this turn (at least one request's)
                while free and budget > 0 and (entry := take(not live)) is not None:
                    if entry.cancelled() or entry.request.max_new_tokens == 0:
                        yield entry, None
                        continue
                    slot = heapq.heappop(free)
                    live[slot] = entry
                    budget -= self._admit(slot, entry)
                    copies.append((self._copy_out(), {slot: (entry, 1)}, False))
            if not live:
                return
            # Queue the next replay before reading: the device computes the next tokens while the host reads these.
            stepping = {s: e for s, e in live.items() if e.queued < e.request.max_new_tokens}
            replays_in_flight = sum(replay for _, _, replay in copies)
            if stepping and all(e.position < self.last_position for e in stepping.values()) and replays_in_flight < 2:
                kind = "greedy" if all(e.request.temperature <= 0 for e in live.values()) else "sampled"
                rows = next(size for size in self.buckets if size > max(stepping))
                self.steps[kind, rows]()
                covered = {}
                for slot, entry in stepping.items():
                    steps = min(self.steps_per_replay, self.last_position - entry.position)  # those before a slide
                    entry.position += steps
                    entry.queued += steps
                    covered[slot] = (entry, steps)
                copies.append((self._copy_out(replay=True), covered, True))
            if not copies:
                continue
            copied, covered, _ = copies.popleft()
            host_tokens = self.host_copies.read(copied)  # [step][slot]
            for slot, (entry, steps) in covered.items():
                if entry.finished:
                    continue  # a replay queued before it ended
                new, stopped, request = [], False, entry.request
                for token in (row[slot] for row in host_tokens[:steps]):
                    if entry.produced + len(new) >= request.max_new_tokens:
                        break
                    if token in request.stop_ids and entry.produced + len(new) >= request.min_new_tokens:
                        stopped = True
                        break
                    new.append(token)
                if new and not entry.cancelled():
                    entry.tokens += new
                    entry.produced += len(new)
                    yield entry, new
                if stopped or entry.cancelled() or entry.produced >= request.max_new_tokens:
                    yield leave(slot), None

    # -- what callers use -------------------------------------------------------------------------------------

    def stream(
        self, prompt_ids: Sequence[int], *, stop_event: threading.Event | None = None, **settings
    ) -> Iterator[int]:
        """Yield the new token ids of one request as they come; `settings` are Request's fields."""
        request = Request(prompt_ids, **settings)
        stopped = (lambda index: stop_event.is_set()) if stop_event is not None else None
        with closing(self.run([request], stopped)) as tokens:  # closing this stream ends the run at once
            for _, token in tokens:
                yield token

    def generate(self, requests: Sequence[Request]) -> list[list[int]]:
        """The new token ids of each request, decoded max_batch at a time."""
        outputs: list[list[int]] = [[] for _ in requests]
        with closing(self.run(requests)) as tokens:
            for index, token in tokens:
                outputs[index].append(token)
        return outputs

    def warm_up(self) -> None:
        """Run every step once (each kind at each bucket), so that compiling happens now rather than in a request:
        a full batch whose highest slots finish first, so the live slots shrink through every bucket; then, on
        CUDA, a prompt that fills each prefill span."""
        for temperature in (0.0, 1.0):
            self.generate(
                [
                    Request(
                        [0], max_new_tokens=(self.max_batch - slot) * self.steps_per_replay + 1, temperature=temperature
                    )
                    for slot in range(self.max_batch)
                ]
            )
        for span in self.prompt_spans:
            self.generate([Request([0] * min(span, self.window - 1), max_new_tokens=1)])


__all__ = ["Engine", "Request", "batch_buckets"]  # Request (tinygpt.decoding.request) is what Engine takes
