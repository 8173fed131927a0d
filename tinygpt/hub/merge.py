"""`tinygpt merge ADAPTER OUT`: a LoRA adapter merged into its base, written as a full model folder (weights,
config, tokenizer, tinygpt's code files, generation settings, a card), which exports, pushes and loads like any other.

The one loader does the merging (tinygpt.hub.loader: base fetched with its checks, adapter applied and merged); this
module writes the result as an export does (tinygpt.hub.export.written_into_place), so a failed write leaves nothing.
"""

from pathlib import Path

from transformers.utils import logging as transformers_logging

from tinygpt.hub.adapter import adapter_settings, is_adapter_folder
from tinygpt.hub.card import model_card
from tinygpt.hub.export import written_into_place
from tinygpt.hub.loader import load, model_folder


class MergeError(ValueError):
    """A merge that cannot be done as asked; one line naming the fix."""


def merge_adapter_folder(source, out, *, token: str | bool | None = None) -> Path:
    """Merge the adapter `source` (a folder or a Hub repo id) into its base; write the full model to `out`."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise MergeError(f"{out} already exists: merge into a new folder (or remove it first).")
    folder = model_folder(source, token=token)
    if not is_adapter_folder(folder):
        raise MergeError(f"{source} is not a LoRA adapter (no adapter_config.json): it is a full model already.")
    base = adapter_settings(folder)["base_model_name_or_path"]
    transformers_logging.disable_progress_bar()
    model, tokenizer = load(folder, token=token)
    with written_into_place(out, MergeError) as written:
        model.config.use_cache = True
        model.save_pretrained(written)  # weights, config.json, generation_config.json and the code files
        tokenizer.save_pretrained(written)
        card = model_card(
            model.config,
            title=out.name,
            where=str(out),
            tokenizer=type(tokenizer).__name__,
            merged=f"the LoRA adapter {source} merged into its base {base}",
        )
        card.save(written / "README.md")
    return out


__all__ = ["MergeError", "merge_adapter_folder"]
