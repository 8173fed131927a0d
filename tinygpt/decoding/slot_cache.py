"""The engine's KV cache: one row (slot) per request, each at its own position.

The model only ever calls `cache.update(k, v, layer_idx)` (the contract of transformers' caches), so the engine
hands it a view that says how a forward writes: a decode step (every slot writes one token at its own position
and attends its whole row) or the prefill of one slot (its context from position 0).
"""

import torch


class SlotCache:
    """A KV cache with one row (slot) per request: (slots, n_head, window, head_dim) keys and values per layer.

    The model only ever calls `update(k, v, layer_idx)` on a cache, so what it is handed is a view that says how
    this forward writes: a decode step over the first `rows` slots (`decoding`) or the prefill of one slot
    (`prefilling`).
    """

    def __init__(self, config, slots: int, window: int, device, dtype):
        shape = (slots, config.n_head, window, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]

    def decoding(self, positions: torch.Tensor) -> "_DecodeWrites":
        return _DecodeWrites(self, positions)

    def prefilling(self, slot: torch.Tensor) -> "_PrefillWrites":
        return _PrefillWrites(self, slot)


class _DecodeWrites:
    """A decode step: each of the first `rows` slots writes its one new token at its own position, and attends its
    whole row."""

    def __init__(self, cache: SlotCache, positions: torch.Tensor):
        self.cache, self.positions = cache, positions  # positions (rows,)

    def update(self, k, v, layer_idx):
        """k, v (rows, nh, 1, hs) -> those slots' cache (rows, nh, window, hs).

        The writes index the whole cache tensor: written through a slice of it (`keys[:rows].scatter_`), a
        compiled step copied the slice back whole, every layer and step."""
        rows = k.shape[0]
        keys, values = self.cache.keys[layer_idx], self.cache.values[layer_idx]
        slots = torch.arange(rows, device=k.device)
        keys[slots, :, self.positions] = k[:, :, 0].to(keys.dtype)  # (rows, nh, hs); autocast may change k's dtype
        values[slots, :, self.positions] = v[:, :, 0].to(values.dtype)
        return keys[:rows], values[:rows]


class _PrefillWrites:
    """The prefill of one slot: its context from position 0, so the keys it attends are exactly the new ones."""

    def __init__(self, cache: SlotCache, slot: torch.Tensor):
        self.cache, self.slot = cache, slot  # slot (1,)

    def get_seq_length(self) -> int:
        return 0  # the model asks where the new tokens go: a prefill starts at 0

    def update(self, k, v, layer_idx):
        """k, v (1, nh, T, hs), stored in the slot's row, and returned as they are."""
        keys, values, T = self.cache.keys[layer_idx], self.cache.values[layer_idx], k.shape[2]
        keys[self.slot, :, :T] = k.to(keys.dtype)
        values[self.slot, :, :T] = v.to(values.dtype)
        return k, v


__all__ = ["SlotCache"]
