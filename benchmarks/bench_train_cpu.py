"""CPU training benchmark: the two runs train.py promises on 2 cores, timed end to end as a user runs them.

    python benchmarks/bench_train_cpu.py                 # both runs
    python benchmarks/bench_train_cpu.py --only shakespeare-cpu

1. `python train.py --preset shakespeare-cpu --text_file ../shared/data/tinyshakespeare.txt`
   target: validation loss <= 1.70 within 112 s wall (nanoGPT's CPU recipe reaches 1.89 in about that time).
2. `python train.py` (the built-in synthetic chat task, offline)
   target: held-out exact match >= 90% within 300 s wall.

Wall time is the whole process (interpreter start, imports, data preparation, training, evaluation, saving),
measured around the subprocess; the figures come from the run's own metrics.json. Runs use 2 threads
(OMP_NUM_THREADS=2) and, where `taskset` exists, are pinned to 2 cores. A machine shared with other work gives
slower, noisier times: the load average is printed with the results.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"

RUNS = {
    "shakespeare-cpu": {
        "args": ["--preset", "shakespeare-cpu", "--text_file", str(SHAKESPEARE)],
        "metric": "val_loss",
        "target": lambda metrics, wall: metrics["val_loss"] <= 1.70 and wall <= 112,
        "target_text": "val loss <= 1.70 in <= 112 s",
    },
    "synthetic": {
        "args": [],
        "metric": "exact_match",
        "target": lambda metrics, wall: metrics["exact_match"] >= 0.90 and wall <= 300,
        "target_text": "exact match >= 90% in <= 300 s",
    },
}


def run(name: str, output_dir: Path) -> dict:
    spec = RUNS[name]
    command = [
        sys.executable,
        str(REPO / "train.py"),
        *spec["args"],
        "--output_dir",
        str(output_dir),
        "--disable_tqdm",
        "true",
    ]
    if shutil.which("taskset"):
        command = ["taskset", "-c", "0,1", *command]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{name}: train.py failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    metrics = json.loads((output_dir / "metrics.json").read_text())
    return {"name": name, "wall": wall, "metrics": metrics, "met": spec["target"](metrics, wall)}


def report(outcome: dict) -> str:
    m, spec = outcome["metrics"], RUNS[outcome["name"]]
    figures = [
        f"wall {outcome['wall']:.1f} s (training {m['train_seconds']:.1f} s, {m['tokens_per_second']:,.0f} tok/s)"
    ]
    figures.append(f"val loss {m['val_loss']:.4f}")
    if m["exact_match"] is not None:
        figures.append(f"exact match {100 * m['exact_match']:.1f}%")
    figures.append(f"peak RSS {m['peak_memory_bytes'] / 2**20:,.0f} MiB")
    verdict = "MET" if outcome["met"] else "MISSED"
    return f"{outcome['name']:<16} {', '.join(figures)} | target {spec['target_text']}: {verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=list(RUNS), help="run one benchmark instead of both")
    parser.add_argument("--keep", type=Path, help="keep the trained models under this folder")
    args = parser.parse_args()
    if not SHAKESPEARE.is_file() and args.only != "synthetic":
        sys.exit(f"needs {SHAKESPEARE} (the project's shared data); or pass --only synthetic")
    names = [args.only] if args.only else list(RUNS)
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        for name in names:
            print(report(run(name, root / name)), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(
        f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (runs pinned to 2)"
    )


if __name__ == "__main__":
    main()
