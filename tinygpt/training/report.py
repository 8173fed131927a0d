"""What a training run reports: its figures (`summarize`, printed by `print_summary`), a sample, and what it
leaves beside its model: loss.png, metrics.json and the model card (README.md).

All three are built from the Trainer's `log_history` and one `RunSummary`, so they always agree. The model
card is tinygpt.hub.card's, the one every model folder gets; the plot goes through a bare matplotlib Figure, which renders straight to the file (no pyplot, no
display, and matplotlib is only imported when the plot is drawn: importing it would slow every start-up).
"""

import json
import math
import os
import shutil
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tinygpt.decoding.engine import Engine, Request
from tinygpt.decoding.sampling import settings_from
from tinygpt.hub.card import adapter_card_settings
from tinygpt.hub.card import model_card as card_for
from tinygpt.training.args import RunArguments
from tinygpt.training.corpus import TrainingData
from tinygpt.training.exam import exact_match


@dataclass
class RunSummary:
    """The figures of one finished run (metrics.json holds exactly these fields)."""

    preset: str
    data: str  # what was trained on, in words
    tokenizer: str
    n_layer: int
    n_head: int
    n_embd: int
    n_positions: int
    vocab_size: int
    parameters: int  # all of them, the tied head counted once
    parameters_without_positions: int  # nanoGPT's count: without the position embedding
    device: str
    precision: str
    global_step: int
    tokens_seen: int
    train_loss: float | None
    val_loss: float | None
    val_perplexity: float | None
    tokens_per_second: float
    train_seconds: float
    wall_seconds: float  # from train.py's start, imports and data preparation included
    peak_memory_bytes: int
    peak_memory_kind: str  # "cuda allocated" or "process RSS"
    exact_match: float | None = None  # held-out synthetic questions answered exactly (greedy decoding)
    heldout_questions: int = 0  # how many were asked
    init_from: str | None = None  # the model this run fine-tuned
    lora_r: int | None = None  # a LoRA run's rank: the run trained an adapter on init_from
    trainable_parameters: int | None = None  # a LoRA run's: the adapter's (parameters counts the base's)
    chat: bool = False  # trained on conversations (the card then shows chat usage)
    sample: str = ""
    eval_bits_per_byte: float | None = None  # the validation loss per UTF-8 byte of the validation text, in bits


def perplexity(loss: float | None) -> float | None:
    return math.exp(loss) if loss is not None and loss < 50 else None


def write_metrics(summary: RunSummary, path: Path) -> None:
    path.write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")


def loss_curves(log_history: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train, validation) lists of (step, loss) from Trainer's log_history."""
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    val = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    return train, val


def plot_losses(log_history: list[dict], path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    train, val = loss_curves(log_history)
    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train, strict=True), label="train", color="tab:blue")
    if val:
        ax.plot(*zip(*val, strict=True), label="validation", color="tab:orange", marker="o", markersize=3)
    ax.set(xlabel="step", ylabel="cross-entropy loss (nats/token)")
    ax.set_title(textwrap.fill(title, width=80), fontsize=10)  # long data descriptions stay inside the figure
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")


def model_card(summary: RunSummary, config, path_hint: str, adapter_config: dict | None = None):
    """The README.md of a saved model or adapter (tinygpt.hub.card): shape, data, metrics, the loss curve, a sample,
    usage; for an adapter (its adapter_config.json), its base too."""
    return card_for(
        config,
        title=f"tinygpt-{summary.preset}" + ("-lora" if adapter_config else ""),
        where=path_hint,
        tokenizer=summary.tokenizer,
        run=summary,
        adapter=adapter_card_settings(adapter_config) if adapter_config else None,
    )


