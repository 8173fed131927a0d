"""Train a TinyGPT with the Hugging Face Trainer: the logic behind `python train.py`.

    python train.py                                   # the synthetic chat task, offline, minutes on a CPU
    python train.py --preset shakespeare-cpu --text_file tinyshakespeare.txt
    torchrun --nproc_per_node=2 train.py ...          # DDP: NCCL on GPUs, gloo on CPUs

Design notes
- Arguments: `HfArgumentParser` over (ModelArguments, DataArguments, TrainingArguments), so every Trainer
  flag works from the command line. A preset (presets.py) becomes the parser's defaults; a first pass with
  every default suppressed tells which flags the user actually typed, and those always win.
- Device and precision are chosen once, before TrainingArguments exist, and printed with the reason:
  CUDA -> bf16 where supported, else fp16; MPS -> fp32 unless --bf16 (MPS bf16 still breaks in the field);
  CPU -> fp32.
- Two kinds of data. Plain text becomes one token tensor that lives on the training device; the dataset
  yields window offsets and `WindowCollator` gathers (B, T) batches there, so the input pipeline costs no
  host work, no workers and no pinned memory. Conversations (a chat file, or by default the built-in
  synthetic task) become padded sequences whose labels supervise only the assistant's tokens.
- Evaluation scores a fixed set of validation windows (`--eval_windows`) with `prediction_loss_only`, so it
  is cheap and comparable from one evaluation to the next.
- Every flag is checked before anything is written (`check_arguments`): a run that fails on its input leaves no
  folder and no run_settings.json behind to block the corrected rerun.
- Runs are restartable: every `--save_steps` the Trainer writes a checkpoint; `--resume_from_checkpoint`
  (bare: the newest usable one) restores weights, optimizer, LR schedule, RNG and the data position. A
  checkpoint is usable when its files are all there and load: JSON parses, the safetensors header covers the
  file, the .pt files are whole zip archives, the tokenizer loads (`checkpoint_problem`); a bare resume skips
  the newest ones that are not, and says why. A checkpoint already at --max_steps is not trained further. The
  output folder records the run's settings, and a different run is refused instead of mixed in.
- Only the main process writes. The final model is staged in a temporary folder and moved in file by file
  with atomic renames, config.json last, so a crash never leaves a truncated file or a config that points at
  missing weights. A write that fails (a full disk above all) ends the run with one line naming the folder;
  the checkpoint it was writing is removed, and every earlier file is as it was.
"""

import argparse
import errno
import json
import math
import os
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoConfig,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    HfArgumentParser,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerState,
    TrainingArguments,
)
from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

from .configuration_tinygpt import ACTIVATIONS, TinyGPTConfig
from .data import (
    DataError,
    TokenWindows,
    WindowCollator,
    build_tokenizer,
    conversation_dataset,
    encode_text,
    read_conversations,
    read_text_sources,
    split_train_val,
)
from .engine import Engine, Request, settings_from
from .loading import ModelLoadError, load_model_and_tokenizer
from .modeling_tinygpt import TinyGPTForCausalLM
from .muon import MuonWithAdamW
from .presets import DEFAULT_PRESET, PRESETS, describe_presets
from .reporting import RunSummary, model_card, perplexity, plot_losses, write_metrics
from .synthetic_chat import exact_match, make_synthetic_chat
from .tokenization_tinygpt import load_gpt2_chat_tokenizer

RUN_SETTINGS_FILE = "run_settings.json"  # what defines a run; compared before anything is written
LATEST = "latest"  # --resume_from_checkpoint with no path, or with this word: the newest complete checkpoint
CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json")
CHECKPOINT_ARCHIVES = ("optimizer.pt", "scheduler.pt", "rng_state.pth")  # torch.save's zip files (the last optional)
POSITIVE_COUNTS = (  # flags that count something of which a run needs at least one
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "eval_windows",
    "synthetic_conversations",
)
LOW_SPACE_BYTES = 64 << 20  # torch reports a full disk without errno ("basic_ios::clear"): less free than this is one
SHAPE_FLAGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "activation_function")


class TrainingSetupError(ValueError):
    """A run that cannot start as asked; the message names the problem and the fix (one line, no traceback)."""


class RunWriteError(RuntimeError):
    """A checkpoint or the final model could not be written (a full disk above all); one line, no traceback."""


@dataclass
class ModelArguments:
    preset: str = field(
        default=DEFAULT_PRESET, metadata={"help": "model shape and training defaults", "choices": list(PRESETS)}
    )
    init_from: str | None = field(
        default=None,
        metadata={"help": "fine-tune this model: a tinygpt folder or Hub repo, 'gpt2', or a GPT-2 folder"},
    )
    n_layer: int | None = field(default=None, metadata={"help": "transformer blocks"})
    n_head: int | None = field(default=None, metadata={"help": "attention heads per block"})
    n_embd: int | None = field(default=None, metadata={"help": "width of the residual stream"})
    block_size: int | None = field(default=None, metadata={"help": "context window in tokens (n_positions)"})
    dropout: float | None = field(default=None, metadata={"help": "dropout rate"})
    bias: bool | None = field(default=None, metadata={"help": "biases in Linear layers and LayerNorms"})
    muon_lr: float | None = field(
        default=None,
        metadata={"help": "train the blocks' weight matrices with Muon at this rate (e.g. 0.02); the rest keeps AdamW"},
    )
    activation_function: str | None = field(
        default=None,
        metadata={
            "help": "MLP activation: gelu_new (GPT-2's tanh GELU) or gelu (exact, faster on CPUs)",
            "choices": list(ACTIVATIONS),
        },
    )


