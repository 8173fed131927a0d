"""The one loader: `load(source)` takes a model folder or a Hub repo id (pulled into the cache first, with
tinygpt.hub.remote's checks) and returns a checked (model, tokenizer) in eval mode. Every command, the app and
train.py's --init_from load through it, so each gets the same checks and the same one-line errors.
"""

import os
from pathlib import Path

from tinygpt.hub.checks import load_model_and_tokenizer
from tinygpt.hub.remote import HubError, pull_model, validate_repo_id


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
    """(model, tokenizer) from a model folder or a Hub repo id, checked; raises ModelLoadError or HubError.

    `model_kwargs` go to `from_pretrained` (config overrides such as `dropout=`, or `dtype=`)."""
    return load_model_and_tokenizer(model_folder(source, revision=revision, token=token), **model_kwargs)
