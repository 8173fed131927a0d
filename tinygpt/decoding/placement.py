"""Where and how a model decodes: its device and dtype, whether its steps are compiled, its int8-weight copy, and
the batch sizes a step is built for. The engine asks once, at its start.
"""

import torch

from tinygpt.decoding.quantization import int8_weight_copy


def resolve_placement(model, device, dtype, int8_weights: bool):
    """(device, dtype) for `device`: "auto" is a CUDA GPU in bf16 when there is one (and no int8 weights), else the
    CPU; None keeps the model where it is."""
    if device == "auto":
        use_gpu = torch.cuda.is_available() and not int8_weights
        device = torch.device("cuda" if use_gpu else "cpu")
        dtype = dtype or (torch.bfloat16 if use_gpu else None)
    return (torch.device(device) if device is not None else model.device), dtype


def place(model, device, dtype, compile: bool | None, int8_weights: bool):
    """(model, device, compiled): the model moved to its device and dtype (or its int8-weight copy), and whether
    its steps compile: `compile=None` compiles on CUDA and for int8 weights, not otherwise on a CPU."""
    device, dtype = resolve_placement(model, device, dtype, int8_weights)
    if device != model.device or (dtype is not None and dtype != model.dtype):
        model = model.to(device=device, dtype=dtype)
    use_compile = device.type == "cuda" or int8_weights if compile is None else compile
    if int8_weights:
        if device.type != "cpu":
            raise ValueError(
                f"Engine: int8_weights is for decoding on a CPU, and the model is on {device}; leave it off there."
            )
        if not use_compile:
            raise ValueError(
                "Engine: int8_weights needs compiled decoding (uncompiled, torch's int8 kernel is slower than "
                "fp32); drop compile=False."
            )
        model = int8_weight_copy(model)
    return model, device, use_compile


def batch_buckets(largest: int, smallest: int = 1) -> list[int]:
    """The sizes a step is made for: powers of two from `smallest` below `largest`, and `largest`."""
    return [1 << i for i in range(largest.bit_length()) if smallest <= 1 << i < largest] + [largest]
