"""The one loader: `load(source)` takes a model folder or a Hub repo id (pulled into the cache first, with
tinygpt.hub.remote's checks) and returns a checked (model, tokenizer) in eval mode. Every command, the app and
train.py's --init_from load through it, so each gets the same checks and the same one-line errors.

A LoRA adapter (tinygpt.hub.adapter: a folder or repo holding adapter_config.json) loads as a model too: its base,
which it names, comes through this same loader (so through the same checks), the adapter is applied and merged into
it, and the tokenizer and generation settings come from the adapter's folder. A pulled adapter may name its base by
Hub repo id only.
"""

import os
from pathlib import Path

from transformers import AutoTokenizer, GenerationConfig

from tinygpt.data.errors import first_line
from tinygpt.hub.adapter import adapter_settings, came_from_hub, import_peft, is_adapter_folder, merge_adapter
from tinygpt.hub.checks import (
    ModelLoadError,
    check_chat_template,
    check_generation_config,
    check_tokenizer_fits,
    load_model_and_tokenizer,
)
from tinygpt.hub.remote import HubError, pull_model, validate_repo_id

MAX_ADAPTER_DEPTH = 4  # an adapter's base may be an adapter, this many deep at most (a loop ends here)


def names_hub_repo(source: str | os.PathLike) -> bool:
    """`source` is a Hub repo id (owner/name) and no folder of that name exists here."""
    if Path(source).is_dir():
        return False
    try:
        validate_repo_id(str(source))
    except HubError:
        return False
    return True


def model_folder(source: str | os.PathLike, *, revision: str | None = None, token: str | bool | None = None) -> Path:
    """The folder of `source`: itself if it is a folder, else the Hub repo it names, pulled into the HF cache."""
    if Path(source).is_dir():
        return Path(source)
    if not names_hub_repo(source):
        raise HubError(f"{source} is neither a model folder nor a Hub repo id (owner/name): check the path.")
    return pull_model(str(source), revision=revision, token=token)


def load(source: str | os.PathLike, *, revision: str | None = None, token: str | bool | None = None, **model_kwargs):
    """(model, tokenizer) from a model or adapter folder or a Hub repo id, checked; raises ModelLoadError or HubError.

    `model_kwargs` go to `from_pretrained` (config overrides such as `dropout=`, or `dtype=`)."""
    folder = model_folder(source, revision=revision, token=token)
    if is_adapter_folder(folder):
        return load_adapter(folder, token=token, **model_kwargs)
    return load_model_and_tokenizer(folder, **model_kwargs)


def load_adapter(folder: Path, *, token: str | bool | None = None, depth: int = 0, **model_kwargs):
    """(the base with the adapter merged in, the adapter's tokenizer) of a LoRA adapter's folder."""
    settings = adapter_settings(folder)
    import_peft(folder)  # before the base is fetched: the missing extra is the first thing to say
    base = settings["base_model_name_or_path"]
    if came_from_hub(folder):
        try:
            validate_repo_id(base)
        except HubError:
            raise ModelLoadError(
                f"{folder}: this pulled adapter names its base as {base!r}, not a Hub repo id (owner/name): a "
                "pulled adapter may only name a base on the Hub."
            ) from None
    try:
        if came_from_hub(folder):  # by repo id, never a folder here that happens to have the same name
            base_folder = pull_model(base, revision=settings.get("revision"), token=token)
        else:
            base_folder = model_folder(base, revision=settings.get("revision"), token=token)
        if is_adapter_folder(base_folder):
            if depth + 1 >= MAX_ADAPTER_DEPTH:
                raise ModelLoadError(f"adapters on adapters, {MAX_ADAPTER_DEPTH} deep; merge one (tinygpt merge).")
            base_model, base_tokenizer = load_adapter(base_folder, token=token, depth=depth + 1, **model_kwargs)
        else:
            base_model, base_tokenizer = load_model_and_tokenizer(base_folder, **model_kwargs)
    except (ModelLoadError, HubError) as error:
        raise ModelLoadError(
            f"{folder} is a LoRA adapter of {base}, which cannot be loaded: {' '.join(str(error).split())}"
        ) from None
    model = merge_adapter(base_model, folder)
    tokenizer = base_tokenizer
    if (folder / "tokenizer_config.json").is_file():
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"{folder}: no usable tokenizer ({first_line(error)})") from error
        check_tokenizer_fits(tokenizer, model.config, folder)
        check_chat_template(tokenizer, folder)
    if (folder / "generation_config.json").is_file():
        check_generation_config(folder)
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model, tokenizer
