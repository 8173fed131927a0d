"""LoRA against a full fine-tune on a CPU: the same base, the same data, the same training time.

    python benchmarks/bench_lora.py                      # base pretraining, then both fine-tunes
    python benchmarks/bench_lora.py --seconds 120 --lora_r 16

1. The base: `train.py --preset shakespeare-cpu` reshaped to 3 x 4 x 192 (1.4M parameters), pretrained on WikiText-2
   (../shared/data/wikitext/wiki.test.raw, characters) for --base_steps steps.
2. Each fine-tune on Tiny Shakespeare from that base (`--init_from base`), once with every weight trained and once
   with `--lora_r R`: a short calibration run measures its step time, then the timed run takes as many steps as fit
   in --seconds of training, so both end after the same training time (each with its whole LR schedule). Batches of
   16 x 64 tokens, 256 validation windows.

Figures, from the timed run's own metrics.json and checkpoint: step time (the calibration run's, which evaluates
only after training; the timed run's training time includes its two evaluations), peak
process RSS, the checkpoint folder's size (weights or adapter, optimizer state, schedule, tokenizer), the saved
weights' size, and the validation loss (and bits per byte: the text is ASCII and the tokenizer is characters, so one
token is one byte) at the end; the base's own loss on the same validation windows comes from an evaluation before the
first step. Runs use 2 threads (OMP_NUM_THREADS=2), pinned to 2 cores where `taskset` exists; the load average is
printed, as the host is shared.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("TINYGPT_SHARED_DATA", REPO.parent / "shared" / "data"))  # the env var: another checkout
WIKITEXT, SHAKESPEARE = DATA / "wikitext" / "wiki.test.raw", DATA / "tinyshakespeare.txt"
SHAPE = ["--n_layer", "3", "--n_head", "4", "--n_embd", "192", "--block_size", "64"]
# Every run: the preset's schedule with a smaller batch and fewer validation windows (16K tokens), for a shared CPU.
COMMON = ["--per_device_train_batch_size", "16", "--eval_windows", "256"]
LEARNING_RATES = {"full": 1e-3, "lora": 4e-3}  # a fine-tune's rate; LoRA's usual ~4x higher


def train(output: Path, *args) -> tuple[dict, float]:
    """train.py with `args` into `output`: (its metrics.json, the wall seconds of the whole process)."""
    command = [sys.executable, str(REPO / "train.py"), "--preset", "shakespeare-cpu", *COMMON, *map(str, args)]
    command += ["--output_dir", str(output), "--disable_tqdm", "true"]
    if shutil.which("taskset"):
        command = ["taskset", "-c", "0,1", *command]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"train.py failed ({' '.join(command)}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return json.loads((output / "metrics.json").read_text()), wall


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def fine_tune(work: Path, base: Path, mode: str, seconds: float, lora_r: int) -> dict:
    flags = ["--init_from", base, "--text_file", SHAKESPEARE, "--learning_rate", LEARNING_RATES[mode]]
    flags += ["--warmup_steps", "20"]
    if mode == "lora":
        flags += ["--lora_r", lora_r]
    calibration, _ = train(work / f"{mode}-calibration", *flags, "--max_steps", 40, "--eval_steps", 1000)
    step_seconds = calibration["train_seconds"] / calibration["global_step"]
    steps = max(40, int(seconds / step_seconds))
    metrics, wall = train(
        work / mode, *flags, "--max_steps", steps, "--eval_steps", steps, "--save_steps", steps,
        "--eval_on_start", "true",
    )  # fmt: skip
    output = work / mode
    history = json.loads((output / f"checkpoint-{steps}" / "trainer_state.json").read_text())["log_history"]
    weights = output / ("adapter_model.safetensors" if mode == "lora" else "model.safetensors")
    return {
        "mode": mode,
        "steps": steps,
        "learning_rate": LEARNING_RATES[mode],
        "step_ms": 1000 * step_seconds,
        "train_seconds": metrics["train_seconds"],
        "wall_seconds": wall,
        "peak_rss_mib": metrics["peak_memory_bytes"] / 2**20,
        "checkpoint_mib": folder_bytes(output / f"checkpoint-{steps}") / 2**20,
        "weights_mib": weights.stat().st_size / 2**20,
        "trainable_parameters": metrics.get("trainable_parameters") or metrics["parameters"],
        "val_loss": metrics["val_loss"],
        "val_bpb": metrics["val_loss"] / math.log(2),
        "base_val_loss": next(entry["eval_loss"] for entry in history if "eval_loss" in entry),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=90, help="training seconds each fine-tune gets")
    parser.add_argument("--base_steps", type=int, default=400, help="pretraining steps of the base on WikiText-2")
    parser.add_argument("--lora_r", type=int, default=8)
    parser.add_argument("--keep", default=None, help="keep the runs in this folder (default: a temporary one)")
    args = parser.parse_args()
    for path in (WIKITEXT, SHAKESPEARE):
        if not path.is_file():
            sys.exit(f"needs {path} (the project's shared data folder beside the checkout)")
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-lora-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        base = work / "base"
        base_metrics, base_wall = train(
            base, "--text_file", WIKITEXT, *SHAPE, "--max_steps", args.base_steps, "--eval_steps", args.base_steps,
            "--save_steps", args.base_steps,
        )  # fmt: skip
        print(
            f"base: {base_metrics['parameters']:,} parameters, {args.base_steps} steps on WikiText-2 in "
            f"{base_wall:.0f} s, its val loss there {base_metrics['val_loss']:.4f}",
            flush=True,
        )
        rows = [fine_tune(work, base, mode, args.seconds, args.lora_r) for mode in ("full", "lora")]
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nload average {os.getloadavg()[0]:.1f}; Tiny Shakespeare from the base, {args.seconds:.0f} s of training each"
    )
    print(f"| | full fine-tune | LoRA r={args.lora_r} |")
    print("|---|---|---|")
    full, lora = rows
    for label, key, fmt in [
        ("trained parameters", "trainable_parameters", "{:,}"),
        ("learning rate", "learning_rate", "{:g}"),
        ("steps in the time", "steps", "{:,}"),
        ("step time", "step_ms", "{:.1f} ms"),
        ("training time (2 evaluations included)", "train_seconds", "{:.1f} s"),
        ("peak RSS (whole process)", "peak_rss_mib", "{:.0f} MiB"),
        ("checkpoint (weights + optimizer + rest)", "checkpoint_mib", "{:.2f} MiB"),
        ("saved weights", "weights_mib", "{:.2f} MiB"),
        ("val loss before (the base)", "base_val_loss", "{:.4f}"),
        ("val loss after", "val_loss", "{:.4f}"),
        ("val bits per byte after", "val_bpb", "{:.3f}"),
    ]:
        print(f"| {label} | {fmt.format(full[key])} | {fmt.format(lora[key])} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