@dataclass
class DataArguments:
    text_file: list[str] = field(
        default_factory=list,
        metadata={"help": "plain-text file to train on (repeat the flag for more)", "action": "extend"},
    )
    dataset_name: str | None = field(default=None, metadata={"help": "a `datasets` dataset (Hub id or local folder)"})
    dataset_config: str | None = field(default=None, metadata={"help": "its configuration name"})
    text_column: str = field(default="text", metadata={"help": "the dataset column holding the text"})
    dataset_split: str = field(default="train", metadata={"help": "the dataset split to read"})
    chat_file: str | None = field(
        default=None,
        metadata={"help": "conversations (JSON/JSONL, messages or ShareGPT form) to fine-tune a chat model"},
    )
    synthetic_conversations: int = field(
        default=20000,
        metadata={"help": "training conversations of the built-in synthetic chat task (the default data)"},
    )
    val_fraction: float = field(default=0.1, metadata={"help": "share of the data held out for validation"})
    tokenizer: str | None = field(default=None, metadata={"help": "char | gpt2 | bpe | PATH of a saved tokenizer"})
    bpe_vocab_size: int = field(
        default=1024, metadata={"help": "vocabulary size of a `--tokenizer bpe` trained on the corpus"}
    )
    eval_windows: int | None = field(
        default=None, metadata={"help": "validation windows (or conversations) per evaluation"}
    )


ARGUMENT_TYPES = (ModelArguments, DataArguments, TrainingArguments)


@dataclass
class DevicePolicy:
    device: str  # "cuda" | "mps" | "cpu"
    precision: str  # "bf16" | "fp16" | "fp32"
    reason: str

    def flag_defaults(self, cuda_compile: str | None = None) -> dict:
        defaults = {"use_cpu": self.device == "cpu", "bf16": self.precision == "bf16", "fp16": self.precision == "fp16"}
        if self.device == "cuda":
            # The NaN/inf loss filter would cost a host sync per step; a NaN still shows in the logged loss.
            defaults["logging_nan_inf_filter"] = False
            if cuda_compile:
                defaults["torch_compile"] = True  # backend and mode are chosen after parsing: see use_cuda_graphs
        return defaults


@dataclass
class RunArguments:
    model: ModelArguments
    data: DataArguments
    training: TrainingArguments
    passed: dict  # {flag: value} for the flags the user typed
    policy: DevicePolicy


# ----------------------------------------------------------------------------------------------------------
# Arguments


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every flag's help, and the preset table printed as written."""


def argument_parser(**kwargs) -> HfArgumentParser:
    return HfArgumentParser(
        ARGUMENT_TYPES,
        prog="train.py",
        description="Train or fine-tune a TinyGPT with the Hugging Face Trainer.",
        epilog=describe_presets(),
        formatter_class=HelpFormatter,
        **kwargs,
    )


def expand_bare_resume_flag(argv: list[str]) -> list[str]:
    # TrainingArguments declares --resume_from_checkpoint as taking a path; a bare flag means "the newest".
    expanded = []
    for i, arg in enumerate(argv):
        next_is_value = i + 1 < len(argv) and not argv[i + 1].startswith("-")
        expanded.append(
            f"{arg}={LATEST}"
            if arg in ("--resume_from_checkpoint", "--resume-from-checkpoint") and not next_is_value
            else arg
        )
    return expanded


def flags_passed(argv: list[str]) -> dict:
    """{dest: value} of only the flags present in argv: the same parser with every default suppressed."""
    probe = argument_parser(add_help=False)
    for action in probe._actions:  # argparse has no public "was this flag given?"; a suppressed default is absent
        action.default = argparse.SUPPRESS
    namespace, _ = probe.parse_known_args(argv)
    return vars(namespace)


def choose_device(passed: dict) -> DevicePolicy:
    """One device and one compute dtype for the whole run; explicit --use_cpu/--bf16/--fp16 win."""
    if passed.get("use_cpu"):
        device, why = "cpu", "--use_cpu"
    elif torch.cuda.is_available():
        device, why = "cuda", f"CUDA GPU {torch.cuda.get_device_name()}"
    elif torch.backends.mps.is_available():
        device, why = "mps", "Apple GPU (MPS)"
    else:
        device, why = "cpu", "no GPU found"
    if "bf16" in passed or "fp16" in passed:
        precision = "bf16" if passed.get("bf16") else "fp16" if passed.get("fp16") else "fp32"
        return DevicePolicy(device, precision, f"{why}; {precision} as requested")
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return DevicePolicy(device, "bf16", f"{why}; bf16 autocast, supported by this GPU")
    if device == "cuda":
        return DevicePolicy(device, "fp16", f"{why}; fp16 autocast with loss scaling (this GPU has no bf16)")
    if device == "mps":
        return DevicePolicy(device, "fp32", f"{why}; fp32 (MPS bf16 is fragile; pass --bf16 to try it)")
    return DevicePolicy(device, "fp32", f"{why}; fp32 (CPUs gain little from lower precision)")


