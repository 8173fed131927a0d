"""train.py's arguments: HfArgumentParser over (ModelArguments, DataArguments, TrainingArguments), presets,
the device policy, and every check a value needs before anything is written.

- Every Trainer flag works from the command line. A preset (tinygpt/presets.py) becomes the parser's defaults;
  a first pass with every default suppressed tells which flags the user actually typed, and those always win.
- Device and precision are chosen once, before TrainingArguments exist, and printed with the reason:
  CUDA -> bf16 where supported, else fp16; MPS -> fp32 unless --bf16 (MPS bf16 still breaks in the field);
  CPU -> fp32.
- `check_arguments` refuses values no run can use (non-finite numbers, counts below one, an output folder that
  cannot be written) before anything is written, so a failed run never blocks the corrected rerun.
"""

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    HfArgumentParser,
    TrainingArguments,
)

from tinygpt.configuration_tinygpt import ACTIVATIONS
from tinygpt.data.errors import first_line
from tinygpt.training.fused_loss import liger_installed
from tinygpt.training.presets import DEFAULT_PRESET, PRESETS, describe_presets

LATEST = "latest"  # --resume_from_checkpoint with no path, or with this word: the newest complete checkpoint
POSITIVE_COUNTS = (  # flags that count something of which a run needs at least one
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "eval_windows",
    "synthetic_conversations",
)

LORA_TARGETS = ("c_attn", "c_proj", "c_fc")  # every attention and MLP projection of a block
SHAPE_FLAGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "activation_function")


class TrainingSetupError(ValueError):
    """A run that cannot start as asked; the message names the problem and the fix (one line, no traceback)."""


@dataclass
class ModelArguments:
    preset: str = field(
        default=DEFAULT_PRESET, metadata={"help": "model shape and training defaults", "choices": list(PRESETS)}
    )
    init_from: str | None = field(
        default=None,
        metadata={"help": "fine-tune this model: a tinygpt folder or Hub repo, 'gpt2', or a GPT-2 folder"},
    )
    lora_r: int | None = field(
        default=None,
        metadata={"help": "train a LoRA adapter of this rank on --init_from (frozen) instead of every weight (PEFT)"},
    )
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA scaling numerator (default: 2 x --lora_r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch's input"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(LORA_TARGETS),
        metadata={"help": "the blocks' Linear layers LoRA adapts (names or name suffixes)"},
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
    streaming: bool = field(
        default=False,
        metadata={
            "help": "stream --dataset_name (datasets' streaming=True) instead of caching it: for corpora larger than the disk"
        },
    )
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
            defaults["use_liger_kernel"] = liger_installed()  # the fused loss, kept where it pays: see choose_loss
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
        raise TrainingSetupError(first_line(error)) from error
    use_cuda_graphs(training_args, policy, PRESETS[preset_name].cuda_compile, passed)
    if training_args.fsdp and "use_liger_kernel" not in passed:
        training_args.use_liger_kernel = False  # the fused loss reads the head's weight, which FSDP shards: untried
    return RunArguments(model_args, data_args, training_args, passed, policy)


def use_cuda_graphs(args: TrainingArguments, policy: DevicePolicy, preset_compile: str | None, passed: dict) -> None:
    """On CUDA, compile with CUDA graphs where it is safe and the user chose neither backend nor mode.

    A small model's step is bound by kernel launches, not arithmetic: CUDA graphs (backend "cudagraphs", the
    traced step replayed as recorded, or inductor's fused kernels with mode "reduce-overhead") cut its step time a
    lot (the README's performance section has the figures). Set after parsing because TrainingArguments turns
    compiling on whenever a backend or mode is set, which would make `--torch_compile False` impossible. Not
    under DDP, whose gradient hooks write into buffers that a replayed graph would overwrite, nor with gradient
    accumulation, where backward read forward outputs that the next replay had overwritten (gpt2-small on an
    H200). Nor for a preset that compiles with "inductor": its kernels are long, and on gpt2-small's 32 x 1024
    batch the graphs were slower (an H200, the README's performance section).
    """
    chosen = "torch_compile_backend" in passed or "torch_compile_mode" in passed
    unsafe = args.world_size > 1 or args.gradient_accumulation_steps > 1
    if policy.device != "cuda" or not args.torch_compile or chosen or unsafe or preset_compile == "inductor":
        return
    if preset_compile == "cudagraphs":
        args.torch_compile_backend = "cudagraphs"
    else:  # a CPU-sized preset that the user compiles on a GPU: small kernels, launch-bound
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
    t = run.training
    for name, value in {"adam_beta1": t.adam_beta1, "adam_beta2": t.adam_beta2}.items():
        if not 0 <= value < 1:  # what torch's AdamW accepts; checked here, before the run folder is written
            raise TrainingSetupError(f"--{name} must be in [0, 1), got {value}.")
    if not t.adam_epsilon >= 0:
        raise TrainingSetupError(f"--adam_epsilon must be 0 or more, got {t.adam_epsilon}.")
    for name in POSITIVE_COUNTS:
        value = next(getattr(group, name) for group in (run.training, run.data) if hasattr(group, name))
        if value is not None and value < 1:
            raise TrainingSetupError(f"--{name} must be at least 1, got {value}.")
    if run.model.block_size is not None and run.model.block_size < 2:  # decoding needs room for a next token
        raise TrainingSetupError(f"--block_size must be at least 2, got {run.model.block_size}.")
    if run.training.fsdp and run.policy.device != "cuda":
        # accelerate shards only over GPUs: elsewhere --fsdp would silently train every process's whole copy
        raise TrainingSetupError(
            f"--fsdp shards the model over CUDA GPUs, and this run is on {run.policy.device}; drop --fsdp "
            "(under torchrun the processes then train with DDP)."
        )
    if run.training.use_liger_kernel and run.policy.device != "cuda":
        raise TrainingSetupError(
            f"--use_liger_kernel runs Liger Kernel's Triton kernels on CUDA GPUs, and this run is on "
            f"{run.policy.device}; drop it (the plain loss is used)."
        )
    if run.training.use_liger_kernel and not liger_installed():
        raise TrainingSetupError(
            "--use_liger_kernel needs Liger Kernel: pip install 'tinygpt[gpu]' (or liger-kernel), or drop the flag."
        )
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
