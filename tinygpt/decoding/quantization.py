"""Int8 weight-only copies of a model, for batch-1 decoding on a CPU (`Engine(..., int8_weights=True)`).

Why: a decoded token reads every weight once. In fp32 even a small model's weights outgrow a CPU's last-level
cache, so CPU decoding runs at memory speed. Int8 weights with one scale per output row are a quarter of the
bytes and can stay in cache. Compiled with inductor's `max_autotune` and
`freezing`, `torch._weight_int8pack_mm` becomes a C++ matrix-vector kernel that widens the int8 weights in
registers (the speed-up is in the README, from benchmarks/bench_generate.py).

- Weights: symmetric, per output row: scale = max|w| / 127, w ~ round(w / scale) * scale.
- Activations run in bf16, the kernel's input type (the whole copy is bf16); logits come back as fp32.
- Cost: no loss measured (benchmarks/bench_int8.py, figures in the README), but greedy decoding follows fp32's
  tokens only until two candidates are nearly tied, then may take the other.
- Hand-written because the library that does this math, torchao (`Int8WeightOnlyConfig`), reaches a slower
  path under torch 2.13 (measured side by side; the README has the figures).
"""

import copy

import torch
from torch import nn


class Int8Linear(nn.Module):
    """nn.Linear with int8 weights and a bf16 scale per output row; computes in bf16."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()  # (N, K)
        scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127  # (N,)
        self.register_buffer("weight", torch.round(weight / scale[:, None]).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.register_buffer("bias", bias)

    def forward(self, x):
        """x (..., K) -> (..., N) in bf16."""
        rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)  # (M, K): the kernel takes 2-D input
        out = torch._weight_int8pack_mm(rows, self.weight, self.scale).reshape(*x.shape[:-1], -1)
        return out if self.bias is None else out + self.bias


def int8_weight_copy(model: nn.Module) -> nn.Module:
    """A bf16 copy of `model` whose nn.Linear layers hold int8 weights; `model` itself is left as it was."""
    quantized = copy.deepcopy(model).to(torch.bfloat16).eval()
    for parent in list(quantized.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child))
    return quantized


__all__ = ["Int8Linear", "int8_weight_copy"]
