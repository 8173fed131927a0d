"""GPU training benchmark: tinygpt against nanoGPT, both measured in this run on this GPU; no stored figures.

    python benchmarks/bench_train_gpu.py --nanogpt ../nanoGPT       # both comparisons, with ratios
    python benchmarks/bench_train_gpu.py                             # tinygpt's figures only, no ratio
    python benchmarks/bench_train_gpu.py --nanogpt ../nanoGPT --only char      # or val, or 124m

--nanogpt is a checkout of karpathy/nanoGPT that the caller fetched (its code is run, never copied here).

1. char, 10.65M: `train.py --preset shakespeare-char` against nanoGPT's own
   `train.py config/train_shakespeare_char.py --compile=True`, the same number of steps of 64 x 256 tokens on Tiny
   Shakespeare. nanoGPT's data files (train.bin, val.bin, meta.pkl: uint16 ids of the characters) are written into
   a temporary folder from --text_file, since its prepare.py downloads.
2. val: the seconds from each command's start (imports, compiling and evaluations counted) to its first validation
   loss at or below --val_target (1.47), the same char model as each recipe has it: `train.py --preset
   shakespeare-char` against nanoGPT's `train.py config/train_shakespeare_char.py --compile=True`.
3. 124M: `train.py --preset gpt2-small` (32 x 1024 tokens a step; Liger's fused loss where it is installed, and
   then the plain loss too, `--use_liger_kernel false`) against nanoGPT's GPT model (model.py,
   imported from --nanogpt) in a plain loop: torch.compile, bf16 autocast, fused AdamW. nanoGPT runs twice: in the
   preset's micro-batches, and in its own config's (config/train_gpt2.py: 12 x 1024, here 3 of them a step);
   the ratio is against the faster of the two. MFU = 6 x parameters x tokens/s / 989e12 (H100/H200 dense bf16
   peak).

Tokens/s is the steady state: both train.py runs print their loss every 10 steps, which syncs the GPU; each line
is stamped as it arrives, and the rate is the tokens between the line at --skip_steps and the last one over the
time between them (compilation and start-up left out, equally for both).
"""

import argparse
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere: tinygpt comes from this checkout
from tinygpt.training.fused_loss import liger_installed  # noqa: E402
from tinygpt.training.presets import PRESETS  # noqa: E402

SHARED = next((p for p in (REPO / "shared", REPO.parent / "shared") if p.is_dir()), REPO.parent / "shared")
PEAK_FLOPS = 989e12  # H100/H200 SXM dense bf16


