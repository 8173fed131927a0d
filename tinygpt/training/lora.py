"""LoRA through PEFT: `--lora_r R` freezes the --init_from model and trains a low-rank adapter on its blocks'
projections (`peft.get_peft_model` with a CAUSAL_LM `LoraConfig`).

- What is saved: checkpoints and the final folder hold the adapter (adapter_config.json, adapter_model.safetensors)
  and, in checkpoints, the optimizer state of the adapter's weights only; never the base's weights. The adapter names
  its base as --init_from gave it (a Hub repo id as is, a folder as an absolute path), so PEFT's
  `AutoPeftModelForCausalLM` and tinygpt's one loader (tinygpt.hub.loader) both find it.
- The base must be a tinygpt model an adapter can name: a folder, a Hub repo id, a merged adapter, or another
  adapter (merged on loading). GPT-2 converted on the fly is not one: the conversion has no name to point at.
- peft is the optional 'lora' extra, imported only when --lora_r is given; without it --lora_r is one line.
"""

import functools
import os

from torch import nn

from tinygpt.hub.loader import names_hub_repo
from tinygpt.training.args import LORA_TARGETS, RunArguments, TrainingSetupError

LORA_FLAGS = ("lora_alpha", "lora_dropout", "lora_target_modules")
LORA_EXTRA = "pip install 'tinygpt[lora]'"


def uses_lora(run: RunArguments) -> bool:
    return run.model.lora_r is not None


def import_peft():
    try:
        import peft
    except ImportError:
        raise TrainingSetupError(f"--lora_r needs the 'lora' extra (peft is missing): {LORA_EXTRA}") from None
    return peft


def check_lora_arguments(run: RunArguments) -> None:
    """LoRA flags no run can use, refused before anything is written."""
    m = run.model
    if m.lora_r is None:
        given = [flag for flag in LORA_FLAGS if flag in run.passed]
        if given:
            raise TrainingSetupError(f"--{given[0]} only applies to a LoRA run: add --lora_r R (e.g. 8), or drop it.")
        return
    if m.lora_r < 1:
        raise TrainingSetupError(f"--lora_r must be at least 1, got {m.lora_r}; drop it for a full fine-tune.")
    if m.init_from is None:
        raise TrainingSetupError(
            "--lora_r trains an adapter on an existing model: add --init_from (a tinygpt folder or Hub repo id)."
        )
    if m.lora_alpha is not None and m.lora_alpha < 1:
        raise TrainingSetupError(f"--lora_alpha must be at least 1, got {m.lora_alpha}.")
    if not 0 <= m.lora_dropout < 1:
        raise TrainingSetupError(f"--lora_dropout must be in [0, 1), got {m.lora_dropout}.")
    if m.muon_lr is not None:
        raise TrainingSetupError("--muon_lr trains the blocks' full matrices, which LoRA freezes: drop one of the two.")
    import_peft()


def base_reference(init_from: str) -> str:
    """How the adapter names its base: a Hub repo id as is, a folder as an absolute path (found from anywhere)."""
    return init_from if names_hub_repo(init_from) else os.path.abspath(init_from)


def with_lora(model, run: RunArguments):
    """`model` frozen inside a PeftModel whose LoRA layers on --lora_target_modules are the only trainable weights."""
    peft = import_peft()
    m = run.model
    projections = [name for name, module in model.transformer.h.named_modules() if isinstance(module, nn.Linear)]
    for target in m.lora_target_modules:
        if not any(name == target or name.endswith(f".{target}") for name in projections):
            names = sorted({name.rsplit(".", 1)[-1] for name in projections})
            raise TrainingSetupError(
                f"--lora_target_modules {target}: the model has no such layer in its blocks; its projections are "
                f"{', '.join(names)} (default: {' '.join(LORA_TARGETS)})."
            )
    config = peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=m.lora_r,
        lora_alpha=m.lora_alpha or 2 * m.lora_r,
        lora_dropout=m.lora_dropout,
        target_modules=list(m.lora_target_modules),
    )
    model = peft.get_peft_model(model, config)
    # get_peft_model names the folder the base was read from (for a Hub repo, a snapshot in the cache): name it as
    # --init_from gave it instead.
    model.peft_config["default"].base_model_name_or_path = base_reference(m.init_from)
    # Only the blocks' projections are adapted (never the embedding): PEFT need not ask the Hub, at every
    # checkpoint, whether the base's vocabulary was resized.
    model.save_pretrained = functools.partial(model.save_pretrained, save_embedding_layers=False)
    return model


def describe_lora(model, run: RunArguments) -> str:
    """The line a LoRA run prints: what it trains, and its share of the model."""
    trainable, total = model.get_nb_trainable_parameters()
    m = run.model
    return (
        f"training a LoRA adapter (r={m.lora_r}, alpha={m.lora_alpha or 2 * m.lora_r}, on "
        f"{', '.join(m.lora_target_modules)}) of {m.init_from}: {trainable:,} trainable parameters of "
        f"{total:,} ({100 * trainable / total:.2f}%)"
    )


def load_adapter_weights(model, checkpoint: str) -> None:
    """The adapter weights of a checkpoint, into the PeftModel (a run resumed at its last step trains nothing)."""
    import_peft()
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    set_peft_model_state_dict(model, load_peft_weights(checkpoint))


__all__ = [
    "base_reference",
    "check_lora_arguments",
    "describe_lora",
    "load_adapter_weights",
    "uses_lora",
    "with_lora",
]
