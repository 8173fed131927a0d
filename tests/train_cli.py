"""Helpers for the train.py tests: run the real CLI in a subprocess, tiny-model flags, a small text corpus."""

import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRAIN_PY = REPO / "train.py"

# A model and schedule small enough that a few steps take well under a second on one CPU core.
TINY_SHAPE = ["--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "32"]
TINY_SCHEDULE = [
    *("--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "16", "--eval_windows", "16"),
    *("--logging_steps", "1", "--eval_steps", "2", "--save_steps", "2", "--warmup_steps", "0"),
]
TINY = TINY_SHAPE + TINY_SCHEDULE

WORDS = "the king and queen of a small town walk to the river at night with bread wine and song".split()


def write_corpus(path: Path, words: int = 3000, seed: int = 0) -> Path:
    """A deterministic text of short lines over a small vocabulary (about 30 distinct characters)."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))) for _ in range(words // 7)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def train_env() -> dict:
    """The test process's environment, strictly offline, one thread per process (2 shared cores)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_train(
    *args: str, cwd: Path, timeout: float = 300, torchrun_processes: int = 0, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python train.py ARGS` (or `torchrun --nproc_per_node=N train.py ARGS`) in cwd; output captured as text.
    `env` overrides train_env()'s variables (e.g. HF_HUB_OFFLINE="0" and HF_ENDPOINT for a fake hub)."""
    launcher = [sys.executable]
    if torchrun_processes:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun_processes}"]
    return subprocess.run(
        [*launcher, str(TRAIN_PY), *map(str, args)],
        cwd=cwd,
        env={**train_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def describe(result: subprocess.CompletedProcess) -> str:
    """The tail of a run's output, for assertion messages."""
    return f"exit code {result.returncode}\n--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"


def wait_until(condition, timeout: float = 120, what: str = "the condition") -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def finish(runs, run) -> None:
    """Wait for a Train-tab run (tinygpt.app.train_runs) to end."""
    for _ in runs.watch(run):
        pass