def parse_args(argv: list[str] | None = None) -> RunArguments:
    argv = expand_bare_resume_flag(list(sys.argv[1:] if argv is None else argv))
    passed = flags_passed(argv)
    preset_name = passed.get("preset", DEFAULT_PRESET)
    policy = choose_device(passed)
    windows = bool(passed.get("text_file") or passed.get("dataset_name")) and not passed.get("chat_file")
    parser = argument_parser()
    parser.set_defaults(
        **PRESETS[preset_name].flag_defaults(),
        **policy.flag_defaults(PRESETS[preset_name].cuda_compile),
        output_dir=str(Path("runs") / preset_name),
        remove_unused_columns=False,  # window items are {"offset"} dicts the collator turns into model inputs
        prediction_loss_only=True,  # evaluation needs the loss only: no logits kept, gathered or moved
        # Token windows are already a seeded random draw, and a fixed order makes resuming trivially exact.
        train_sampling_strategy="sequential" if windows else "random",
        dataloader_pin_memory=not windows and policy.device == "cuda",  # windows already live on the GPU
        ddp_find_unused_parameters=False,  # every parameter takes part in every step: skip DDP's graph walk
    )
    try:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv, look_for_args_file=False)
    except ValueError as error:  # TrainingArguments' own checks of flag combinations
        raise TrainingSetupError(str(error).strip().splitlines()[0]) from error
    use_cuda_graphs(training_args, policy, PRESETS[preset_name].cuda_compile, passed)
    return RunArguments(model_args, data_args, training_args, passed, policy)


def use_cuda_graphs(args: TrainingArguments, policy: DevicePolicy, preset_compile: str | None, passed: dict) -> None:
    """On CUDA, compile with CUDA graphs where it is safe and the user chose neither backend nor mode.

    A small model's step is bound by kernel launches, not arithmetic: CUDA graphs take shakespeare-char from
    ~13 ms eager to 8.4 ms (backend "cudagraphs", the traced step replayed as recorded) or 6.2 ms (inductor's
    fused kernels, mode "reduce-overhead") on an H100. Set after parsing because TrainingArguments turns
    compiling on whenever a backend or mode is set, which would make `--torch_compile False` impossible. Not
    under DDP, whose gradient hooks write into buffers that a replayed graph would overwrite, nor with gradient
    accumulation, where backward read forward outputs that the next replay had overwritten (gpt2-small on an
    H200). Big models need the graphs least anyway: their kernels are long.
    """
    chosen = "torch_compile_backend" in passed or "torch_compile_mode" in passed
    unsafe = args.world_size > 1 or args.gradient_accumulation_steps > 1
    if policy.device != "cuda" or not args.torch_compile or chosen or unsafe:
        return
    if preset_compile == "cudagraphs":
        args.torch_compile_backend = "cudagraphs"
    else:
        args.torch_compile_mode = "reduce-overhead"


# ----------------------------------------------------------------------------------------------------------
# Checking the arguments: argparse checks types only, and a bad value must fail before anything is written


def check_arguments(run: RunArguments) -> None:
    """Values no run can use: non-finite numbers, rates that are not positive, counts below one, an output
    folder that cannot be written."""
    for name, value in run.passed.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise TrainingSetupError(f"--{name} {value}: not a finite number; pass a finite value.")
    rates = {"learning_rate": run.training.learning_rate, "muon_lr": run.model.muon_lr}
    for name, value in rates.items():
        if value is not None and not value > 0:
            raise TrainingSetupError(f"--{name} must be positive, got {value}.")
    for name in POSITIVE_COUNTS:
        value = next(getattr(group, name) for group in (run.training, run.data) if hasattr(group, name))
        if value is not None and value < 1:
            raise TrainingSetupError(f"--{name} must be at least 1, got {value}.")
    check_output_dir_writable(Path(run.training.output_dir))


def check_output_dir_writable(output_dir: Path) -> None:
    """The folder, or the nearest existing folder above it that the run would create it in, is writable."""
    if output_dir.exists() and not output_dir.is_dir():
        raise TrainingSetupError(f"--output_dir {output_dir} is a file, not a folder; pick another --output_dir.")
    existing = output_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise TrainingSetupError(
            f"--output_dir {output_dir}: {existing} is a file, not a folder; pick another --output_dir."
        )
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise TrainingSetupError(
            f"--output_dir {output_dir} is on a read-only filesystem ({existing}); pick a writable --output_dir."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TrainingSetupError(
            f"--output_dir {output_dir}: no permission to write in {existing}; pick a writable --output_dir."
        )


# ----------------------------------------------------------------------------------------------------------
# The output folder: one run per folder, restartable


def run_settings(run: RunArguments) -> dict:
    """What defines a run: the same settings continue a run, different ones belong in another folder."""
    m, d, t = run.model, run.data, run.training
    return {
        "preset": m.preset,
        "init_from": m.init_from,
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
            "muon_lr": m.muon_lr,
            "seed": t.seed,
        },
    }


