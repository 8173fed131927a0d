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
- Runs are restartable: every `--save_steps` the Trainer writes a checkpoint; `--resume_from_checkpoint`
  (bare: the newest complete one) restores weights, optimizer, LR schedule, RNG and the data position. The
  output folder records the run's settings, and a different run is refused instead of mixed in.
- Only the main process writes. The final model is staged in a temporary folder and moved in file by file
  with atomic renames, config.json last, so a crash never leaves a truncated file or a config that points at
  missing weights.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    DataCollatorForSeq2Seq,
    HfArgumentParser,
    PreTrainedTokenizerBase,
    Trainer,
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


def is_complete_checkpoint(path: Path) -> bool:
    # The Trainer writes trainer_state.json last, so a readable one marks a checkpoint that was fully written.
    if not all((path / name).is_file() for name in CHECKPOINT_FILES):
        return False
    try:
        json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def checkpoint_to_resume(requested: str | None, output_dir: Path) -> tuple[str | None, str]:
    """(the checkpoint folder to resume from or None to start fresh, a line telling the user which)."""
    if requested is None:
        return None, ""
    if requested != LATEST or Path(requested).is_dir():
        if not is_complete_checkpoint(Path(requested)):
            raise TrainingSetupError(
                f"--resume_from_checkpoint {requested} is not a complete checkpoint (it needs "
                f"{', '.join(CHECKPOINT_FILES)}); pass another checkpoint-N folder, or the bare flag for the newest."
            )
        return requested, f"resuming from {requested}"
    steps = {p.name.removeprefix("checkpoint-"): p for p in output_dir.glob("checkpoint-*")}  # the Trainer's names
    by_step = {int(step): path for step, path in steps.items() if step.isdigit()}
    complete = [step for step in sorted(by_step) if is_complete_checkpoint(by_step[step])]
    if not complete:
        return None, f"no complete checkpoint in {output_dir} yet: starting from step 0"
    skipped = [by_step[step].name for step in sorted(by_step) if step > complete[-1]]
    note = f" (skipping {', '.join(skipped)}: incomplete, the run stopped while writing it)" if skipped else ""
    return str(by_step[complete[-1]]), f"resuming from {by_step[complete[-1]]}{note}"


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
    model = TinyGPTForCausalLM.from_gpt2(source, **overrides)
    tokenizer = load_gpt2_chat_tokenizer(source)
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)  # room for the chat tokens
    for config in (model.config, model.generation_config):
        config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def model_and_tokenizer(run: RunArguments, corpus: str, resume_from: str | None):
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
    return Trainer(
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


@torch.no_grad()
def sample_text(model, tokenizer, prompt_ids: torch.Tensor, seed: int, max_new_tokens: int = 200) -> str:
    """One continuation of the prompt with the model's generation defaults, special tokens shown."""
    torch.manual_seed(seed)
    prompt_ids = prompt_ids.to(model.device)  # (1, T)
    output = model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=max_new_tokens)
    return tokenizer.decode(output[0], skip_special_tokens=False)  # (1, T + new) -> text


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
    if is_main:
        print(f"device: {run.policy.device}, precision: {run.policy.precision} ({run.policy.reason})")
    output_dir = Path(args.output_dir)
    settings = run_settings(run)
    check_output_dir(output_dir, settings)
    resume_from, resume_note = checkpoint_to_resume(args.resume_from_checkpoint, output_dir)
    corpus, conversations, heldout, description = read_sources(run.data, seed=args.seed)
    model, tokenizer = model_and_tokenizer(run, corpus, resume_from)
    block_size = model.config.n_positions
    tokenizer.model_max_length = VERY_LARGE_INTEGER  # a saved limit would warn about the whole corpus's length
    if conversations is not None:
        data = conversation_data(run, tokenizer, block_size, conversations, heldout, description)
    else:
        data = token_window_data(run, tokenizer, block_size, corpus, description)
    tokenizer.model_max_length = block_size  # saved with it: pipelines then never feed the model more
    set_generation_defaults(model, tokenizer, chat=data.chat)

    if is_main:  # every input is checked: from here on the folder belongs to this run
        if resume_note:
            print(resume_note)
        elif any(output_dir.glob("checkpoint-*")):
            print(f"note: starting {output_dir} over; --resume_from_checkpoint would continue its checkpoints")
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / RUN_SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        print(f"training {model.num_parameters() / 1e6:.2f}M parameters on {data.description}")

    trainer = build_trainer(model, tokenizer, args, data, run.model.muon_lr)
    start_step = json.loads(Path(resume_from, "trainer_state.json").read_text())["global_step"] if resume_from else 0
    train_metrics = trainer.train(resume_from_checkpoint=resume_from).metrics
    eval_metrics = final_evaluation(trainer)
    summary = None
    if is_main:
        model = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False).eval()
        summary = summarize(
            run, model, tokenizer, data, trainer.state, train_metrics, eval_metrics, start_step, wall_start
        )
        save_final_model(output_dir, model, tokenizer, summary, trainer.state.log_history)
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
    except (TrainingSetupError, DataError, ModelLoadError) as error:
        print(f"train.py: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("train.py: interrupted; continue with --resume_from_checkpoint", file=sys.stderr)
        return 130
    return 0


__all__ = ["DataArguments", "ModelArguments", "TrainingSetupError", "main", "parse_args", "train"]
