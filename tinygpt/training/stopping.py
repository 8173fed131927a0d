"""Stopping a run on request without a signal: `TINYGPT_STOP_FILE=PATH python train.py ...` stops cleanly once
PATH exists, as Ctrl-C does (a checkpoint at the step it stopped at, no final model, exit code 130).

Why a file: a program started in the background by a shell (`python app.py &`) ignores SIGINT, and its children
inherit that, so a parent cannot count on SIGINT reaching train.py. The Trainer reads the file after each
optimizer step (one `stat`), saves a checkpoint of that step and leaves its loop; train() then raises
`TrainingStopped`, which train.py's `main` reports in one line. Under torchrun every process must leave at the
same step, so the processes agree on what they saw (a one-number all-reduce a step) before acting on it.
"""

import os
from pathlib import Path

import torch
from transformers import TrainerCallback

STOP_FILE_ENV = "TINYGPT_STOP_FILE"


class TrainingStopped(Exception):
    """The run stopped as asked, after saving a checkpoint of `step`."""

    def __init__(self, step: int):
        super().__init__(f"stopped at step {step} as asked")
        self.step = step


class StopFileCallback(TrainerCallback):
    """Save a checkpoint and stop training at the first step end after `path` appears."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:  # the last step: the run finishes and saves its model anyway
            return control
        if self.requested(args):
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control

    def requested(self, args) -> bool:
        seen = self.path.exists()
        if torch.distributed.is_available() and torch.distributed.is_initialized() and args.world_size > 1:
            flag = torch.tensor([int(seen)], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            seen = bool(flag.item())
        return seen


def stop_file_callback() -> StopFileCallback | None:
    """The callback for the stop file named in $TINYGPT_STOP_FILE, or None when it is not set."""
    path = os.environ.get(STOP_FILE_ENV)
    return StopFileCallback(path) if path else None
