"""LoRA against a full fine-tune on a CPU: the same base, the same data, the same training time.

    python benchmarks/bench_lora.py                      # base pretraining, then both fine-tunes
    python benchmarks/bench_lora.py --seconds 120 --lora_r 16 --base runs/bench-base

1. The base: `train.py --preset shakespeare-cpu` reshaped to 3 x 4 x 192 (1.4M parameters), pretrained on WikiText-2
   (../shared/data/wikitext/wiki.test.raw, characters) for --base_steps steps (or --base: a folder from before).
2. Each fine-tune on Tiny Shakespeare from that base (`--init_from BASE`), once with every weight trained and once
   with `--lora_r R`, each stopped by a callback after --seconds of wall clock from its first step (checkpoints,
   written every 25 steps, counted; evaluations not), at a constant rate after 20 warm-up steps, so both stop at the
   same time whatever their speed; batches of 16 x 64 tokens, 256 validation windows. The run is train.py's own
   `main` in a process of its own, with that callback added to its Trainer.

Figures: the median step time (each step timed by the callback; the median, as other work on the host slows some),
peak process RSS and validation loss (and bits per byte: the text is ASCII and the tokenizer is characters, so a
token is a byte) from the run's metrics.json, the newest checkpoint's size (weights or adapter, optimizer state,
schedule, tokenizer) and the saved weights' size. The base's own loss on the same validation windows comes from an
evaluation before the first step. Runs use 2 threads (OMP_NUM_THREADS=2), pinned to 2 cores where `taskset` exists;
the host is shared, so the load average is printed.
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
# Every run: the preset's optimizer with a smaller batch and fewer validation windows (16K tokens), for a shared CPU.
COMMON = ["--preset", "shakespeare-cpu", "--per_device_train_batch_size", "16", "--eval_windows", "256"]
LEARNING_RATES = {"full": 1e-3, "lora": 4e-3}  # a fine-tune's rate; LoRA's usual ~4x higher

# train.py's main with a callback that stops training `seconds` after the first step and times every step.
TIMED_MAIN = """
import json, sys, time
from transformers import TrainerCallback
import tinygpt.training.trainer as trainer

seconds, stats_path, argv = float(sys.argv[1]), sys.argv[2], sys.argv[3:]

class StopAfter(TrainerCallback):
    def __init__(self):
        self.first = None
        self.steps = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.began = time.perf_counter()
        self.first = self.first or self.began

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.steps.append(now - self.began)
        if now - self.first >= seconds:
            control.should_training_stop = True
            control.should_save = True

stop = StopAfter()
build = trainer.build_trainer

def build_with_stop(*args, **kwargs):
    built = build(*args, **kwargs)
    built.add_callback(stop)
    return built

trainer.build_trainer = build_with_stop
code = trainer.main(argv)
json.dump({"step_seconds": stop.steps}, open(stats_path, "w"))
sys.exit(code)
"""


def run(command: list[str], output: Path) -> dict:
    if shutil.which("taskset"):
        command = ["taskset", "-c", "0,1", *command]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"the run failed ({' '.join(command)}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return json.loads((output / "metrics.json").read_text())


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def fine_tune(work: Path, base: Path, mode: str, seconds: float, lora_r: int) -> dict:
    output, stats = work / mode, work / f"{mode}-steps.json"
    flags = [*COMMON, "--init_from", base, "--text_file", SHAKESPEARE, "--learning_rate", LEARNING_RATES[mode]]
    flags += ["--lr_scheduler_type", "constant_with_warmup", "--warmup_steps", 20, "--max_steps", 100_000]
    flags += ["--eval_on_start", "true", "--eval_steps", 100_000, "--save_steps", 25, "--logging_steps", 25]
    flags += ["--output_dir", output, "--disable_tqdm", "true"]
    if mode == "lora":
        flags += ["--lora_r", lora_r]
    metrics = run([sys.executable, "-c", TIMED_MAIN, str(seconds), str(stats), *map(str, flags)], output)
    step_seconds = json.loads(stats.read_text())["step_seconds"]
    newest = max(output.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    history = json.loads((newest / "trainer_state.json").read_text())["log_history"]
    weights = output / ("adapter_model.safetensors" if mode == "lora" else "model.safetensors")
    return {
        "mode": mode,
        "steps": metrics["global_step"],
        "learning_rate": LEARNING_RATES[mode],
        "step_ms": 1000 * sorted(step_seconds)[len(step_seconds) // 2],
        "stepping_seconds": sum(step_seconds),
        "peak_rss_mib": metrics["peak_memory_bytes"] / 2**20,
        "checkpoint_mib": folder_bytes(newest) / 2**20,
        "weights_mib": weights.stat().st_size / 2**20,
        "trainable_parameters": metrics.get("trainable_parameters") or metrics["parameters"],
        "val_loss": metrics["val_loss"],
        "val_bpb": metrics["val_loss"] / math.log(2),
        "base_val_loss": next(entry["eval_loss"] for entry in history if "eval_loss" in entry),
    }


def pretrain_base(base: Path, steps: int) -> None:
    started = time.perf_counter()
    flags = [*COMMON, *SHAPE, "--text_file", WIKITEXT, "--max_steps", steps, "--eval_steps", steps]
    flags += ["--save_steps", steps, "--output_dir", base, "--disable_tqdm", "true"]
    metrics = run([sys.executable, str(REPO / "train.py"), *map(str, flags)], base)
    print(
        f"base: {metrics['parameters']:,} parameters, {steps} steps on WikiText-2 in "
        f"{time.perf_counter() - started:.0f} s, its val loss there {metrics['val_loss']:.4f}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=90, help="seconds of training steps each fine-tune gets")
    parser.add_argument("--base_steps", type=int, default=400, help="pretraining steps of the base on WikiText-2")
    parser.add_argument("--base", default=None, help="a base from an earlier run of this script (skips pretraining)")
    parser.add_argument("--lora_r", type=int, default=8)
    parser.add_argument("--keep", default=None, help="keep the runs in this folder (default: a temporary one)")
    args = parser.parse_args()
    for path in (WIKITEXT, SHAKESPEARE):
        if not path.is_file():
            sys.exit(f"needs {path} (the project's shared data folder beside the checkout)")
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-lora-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        base = Path(args.base) if args.base else work / "base"
        if not args.base:
            pretrain_base(base, args.base_steps)
        rows = [fine_tune(work, base.resolve(), mode, args.seconds, args.lora_r) for mode in ("full", "lora")]
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"\nload average {load:.1f}; Tiny Shakespeare from the base, {args.seconds:.0f} s of training steps each")
    print(f"| | full fine-tune | LoRA r={args.lora_r} |")
    print("|---|---|---|")
    full, lora = rows
    for label, key, fmt in [
        ("trained parameters", "trainable_parameters", "{:,}"),
        ("learning rate (constant after 20 warm-up steps)", "learning_rate", "{:g}"),
        ("steps in the time", "steps", "{:,}"),
        ("median step time", "step_ms", "{:.0f} ms"),
        ("peak RSS (whole process)", "peak_rss_mib", "{:.0f} MiB"),
        ("checkpoint (weights or adapter + optimizer + rest)", "checkpoint_mib", "{:.2f} MiB"),
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
