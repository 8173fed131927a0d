"""Talking to the Hugging Face Hub with one-line errors: pull a model (checked before use), and the `HubError`
that pull and push (tinygpt.hub.push) both raise.

huggingface_hub does the work: `snapshot_download` down, `upload_folder` up (tinygpt.hub.push). This module
checks what comes down and turns the library's exceptions into a `HubError` whose message names the problem and
the fix.

Design notes
- A LoRA adapter's repo (tinygpt.hub.adapter) comes down as its adapter files and tokenizer; its config must name
  its base by Hub repo id (a pulled adapter never points the loader at a folder of this machine).
- What comes down: the Hub is asked first (`model_info`), so a wrong token, a 500 or an unreachable Hub is an
  error, not a stale cached copy returned in silence (snapshot_download's fallback); the error says when a
  cached copy exists and how to use it (HF_HUB_OFFLINE=1). A repo whose file list names an absolute path or
  `..` is refused before anything is written.
- Endpoint: `endpoint=`, else `HF_ENDPOINT` (huggingface_hub reads it once, at import), else huggingface.co.
- Token: `token=`, else `HF_TOKEN`, else the stored `hf auth login` (huggingface_hub's own lookup);
  `token=False` sends none (the app uses it so that a visitor never acts with the server's token). It is only
  ever sent in the Authorization header: every error message is built here from the exception's type and HTTP
  status, never from the request, and is scrubbed of the token on top of that.
- Only huggingface_hub is imported, not its HTTP client (httpx2 in hub 2.x, httpx in 1.x): its errors module
  names the client's base exception.
"""

