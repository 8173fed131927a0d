"""Fast decoding for chat: a lean token loop over a preallocated KV cache, one CUDA graph per token on GPUs.

Why not just `generate()`? For a 10M-parameter model the model itself is the cheap part: per token,
`generate()` runs logits processors, stopping criteria and cache bookkeeping in Python, which costs far more
than the six small transformer layers. This loop keeps only what a chat needs (temperature, top-k, top-p,
stop tokens, a stop flag, streaming) and runs the model through the same `forward` and a transformers
`StaticCache`, so its greedy output is token-for-token that of `generate()` (tests check it). `generate()`
stays the general API; this is the path `tinygpt.chat` and the app use.

- The cache is allocated once per engine (n_positions long); the attention mask and positions are built here,
  so `forward` skips mask construction.
- A decode step is one of two functions: greedy (an argmax) or sampled (temperature, top-k, top-p). Greedy
  decoding (temperature 0) pays for the sort and the cumulative sum only once, on the prompt.
- On CUDA each step is compiled and captured as a CUDA graph: one launch per token instead of ~100 kernel
  launches, queued one token ahead of the reader.
- On a CPU compiling is optional (`compile=True`; it costs ~25 s the first time on 2 cores, then comes from
  the compile cache). It makes decoding 2-3x faster, mostly because inductor's `decompose_mm_pass` turns each
  one-row matrix product into a fused multiply-and-sum: MKL's matrix-vector product streams the fp32 weights
  at about a third of the memory bandwidth on the AVX2 machines we measured, and weights are what a batch-1
  token reads.
- On a CPU it can also decode with a private int8-weight copy of the model (`int8_weights=True`, see
  tinygpt.quantization): ~1.5x faster again, as the weights then fit in the CPU's cache. The copy's greedy tokens
  follow fp32's until two candidates are nearly tied.
- Past the window it slides like `generate()`: it re-encodes the last 3/4 of the window and goes on.
"""

import threading
from collections.abc import Iterator, Sequence
from contextlib import nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import StaticCache

from .modeling_tinygpt import sliding_context_length
from .quantization import int8_weight_copy


def sample_next_token(logits, temperature, top_k, top_p):
    """(B, V) float logits -> (B, 1) token ids, with every knob a (B, 1) tensor (no host syncs, no recompiles).

    temperature <= 0 means greedy; top_k >= V and top_p >= 1 switch those filters off.
    """
    greedy = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    sorted_logits, sorted_ids = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits / temperature.clamp_min(1e-5), dim=-1)
    rank = torch.arange(logits.shape[-1], device=logits.device)  # (V,)
    mass_above = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
    keep = (rank < top_k) & (mass_above < top_p)  # the top token always survives
    # Exponential-race sampling: argmax(p / E), E ~ Exp(1), draws from p without torch.multinomial's host sync.
    noise = torch.empty_like(probs).exponential_()
    sampled = sorted_ids.gather(-1, (probs * keep / noise).argmax(dim=-1, keepdim=True))
    return torch.where(temperature <= 0, greedy, sampled)


def compiles(device: torch.device, compile: bool | None, int8_weights: bool = False) -> bool:
    """Whether a FastDecoder on `device` compiles its steps: as asked, or by default (None) on CUDA and for int8
    weights (uncompiled, torch's int8 kernel is slower than fp32)."""
    return device.type == "cuda" or int8_weights if compile is None else compile


