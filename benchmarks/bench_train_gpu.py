"""GPU training benchmark: tinygpt against nanoGPT, both measured in this run on this GPU; no stored figures.

    python benchmarks/bench_train_gpu.py --nanogpt ../nanoGPT       # both comparisons, with ratios
    python benchmarks/bench_train_gpu.py                             # tinygpt's figures only, no ratio
    python benchmarks/bench_train_gpu.py --nanogpt ../nanoGPT --only char

--nanogpt is a checkout of karpathy/nanoGPT that the caller fetched (its code is run, never copied here).

1. char, 10.65M: `train.py --preset shakespeare-char` against nanoGPT's own
   `train.py config/train_shakespeare_char.py --compile=True`, the same number of steps of 64 x 256 tokens on Tiny
   Shakespeare. nanoGPT's data files (train.bin, val.bin, meta.pkl: uint16 ids of the characters) are written into
   a temporary folder from --text_file, since its prepare.py downloads.
2. 124M: `train.py --preset gpt2-small` (batch 8 x 1024, 4 accumulation steps) against nanoGPT's GPT model
   (model.py, imported from --nanogpt) in a plain loop: torch.compile, bf16 autocast, fused AdamW, the same batch.
   MFU = 6 x parameters x tokens/s / 989e12 (H100/H200 dense bf16 peak).

Tokens/s is the steady state: both train.py runs print their loss every 10 steps, which syncs the GPU; each line
is stamped as it arrives, and the rate is the tokens between the line at --skip_steps and the last one over the
time between them (compilation and start-up left out, equally for both).
"""

import argparse
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
SHARED = next((p for p in (REPO / "shared", REPO.parent / "shared") if p.is_dir()), REPO.parent / "shared")
PEAK_FLOPS = 989e12  # H100/H200 SXM dense bf16


def steady_rate(command: list[str], cwd: Path, pattern: str, tokens_per_step: int, skip_steps: int) -> dict:
    """Run `command`, stamp every output line matching `pattern` (group 1: the step, or none: every 10th step),
    return the steady tok/s and the parameters the run printed (tinygpt: "training 124.48M parameters"; nanoGPT:
    "number of parameters: 10.65M", which leaves out the position embeddings)."""
    print("+", " ".join(command), flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stamps, tail, parameters = [], [], None  # stamps: (step, seconds since start)
    for line in process.stdout:
        tail = (tail + [line])[-30:]
        match = re.search(pattern, line)
        if match:
            step = int(match.group(1)) if match.groups() else 10 * (len(stamps) + 1)
            stamps.append((step, time.perf_counter() - start))
        counted = re.match(r"(?:training|number of parameters:) ([0-9.]+)M", line)  # tinygpt's or nanoGPT's line
        if counted:
            parameters = float(counted.group(1)) * 1e6
    if process.wait() != 0:
        raise SystemExit(f"failed with exit code {process.returncode}:\n{''.join(tail)}")
    steady = [(step, t) for step, t in stamps if step >= skip_steps]
    if len(steady) < 2:
        raise SystemExit(f"too few logged steps after step {skip_steps} to measure:\n{''.join(tail)}")
    (s0, t0), (s1, t1) = steady[0], steady[-1]
    return {"tok/s": (s1 - s0) * tokens_per_step / (t1 - t0), "parameters": parameters}


def tinygpt_run(preset: str, flags: list[str], steps: int, tokens_per_step: int, skip_steps: int) -> dict:
    output = tempfile.mkdtemp(prefix=f"bench-{preset}-")
    command = [sys.executable, "train.py", "--preset", preset, *flags, "--max_steps", str(steps), "--output_dir",
               output, "--logging_steps", "10", "--eval_steps", "100000", "--save_steps", "100000",
               "--disable_tqdm", "true"]  # fmt: skip
    return steady_rate(command, REPO, r"^\{'loss'", tokens_per_step, skip_steps)  # a line every 10 steps


def nanogpt_char(nanogpt: Path, text_file: Path, steps: int, skip_steps: int) -> dict:
    """nanoGPT's own train.py on its shakespeare_char config, data written from text_file in its format."""
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
    command = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--compile=True",
               f"--dataset={data}", f"--out_dir={data.parent / 'out'}", f"--max_iters={steps}",
               "--eval_interval=1000000", "--eval_iters=20", "--log_interval=10"]  # fmt: skip
    return steady_rate(command, nanogpt, r"^iter (\d+): loss", 64 * 256, skip_steps)


