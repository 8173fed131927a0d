"""Training runs started from the app: train.py in a child process, one at a time, its output turned into a loss
curve and a log, stopped and resumed on request (the Train tab, tinygpt.app.train_tab, is their page).

Design notes
- train.py runs as it does from a shell (`sys.executable train.py ...`), so the app trains exactly what the CLI
  trains, on the device train.py picks (the GPU when there is one), and its one-line `train.py: error: ...`
  reaches the page unchanged. The child runs in its own process group at a lower priority, with one core left
  to the app on a CPU machine: chats keep being answered while it trains.
- One run at a time, for the whole app (`TrainingRuns`): a second start, from anybody, gets a "busy" line naming
  the run and whose it is ("yours" or "started by another visitor", nothing more).
- Owners: a run belongs to the secret its starter presented (the Train tab passes a browser's own random token,
  or an API client's session id), compared in constant time and never shown, logged or put in a message. Only
  that secret stops or resumes the run.
- Progress comes from train.py's stdout (unbuffered): the Trainer's `{'loss': ...}` lines become the curve, every
  line the log. Steps are counted from the logging schedule the app itself passes.
- Stop creates the run's stop file ($TINYGPT_STOP_FILE, tinygpt.training.stopping): train.py saves a checkpoint of
  the step it is at and exits (code 130) without a final model. No signal: an app started in the background by a
  shell ignores SIGINT, and so would its child. SIGTERM only if it has not exited STOP_GRACE_SECONDS later. The
  page then reports the step of the newest complete checkpoint, which is what Resume continues from (it reruns
  the same command with a bare `--resume_from_checkpoint`).
- A base (a model folder the Model tab lists, checked like its picker's choices) makes the run a fine-tune
  (`--init_from`), and with an r a LoRA adapter (`--lora_r`): a small folder the picker lists too.
- Files: an upload is copied into the app's own data folder (a private temporary folder, never served) under a
  generated name, and that name never leaves the server: log lines and errors show the file's own name. The run
  folder's name is generated too; no user input becomes a path. The copy goes when its run ends (finished or
  failed); a stopped run's stays for Resume until the next run starts or the app exits (also on SIGTERM: app
  main turns it into SystemExit, so atexit runs).
"""

import ast
import atexit
import hmac
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tinygpt.app.models import local_choice_folder
from tinygpt.app.train_inputs import MAX_STEPS_LIMIT, TrainingRequestError, knob_flags, whole_number
from tinygpt.hub.checks import ModelLoadError
from tinygpt.training.args import LATEST
from tinygpt.training.presets import PRESETS
from tinygpt.training.run_dir import checkpoint_step, checkpoint_to_resume
from tinygpt.training.stopping import STOP_FILE_ENV

TRAIN_MODULE = "tinygpt.training"  # run as `python -m`: the installed package trains, no checkout needed
CHAT_SUFFIXES = (".json", ".jsonl")  # trained as conversations (--chat_file); anything else is plain text
MAX_LORA_R = 1024
LOG_LINES_SHOWN = 200
POLL_SECONDS = 0.3  # how often a watching page looks for new output
STOP_GRACE_SECONDS = 60  # after the stop file, how long train.py may take to exit before SIGTERM (then SIGKILL)
CURVE_POINTS = 30  # about this many logged losses a run, whatever its length
CHECKPOINTS = 5  # about this many evaluations and checkpoints a run, so a stopped run loses little