class FastDecoder:
    """Streams token ids for one prompt at a time; it owns one KV cache, so give each concurrent chat its own.

    State lives in fixed device buffers (the token about to be fed, its position, the sampling knobs) so that
    a decode step reads and writes only those and the cache: exactly what a CUDA graph needs.
    """

    def __init__(self, model, compile: bool | None = None, int8_weights: bool = False):
        # A CUDA graph cannot hold forward's eager position check (a host sync): it needs the compiled step.
        use_compile = compiles(model.device, compile, int8_weights)
        self.int8_weights = int8_weights
        if int8_weights:
            if model.device.type != "cpu":
                raise ValueError(
                    f"FastDecoder: int8_weights is for decoding on a CPU, and the model is on {model.device}; "
                    "leave it off there."
                )
            if not use_compile:
                raise ValueError(
                    "FastDecoder: int8_weights needs compiled decoding (uncompiled, torch's int8 kernel is slower "
                    "than fp32); drop compile=False."
                )
            model = int8_weight_copy(model)
        self.model = model.eval()
        self.config = model.config
        self.device = model.device
        self.window = self.config.n_positions
        self.cache = StaticCache(config=self.config, max_cache_len=self.window)
        self.key_positions = torch.arange(self.window, device=self.device)  # (T_max,)
        self.token = torch.zeros((1, 1), dtype=torch.long, device=self.device)  # the token about to be fed
        self.position = torch.zeros((1,), dtype=torch.long, device=self.device)  # where it will sit
        self.temperature = torch.zeros((1, 1), device=self.device)
        self.top_k = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        self.top_p = torch.ones((1, 1), device=self.device)
        if self.device.type == "cuda":  # two host slots, so the GPU can run one token ahead of the reader
            self.host_tokens = torch.zeros(2, dtype=torch.long, pin_memory=True)
            self.copied = [torch.cuda.Event(), torch.cuda.Event()]
            self.slot = 0
        # In a compiled CPU step the math attention fuses with everything around it; the flash kernel stays a
        # separate call that costs more than the arithmetic at one query.
        self.math_attention = use_compile and self.device.type == "cpu"
        steps = {"greedy": self._greedy_step, "sampled": self._sampled_step}
        self.encode_prompt = None  # eager: the prompt is encoded by one forward over exactly its tokens
        if use_compile:
            steps = {name: self._compiled(step) for name, step in steps.items()}
        if use_compile and self.device.type == "cuda":
            # Eager, a prompt costs ~100 kernel launches (about 5 ms on an H100, as much as 25 tokens): encode
            # it as one graph over a fixed, right-padded window instead.
            self.prompt = torch.zeros((1, self.window), dtype=torch.long, device=self.device)
            self.prompt_last = torch.zeros((1,), dtype=torch.long, device=self.device)  # its last real index
            self.prompt_logits = torch.zeros((1, self.config.vocab_size), device=self.device)
            self._prefill([0])  # allocates the cache
            steps = {name: self._captured(step).replay for name, step in steps.items()}
            self.encode_prompt = self._captured(self._compiled(self._encode_padded_prompt)).replay
        self.steps = steps

    def _compiled(self, step):
        if self.device.type != "cpu":
            return torch.compile(step, fullgraph=True)
        options = {"cpp_wrapper": True}  # the step's kernels called from C++, not a Python wrapper
        if self.int8_weights:
            # inductor's C++ GEMM template for int8 weights: chosen by max_autotune, and only for weights that
            # freezing has made constants of the graph (they are this decoder's own copy, never changed).
            options |= {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN", "freezing": True}
        else:
            options["post_grad_fusion_options"] = {"decompose_mm_pass": {}}  # 1-row matmuls -> multiply-and-sum
        return torch.compile(step, fullgraph=True, options=options)

    def _forward(self, ids, positions, keep=1):
        """ids (1, T), positions (T,) -> logits (1, V) in fp32 at index `keep` (default the last), writing K/V
        into the cache."""
        mask = (self.key_positions[None, :] <= positions[:, None])[
            None, None
        ]  # (1, 1, T, T_max): causal over the cache
        with sdpa_kernel(SDPBackend.MATH) if self.math_attention else nullcontext():
            out = self.model(
                input_ids=ids,
                position_ids=positions[None, :],
                attention_mask=mask,
                past_key_values=self.cache,
                use_cache=True,
                logits_to_keep=keep,
            )
        return out.logits[:, -1, :].float()

    def _set_cache_length(self, length):
        """Where the cache writes next. transformers' StaticCache appends at a per-layer counter (a tensor, so
        graphs can hold it); positions here are the decoder's, so it sets the counter to match."""
        for layer in self.cache.layers:
            layer.cumulative_length.fill_(length)

    def _greedy_step(self):
        """One decode step, in place: feed self.token at self.position, put the likeliest next token there."""
        self.token.copy_(self._forward(self.token, self.position).argmax(dim=-1, keepdim=True))
        self.position.add_(1)

    def _sampled_step(self):
        """As _greedy_step, drawing the next token with the sampling knobs."""
        logits = self._forward(self.token, self.position)
        self.token.copy_(sample_next_token(logits, self.temperature, self.top_k, self.top_p))
        self.position.add_(1)

    def _encode_padded_prompt(self):
        """self.prompt (1, T_max) right-padded -> self.prompt_logits at self.prompt_last, cache length set to it.

        The padding's keys land in the cache past the prompt, where nothing attends them: a decode step attends
        only up to its own position, and writes that position first.
        """
        self._set_cache_length(0)
        logits = self._forward(self.prompt, self.key_positions, keep=self.prompt_last)
        self._set_cache_length(self.prompt_last[0] + 1)
        self.prompt_logits.copy_(logits)

    def _prefill(self, context: Sequence[int]):
        """Encode the context into the cache and put its next token in self.token (once per prompt, so the one
        sampling function serves greedy decoding too: it takes the argmax at temperature 0)."""
        if self.encode_prompt is None:
            self._set_cache_length(0)
            ids = torch.tensor([list(context)], device=self.device)
            logits = self._forward(ids, torch.arange(len(context), device=self.device))
        else:
            self.prompt[0, : len(context)].copy_(torch.tensor(context))
            self.prompt_last.fill_(len(context) - 1)
            self.encode_prompt()
            logits = self.prompt_logits
        self.token.copy_(sample_next_token(logits, self.temperature, self.top_k, self.top_p))
        self.position.fill_(len(context))

    @torch.no_grad()
    def _captured(self, step) -> torch.cuda.CUDAGraph:
        """Record a step (a decode step, or encoding the prompt) as a CUDA graph: afterwards it is one launch."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (and compilation) off the capturing stream
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        return graph

    @torch.no_grad()
    def stream(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_ids: Sequence[int] = (),
        stop_event: threading.Event | None = None,
    ) -> Iterator[int]:
        """Yield new token ids one by one; stops at a stop id (not yielded), max_new_tokens, or stop_event."""
        if len(prompt_ids) == 0:
            raise ValueError("FastDecoder: the prompt is empty; pass at least one token (e.g. the <BOS> id).")
        self.temperature.fill_(temperature)
        self.top_k.fill_(top_k if top_k and top_k > 0 else self.config.vocab_size)
        self.top_p.fill_(top_p if top_p is not None and 0 < top_p < 1 else 1.0)
        step = self.steps["greedy" if temperature <= 0 else "sampled"]
        tokens = list(prompt_ids)
        context = tokens[-sliding_context_length(len(tokens), self.window) :]  # as generate() slides
        self._prefill(context)
        position = len(context)  # where self.token (computed, not yet read) will be fed
        pending = self._copy_out()
        for produced in range(1, max_new_tokens + 1):
            # Queue the next step before reading this token: the GPU computes token n+1 while the host waits
            # for token n, streams it and checks for a stop. A step wasted after a stop costs nothing visible.
            step_ahead = position < self.window - 1 and produced < max_new_tokens  # chunks end as generate()'s do
            if step_ahead:
                step()
                position += 1
                following = self._copy_out()
            token_id = self._read(pending)
            if token_id in stop_ids or (stop_event is not None and stop_event.is_set()):
                return
            yield token_id
            tokens.append(token_id)
            if step_ahead:
                pending = following
            elif produced < max_new_tokens:  # window full: re-encode the most recent tokens and go on
                context = tokens[-sliding_context_length(len(tokens), self.window) :]
                self._prefill(context)
                position = len(context)
                pending = self._copy_out()

    def _copy_out(self):
        """Start moving the newest token (self.token) to the host; returns what `_read` needs to get it."""
        if self.device.type != "cuda":
            return int(self.token)
        self.slot = 1 - self.slot
        self.host_tokens[self.slot].copy_(self.token.view(()), non_blocking=True)
        self.copied[self.slot].record()
        return self.slot

    def _read(self, pending) -> int:
        if self.device.type != "cuda":
            return pending
        self.copied[pending].synchronize()  # waits for that token's step only, not the one queued after it
        return int(self.host_tokens[pending])


__all__ = ["FastDecoder", "compiles", "sample_next_token"]