def settings_differences(recorded: dict, current: dict, prefix: str = "") -> list[str]:
    differences = []
    for key in sorted(set(recorded) | set(current)):
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
        try:
            recorded = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise TrainingSetupError(f"{record} is unreadable ({error}); pick another --output_dir.") from error
        differences = settings_differences(recorded, json.loads(json.dumps(settings)))
        if differences:
            more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
            raise TrainingSetupError(
                f"{output_dir} holds a different run: {differences[0]}{more}; pick another --output_dir, "
                f"or delete {output_dir} to start over."
            )
    elif output_dir.is_dir() and any(output_dir.iterdir()):
        raise TrainingSetupError(
            f"{output_dir} is not empty and holds no tinygpt run (no {RUN_SETTINGS_FILE}); pick another --output_dir."
        )


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None when it can.

    The Trainer writes trainer_state.json last, so without it the run stopped while writing the folder. The other
    checks are what loading would hit, done cheaply: JSON parses, the safetensors header describes exactly the
    bytes in the file (a truncated file fails), torch.save's zip archives end with their directory (a truncated
    one has none), and the tokenizer loads.
    """
    if not (path / "trainer_state.json").is_file():
        return "incomplete, the run stopped while writing it"
    missing = [name for name in (*CHECKPOINT_FILES, "config.json") if not (path / name).is_file()]
    if missing:
        return f"no {', '.join(missing)}"
    for name in ("trainer_state.json", "config.json"):
        try:
            json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return f"{name} is truncated or corrupt"
    try:
        with safe_open(path / "model.safetensors", framework="pt") as weights:
            weights.keys()
    except (OSError, SafetensorError):
        return "model.safetensors is truncated or corrupt"
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


def is_complete_checkpoint(path: Path) -> bool:
    return checkpoint_problem(path) is None


def checkpoint_to_resume(requested: str | None, output_dir: Path) -> tuple[str | None, str]:
    """(the checkpoint folder to resume from or None to start fresh, a line telling the user which)."""
    if requested is None:
        return None, ""
    if requested != LATEST or Path(requested).is_dir():
        problem = checkpoint_problem(Path(requested))
        if problem:
            raise TrainingSetupError(
                f"--resume_from_checkpoint {requested} is not a complete checkpoint ({problem}; it needs "
                f"{', '.join(CHECKPOINT_FILES)} and the model's config and tokenizer); pass another checkpoint-N "
                "folder, or the bare flag for the newest."
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
    return step if (output_dir / "config.json").is_file() and (output_dir / "model.safetensors").is_file() else None


# ----------------------------------------------------------------------------------------------------------
# Model and tokenizer


def new_model(tokenizer: PreTrainedTokenizerBase, m: ModelArguments) -> TinyGPTForCausalLM:
    try:
        config = TinyGPTConfig.for_tokenizer(
            tokenizer,
            n_positions=m.block_size,
            n_embd=m.n_embd,
            n_layer=m.n_layer,
            n_head=m.n_head,
            dropout=m.dropout,
            bias=m.bias,
            activation_function=m.activation_function,
        )
    except ValueError as error:
        raise TrainingSetupError(str(error)) from error
    return TinyGPTForCausalLM(config)


def load_init_model(run: RunArguments) -> tuple[TinyGPTForCausalLM, PreTrainedTokenizerBase]:
    """The model and tokenizer `--init_from` names: a tinygpt model, or GPT-2 weights converted to TinyGPT."""
    source = run.model.init_from
    for flag in SHAPE_FLAGS:
        if flag in run.passed:
            raise TrainingSetupError(
                f"--{flag} cannot reshape --init_from {source}; drop --{flag} (the shape comes from the model)."
            )
    overrides = {"dropout": run.model.dropout} if "dropout" in run.passed else {}
    try:
        model_type = AutoConfig.from_pretrained(source, trust_remote_code=False).model_type
    except (OSError, ValueError) as error:
        raise TrainingSetupError(
            f"--init_from {source}: cannot load it ({str(error).strip().splitlines()[0]})"
        ) from error
    if model_type != "gpt2":
        return load_model_and_tokenizer(source, **overrides)
    try:  # before converting the weights: the cheap check first
        tokenizer = load_gpt2_chat_tokenizer(source)
    except (OSError, ValueError) as error:
        raise TrainingSetupError(
            f"--init_from {source} holds GPT-2 weights but no tokenizer ({str(error).strip().splitlines()[0]}); "
            "copy GPT-2's vocab.json and merges.txt into it."
        ) from error
    model = TinyGPTForCausalLM.from_gpt2(source, **overrides)
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)  # room for the chat tokens
    for config in (model.config, model.generation_config):
        config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def forget_load_options(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Drop what `from_pretrained` records about how it was called (transformers 5 keeps "is_local" and
    "local_files_only" in init_kwargs, and save_pretrained would write them into tokenizer_config.json)."""
    for key in ("is_local", "local_files_only"):
        tokenizer.init_kwargs.pop(key, None)
    return tokenizer


