"""Sampling for the engine: one function draws every request's next token in a batch, with no host sync.

- Each knob (temperature, top-k, top-p) is a (B, 1) tensor, so requests with different settings share one step
  and a CUDA graph, and nothing recompiles when a setting changes. Temperature 0 is greedy.
- Exponential-race sampling: argmax(p / E) with E ~ Exp(1) draws from p without torch.multinomial's host sync.
- The noise E is a hash of (the request's seed, its token count, the vocabulary rank), not a generator's state:
  a seeded request draws the same tokens whatever else shares its batch, and a CUDA graph replays it as it is.
"""

import torch


def _int64(constant: int) -> int:
    """A 64-bit constant as the signed value an int64 tensor holds (its arithmetic wraps around)."""
    return constant - (1 << 64) if constant >= 1 << 63 else constant


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """A logical right shift of int64 values (torch's >> keeps the sign)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def sampling_noise(seeds: torch.Tensor, counters: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(B, 1) int64 seeds and counters -> (B, V) draws of Exp(1), a function of (seed, counter, rank) alone.

    MurmurHash3's 64-bit finalizer mixes the three into 24 uniform bits per entry; the uniform lies strictly
    inside (0, 1), so every draw is finite and positive."""
    rank = torch.arange(vocab_size, device=seeds.device)  # (V,)
    x = seeds * _int64(0x9E3779B97F4A7C15) + counters * _int64(0xC2B2AE3D27D4EB4F) + rank  # (B, V)
    for multiplier in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        x = (x ^ _shift_right(x, 33)) * _int64(multiplier)
    x = x ^ _shift_right(x, 33)
    uniform = (_shift_right(x, 40).float() + 0.5) / (1 << 24)
    return -uniform.log()


def cumulative_sum(x: torch.Tensor, block: int = 256) -> torch.Tensor:
    """x.cumsum(-1) for (B, V) x, as sums within blocks of `block` plus the sums of the blocks before.

    Why not cumsum: over a large vocabulary (GPT-2's 50,257) inductor splits a long scan across thread blocks,
    and that kernel cannot take the softmax fused into it (torch 2.11: "NYI TritonSplitDimKernel reductions").
    Two short scans are never split."""
    rows, width = x.shape
    if width <= block:
        return x.cumsum(dim=-1)
    padded = torch.nn.functional.pad(x, (0, -width % block)).view(rows, -1, block)  # (B, V / block, block)
    within = padded.cumsum(dim=-1)
    before = within[:, :, -1].cumsum(dim=-1) - within[:, :, -1]  # (B, V / block): the blocks before each
    return (within + before[:, :, None]).view(rows, -1)[:, :width]


def sample_next_token(logits, temperature, top_k, top_p, seeds, counters):
    """(B, V) float logits -> (B, 1) token ids, with every knob a (B, 1) tensor (no host syncs, no recompiles).

    temperature <= 0 means greedy; top_k >= V and top_p >= 1 switch those filters off. `seeds` and `counters`
    ((B, 1) int64) pick the noise: the same pair draws the same way.
    """
    greedy = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    sorted_logits, sorted_ids = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits / temperature.clamp_min(1e-5), dim=-1)
    rank = torch.arange(logits.shape[-1], device=logits.device)  # (V,)
    mass_above = cumulative_sum(probs) - probs  # probability of the tokens ranked above each one
    keep = (rank < top_k) & (mass_above < top_p)  # the top token always survives
    # Exponential-race sampling: argmax(p / E), E ~ Exp(1), draws from p without torch.multinomial's host sync.
    noise = sampling_noise(seeds, counters, logits.shape[-1])
    sampled = sorted_ids.gather(-1, (probs * keep / noise).argmax(dim=-1, keepdim=True))
    return torch.where(temperature <= 0, greedy, sampled)


def settings_from(generation_config) -> dict:
    """Request settings from a model's generation_config (what train.py saves): sampling or greedy, top-k/p, length."""
    sampling = bool(generation_config.do_sample)
    return dict(
        temperature=float(generation_config.temperature or 1.0) if sampling else 0.0,
        top_k=generation_config.top_k if sampling else None,
        top_p=generation_config.top_p if sampling else None,
        max_new_tokens=generation_config.max_new_tokens or 256,
    )


__all__ = ["cumulative_sum", "sample_next_token", "sampling_noise", "settings_from"]