def nanogpt_plain_loop(nanogpt: Path, vocab_size: int, steps: int, skip_steps: int) -> dict:
    """nanoGPT's GPT (124M, GPT-2 small's shape) in a plain compiled bf16 loop, fused AdamW, batch 8 x 1024 x 4."""
    sys.path.insert(0, str(nanogpt))
    from model import GPT, GPTConfig  # nanoGPT's model.py, from the caller's checkout

    torch.manual_seed(0)
    config = GPTConfig(
        block_size=1024, vocab_size=vocab_size, n_layer=12, n_head=12, n_embd=768, dropout=0.0, bias=True
    )
    model = GPT(config).cuda().train()
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), "cuda")  # fused AdamW on CUDA
    compiled = torch.compile(model)
    data = torch.randint(0, 50257, (10_000_000,), device="cuda")
    window = torch.arange(1025, device="cuda")

    def step():
        for _ in range(4):
            rows = data[torch.randint(0, len(data) - 1025, (8,), device="cuda")[:, None] + window]  # (8, 1025)
            with torch.autocast("cuda", torch.bfloat16):
                _, loss = compiled(rows[:, :-1].contiguous(), rows[:, 1:].contiguous())  # nanoGPT .view()s them
            (loss / 4).backward()
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
    return {"tok/s": (steps - skip_steps) * 8 * 1024 * 4 / (time.perf_counter() - start), "parameters": parameters}


def table(title: str, rows: list[tuple[str, dict | None]], mfu: bool) -> None:
    print(f"\n{title}")
    print(f"{'':40} {'tok/s':>12} {'parameters':>12} {'MFU':>7}")
    for name, result in rows:
        if result is None:
            continue
        n = result["parameters"]
        share = f"{6 * n * result['tok/s'] / PEAK_FLOPS:.1%}" if mfu and n else ""
        print(f"{name:40} {result['tok/s']:12,.0f} {n or 0:12,.0f} {share:>7}")
    ours, reference = rows[0][1], rows[1][1] if len(rows) > 1 else None
    if ours and reference:
        print(f"{'ratio (tinygpt / nanoGPT), same run':40} {ours['tok/s'] / reference['tok/s']:12.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", type=Path, default=None, help="a karpathy/nanoGPT checkout; without it, no ratio")
    parser.add_argument("--only", choices=["char", "124m"], default=None)
    parser.add_argument("--text_file", type=Path, default=SHARED / "data" / "tinyshakespeare.txt")
    parser.add_argument("--gpt2_tokenizer", type=Path, default=SHARED / "data" / "gpt2", help="vocab.json + merges.txt")
    parser.add_argument("--char_steps", type=int, default=1000)
    parser.add_argument("--gpt2_steps", type=int, default=120)
    parser.add_argument("--skip_steps", type=int, default=0, help="default: a fifth of the steps, for compiling")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_train_gpu.py needs a CUDA GPU")
    if args.nanogpt and not (args.nanogpt / "model.py").is_file():
        raise SystemExit(f"--nanogpt {args.nanogpt}: no model.py there; pass a karpathy/nanoGPT checkout")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)

    if args.only in (None, "char"):
        skip = args.skip_steps or args.char_steps // 5
        ours = tinygpt_run("shakespeare-char", ["--text_file", str(args.text_file)], args.char_steps, 64 * 256, skip)
        theirs = nanogpt_char(args.nanogpt, args.text_file, args.char_steps, skip) if args.nanogpt else None
        table(
            f"10.65M char model, batch 64 x 256, {args.char_steps} steps (steady state from step {skip})",
            [("train.py --preset shakespeare-char", ours), ("nanoGPT train.py, --compile=True", theirs)],
            mfu=False,
        )
    if args.only in (None, "124m"):
        skip = args.skip_steps or args.gpt2_steps // 5
        flags = ["--text_file", str(args.text_file), "--tokenizer", str(args.gpt2_tokenizer)]
        ours = tinygpt_run("gpt2-small", flags, args.gpt2_steps, 8 * 1024 * 4, skip)
        theirs = nanogpt_plain_loop(args.nanogpt, 50304, args.gpt2_steps, skip) if args.nanogpt else None
        table(
            f"124M, batch 8 x 1024 x 4, {args.gpt2_steps} steps (steady state from step {skip}); "
            f"MFU = 6 x parameters x tok/s / {PEAK_FLOPS:.3g}",
            [("train.py --preset gpt2-small", ours), ("nanoGPT GPT, plain compiled bf16 loop", theirs)],
            mfu=True,
        )


if __name__ == "__main__":
    main()