def model_and_tokenizer(run: RunArguments, corpus: str, resume_from: str | None):
    model, tokenizer = loaded_model_and_tokenizer(run, corpus, resume_from)
    return model, forget_load_options(tokenizer)


def loaded_model_and_tokenizer(run: RunArguments, corpus: str, resume_from: str | None):
    if resume_from is not None:  # the checkpoint holds the tokenizer this run started with
        return load_model_and_tokenizer(resume_from)
    if run.model.init_from is None:
        tokenizer = build_tokenizer(run.data.tokenizer, corpus, bpe_vocab_size=run.data.bpe_vocab_size)
        return new_model(tokenizer, run.model), tokenizer
    model, tokenizer = load_init_model(run)
    if "tokenizer" in run.passed:
        requested = build_tokenizer(run.data.tokenizer, corpus, bpe_vocab_size=run.data.bpe_vocab_size)
        if requested.get_vocab() != tokenizer.get_vocab():
            raise TrainingSetupError(
                f"--tokenizer {run.data.tokenizer} ({len(requested)} tokens) does not match the tokenizer of "
                f"--init_from {run.model.init_from} ({len(tokenizer)} tokens); drop --tokenizer to use the model's own."
            )
    return model, tokenizer


# ----------------------------------------------------------------------------------------------------------
# Data


@dataclass
class TrainingData:
    description: str  # for the model card
    train_dataset: object
    eval_dataset: object
    collator: object
    tokens_per_example: float  # for tokens/s: the window length, or the mean conversation length
    sample_prompt: torch.Tensor  # (1, T) ids to show a sample from
    chat: bool  # conversations (a chat model) rather than plain text
    heldout: list | None = None  # synthetic questions scored by exact match


def read_sources(data: DataArguments, seed: int):
    """(corpus text, conversations or None, held-out questions or None, description) from the chosen source."""
    if data.chat_file and (data.text_file or data.dataset_name):
        raise TrainingSetupError(
            "--chat_file trains a chat model and cannot be mixed with --text_file/--dataset_name; pick one."
        )
    if data.text_file or data.dataset_name:
        corpus = read_text_sources(
            text_files=data.text_file or None,
            dataset_name=data.dataset_name,
            dataset_config=data.dataset_config,
            text_column=data.text_column,
            dataset_split=data.dataset_split,
        )
        described = [Path(path).name for path in data.text_file] + ([data.dataset_name] if data.dataset_name else [])
        return corpus, None, None, "text: " + ", ".join(described)
    if data.chat_file:
        conversations, heldout = read_conversations(data.chat_file), None
        described = f"conversations: {Path(data.chat_file).name}"
    else:
        conversations, heldout = make_synthetic_chat(seed=seed, num_train=data.synthetic_conversations)
        described = "the built-in synthetic chat task (tinygpt.synthetic_chat)"
    corpus = "".join(message["content"] for conversation in conversations for message in conversation)
    return corpus, conversations, heldout, f"{described}, {len(conversations)} conversations"