class Run:
    """A command whose output lines are stamped as they arrive: iterate for (seconds since start, line)."""

    def __init__(self, command: list[str], cwd: Path):
        print("+", " ".join(command), flush=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.start = time.perf_counter()
        self.process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.tail = []  # the last lines, for the error message

    def __iter__(self):
        for line in self.process.stdout:
            self.tail = (self.tail + [line])[-30:]
            yield time.perf_counter() - self.start, line
        if self.process.wait() != 0:
            raise SystemExit(f"failed with exit code {self.process.returncode}:\n{''.join(self.tail)}")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def steady_rate(command: list[str], cwd: Path, pattern: str, tokens_per_step: int, skip_steps: int) -> dict:
    """Run `command`, stamp every output line matching `pattern` (group 1: the step, or none: every 10th step),
    return the steady tok/s and the parameters the run printed (tinygpt: "training 124.48M parameters"; nanoGPT:
    "number of parameters: 10.65M", which leaves out the position embeddings)."""
    run = Run(command, cwd)
    stamps, parameters = [], None  # stamps: (step, seconds since start)
    for seconds, line in run:
        match = re.search(pattern, line)
        if match:
            step = int(match.group(1)) if match.groups() else 10 * (len(stamps) + 1)
            stamps.append((step, seconds))
        counted = re.match(r"(?:training|number of parameters:) ([0-9.]+)M", line)  # tinygpt's or nanoGPT's line
        if counted:
            parameters = float(counted.group(1)) * 1e6
    steady = [(step, t) for step, t in stamps if step >= skip_steps]
    if len(steady) < 2:
        raise SystemExit(f"too few logged steps after step {skip_steps} to measure:\n{''.join(run.tail)}")
    (s0, t0), (s1, t1) = steady[0], steady[-1]
    return {"tok/s": (s1 - s0) * tokens_per_step / (t1 - t0), "parameters": parameters}


def seconds_to_loss(command: list[str], cwd: Path, pattern: str, target: float) -> float | None:
    """Seconds from the command's start to its first line whose `pattern` (group 1: a validation loss) is at or
    below target; the run is stopped there. None if it ends first."""
    run = Run(command, cwd)
    for seconds, line in run:
        match = re.search(pattern, line)
        if match or re.match(r"(device|training|number of parameters|compiling)", line):  # where the time goes
            print(f"{seconds:8.1f} s  {line.strip()[:110]}", flush=True)
        if match and float(match.group(1)) <= target:
            run.stop()
            return seconds
    return None


def tokens_per_step(preset: str) -> int:
    training = PRESETS[preset].training
    batch = training["per_device_train_batch_size"] * training.get("gradient_accumulation_steps", 1)
    return batch * PRESETS[preset].block_size


def train_command(preset: str, output: str, *flags: str) -> list[str]:
    """train.py with the preset and flags, into `output`, with no checkpoints and no progress bar."""
    return [sys.executable, "train.py", "--preset", preset, *flags, "--output_dir", output, "--save_steps", "100000",
            "--disable_tqdm", "true"]  # fmt: skip


def tinygpt_run(preset: str, flags: list[str], steps: int, skip_steps: int, step_tokens: int | None = None) -> dict:
    """train.py with the preset and flags; step_tokens: tokens a step, when flags change the preset's batch."""
    output = tempfile.mkdtemp(prefix=f"bench-{preset}-")
    command = train_command(
        preset, output, *flags, "--max_steps", str(steps), "--logging_steps", "10", "--eval_steps", "100000"
    )
    logged = r"^\{'loss'"  # a line every 10 steps
    result = steady_rate(command, REPO, logged, step_tokens or tokens_per_step(preset), skip_steps)
    metrics = json.loads((Path(output) / "metrics.json").read_text())
    return result | {"peak GiB": metrics["peak_memory_bytes"] / 2**30}


def nanogpt_char_data(text_file: Path) -> Path:
    """nanoGPT's shakespeare_char files (train.bin, val.bin: uint16 character ids, 90/10; meta.pkl) for text_file,
    in a temporary folder, since its prepare.py downloads."""
    data = Path(tempfile.mkdtemp(prefix="bench-nanogpt-data-")) / "shakespeare_char"
    data.mkdir()
    text = text_file.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    split = int(len(ids) * 0.9)
    ids[:split].tofile(data / "train.bin")
    ids[split:].tofile(data / "val.bin")
    with open(data / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    return data


def nanogpt_char_command(data: Path, *flags: str) -> list[str]:
    """nanoGPT's own train.py on its shakespeare_char config, compiled, on the files of nanogpt_char_data."""
    return [sys.executable, "train.py", "config/train_shakespeare_char.py", "--compile=True", f"--dataset={data}",
            f"--out_dir={data.parent / 'out'}", *flags]  # fmt: skip


def nanogpt_char(nanogpt: Path, text_file: Path, steps: int, skip_steps: int) -> dict:
    flags = [f"--max_iters={steps}", "--eval_interval=1000000", "--eval_iters=20", "--log_interval=10"]
    command = nanogpt_char_command(nanogpt_char_data(text_file), *flags)
    return steady_rate(command, nanogpt, r"^iter (\d+): loss", 64 * 256, skip_steps)


def time_to_val(nanogpt: Path | None, text_file: Path, target: float, flags: list[str]) -> None:
    """Seconds from the command's start (imports, compiling and evaluations included) to the first evaluation at
    or below target: train.py --preset shakespeare-char (2048 fixed validation windows every 250 steps) against
    nanoGPT's train.py as its config has it (200 random validation batches every 250 steps)."""
    output = tempfile.mkdtemp(prefix="bench-val-")
    command = train_command("shakespeare-char", output, "--text_file", str(text_file), *flags)
    rows = [("train.py --preset shakespeare-char", seconds_to_loss(command, REPO, r"'eval_loss': '?([0-9.]+)", target))]
    if nanogpt:
        command = nanogpt_char_command(nanogpt_char_data(text_file))
        theirs = seconds_to_loss(command, nanogpt, r"^step \d+: train loss [0-9.]+, val loss ([0-9.]+)", target)
        rows.append(("nanoGPT train.py, --compile=True", theirs))
    print(f"\n10.65M char model, seconds from the command's start to validation loss <= {target}")
    for name, seconds in rows:
        print(f"{name:48} {'not reached' if seconds is None else f'{seconds:12.1f}'}")
    if len(rows) == 2 and None not in (rows[0][1], rows[1][1]):
        print(f"{'ratio (tinygpt / nanoGPT), same run':48} {rows[0][1] / rows[1][1]:12.2f}x")


def nanogpt_plain_loop(nanogpt: Path, vocab_size: int, steps: int, skip_steps: int, rows: int, micro_steps: int):
    """nanoGPT's GPT (124M, GPT-2 small's shape) in a plain compiled bf16 loop, fused AdamW: a step is micro_steps
    micro-batches of rows x 1024 tokens."""
    sys.path.insert(0, str(nanogpt))
    from model import GPT, GPTConfig  # nanoGPT's model.py, from the caller's checkout

    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    config = GPTConfig(
        block_size=1024, vocab_size=vocab_size, n_layer=12, n_head=12, n_embd=768, dropout=0.0, bias=True
    )
    model = GPT(config).cuda().train()
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), "cuda")  # fused AdamW on CUDA
    compiled = torch.compile(model)
    data = torch.randint(0, 50257, (10_000_000,), device="cuda")
    window = torch.arange(1025, device="cuda")

    def step():
        for _ in range(micro_steps):
            batch = data[torch.randint(0, len(data) - 1025, (rows,), device="cuda")[:, None] + window]  # (rows, 1025)
            with torch.autocast("cuda", torch.bfloat16):
                _, loss = compiled(batch[:, :-1].contiguous(), batch[:, 1:].contiguous())  # nanoGPT .view()s them
            (loss / micro_steps).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(skip_steps):  # compile and warm up
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps - skip_steps):
        step()
    torch.cuda.synchronize()
    parameters = sum(p.numel() for p in model.parameters())
    tokens = (steps - skip_steps) * rows * 1024 * micro_steps
    peak = torch.cuda.max_memory_allocated() / 2**30
    return {"tok/s": tokens / (time.perf_counter() - start), "parameters": parameters, "peak GiB": peak}


