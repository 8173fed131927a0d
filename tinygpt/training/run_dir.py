"""The output folder of a run: one run per folder, restartable, and never left half-written.

- The folder records the run's settings (run_settings.json); a different run is refused instead of mixed in.
- `--resume_from_checkpoint` (bare: the newest usable one) restores weights, optimizer, LR schedule, RNG and the
  data position. A LoRA run's checkpoint holds the adapter (adapter_model.safetensors, adapter_config.json) and its
  optimizer state instead of the model: its base comes from --init_from again. A checkpoint is usable when its files are all there and load: JSON parses, the safetensors
  header covers the file, the .pt files are whole zip archives, the tokenizer loads (`checkpoint_problem`); a
  bare resume skips the newest ones that are not, and says why.
- A write that fails (a full disk above all) becomes one line naming the folder (`write_failure`).
"""

import errno
import json
import os
import shutil
import zipfile
from pathlib import Path

from safetensors import SafetensorError, safe_open
from transformers import (
    AutoTokenizer,
)

from tinygpt.training.args import LATEST, SHAPE_FLAGS, RunArguments, TrainingSetupError

RUN_SETTINGS_FILE = "run_settings.json"  # what defines a run; compared before anything is written
CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json")
# What holds the weights: a full run's model, or a LoRA run's adapter (then the base comes from --init_from).
MODEL_FILES = ("config.json", "model.safetensors")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
CHECKPOINT_ARCHIVES = ("optimizer.pt", "scheduler.pt", "rng_state.pth")  # torch.save's zip files (the last optional)


LOW_SPACE_BYTES = 64 << 20  # torch reports a full disk without errno ("basic_ios::clear"): less free than this is one


class RunWriteError(RuntimeError):
    """A checkpoint or the final model could not be written (a full disk above all); one line, no traceback."""


# ----------------------------------------------------------------------------------------------------------
# The output folder: one run per folder, restartable


def run_settings(run: RunArguments) -> dict:
    """What defines a run: the same settings continue a run, different ones belong in another folder."""
    m, d, t = run.model, run.data, run.training
    return {
        "preset": m.preset,
        "init_from": m.init_from,
        "lora": {
            "r": m.lora_r,
            "alpha": m.lora_alpha,
            "dropout": m.lora_dropout,
            "target_modules": list(m.lora_target_modules),
        }
        if m.lora_r is not None
        else None,
        "model": {name: getattr(m, name) for name in (*SHAPE_FLAGS, "dropout")},
        "data": {
            "text_file": [os.path.abspath(path) for path in d.text_file],
            "dataset": [d.dataset_name, d.dataset_config, d.dataset_split, d.text_column] if d.dataset_name else None,
            "chat_file": os.path.abspath(d.chat_file) if d.chat_file else None,
            "val_fraction": d.val_fraction,
            "tokenizer": d.tokenizer,
            "bpe_vocab_size": d.bpe_vocab_size if d.tokenizer == "bpe" else None,
        },
        "training": {
            "max_steps": t.max_steps,
            "per_device_train_batch_size": t.per_device_train_batch_size,
            "gradient_accumulation_steps": t.gradient_accumulation_steps,
            "world_size": t.world_size,
            "learning_rate": t.learning_rate,
            "lr_scheduler_type": getattr(t.lr_scheduler_type, "value", t.lr_scheduler_type),
            "lr_scheduler_kwargs": t.lr_scheduler_kwargs,
            "warmup_steps": t.warmup_steps,
            "weight_decay": t.weight_decay,
            "adam_beta1": t.adam_beta1,
            "adam_beta2": t.adam_beta2,
            "adam_epsilon": t.adam_epsilon,
            "optim": getattr(t.optim, "value", t.optim),
            "max_grad_norm": t.max_grad_norm,
            "muon_lr": m.muon_lr,
            "seed": t.seed,
        },
    }


def settings_differences(recorded: dict, current: dict, prefix: str = "") -> list[str]:
    differences = []
    for key in sorted(set(recorded) | set(current)):
        if key not in recorded:  # a setting an older tinygpt did not record: its run may still continue
            continue
        was, now = recorded.get(key), current.get(key)
        if isinstance(was, dict) and isinstance(now, dict):
            differences += settings_differences(was, now, prefix=f"{key}.")
        elif was != now:
            differences.append(f"{prefix}{key} was {was!r}, now {now!r}")
    return differences


def check_output_dir(output_dir: Path, settings: dict) -> None:
    """Refuse a folder that holds another run, or something that is not a run at all."""
    record = output_dir / RUN_SETTINGS_FILE
    if record.is_file():
        if difference := recorded_difference(record, settings):
            raise TrainingSetupError(
                f"{output_dir} holds a different run: {difference}; pick another --output_dir, "
                f"or delete {output_dir} to start over."
            )
    elif output_dir.is_dir() and any(output_dir.iterdir()):
        raise TrainingSetupError(
            f"{output_dir} is not empty and holds no tinygpt run (no {RUN_SETTINGS_FILE}); pick another --output_dir."
        )


def check_checkpoint_run(checkpoint: Path, settings: dict) -> None:
    """Refuse to resume another folder's checkpoint with flags of another run: the checkpoint's model and data
    position would train on under settings that are not its own."""
    record = checkpoint.parent / RUN_SETTINGS_FILE
    if record.is_file() and (difference := recorded_difference(record, settings)):
        raise TrainingSetupError(
            f"{checkpoint} belongs to a different run: {difference}; resume it with that run's flags, or start a "
            f"new run from its weights with --init_from {checkpoint}."
        )


