"""Data pipeline benchmark: a large text file trains with bounded RAM, and a second run reuses the token cache.

    python benchmarks/bench_data.py                       # a ~300 MB file, char tokenizer, 5 steps, twice
    python benchmarks/bench_data.py --mb 50 --tokenizer ../shared/data/gpt2

Makes a text file of --mb megabytes (Tiny Shakespeare repeated, each copy's lines numbered so the text is not one
block over and over), then runs `train.py --text_file FILE` twice with a tiny model for a few steps, each time in
a fresh process and both with one fresh HF_HOME: the first run writes the chunks and the tokens into datasets'
cache, the second reads them. For each run it prints the wall time of the whole command and the peak RSS of its
process tree (train.py and datasets' map workers: their proportional set sizes summed, sampled every 50 ms from
/proc), with the largest single process's peak RSS from wait4's rusage.

Targets (issue I): peak RSS <= 1.5 GiB for each run, and the second run's wall time at most a third of the first's.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
TINY_RUN = [
    *("--n_layer", "2", "--n_head", "2", "--n_embd", "64", "--block_size", "64"),
    *("--per_device_train_batch_size", "8", "--eval_windows", "32", "--eval_steps", "5", "--save_steps", "1000"),
    *("--logging_steps", "1", "--warmup_steps", "0", "--disable_tqdm", "true", "--use_cpu"),
]


def make_text(path: Path, megabytes: int) -> None:
    """~megabytes of text, written a copy at a time (never held whole)."""
    lines = SHAKESPEARE.read_text(encoding="utf-8").splitlines()
    written, copy = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < megabytes * 1_000_000:
            block = "".join(f"{copy}.{n} {line}\n" for n, line in enumerate(lines))
            written += f.write(block)
            copy += 1


def tree_pss(root: int) -> int:
    """Bytes resident in `root` and every process below it, from /proc: the proportional set size, which splits a
    page shared by several processes (forked map workers share most of train.py's) among them instead of counting
    it once for each, as summing their RSS would."""
    children = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry.name))
            except (OSError, IndexError):
                continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            total += int(next(line.split()[1] for line in rollup.splitlines() if line.startswith("Pss:"))) * 1024
        except (OSError, StopIteration):
            continue
    return total


def timed_run(command: list[str], env: dict, log: Path) -> dict:
    peak, done = [0], threading.Event()
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], tree_pss(process.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage (its waited-for workers included)
        done.set()
        sampler.join()
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"train.py failed (exit {os.waitstatus_to_exitcode(status)}); see {log}")
    return {"wall": wall, "tree_peak": peak[0], "largest_peak": usage.ru_maxrss * 1024}  # KiB on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=300, help="size of the text file in MB")
    parser.add_argument("--tokenizer", default="char", help="train.py --tokenizer (char is built from the text)")
    parser.add_argument("--max_steps", type=int, default=5)
    parser.add_argument("--workdir", default=None, help="default: a new temporary folder (removed by you)")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-data-"))
    workdir.mkdir(parents=True, exist_ok=True)
    text = workdir / f"corpus-{args.mb}mb.txt"
    if not text.exists():
        make_text(text, args.mb)
    env = {**os.environ, "HF_HOME": str(workdir / "hf-home"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    results = []
    for n in (1, 2):
        command = [sys.executable, "train.py", *TINY_RUN, "--max_steps", str(args.max_steps), "--text_file", str(text),
                   "--tokenizer", args.tokenizer, "--output_dir", str(workdir / f"run-{n}")]  # fmt: skip
        print("+", " ".join(command), flush=True)
        results.append(timed_run(command, env, workdir / f"run-{n}.log"))
        print(
            f"  run {n}: {results[-1]['wall']:.1f} s wall, peak {results[-1]['tree_peak'] / 2**30:.2f} GiB",
            flush=True,
        )
    first, second = results
    cores = len(os.sched_getaffinity(0))
    print(f"\n{text.stat().st_size / 1e6:,.0f} MB of text, --tokenizer {args.tokenizer}, {args.max_steps} steps, "
          f"{cores} cores, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'':8} {'wall (s)':>9} {'peak PSS, tree (GiB)':>21} {'largest RSS (GiB)':>22}")
    for name, r in (("first", first), ("second", second)):
        print(f"{name:8} {r['wall']:9.1f} {r['tree_peak'] / 2**30:21.2f} {r['largest_peak'] / 2**30:22.2f}")
    ratio = second["wall"] / first["wall"]
    rss_ok = max(r[key] for r in results for key in ("tree_peak", "largest_peak")) <= 1.5 * 2**30
    print(f"second/first wall: {ratio:.2f} (target <= 0.33: {'met' if ratio <= 1 / 3 else 'NOT met'}); "
          f"peak memory <= 1.5 GiB: {'met' if rss_ok else 'NOT met'}")  # fmt: skip
    print(f"logs and the cache: {workdir}")


if __name__ == "__main__":
    main()