def token_window_data(run: RunArguments, tokenizer, block_size: int, corpus: str, description: str) -> TrainingData:
    t = run.training
    if t.max_steps <= 0:
        raise TrainingSetupError("token-window training is counted in steps: pass --max_steps N (N > 0).")
    ids = encode_text(tokenizer, corpus)  # (N,)
    train_ids, val_ids = split_train_val(ids, val_fraction=run.data.val_fraction)
    if len(val_ids) <= block_size < len(train_ids):  # TokenWindows would blame "the corpus" for it
        raise TrainingSetupError(
            f"the validation split has {len(val_ids)} tokens but a context of {block_size} needs at least "
            f"{block_size + 1}; raise --val_fraction, pass more text, or a smaller --block_size."
        )
    # The Trainer has one collator for training and evaluation, so it gathers from the whole stream on the
    # device: training windows from its head, validation windows from its tail (their offsets shifted past
    # the training tokens).
    tokens = ids.to(t.device)
    windows_needed = t.max_steps * t.per_device_train_batch_size * t.gradient_accumulation_steps * t.world_size
    train_windows = TokenWindows(train_ids, block_size, num_windows=windows_needed, seed=t.seed)
    val_windows = TokenWindows(val_ids, block_size, num_windows=run.data.eval_windows, seed=0)
    eval_dataset = [{"offset": len(train_ids) + val_windows[i]["offset"]} for i in range(len(val_windows))]
    return TrainingData(
        description=f"{description} ({len(train_ids):,} training and {len(val_ids):,} validation tokens)",
        train_dataset=train_windows,
        eval_dataset=eval_dataset,
        collator=WindowCollator(tokens, block_size),
        tokens_per_example=block_size,
        sample_prompt=val_ids[None, : min(16, block_size // 2)],
        chat=False,
    )


def memory_bytes(device: str) -> int | None:
    """What the training device can hold: a CUDA GPU's memory, else the machine's (or its cgroup's) RAM."""
    if device == "cuda":
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def check_context_fits(run: RunArguments, config) -> None:
    """Refuse a window whose training step cannot fit in memory; warn when a step would take minutes.

    Estimates, from the shape: a step keeps about 18 activations of width n_embd per layer and token for the
    backward pass, plus the logits (and their softmax and gradient) over the vocabulary; the weights, gradients
    and Adam's two moments are 16 bytes a parameter. SDPA never materializes the T x T attention matrix, but
    its work grows with T: a step costs 6 x parameters + 6 x n_layer x T x n_embd FLOPs a token (causal).
    """
    t, T = run.training, config.n_positions
    value_bytes = 4 if run.policy.precision == "fp32" else 2
    per_token = config.n_layer * 18 * config.n_embd + 3 * config.vocab_size + 2 * config.n_embd
    parameters = config.n_layer * 12 * config.n_embd**2 + (config.vocab_size + T) * config.n_embd
    needed = t.per_device_train_batch_size * T * per_token * value_bytes + 16 * parameters
    available = memory_bytes(run.policy.device)
    if available is not None and needed > available:
        raise TrainingSetupError(
            f"a context of {T:,} tokens cannot fit: a step of {t.per_device_train_batch_size} windows needs about "
            f"{needed / 2**30:,.0f} GiB and this {run.policy.device} has {available / 2**30:,.0f} GiB; pass a "
            "smaller --block_size or --per_device_train_batch_size."
        )
    flops_per_token = 6 * parameters + 6 * config.n_layer * T * config.n_embd
    flops = flops_per_token * t.per_device_train_batch_size * T * t.gradient_accumulation_steps
    rate = {"cuda": 1e14, "mps": 5e12}.get(run.policy.device, 5e10 * torch.get_num_threads())  # FLOP/s, roughly
    if flops / rate > 60 and run.training.process_index == 0:
        attention = 6 * config.n_layer * T * config.n_embd / flops_per_token
        print(
            f"note: a step of {t.per_device_train_batch_size} x {T:,} tokens is about {flops / 1e12:,.0f} TFLOP "
            f"({attention:.0%} of it attention over the context): minutes or more per step on this "
            f"{run.policy.device}; a smaller --block_size is much faster."
        )


def conversation_data(
    run: RunArguments, tokenizer, block_size: int, conversations, heldout, description: str
) -> TrainingData:
    n_val = max(1, round(len(conversations) * run.data.val_fraction))
    if n_val >= len(conversations):
        raise TrainingSetupError(
            f"{len(conversations)} conversation(s) leave none to train on after holding out {n_val}; add more."
        )
    train_dataset = conversation_dataset(tokenizer, conversations[:-n_val], max_length=block_size)
    eval_dataset = conversation_dataset(
        tokenizer, conversations[-n_val:][: run.data.eval_windows], max_length=block_size
    )
    first_reply = next((i for i, message in enumerate(conversations[-1]) if message["role"] == "assistant"), None)
    prompt_messages = heldout[0].messages if heldout else conversations[-1][:first_reply]
    sample_prompt = tokenizer.apply_chat_template(
        prompt_messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    return TrainingData(
        description=description,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
        tokens_per_example=sum(len(ids) for ids in train_dataset["input_ids"]) / len(train_dataset),
        sample_prompt=sample_prompt["input_ids"],
        chat=True,
        heldout=heldout,
    )


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


class TinyGPTTrainer(Trainer):
    """The Trainer, with a checkpoint that cannot be written turned into one line (see `write_failure`)."""

    def _save_checkpoint(self, model, trial):
        try:
            super()._save_checkpoint(model, trial)
        except WRITE_ERRORS as error:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            problem = write_failure(error, folder, "a checkpoint")  # judged before the partial folder goes
            if self.args.should_save and folder.is_dir() and checkpoint_problem(folder):
                shutil.rmtree(folder, ignore_errors=True)  # incomplete: free its space, nothing refers to it
            newest, _ = checkpoint_to_resume(LATEST, folder.parent)
            then = (
                f"the earlier checkpoints are intact: free some space, then continue from {Path(newest).name} "
                "with --resume_from_checkpoint."
                if newest
                else "no earlier checkpoint was written: free some space, then run again."
            )
            self.close_progress_bars()
            raise RunWriteError(f"{problem}; {then}") from error

    def close_progress_bars(self) -> None:
        """Clear the progress bar now: closed at exit instead, it would print below the error line."""
        for callback in self.callback_handler.callbacks:
            for bar in (getattr(callback, "training_bar", None), getattr(callback, "prediction_bar", None)):
                if bar is not None:
                    bar.leave = False
                    bar.close()


def build_trainer(model, tokenizer, args: TrainingArguments, data: TrainingData, muon_lr: float | None) -> Trainer:
    """The one place the Trainer is made (speed work on the training loop starts here)."""
    optimizer = None  # None: the Trainer's own, from --optim
    if muon_lr is not None:
        optimizer = MuonWithAdamW(
            model,
            muon_lr=muon_lr,
            lr=args.learning_rate,
            weight_decay=args.weight_decay,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
        )
    return TinyGPTTrainer(
        model=model,
        args=args,
        train_dataset=data.train_dataset,
        eval_dataset=data.eval_dataset,
        data_collator=data.collator,
        processing_class=tokenizer,  # saved into every checkpoint, so a resumed run keeps its vocabulary
        optimizers=(optimizer, None),  # the LR schedule is always the Trainer's
    )


def final_evaluation(trainer: Trainer) -> dict:
    """The validation metrics at the last step: logged already when the last step was an evaluation step."""
    evaluations = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    if evaluations and evaluations[-1]["step"] == trainer.state.global_step:
        return evaluations[-1]
    return trainer.evaluate()


def set_generation_defaults(model, tokenizer, chat: bool) -> None:
    """What `generate()`, pipelines and app.py use unless told otherwise."""
    config = model.generation_config
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.max_new_tokens = 256
    if chat:  # answers have one right form (the synthetic task is scored by exact match): greedy
        config.do_sample = False
    else:  # nanoGPT's sample.py settings
        config.do_sample, config.temperature, config.top_k = True, 0.8, 200


def sample_text(model, tokenizer, prompt_ids: torch.Tensor, seed: int, max_new_tokens: int = 200) -> str:
    """The prompt and one continuation with the model's generation defaults (the engine, on the model's device),
    special tokens shown, the <EOS> that ended it included."""
    was_training = model.training
    torch.manual_seed(seed)
    prompt = prompt_ids[0].tolist()  # (1, T) -> T ids
    settings = settings_from(model.generation_config) | {"max_new_tokens": max_new_tokens}
    eos = tokenizer.eos_token_id
    (new_tokens,) = Engine(model, compile=False).generate([Request(prompt, stop_ids=[eos], **settings)])
    model.train(was_training)
    ended_at_eos = len(new_tokens) < max_new_tokens
    return tokenizer.decode(prompt + new_tokens + [eos] * ended_at_eos, skip_special_tokens=False)


def peak_memory() -> tuple[int, str]:
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return torch.cuda.max_memory_allocated(), "cuda allocated"
    import resource  # POSIX only; ru_maxrss is KiB on Linux, bytes on macOS

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024), "process RSS"


def save_final_model(output_dir: Path, model, tokenizer, summary: RunSummary, log_history: list[dict]) -> None:
    """Model, tokenizer, loss.png, metrics.json and README.md, moved into output_dir only once all are written.

    The folder also holds this run's checkpoints, so it cannot be swapped whole: each file is renamed into
    place (atomic on one filesystem), config.json last, so loaders never see a config without its weights.
    """
    staging = Path(tempfile.mkdtemp(prefix=".final-", dir=output_dir))
    try:
        model.config.use_cache = True  # the Trainer trains without a KV cache; generation wants it back
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        plot_losses(log_history, staging / "loss.png", title=f"tinygpt-{summary.preset}: {summary.data}")
        write_metrics(summary, staging / "metrics.json")
        model_card(summary, str(output_dir)).save(staging / "README.md")
        for path in sorted(staging.iterdir(), key=lambda p: p.name == "config.json"):
            os.replace(path, output_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def train(run: RunArguments, wall_start: float) -> RunSummary | None:
    """Check every input, train, evaluate; the main process then saves the model with its report."""
    args = run.training
    is_main = args.process_index == 0
    check_arguments(run)
    if is_main:
        print(f"device: {run.policy.device}, precision: {run.policy.precision} ({run.policy.reason})")
    output_dir = Path(args.output_dir)
    settings = run_settings(run)
    check_output_dir(output_dir, settings)
    resume_from, resume_note = checkpoint_to_resume(args.resume_from_checkpoint, output_dir)
    start_step = checkpoint_step(resume_from) if resume_from else 0
    # The Trainer would train one more step from a checkpoint at max_steps (on conversations): nothing to train.
    finished = resume_from is not None and 0 < args.max_steps <= start_step
    corpus, conversations, heldout, description = read_sources(run.data, seed=args.seed)
    model, tokenizer = model_and_tokenizer(run, corpus, resume_from)
    block_size = model.config.n_positions
    if conversations is None:  # every window is block_size tokens long: check that one fits before encoding
        check_context_fits(run, model.config)
    tokenizer.model_max_length = VERY_LARGE_INTEGER  # a saved limit would warn about the whole corpus's length
    if conversations is not None:
        data = conversation_data(run, tokenizer, block_size, conversations, heldout, description)
    else:
        data = token_window_data(run, tokenizer, block_size, corpus, description)
    tokenizer.model_max_length = block_size  # saved with it: pipelines then never feed the model more
    set_generation_defaults(model, tokenizer, chat=data.chat)

    if finished and final_model_step(output_dir) == start_step:  # the run ended already; change nothing
        if is_main:
            print(
                f"{resume_from} is already at step {start_step} of --max_steps {args.max_steps}: nothing left to "
                f"train; the final model in {output_dir} is kept as it is"
            )
        return None
    if is_main:  # every input is checked: from here on the folder belongs to this run
        if resume_note:
            print(resume_note)
        elif any(output_dir.glob("checkpoint-*")):
            print(f"note: starting {output_dir} over; --resume_from_checkpoint would continue its checkpoints")
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / RUN_SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            raise RunWriteError(f"{write_failure(error, output_dir, RUN_SETTINGS_FILE)}.") from error
        print(f"training {model.num_parameters() / 1e6:.2f}M parameters on {data.description}")

    trainer = build_trainer(model, tokenizer, args, data, run.model.muon_lr)
    if finished:  # its final save was lost (or it came from elsewhere): evaluate the checkpoint's weights and save
        if is_main:
            print(
                f"{resume_from} is already at step {start_step} of --max_steps {args.max_steps}: nothing left to "
                "train; saving its model as the final one"
            )
        trainer.state = TrainerState.load_from_json(str(Path(resume_from, "trainer_state.json")))
        train_metrics = {"train_runtime": 0.0}
    else:
        train_metrics = trainer.train(resume_from_checkpoint=resume_from).metrics
    eval_metrics = final_evaluation(trainer)
    summary = None
    if is_main:
        # keep_fp32_wrapper=False: the model as built, without the autocast that bf16 training wrapped its forward in
        model = trainer.accelerator.unwrap_model(
            trainer.model, keep_fp32_wrapper=False, keep_torch_compile=False
        ).eval()
        summary = summarize(
            run, model, tokenizer, data, trainer.state, train_metrics, eval_metrics, start_step, wall_start
        )
        try:
            save_final_model(output_dir, model, tokenizer, summary, trainer.state.log_history)
        except WRITE_ERRORS as error:
            raise RunWriteError(
                f"{write_failure(error, output_dir, 'the final model')}; the checkpoints and every file already "
                "there are intact: free some space, then run again with --resume_from_checkpoint to save it."
            ) from error
        print_summary(summary, output_dir)
    trainer.accelerator.wait_for_everyone()  # the other processes keep the process group up until the save
    trainer.accelerator.end_training()
    return summary


def summarize(
    run: RunArguments, model, tokenizer, data: TrainingData, state, train_metrics, eval_metrics, start_step, wall_start
):
    """The run's figures: losses, exact match on held-out questions, speed, memory, a sample."""
    args = run.training
    examples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    tokens_per_step = examples_per_step * data.tokens_per_example
    steps_this_session = state.global_step - start_step  # a resumed run timed only its own steps
    train_losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    memory, memory_kind = peak_memory()
    tokenizer_name = (
        f"{type(tokenizer).__name__} of {run.model.init_from}" if run.model.init_from else run.data.tokenizer
    )
    return RunSummary(
        preset=run.model.preset,
        data=data.description,
        tokenizer=tokenizer_name,
        n_layer=model.config.n_layer,
        n_head=model.config.n_head,
        n_embd=model.config.n_embd,
        n_positions=model.config.n_positions,
        vocab_size=model.config.vocab_size,
        parameters=model.num_parameters(),
        parameters_without_positions=model.num_parameters() - model.transformer.wpe.weight.numel(),
        device=run.policy.device if args.world_size == 1 else f"{args.world_size} x {run.policy.device}",
        precision=run.policy.precision,
        global_step=state.global_step,
        tokens_seen=int(state.global_step * tokens_per_step),
        train_loss=train_losses[-1] if train_losses else None,
        val_loss=eval_metrics.get("eval_loss"),
        val_perplexity=perplexity(eval_metrics.get("eval_loss")),
        tokens_per_second=steps_this_session * tokens_per_step / max(train_metrics["train_runtime"], 1e-9),
        train_seconds=train_metrics["train_runtime"],
        wall_seconds=time.perf_counter() - wall_start,
        peak_memory_bytes=memory,
        peak_memory_kind=memory_kind,
        exact_match=exact_match(model, tokenizer, data.heldout) if data.heldout else None,
        heldout_questions=len(data.heldout) if data.heldout else 0,
        init_from=run.model.init_from,
        chat=data.chat,
        sample=sample_text(model, tokenizer, data.sample_prompt, seed=args.seed),
    )


def print_summary(summary: RunSummary, output_dir: Path) -> None:
    print(f"\nsample:\n{summary.sample}\n")
    figures = [f"val loss {summary.val_loss:.4f} (perplexity {summary.val_perplexity:.2f})"]
    if summary.exact_match is not None:
        figures.append(
            f"exact match {100 * summary.exact_match:.1f}% on {summary.heldout_questions} held-out questions"
        )
    figures.append(f"{summary.tokens_per_second:,.0f} tokens/s, {summary.wall_seconds:.1f} s wall")
    print(", ".join(figures))
    print(f"saved to {output_dir} (AutoModelForCausalLM.from_pretrained({str(output_dir)!r}) after `import tinygpt`)")


def main(argv: list[str] | None = None, started_at: float | None = None) -> int:
    """`python train.py ...`: returns the exit code; bad input is one line on stderr, never a traceback.

    `started_at` (a `time.perf_counter()` reading) starts the run's wall clock; train.py takes it before its
    imports, so the reported wall time is what the user waited for.
    """
    wall_start = time.perf_counter() if started_at is None else started_at
    try:
        train(parse_args(argv), wall_start)
    except (TrainingSetupError, DataError, ModelLoadError, RunWriteError) as error:
        print(f"train.py: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("train.py: interrupted; continue with --resume_from_checkpoint", file=sys.stderr)
        return 130
    return 0


__all__ = ["DataArguments", "ModelArguments", "RunWriteError", "TrainingSetupError", "main", "parse_args", "train"]
