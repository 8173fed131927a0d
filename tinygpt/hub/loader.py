"""The one loader: `load(source)` takes a model folder or a Hub repo id (pulled into the cache first, with
tinygpt.hub.remote's checks) and returns a checked (model, tokenizer) in eval mode. Every command, the app and
train.py's --init_from load through it, so each gets the same checks and the same one-line errors.
"""

import os
from pathlib import Path

from tinygpt.hub.checks import load_model_and_tokenizer
from tinygpt.hub.remote import HubError, pull_model, validate_repo_id


def model_folder(source: str | os.PathLike, *, revision: str | None = None, token: str | bool | None = None) -> Path:
    """The folder of `source`: itself if it is a folder, else the Hub repo it names, pulled into the HF cache."""
    if Path(source).is_dir():
        return Path(source)
    try:
        validate_repo_id(str(source))
    except HubError:
        raise HubError(f"{source} is neither a model folder nor a Hub repo id (owner/name): check the path.") from None
    return pull_model(str(source), revision=revision, token=token)


def load(source: str | os.PathLike, *, revision: str | None = None, token: str | bool | None = None):
    """(model, tokenizer) from a model folder or a Hub repo id, checked; raises ModelLoadError or HubError."""
    return load_model_and_tokenizer(model_folder(source, revision=revision, token=token))
