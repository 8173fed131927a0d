"""`tinygpt eval` on a CPU: bits per byte of Tiny Shakespeare's validation split, and how long scoring it takes.

    python benchmarks/bench_eval.py                          # train shakespeare-cpu first (about a minute), then score
    python benchmarks/bench_eval.py --model runs/shakespeare-cpu --batch_size 1 8 32   # trained there if absent
    python benchmarks/bench_eval.py --lm_eval                # lm-eval's own figure and time on the same text too

The validation split is train.py's: the last 10% of the text's tokens (nanoGPT's split; with the char tokenizer a
token is a character). It is written to a file and scored by the real command, `tinygpt eval MODEL --text_file
val.txt --output R.json`, in a subprocess with --threads threads (default 2, pinned to 2 cores where `taskset`
exists), --repeat times. The figures printed: bits per byte, tokens, bytes, nats per token, the scoring time the
command reports (forward passes only) and the command's whole wall time (start-up, loading, tokenizing included),
the best of the repeats and their median. On a host shared with other work, 2 threads are slowed far more than 1
(each step waits for the thread that lost its core): compare figures taken with the same --threads. With --lm_eval, lm-evaluation-harness
scores the same text in a subprocess (`simple_evaluate` with HFLM on the same model, a local
loglikelihood_rolling task), timed around `simple_evaluate` alone.
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
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
TASK_YAML = """\
task: shakespeare_val
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
"""
LM_EVAL_SCRIPT = """
import json, sys, time
import lm_eval
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from tinygpt.hub.loader import load
model, tokenizer = load(sys.argv[1])
manager = TaskManager(include_path=sys.argv[2])
started = time.perf_counter()
out = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=int(sys.argv[3])),
                              tasks=["shakespeare_val"], task_manager=manager, bootstrap_iters=0)
print(json.dumps({"bits_per_byte": out["results"]["shakespeare_val"]["bits_per_byte,none"],
                  "seconds": time.perf_counter() - started}))
"""


def pinned(command: list[str]) -> list[str]:
    return ["taskset", "-c", "0,1", *command] if shutil.which("taskset") else command


def train(text: Path, output_dir: Path) -> None:
    command = [sys.executable, str(REPO / "train.py"), "--preset", "shakespeare-cpu", "--text_file", str(text)]
    command += ["--output_dir", str(output_dir), "--disable_tqdm", "true"]
    started = time.perf_counter()
    result = subprocess.run(pinned(command), cwd=REPO, env=ENV, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"train.py failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    metrics = json.loads((output_dir / "metrics.json").read_text())
    print(
        f"trained {output_dir} in {time.perf_counter() - started:.1f} s: val loss {metrics['val_loss']:.4f}, "
        f"eval_bits_per_byte {metrics['eval_bits_per_byte']:.4f} (on its random validation windows)"
    )


def validation_text(model_dir: Path, text: Path) -> str:
    """train.py's validation split of `text` for this model's tokenizer: its last 10% of tokens, as text."""
    sys.path.insert(0, str(REPO))
    from tinygpt.data.token_stream import split_point
    from tinygpt.hub.loader import load

    _, tokenizer = load(model_dir)
    ids = tokenizer(text.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[split_point(len(ids)) :], clean_up_tokenization_spaces=False)


def score(model_dir: Path, val: Path, batch_size: int, workdir: Path, repeat: int) -> dict:
    """The report of `tinygpt eval`, its scoring seconds and wall seconds the best and the median of `repeat` runs."""
    runs = [score_once(model_dir, val, batch_size, workdir) for _ in range(repeat)]
    seconds, walls = sorted(r["seconds"] for r in runs), sorted(r["wall"] for r in runs)
    return {**runs[0], "seconds": seconds[0], "median": seconds[len(seconds) // 2], "wall": walls[0]}


def score_once(model_dir: Path, val: Path, batch_size: int, workdir: Path) -> dict:
    output = workdir / f"report-{batch_size}.json"
    command = [sys.executable, "-m", "tinygpt", "eval", str(model_dir), "--text_file", str(val)]
    command += ["--batch_size", str(batch_size), "--output", str(output)]
    started = time.perf_counter()
    result = subprocess.run(pinned(command), cwd=REPO, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"tinygpt eval failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return {**json.loads(output.read_text()), "wall": wall}


def lm_eval_score(model_dir: Path, val: Path, batch_size: int, workdir: Path) -> dict:
    tasks = workdir / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "val.jsonl").write_text(json.dumps({"text": val.read_text(encoding="utf-8")}) + "\n", encoding="utf-8")
    (tasks / "shakespeare_val.yaml").write_text(TASK_YAML.format(data=tasks / "val.jsonl"), encoding="utf-8")
    command = [sys.executable, "-c", LM_EVAL_SCRIPT, str(model_dir), str(tasks), str(batch_size)]
    result = subprocess.run(pinned(command), cwd=REPO, env=ENV, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"lm-eval failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a trained model folder, trained there if absent (default: a temporary one)",
    )
    parser.add_argument("--text", type=Path, default=SHAKESPEARE, help="Tiny Shakespeare (default ../shared/data)")
    parser.add_argument("--batch_size", type=int, nargs="+", default=[8], help="windows a forward (default 8)")
    parser.add_argument("--lm_eval", action="store_true", help="also score the text with lm-eval, for comparison")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every process (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (default 3)")
    args = parser.parse_args()
    ENV["OMP_NUM_THREADS"] = str(args.threads)
    if not args.text.is_file():
        sys.exit(f"{args.text}: no such file; pass --text PATH to Tiny Shakespeare")
    workdir = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    try:
        model_dir = args.model or workdir / "shakespeare-cpu"
        if not (model_dir / "config.json").is_file():
            train(args.text, model_dir)
        val = workdir / "val.txt"
        val.write_text(validation_text(model_dir, args.text), encoding="utf-8")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"validation split: {val.stat().st_size:,} bytes; {args.threads} threads; load average {load:.2f}")
        for batch_size in args.batch_size:
            r = score(model_dir, val, batch_size, workdir, args.repeat)
            print(
                f"tinygpt eval --batch_size {batch_size}: bits per byte {r['bits_per_byte']:.4f} ({r['tokens']:,} "
                f"tokens, {r['bytes']:,} bytes, {r['nats_per_token']:.4f} nats/token, {r['scoring']} windows of "
                f"{r['window']}), scoring {r['seconds']:.2f} s ({r['tokens'] / r['seconds']:,.0f} tok/s; median "
                f"{r['median']:.2f} s), command {r['wall']:.1f} s wall"
            )
            if args.lm_eval:
                theirs = min(
                    (lm_eval_score(model_dir, val, batch_size, workdir) for _ in range(args.repeat)),
                    key=lambda figures: figures["seconds"],
                )
                print(
                    f"lm-eval --batch_size {batch_size}: bits per byte {theirs['bits_per_byte']:.4f} "
                    f"({100 * (r['bits_per_byte'] / theirs['bits_per_byte'] - 1):+.4f}% ours against it), "
                    f"simple_evaluate {theirs['seconds']:.2f} s (best of {args.repeat})"
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
