"""The loss of gpt2-small's step alone, forward and backward in bf16 autocast, on a CUDA GPU: transformers' plain
head + cross-entropy (compiled, as the Trainer's compiled model runs it, and eager) against Liger Kernel's fused
linear cross-entropy at several chunk sizes (`chunk_mem_const`: chunks of that many times its default rows).

    python benchmarks/bench_loss_gpu.py          # needs the gpu extra (liger-kernel)

The shapes are the step's: 32 x 1024 hidden states (fp32, as the final LayerNorm gives them under autocast) of
768, against the head's 50,304 x 768 weight. Each line: milliseconds a forward and backward, mean of 10 after 3
warm-ups, and the peak memory of those 10.
"""

import time

import torch
import torch.nn.functional as F


def timed(name: str, loss_fn, repeats: int = 10) -> None:
    for _ in range(3):
        with torch.autocast("cuda", torch.bfloat16):
            loss = loss_fn()
        loss.backward()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        with torch.autocast("cuda", torch.bfloat16):
            loss = loss_fn()
        loss.backward()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - start) / repeats * 1e3
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"{name:32} {ms:8.2f} ms  peak {peak:5.1f} GiB  loss {loss.item():.4f}", flush=True)


def main():
    if not torch.cuda.is_available():
        raise SystemExit("bench_loss_gpu.py needs a CUDA GPU")
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    torch.manual_seed(0)
    hidden = torch.randn(32 * 1024, 768, device="cuda", requires_grad=True)  # (B * T, C)
    weight = (torch.randn(50304, 768, device="cuda") * 0.02).requires_grad_()  # (vocab_size, C)
    labels = torch.randint(0, 50257, (32 * 1024,), device="cuda")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")

    def plain():
        return F.cross_entropy(F.linear(hidden, weight).float(), labels)

    compiled = torch.compile(plain)
    timed("plain, torch.compile", compiled)
    timed("plain, eager", plain)
    for chunks in (1, 2, 4, 8, 16, 64):
        timed(
            f"liger, chunk_mem_const={chunks}",
            lambda chunks=chunks: liger_fused_linear_cross_entropy(hidden, weight, labels, chunk_mem_const=chunks),
        )


if __name__ == "__main__":
    main()