import contextlib
import posixpath
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from huggingface_hub import (
    HfApi,
    constants,
    get_token,
    snapshot_download,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    HTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id as hub_validate_repo_id

from tinygpt.hub.adapter import ADAPTER_FILES, adapter_settings, is_adapter_folder
from tinygpt.hub.checks import ModelLoadError, check_weights, load_config

# The files of a saved model folder (flat, no subfolders). The code files come on top, from the package.
MODEL_FILES = [
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "README.md",
    "loss.png",  # train.py's curve, which its card shows
    "metrics.json",  # train.py's figures, which its card is written from
]
# tinygpt's own code files (the model contract), which a push uploads and a pull downloads.
CODE_MODULES = ("configuration_tinygpt", "modeling_tinygpt", "tokenization_tinygpt")


class HubError(Exception):
    """A push or pull failed; str() is one line naming the problem and the fix (never the token)."""


def validate_repo_id(repo_id: str) -> str:
    """`repo_id` if it is a valid "owner/name" (the Hub's own rule, with the owner required), else HubError."""
    try:
        hub_validate_repo_id(repo_id)
        valid = repo_id.count("/") == 1
    except HFValidationError:
        valid = False
    if not valid:
        raise HubError(
            f"{repo_id!r} is not a Hub repo id: write owner/name with letters, digits, '-', '_' or '.' "
            "(at most 96 each, no '--' or '..'), e.g. alice/tinygpt-shakespeare."
        )
    return repo_id


def pull_model(
    repo_id: str,
    *,
    revision: str | None = None,
    local_dir=None,
    token: str | bool | None = None,
    endpoint: str | None = None,
) -> Path:
    """Download `repo_id` (into the HF cache, or `local_dir`) and check it is a TinyGPT model (or a LoRA adapter of
    one); returns its folder.

    Online, the Hub must answer: its failures are HubErrors, never a stale cached copy. With HF_HUB_OFFLINE=1 the
    cached copy is returned (see `is_offline`)."""
    repo_id = validate_repo_id(repo_id)
    if local_dir is not None:
        _check_pull_target(Path(local_dir))
    api = HfApi(endpoint=endpoint, token=token)
    if not is_offline():
        try:
            with hub_errors(repo_id, api.endpoint, token, action="pull from", revision=revision):
                info = api.model_info(repo_id, revision=revision)
        except HubError as error:
            if try_to_load_from_cache(repo_id, "config.json", revision=revision) is None:
                raise
            raise HubError(
                f"{error} A copy of {repo_id} is in the cache, possibly outdated: set HF_HUB_OFFLINE=1 to use it."
            ) from None
        _check_file_names(repo_id, [sibling.rfilename for sibling in info.siblings or []])
    with hub_errors(repo_id, api.endpoint, token, action="pull from", revision=revision):
        folder = snapshot_download(
            repo_id,
            revision=revision,
            local_dir=local_dir,
            token=token,
            endpoint=endpoint,
            allow_patterns=[*MODEL_FILES, *ADAPTER_FILES, *(f"{module}.py" for module in CODE_MODULES)],
        )
    folder = Path(folder)
    if is_adapter_folder(folder):
        _check_adapter(repo_id, folder)
        return folder
    if not (folder / "config.json").is_file():
        raise HubError(
            f"{repo_id} holds no config.json (nor adapter_config.json), so no saved model: push one first "
            f"(tinygpt push DIR {repo_id})."
        )
    try:
        check_weights(folder, load_config(folder))
    except ModelLoadError as error:
        raise HubError(f"{repo_id} is not a usable TinyGPT model: {error}") from None
    return folder


def _check_adapter(repo_id: str, folder: Path) -> None:
    """A pulled LoRA adapter is whole and names its base by Hub repo id (never a folder of this machine)."""
    try:
        base = adapter_settings(folder)["base_model_name_or_path"]
    except ModelLoadError as error:
        raise HubError(f"{repo_id} is not a usable LoRA adapter: {error}") from None
    try:
        validate_repo_id(base)
    except HubError:
        raise HubError(
            f"{repo_id} is a LoRA adapter whose base is {base!r}, not a Hub repo id (owner/name): a pulled adapter "
            "may only name a base on the Hub."
        ) from None


def public_url(url: str) -> str:
    """`url` without the user name and password it may carry (HF_ENDPOINT=http://user:secret@host): what is
    printed, put in a card or in an error message."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def is_offline() -> bool:
    """HF_HUB_OFFLINE=1: pulls return the cached copy without asking the Hub."""
    return constants.is_offline_mode()


def _check_pull_target(local_dir: Path) -> None:
    """A download overwrites same-named files: only fill a new or empty folder, or refresh an earlier pull."""
    earlier_pull = (local_dir / ".cache" / "huggingface").is_dir()  # snapshot_download's bookkeeping
    if local_dir.exists() and not (local_dir.is_dir() and (earlier_pull or not any(local_dir.iterdir()))):
        raise HubError(f"{local_dir} already exists and is not an earlier pull: pull into a new or empty folder.")


def _check_file_names(repo_id: str, names: list[str]) -> None:
    """Refuse a repo listing a file outside its own folder (absolute, `..`, a drive): before anything is written."""
    for name in names:
        parts = name.replace("\\", "/").split("/")
        if not name or name.startswith(("/", "\\")) or ":" in parts[0] or ".." in parts or posixpath.isabs(name):
            raise HubError(
                f"{repo_id} lists a file named {name!r}, outside the repo's folder: refusing to pull it "
                "(nothing was written)."
            )


@contextlib.contextmanager
def hub_errors(repo_id: str, endpoint: str, token: str | None, *, action: str, revision: str | None = None):
    """Re-raise whatever huggingface_hub / httpx2 raise inside as a one-line HubError."""
    endpoint = public_url(endpoint)
    try:
        yield
    except (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        HTTPError,  # a refused connection, a timeout, ...
        ConnectionError,
    ) as error:
        token = get_token() if token is None else token  # the one the request carried (False: none)
        message = _explain(error, repo_id, endpoint, action, revision, has_token=bool(token))
        # Belt and braces, as no message is built from the request. (Real tokens are 30+ characters; a toy one
        # such as "abc" would also match ordinary words.)
        if token and len(token) >= 8:
            message = message.replace(token, "***")
        raise HubError(message) from None


def _explain(
    error: BaseException, repo_id: str, endpoint: str, action: str, revision: str | None, has_token: bool
) -> str:
    verb = action.split()[0]  # "push" or "pull"
    # snapshot_download falls back on the cache when the Hub fails, then raises LocalEntryNotFoundError "from" the
    # Hub's error: explain that one.
    if isinstance(error, LocalEntryNotFoundError) and error.__cause__ is not None:
        return _explain(error.__cause__, repo_id, endpoint, action, revision, has_token)
    if isinstance(error, (OfflineModeIsEnabled, LocalEntryNotFoundError)):
        not_cached = f" and {repo_id} is not in the cache" if verb == "pull" else ""
        return f"cannot {action} the Hub: offline mode is on (HF_HUB_OFFLINE=1){not_cached}; unset HF_HUB_OFFLINE to go online."
    if isinstance(error, RevisionNotFoundError):
        return f"{repo_id} has no revision {revision!r} on {endpoint}: pass an existing branch, tag or commit."
    if isinstance(error, RepositoryNotFoundError):
        return (
            f"{repo_id} was not found on {endpoint} (or it is private and your token cannot see it): "
            "check the repo id, and log in (HF_TOKEN or `hf auth login`) for private repos."
        )
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
        if status == 401 and not has_token:
            return f"the Hub at {endpoint} wants a token to {action} {repo_id} (401 Unauthorized): set HF_TOKEN or run `hf auth login`."
        if status == 401:
            needed = "a valid token with write access" if verb == "push" else "a valid token"
            return f"the Hub at {endpoint} refused the token (401 Unauthorized): set HF_TOKEN to {needed}, or run `hf auth login`."
        if status == 403:
            return f"your token may not {action} {repo_id} (403 Forbidden): use a token with write access to its owner."
        if status >= 500:
            return f"the Hub at {endpoint} failed with a server error ({status}) during the {verb}: try again later."
        return f"the Hub at {endpoint} answered {status} to the {verb} of {repo_id}: check the repo id and try again."
    return (
        f"cannot reach the Hub at {endpoint} ({type(error).__name__}): check your network connection, "
        "or HF_ENDPOINT if you use a self-hosted hub."
    )


__all__ = [
    "CODE_MODULES",
    "HubError",
    "MODEL_FILES",
    "hub_errors",
    "is_offline",
    "public_url",
    "pull_model",
    "validate_repo_id",
]