def save_final_model(output_dir: Path, model, tokenizer, summary: RunSummary, log_history: list[dict]) -> None:
    """Model, tokenizer, loss.png, metrics.json and README.md, moved into output_dir only once all are written.

    The folder also holds this run's checkpoints, so it cannot be swapped whole: each file is renamed into
    place (atomic on one filesystem), config.json (a LoRA run's adapter_config.json) last, so loaders never see a
    config without its weights.
    """
    staging = Path(tempfile.mkdtemp(prefix=".final-", dir=output_dir))
    try:
        model.config.use_cache = True  # the Trainer trains without a KV cache; generation wants it back
        model.save_pretrained(staging)  # a LoRA run's PeftModel: the adapter alone (PEFT's README.md, replaced below)
        adapter = summary.lora_r is not None
        if adapter:  # PEFT saves no generation settings
            model.generation_config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        plot_losses(log_history, staging / "loss.png", title=f"tinygpt-{summary.preset}: {summary.data}")
        write_metrics(summary, staging / "metrics.json")
        adapter_settings = json.loads((staging / "adapter_config.json").read_text()) if adapter else None
        model_card(summary, model.config, str(output_dir), adapter_settings).save(staging / "README.md")
        for path in sorted(staging.iterdir(), key=lambda p: p.name in ("config.json", "adapter_config.json")):
            os.replace(path, output_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def peak_memory() -> tuple[int, str]:
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return torch.cuda.max_memory_allocated(), "cuda allocated"
    import resource  # POSIX only; ru_maxrss is KiB on Linux, bytes on macOS

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024), "process RSS"


def summarize(
    run: RunArguments,
    model,
    tokenizer,
    data: TrainingData,
    state,
    train_metrics,
    eval_metrics,
    start_step,
    wall_start,
    fsdp: bool = False,
):
    """The run's figures: losses, exact match on held-out questions, speed, memory, a sample. `fsdp`: the processes
    (if several) sharded the model rather than each holding a copy (DDP)."""
    args = run.training
    examples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    parallelism = "FSDP" if fsdp else "DDP"
    tokens_per_step = examples_per_step * data.tokens_per_example
    steps_this_session = state.global_step - start_step  # a resumed run timed only its own steps
    train_losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    memory, memory_kind = peak_memory()
    trainable = None
    if hasattr(model, "get_nb_trainable_parameters"):  # a LoRA run's PeftModel: count the base and the adapter apart
        trainable, _ = model.get_nb_trainable_parameters()
        model = model.get_base_model()  # the model with its LoRA layers in place, which the engine decodes
    parameters = model.num_parameters() - (trainable or 0)
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
        parameters=parameters,
        parameters_without_positions=parameters - model.transformer.wpe.weight.numel(),
        device=run.policy.device if args.world_size == 1 else f"{args.world_size} x {run.policy.device}, {parallelism}",
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
        lora_r=run.model.lora_r,
        trainable_parameters=trainable,
        chat=data.chat,
        sample=sample_text(model, tokenizer, data.sample_prompt, seed=args.seed),
        eval_bits_per_byte=eval_metrics.get("eval_bits_per_byte"),
    )


def print_summary(summary: RunSummary, output_dir: Path) -> None:
    print(f"\nsample:\n{summary.sample}\n")
    shown = "over e^50" if summary.val_perplexity is None else f"{summary.val_perplexity:.2f}"
    bits = "" if summary.eval_bits_per_byte is None else f", {summary.eval_bits_per_byte:.4f} bits per byte"
    figures = [f"val loss {summary.val_loss:.4f} (perplexity {shown}{bits})"]
    if summary.exact_match is not None:
        figures.append(
            f"exact match {100 * summary.exact_match:.1f}% on {summary.heldout_questions} held-out questions"
        )
    figures.append(f"{summary.tokens_per_second:,.0f} tokens/s, {summary.wall_seconds:.1f} s wall")
    print(", ".join(figures))
    if summary.lora_r is not None:
        print(
            f"saved the adapter to {output_dir} (AutoPeftModelForCausalLM.from_pretrained({str(output_dir)!r}, "
            f"trust_remote_code=True), or `tinygpt chat {output_dir}`; `tinygpt merge` writes a full model)"
        )
        return
    print(f"saved to {output_dir} (AutoModelForCausalLM.from_pretrained({str(output_dir)!r}) after `import tinygpt`)")


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
