"""LoRA adapters (PEFT) as tinygpt models: a folder holding adapter_config.json and adapter_model.safetensors,
whose `base_model_name_or_path` names a tinygpt model (a folder or a Hub repo id), and no config.json.

The one loader (tinygpt.hub.loader) loads the base with its own checks, then `merge_adapter` applies the adapter and
merges it (`merge_and_unload`), so everything downstream decodes a plain TinyGPTForCausalLM at full speed. This
module only reads and checks the adapter's own files, each problem one `ModelLoadError` line.

peft is imported here only, and only once an adapter is met: tinygpt works without the 'lora' extra.
"""

import json
import os
from pathlib import Path

from huggingface_hub import constants
from safetensors import SafetensorError, safe_open

from tinygpt.data.errors import first_line
from tinygpt.hub.checks import ModelLoadError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FILES = [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
LORA_EXTRA = "pip install 'tinygpt[lora]'"


def is_adapter_folder(folder: str | os.PathLike) -> bool:
    """A PEFT adapter's folder: adapter_config.json and no config.json (a full model's folder has one)."""
    folder = Path(folder)
    return (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file()


def came_from_hub(folder: str | os.PathLike) -> bool:
    """The folder is a pull: a snapshot in the HF cache, or a `tinygpt pull` into a folder. Its adapter, written by
    whoever owns the repo, may name its base by Hub repo id only (never a folder of this machine)."""
    folder = Path(folder).resolve()
    return folder.is_relative_to(Path(constants.HF_HUB_CACHE).resolve()) or (folder / ".cache" / "huggingface").is_dir()


def adapter_settings(folder: str | os.PathLike) -> dict:
    """adapter_config.json of a LoRA adapter, checked: JSON, a LoRA, a base named, readable weights."""
    path = Path(folder) / ADAPTER_CONFIG
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelLoadError(
            f"{path} is not valid JSON ({first_line(error)}); fix it or save the adapter again."
        ) from None
    if not isinstance(settings, dict):
        raise ModelLoadError(f"{path} is not a JSON object of settings; fix it or save the adapter again.")
    if settings.get("peft_type") != "LORA":
        raise ModelLoadError(
            f"{folder}: adapter_config.json holds a {settings.get('peft_type')!r} adapter; tinygpt loads LoRA adapters."
        )
    base = settings.get("base_model_name_or_path")
    if not isinstance(base, str) or not base.strip():
        raise ModelLoadError(
            f"{folder}: adapter_config.json names no base model; set base_model_name_or_path to the base's folder "
            "or Hub repo id."
        )
    adapter_weight_names(folder)
    return settings


def adapter_weight_names(folder: str | os.PathLike) -> set[str]:
    """The tensor names in adapter_model.safetensors (its header only)."""
    path = Path(folder) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise ModelLoadError(f"{folder}: no {ADAPTER_WEIGHTS}; save the adapter there (save_pretrained) again.")
    try:
        with safe_open(path, framework="pt") as weights:
            return set(weights.keys())
    except (OSError, SafetensorError) as error:
        raise ModelLoadError(f"{path} is truncated or corrupt ({error}); save or download it again.") from None


def import_peft(folder: str | os.PathLike):
    try:
        import peft
    except ImportError:
        raise ModelLoadError(
            f"{folder} is a LoRA adapter, which needs the 'lora' extra (peft is missing): {LORA_EXTRA}"
        ) from None
    return peft


def merge_adapter(base_model, folder: str | os.PathLike):
    """`base_model` with the adapter in `folder` applied and merged into its weights: a plain TinyGPTForCausalLM.

    PEFT itself only logs adapter tensors that fit no layer, or layers the file has no tensor for; here either is
    refused, as are shapes that do not fit (another base's adapter)."""
    peft = import_peft(folder)
    saved = adapter_weight_names(folder)
    try:
        config = peft.LoraConfig.from_pretrained(str(folder))
        # The file's weights replace the initial ones anyway: a costly or data-driven initialisation the config may
        # ask for (SVD, LoftQ, EVA) never runs.
        config.init_lora_weights, config.inference_mode = True, True
        model = peft.PeftModel.from_pretrained(base_model, str(folder), config=config)
    except (ValueError, RuntimeError, KeyError, TypeError, AttributeError, ImportError) as error:
        raise ModelLoadError(
            f"{folder}: the adapter does not fit its base model ({first_line(error)}); pair it with the base it was "
            "trained on."
        ) from None
    # PEFT's names in the model carry the adapter's name ("...lora_A.default.weight"); the file's do not.
    expected = {name.replace(".default.", ".") for name in model.state_dict() if ".lora_" in name}
    for found, against, what in ((expected, saved, "lacks"), (saved, expected, "holds")):
        extra = sorted(found - against)
        if extra:
            raise ModelLoadError(
                f"{folder}: {ADAPTER_WEIGHTS} {what} {len(extra)} tensor(s) that its base model's LoRA layers "
                f"{'need' if what == 'lacks' else 'have no place for'}, such as {extra[0]}; pair it with the base "
                "it was trained on."
            )
    return model.merge_and_unload().eval()


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_FILES",
    "ADAPTER_WEIGHTS",
    "adapter_settings",
    "came_from_hub",
    "import_peft",
    "is_adapter_folder",
    "merge_adapter",
]
