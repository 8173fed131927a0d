"""Where a training step's time goes on a GPU: `train.py` as it is, with torch.profiler over a few optimizer steps.

It runs train.py's own code in this process (tinygpt.training.trainer.main, the same Trainer), adds one callback that
profiles optimizer steps --start to --start + --steps (after compiling and warming up), and prints:
- GPU kernel time by kind: matrix products, attention, the optimizer, inductor's fused kernels (norms, GELU,
  the loss), copies and the rest, each as a share of the profiled wall time;
- GPU idle: the wall time no kernel ran, i.e. what the host (Python, the Trainer, data loading) cost beyond
  the GPU's work;
- the host time of the data loader's `__next__` and the optimizer step;
- tok/s and MFU (6 x parameters x tok/s / 989e12, H100/H200 dense bf16) over the profiled span.

    python benchmarks/profile_train_gpu.py -- --preset gpt2-small --text_file T --tokenizer GPT2_DIR
    python benchmarks/profile_train_gpu.py -- --preset gpt2-small ... --per_device_train_batch_size 16 \\
        --gradient_accumulation_steps 2          # any train.py flags after --
"""

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not
from bench_train_gpu import PEAK_FLOPS  # noqa: E402  (this folder is on sys.path when a benchmark runs)

from tinygpt.training import trainer as training  # noqa: E402

KINDS = [  # (kind, substrings of a kernel's name), first match wins
    ("matrix products", ("gemm", "nvjet", "cutlass", "sm90_xmma", "matmul", "splitk")),
    ("attention", ("flash", "fmha", "attention")),
    ("optimizer", ("multi_tensor", "adam", "foreach")),
    ("inductor fused kernels", ("triton",)),
    ("copies and fills", ("memcpy", "memset", "copy", "fill")),
]


class ProfileSteps(TrainerCallback):
    def __init__(self, start: int, steps: int):
        self.start, self.steps, self.profiler, self.began = start, steps, None, 0.0
        self.result = None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.start:
            torch.cuda.synchronize()
            self.profiler = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self.profiler.__enter__()
            self.began = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is not None and state.global_step == self.start + self.steps:
            torch.cuda.synchronize()
            wall = time.perf_counter() - self.began
            self.profiler.__exit__(None, None, None)
            self.result = (wall, self.profiler.key_averages(), args)
            self.profiler = None


def kind_of(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, marks in KINDS if any(mark in lowered for mark in marks)), "other kernels")


def report(wall: float, events, args, parameters: int, block_size: int, steps: int) -> None:
    gpu = defaultdict(float)  # kind -> seconds of kernel time
    host = {}
    for event in events:
        if event.device_type == torch.autograd.DeviceType.CUDA and event.self_device_time_total > 0:
            gpu[kind_of(event.key)] += event.self_device_time_total / 1e6
        if "DataLoader" in event.key and "__next__" in event.key:
            host["data loader __next__ (host)"] = event.cpu_time_total / 1e6
        if event.key.startswith("Optimizer.step"):
            host["optimizer step (host, incl. launches)"] = event.cpu_time_total / 1e6
    tokens = steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    tokens *= block_size
    busy = sum(gpu.values())
    print(f"\nprofiled {steps} optimizer steps, {wall:.3f} s wall, {tokens / wall:,.0f} tok/s, ", end="")
    print(f"MFU {6 * parameters * tokens / wall / PEAK_FLOPS:.1%} ({parameters / 1e6:.2f}M parameters)")
    print(f"{'':44} {'seconds':>8} {'share of wall':>14}")
    for kind, seconds in sorted(gpu.items(), key=lambda item: -item[1]):
        print(f"{'GPU: ' + kind:44} {seconds:8.3f} {seconds / wall:14.1%}")
    print(f"{'GPU idle (host-bound: Python, Trainer, data)':44} {max(0.0, wall - busy):8.3f} {1 - busy / wall:14.1%}")
    for name, seconds in host.items():
        print(f"{name:44} {seconds:8.3f} {seconds / wall:14.1%}")
    top = sorted(
        (e for e in events if e.device_type == torch.autograd.DeviceType.CUDA), key=lambda e: -e.self_device_time_total
    )[:12]
    print("\nlongest kernels (total over the span):")
    for event in top:
        print(f"  {event.self_device_time_total / 1e6:8.3f} s  {event.count:6d}x  {event.key[:100]}")
    host_ops = sorted((e for e in events if e.self_cpu_time_total > 0), key=lambda e: -e.self_cpu_time_total)[:12]
    print("\nlongest host operations (self time; cudaStreamSynchronize / _local_scalar_dense are syncs):")
    for event in host_ops:
        print(f"  {event.self_cpu_time_total / 1e6:8.3f} s  {event.count:6d}x  {event.key[:100]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", type=int, default=20, help="first profiled optimizer step (after compiling)")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps profiled")
    parser.add_argument("train_flags", nargs=argparse.REMAINDER, help="-- then train.py's flags")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_train_gpu.py needs a CUDA GPU")
    flags = [flag for flag in args.train_flags if flag != "--"]
    callback = ProfileSteps(args.start, args.steps)
    build, shape = training.build_trainer, {}

    def build_with_profiler(model, *rest, **kwargs):
        shape["parameters"], shape["block_size"] = model.num_parameters(), model.config.n_positions
        trainer = build(model, *rest, **kwargs)
        trainer.add_callback(callback)
        return trainer

    training.build_trainer = build_with_profiler
    output = tempfile.mkdtemp(prefix="profile-")
    steps = ["--max_steps", str(args.start + args.steps + 1), "--eval_steps", "100000", "--save_steps", "100000"]
    code = training.main([*flags, *steps, "--output_dir", output, "--disable_tqdm", "true", "--logging_steps", "1000"])
    if code != 0 or callback.result is None:
        raise SystemExit(f"train.py failed (exit {code}) or never reached step {args.start + args.steps}")
    wall, events, train_args = callback.result
    report(wall, events, train_args, shape["parameters"], shape["block_size"], args.steps)


if __name__ == "__main__":
    main()