def table(title: str, rows: list[tuple[str, dict | None]], mfu: bool) -> None:
    print(f"\n{title}")
    print(f"{'':48} {'tok/s':>12} {'parameters':>12} {'MFU':>7} {'peak GiB':>9}")
    for name, result in rows:
        if result is None:
            continue
        n = result["parameters"]
        share = f"{6 * n * result['tok/s'] / PEAK_FLOPS:.1%}" if mfu and n else ""
        peak = f"{result['peak GiB']:.1f}" if "peak GiB" in result else ""
        print(f"{name:48} {result['tok/s']:12,.0f} {n or 0:12,.0f} {share:>7} {peak:>9}")
    ours = rows[0][1]
    references = [result for name, result in rows[1:] if result is not None and name.startswith("nanoGPT")]
    if ours and references:
        best = max(result["tok/s"] for result in references)
        print(f"{'ratio (tinygpt / fastest nanoGPT), same run':48} {ours['tok/s'] / best:12.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", type=Path, default=None, help="a karpathy/nanoGPT checkout; without it, no ratio")
    parser.add_argument("--only", choices=["char", "val", "124m"], default=None)
    parser.add_argument("--val_target", type=float, default=1.47, help="the validation loss that --only val times")
    parser.add_argument("--text_file", type=Path, default=SHARED / "data" / "tinyshakespeare.txt")
    parser.add_argument("--gpt2_tokenizer", type=Path, default=SHARED / "data" / "gpt2", help="vocab.json + merges.txt")
    parser.add_argument("--char_steps", type=int, default=1000)
    parser.add_argument("--gpt2_steps", type=int, default=120)
    parser.add_argument("--tinygpt_flags", default="", help="more train.py flags for the char and val runs, one string")
    parser.add_argument("--skip_steps", type=int, default=0, help="default: a fifth of the steps, for compiling")
    args = parser.parse_args()
    flags = args.tinygpt_flags.split()
    if not torch.cuda.is_available():
        raise SystemExit("bench_train_gpu.py needs a CUDA GPU")
    if args.nanogpt and not (args.nanogpt / "model.py").is_file():
        raise SystemExit(f"--nanogpt {args.nanogpt}: no model.py there; pass a karpathy/nanoGPT checkout")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)

    if args.only in (None, "char"):
        skip = args.skip_steps or args.char_steps // 5
        ours = tinygpt_run("shakespeare-char", ["--text_file", str(args.text_file), *flags], args.char_steps, skip)
        theirs = nanogpt_char(args.nanogpt, args.text_file, args.char_steps, skip) if args.nanogpt else None
        table(
            f"10.65M char model, batch 64 x 256, {args.char_steps} steps (steady state from step {skip})",
            [("train.py --preset shakespeare-char", ours), ("nanoGPT train.py, --compile=True", theirs)],
            mfu=False,
        )
    if args.only in (None, "val"):
        time_to_val(args.nanogpt, args.text_file, args.val_target, flags)
    if args.only in (None, "124m"):
        skip = args.skip_steps or args.gpt2_steps // 5
        gpt2_flags = ["--text_file", str(args.text_file), "--tokenizer", str(args.gpt2_tokenizer)]
        ours = tinygpt_run("gpt2-small", gpt2_flags, args.gpt2_steps, skip)
        plain = None  # the same run with the plain loss, where Liger's fused one is the default
        if liger_installed():
            plain = tinygpt_run("gpt2-small", [*gpt2_flags, "--use_liger_kernel", "false"], args.gpt2_steps, skip)
        rows = PRESETS["gpt2-small"].training["per_device_train_batch_size"]  # no accumulation in the preset
        # nanoGPT in the preset's micro-batches, and in its own config's (12 x 1024, 3 a step: about as many tokens)
        shapes = [(rows, 1), (12, 3)]
        theirs = [
            (
                f"nanoGPT's GPT, plain loop, {m} x {n} x 1024",
                nanogpt_plain_loop(args.nanogpt, 50304, args.gpt2_steps, skip, n, m),
            )
            for n, m in (shapes if args.nanogpt else [])
        ]
        table(
            f"124M, {args.gpt2_steps} steps (steady state from step {skip}); "
            f"MFU = 6 x parameters x tok/s / {PEAK_FLOPS:.3g}",
            [
                (f"train.py --preset gpt2-small, 1 x {rows} x 1024", ours),
                *theirs,
                ("the same, --use_liger_kernel false (plain loss)", plain),
            ],
            mfu=True,
        )


if __name__ == "__main__":
    main()