def recorded_difference(record: Path, settings: dict) -> str | None:
    """The first way `settings` differ from the run recorded in `record` (and how many more), or None."""
    try:
        recorded = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise TrainingSetupError(f"{record} is unreadable ({error}); pick another --output_dir.") from error
    differences = settings_differences(recorded, json.loads(json.dumps(settings)))
    if not differences:
        return None
    return differences[0] + (f" (and {len(differences) - 1} more)" if len(differences) > 1 else "")


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None when it can.

    The Trainer writes trainer_state.json last, so without it the run stopped while writing the folder. The other
    checks are what loading would hit, done cheaply: JSON parses, the safetensors header describes exactly the
    bytes in the file (a truncated file fails), torch.save's zip archives end with their directory (a truncated
    one has none), and the tokenizer loads.
    """
    if not (path / "trainer_state.json").is_file():
        return "incomplete, the run stopped while writing it"
    config, weights_file = ADAPTER_FILES if (path / ADAPTER_FILES[0]).is_file() else MODEL_FILES
    needed = [name for name in CHECKPOINT_FILES if name != "model.safetensors"] + [weights_file, config]
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        return f"no {', '.join(missing)}"
    for name in ("trainer_state.json", config):
        try:
            json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return f"{name} is truncated or corrupt"
    try:
        with safe_open(path / weights_file, framework="pt") as weights:
            weights.keys()
    except (OSError, SafetensorError):
        return f"{weights_file} is truncated or corrupt"
    for name in CHECKPOINT_ARCHIVES:
        if (path / name).exists():
            try:
                zipfile.ZipFile(path / name).close()
            except (OSError, zipfile.BadZipFile):
                return f"{name} is truncated or corrupt"
    try:
        AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as error:  # noqa: BLE001  (a tokenizer class raises whatever its missing file causes)
        return f"its tokenizer does not load ({' '.join(str(error).split()) or type(error).__name__})"
    return None


def checkpoint_to_resume(requested: str | None, output_dir: Path) -> tuple[str | None, str]:
    """(the checkpoint folder to resume from or None to start fresh, a line telling the user which)."""
    if requested is None:
        return None, ""
    if requested != LATEST or Path(requested).is_dir():
        problem = checkpoint_problem(Path(requested))
        if problem:
            lora = (Path(requested) / ADAPTER_FILES[0]).is_file()
            needed = [ADAPTER_FILES[1] if lora and name == MODEL_FILES[1] else name for name in CHECKPOINT_FILES]
            raise TrainingSetupError(
                f"--resume_from_checkpoint {requested} is not a complete checkpoint ({problem}; it needs "
                f"{', '.join(needed)} and the {'adapter' if lora else 'model'}'s config and tokenizer); pass another "
                "checkpoint-N folder, or the bare flag for the newest."
            )
        return requested, f"resuming from {requested}"
    steps = {p.name.removeprefix("checkpoint-"): p for p in output_dir.glob("checkpoint-*")}  # the Trainer's names
    by_step = {int(step): path for step, path in steps.items() if step.isdigit()}
    skipped = []  # newest first, until one is usable
    for step in sorted(by_step, reverse=True):
        problem = checkpoint_problem(by_step[step])
        if problem is None:
            break
        skipped.append(f"{by_step[step].name}: {problem}")
    else:
        step = None
    note = f" (skipping {'; '.join(skipped)})" if skipped else ""
    if step is None:
        return None, f"no complete checkpoint in {output_dir} yet: starting from step 0{note}"
    return str(by_step[step]), f"resuming from {by_step[step]}{note}"


def checkpoint_step(checkpoint: str) -> int:
    return json.loads(Path(checkpoint, "trainer_state.json").read_text(encoding="utf-8"))["global_step"]


def final_model_step(output_dir: Path) -> int | None:
    """The step of the final model saved in output_dir (config.json is moved in last), or None."""
    try:
        step = json.loads((output_dir / "metrics.json").read_text(encoding="utf-8"))["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    saved = any(all((output_dir / name).is_file() for name in files) for files in (MODEL_FILES, ADAPTER_FILES))
    return step if saved else None


# ----------------------------------------------------------------------------------------------------------
# Training and what it leaves behind


def free_bytes(path: Path) -> int | None:
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    try:
        return shutil.disk_usage(existing).free
    except OSError:
        return None


def write_failure(error: BaseException, path: Path, what: str) -> str:
    """What went wrong when writing `what` into `path`, as the start of a one-line message.

    A full disk is an OSError with ENOSPC from Python, a SafetensorError naming os error 28 from safetensors, but
    only "basic_ios::clear" or "unexpected pos" from torch.save: then a disk with (almost) nothing free is taken
    for the cause.
    """
    if isinstance(error, OSError) and error.errno is not None:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"no space left on {path} while writing {what}"
        return f"cannot write {what} to {path} ({error.strerror or error})"
    text = " ".join(str(error).split())
    free = free_bytes(path)
    if "No space left" in text or "os error 28" in text or (free is not None and free < LOW_SPACE_BYTES):
        return f"no space left on {path} while writing {what}"
    return f"cannot write {what} to {path} ({text or type(error).__name__})"


WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)  # what torch.save, safetensors and open() raise