@dataclass
class TrainingRun:
    name: str  # generated folder name under models_dir
    folder: Path
    owner: str = field(repr=False)  # the secret of whoever started it: never shown
    command: list[str]
    max_steps: int
    logging_steps: int
    eval_steps: int
    shown_names: dict[str, str]  # server path -> what the page shows instead (an upload's own name)
    stop_file: Path  # created to ask train.py to stop
    data_file: Path | None = None  # the upload's copy, if any
    start_step: int = 0
    process: subprocess.Popen | None = None
    log: list[str] = field(default_factory=list)
    losses: list[tuple[int, float, str]] = field(default_factory=list)  # (step, loss, "train" | "eval")
    error: str | None = None  # train.py's one-line error
    stop_requested: bool = False
    saved_step: int | None = None  # a stopped run's newest complete checkpoint (None: it saved none)
    readers: list[threading.Thread] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)  # set once its end is recorded
    lock: threading.Lock = field(default_factory=threading.Lock)

    def owned_by(self, owner: str | None) -> bool:
        return isinstance(owner, str) and bool(owner) and hmac.compare_digest(owner.encode(), self.owner.encode())

    @property
    def running(self) -> bool:
        return self.process is not None and not self.ended.is_set()

    @property
    def step(self) -> int:
        if self.stopped:
            return self.saved_step or 0
        with self.lock:
            return max([self.start_step, *(step for step, _, split in self.losses if split == "train")])

    @property
    def finished(self) -> bool:
        saved = (self.folder / "config.json").is_file() or (self.folder / "adapter_config.json").is_file()
        return not self.running and self.process.returncode == 0 and saved

    @property
    def stopped(self) -> bool:
        return self.stop_requested and not self.running and not self.finished

    def outcome(self) -> str:
        """One Markdown line: where the run stands."""
        if self.running:
            stopping = " (stopping...)" if self.stop_requested else ""
            return f"Training **{self.name}**: step {self.step}/{self.max_steps}{stopping}"
        if self.finished:
            return f"Finished **{self.name}**: the model is in {self.folder.name}; load it in the Model tab."
        if self.stopped and self.saved_step is None:
            return f"Stopped **{self.name}** before its first checkpoint; start a new run."
        if self.stopped:
            return f"Stopped **{self.name}** at step {self.step}, its last checkpoint; Resume continues from it."
        return self.error or f"Error: train.py exited with code {self.process.returncode}."

    def curve(self) -> pd.DataFrame:
        with self.lock:
            return pd.DataFrame(self.losses, columns=["step", "loss", "split"])

    def log_text(self) -> str:
        with self.lock:
            return "\n".join(self.log[-LOG_LINES_SHOWN:])

    def version(self) -> tuple:
        with self.lock:
            return len(self.log), self.running, self.stop_requested

    def read(self, stream, is_stderr: bool) -> None:
        for raw in stream:
            line = raw.rstrip()
            for path, shown in self.shown_names.items():
                line = line.replace(path, shown)
            if not line or "/s]" in line:  # progress bars (datasets, the final save)
                continue
            with self.lock:
                self.log.append(line)
                if is_stderr and line.startswith("train.py: error:"):
                    self.error = line
                elif not is_stderr and line.startswith("{'"):
                    self.record_losses(line)

    def record_losses(self, line: str) -> None:
        """A Trainer log line -> a curve point. Its step is counted: train.py logs at each multiple of
        `logging_steps` and evaluates at each multiple of `eval_steps` (then once more at the end if the last step
        was not one), counted on from the checkpoint it resumed (the points up to it came from the stopped run)."""
        try:
            entry = ast.literal_eval(line)
        except (ValueError, SyntaxError):
            return
        for key, split, every in (("loss", "train", self.logging_steps), ("eval_loss", "eval", self.eval_steps)):
            if key in entry:
                done = sum(1 for step, _, s in self.losses if s == split and step > self.start_step)
                step = min((self.start_step // every + done + 1) * every, self.max_steps)
                self.losses.append((step, float(entry[key]), split))


class TrainingRuns:
    """The app's one training slot: start, watch, stop and resume train.py runs."""

    def __init__(self, models_dir: str | os.PathLike):
        self.models_dir = Path(models_dir)
        self.data_dir = Path(tempfile.mkdtemp(prefix="tinygpt-train-data-"))  # private (0700), never served
        atexit.register(shutil.rmtree, self.data_dir, ignore_errors=True)
        self.current: TrainingRun | None = None
        self.lock = threading.Lock()

    def start(
        self,
        upload: str | None,
        preset: str,
        max_steps,
        owner: str,
        knobs: dict | None = None,
        base: str | None = None,
        lora_r=None,
    ) -> TrainingRun:
        """Start a run owned by the secret `owner` (after checking its inputs) or raise TrainingRequestError: busy, a
        bad value, a shape too big for this machine. `base`: a model folder in models_dir to fine-tune; `lora_r`
        (with a base): train a LoRA adapter of that rank on it."""
        if preset not in PRESETS:
            raise TrainingRequestError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
        if not isinstance(owner, str) or not owner:
            raise TrainingRequestError("this request has no session; reload the page.")
        max_steps = whole_number("max steps", max_steps, 1, MAX_STEPS_LIMIT)
        flags = knob_flags(preset, knobs) + self.base_flags(base, lora_r)
        with self.lock:
            self.refuse_if_busy(owner)
            if self.current is not None and self.current.data_file is not None:  # a stopped run's, kept for Resume
                self.current.data_file.unlink(missing_ok=True)
            name = self.new_run_name(("lora-" if "--lora_r" in flags else "") + preset)
            folder = self.models_dir / name
            shown_names, data_file = {}, None
            if upload:
                source = Path(upload)
                suffix = source.suffix.lower() if source.suffix.lower() in CHAT_SUFFIXES else ".txt"
                data_file = self.data_dir / f"{name}{suffix}"
                shutil.copyfile(source, data_file)
                flags += ["--chat_file" if suffix in CHAT_SUFFIXES else "--text_file", str(data_file)]
                shown_names = {str(data_file): source.name, data_file.name: source.name}
            logging_steps = max(1, max_steps // CURVE_POINTS)
            eval_steps = logging_steps * max(1, round(max_steps / CHECKPOINTS / logging_steps))
            command = [
                sys.executable,
                *("-m", TRAIN_MODULE),
                *("--preset", preset, "--max_steps", str(max_steps), "--output_dir", str(folder)),
                *("--logging_steps", str(logging_steps), "--eval_steps", str(eval_steps)),
                *("--save_steps", str(eval_steps), "--disable_tqdm", "true"),
                *flags,
            ]
            stop_file = self.data_dir / f"{name}.stop"
            run = TrainingRun(
                name, folder, owner, command, max_steps, logging_steps, eval_steps, shown_names, stop_file, data_file
            )
            self.launch(run)
            return run

    def base_flags(self, base: str | None, lora_r) -> list[str]:
        """--init_from (a folder the picker would accept) and --lora_r, as the page chose them."""
        lora = lora_r not in (None, "", 0)  # a blank Number arrives as 0 from the page
        if not base:
            if lora:
                raise TrainingRequestError("a LoRA adapter trains on a base model: choose the base first.")
            return []
        try:
            folder = local_choice_folder(base, self.models_dir)
        except ModelLoadError as error:
            raise TrainingRequestError(f"base model: {error}") from None
        flags = ["--init_from", folder]
        if lora:
            flags += ["--lora_r", str(whole_number("LoRA r", lora_r, 1, MAX_LORA_R))]
        return flags

    def resume(self, owner: str | None) -> TrainingRun:
        """Continue the last run, if `owner` started it and it was stopped or failed, from its newest complete
        checkpoint."""
        with self.lock:
            self.refuse_if_busy(owner)
            last = self.current
            if last is None or last.finished:
                raise TrainingRequestError("there is no stopped run to resume; start a new one.")
            if not last.owned_by(owner):
                raise TrainingRequestError(f"only the visitor who started {last.name} can resume it.")
            if last.data_file is not None and not last.data_file.is_file():
                raise TrainingRequestError(f"the data of {last.name} was removed when it ended; start a new run.")
            checkpoint, _ = checkpoint_to_resume(LATEST, last.folder)
            if checkpoint is None:
                raise TrainingRequestError(f"{last.name} saved no checkpoint before it ended; start a new run.")
            run = TrainingRun(
                last.name,
                last.folder,
                last.owner,
                [*last.command, "--resume_from_checkpoint"],
                last.max_steps,
                last.logging_steps,
                last.eval_steps,
                last.shown_names,
                last.stop_file,
                last.data_file,
                start_step=checkpoint_step(checkpoint),
            )
            run.losses = [point for point in last.losses if point[0] <= run.start_step]
            self.launch(run)
            return run

    def stop(self, owner: str | None) -> str:
        """Ask the running train.py to stop (its stop file: a checkpoint, then a clean exit); SIGTERM if it lingers."""
        run = self.current
        if run is None or not run.running:
            return "No run is going."
        if not run.owned_by(owner):
            return f"Only the visitor who started {run.name} can stop it."
        run.stop_requested = True
        run.stop_file.touch()
        threading.Thread(target=terminate_if_lingering, args=(run.process,), daemon=True).start()
        return f"Stopping {run.name}..."

    def refuse_if_busy(self, owner: str | None) -> None:
        run = self.current
        if run is not None and run.running:
            whose = "yours" if run.owned_by(owner) else "started by another visitor"
            raise TrainingRequestError(
                f"busy: {run.name} ({whose}) is training, step {run.step}/{run.max_steps}; one run at a time, "
                "try again when it ends."
            )

    def new_run_name(self, preset: str) -> str:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name, n = f"train-{preset}-{stamp}", 1
        while (self.models_dir / name).exists():
            n += 1
            name = f"train-{preset}-{stamp}-{n}"
        return name

    def launch(self, run: TrainingRun) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        run.stop_file.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", STOP_FILE_ENV: str(run.stop_file)}
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))  # a core left for chats
        run.process = subprocess.Popen(
            run.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=env,
            start_new_session=True,  # its own process group: Ctrl-C on the app does not reach it
        )
        try:
            os.setpriority(os.PRIO_PROCESS, run.process.pid, 10)  # chats first
        except OSError:
            pass
        run.readers = [
            threading.Thread(target=run.read, args=(run.process.stdout, False), daemon=True),
            threading.Thread(target=run.read, args=(run.process.stderr, True), daemon=True),
        ]
        for reader in run.readers:
            reader.start()
        threading.Thread(target=record_end, args=(run,), daemon=True).start()
        self.current = run
        atexit.register(stop_at_exit, run)

    def watch(self, run: TrainingRun):
        """Yields `run` whenever it printed something or changed state, until it ends (then once more)."""
        seen = None
        while True:
            running = run.running
            version = run.version()
            if version != seen:
                seen = version
                yield run
            if not running:
                return
            time.sleep(POLL_SECONDS)


def record_end(run: TrainingRun) -> None:
    """Once train.py exits and its output is read: a stopped run's step is its newest complete checkpoint's (the
    curve is cut there too); a finished or failed run's upload is removed (a stopped one keeps it for Resume)."""
    run.process.wait()
    for reader in run.readers:
        reader.join()
    try:
        if run.stop_requested and not (run.process.returncode == 0 and (run.folder / "config.json").is_file()):
            checkpoint, _ = checkpoint_to_resume(LATEST, run.folder)
            run.saved_step = checkpoint_step(checkpoint) if checkpoint else None
            with run.lock:
                run.losses = [point for point in run.losses if point[0] <= (run.saved_step or 0)]
        elif run.data_file is not None:
            run.data_file.unlink(missing_ok=True)
        run.stop_file.unlink(missing_ok=True)
    finally:
        run.ended.set()


def terminate_if_lingering(process: subprocess.Popen) -> None:
    """SIGTERM to the run's process group if it has not exited STOP_GRACE_SECONDS after a stop; SIGKILL later."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            process.wait(timeout=STOP_GRACE_SECONDS)
            return
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return


def stop_at_exit(run: TrainingRun) -> None:
    if run.process.poll() is None:
        run.stop_requested = True
        run.stop_file.touch()
        terminate_if_lingering(run.process)
