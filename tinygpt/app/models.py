"""The models the app can open: which ones, the one cache of opened models, and the Model and Hub tabs' events
that open (Load, Pull) and push them.

- Security: a local model is a folder inside --models_dir that holds config.json (or a LoRA adapter's
  adapter_config.json), judged after symlinks resolve
  (`local_choice_folder`); anything else gets the same one-line error whether it exists or not, so errors tell
  nothing about the server's disk. `--model` and Hub pulls go through tinygpt.hub.loader's one loader. An
  adapter's base is pulled with no token at all: the server's own never acts for a visitor.
- Tokens: a blank token box never acts with the server's token (HF_TOKEN or a login) unless the app runs with
  --allow_server_token; a typed one is used for that one request.
- One cache, two levels: the checked (model, tokenizer) of a folder (`load_model`, what the Model tab describes),
  and the ChatModel built on it for the app's decoding options (`chat_model`: one engine whose batch every
  reply joins). Both are keyed by the weights' mtime too, so a folder retrained while the app runs is read again.
"""

import atexit
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio at import: this module may come first
import gradio as gr  # noqa: E402
from huggingface_hub import constants  # noqa: E402

from tinygpt.decoding.chat import ChatModel, DecodingOptions  # noqa: E402
from tinygpt.decoding.sampling import settings_from  # noqa: E402
from tinygpt.hub.adapter import ADAPTER_WEIGHTS, adapter_settings, is_adapter_folder  # noqa: E402
from tinygpt.hub.card import read_eval_results  # noqa: E402
from tinygpt.hub.checks import ModelLoadError  # noqa: E402
from tinygpt.hub.loader import load, model_folder  # noqa: E402
from tinygpt.hub.push import push_model  # noqa: E402
from tinygpt.hub.remote import HubError, pull_model, validate_repo_id  # noqa: E402
from tinygpt.hub.space import space_url  # noqa: E402

METRICS_FILES = ("metrics.json", "all_results.json", "eval_results.json")  # train.py's, then the Trainer's
LOSS_KEYS = ("val_loss", "eval_loss")


def local_models(models_dir: str | os.PathLike) -> list[str]:
    """Folders holding a config.json or an adapter_config.json: `models_dir` itself and its direct subfolders (not
    symlinks out), sorted."""
    root = Path(models_dir)
    if not root.is_dir():
        return []
    candidates = [root, *sorted(path for path in root.iterdir() if path.is_dir())]
    return [str(path) for path in candidates if _model_folder_inside(path, root) is not None]


def local_choice_folder(choice, models_dir: str | os.PathLike) -> str:
    """The folder a local model choice names, if it lies inside `models_dir` (symlinks resolved) and holds
    config.json; else ModelLoadError, with the same message whatever the reason (no existence oracle).

    A choice is a path as local_models lists it (relative to the working directory, or absolute), or a name
    inside `models_dir`."""
    root = Path(models_dir)
    if isinstance(choice, str) and choice.strip() and "\0" not in choice:
        for candidate in (Path(choice.strip()), root / choice.strip()):
            folder = _model_folder_inside(candidate, root)
            if folder is not None:
                return str(folder)
    raise ModelLoadError(
        f"choose one of the model folders in {models_dir} (a folder there holding config.json or adapter_config.json)."
    )


def _model_folder_inside(path: Path, root: Path) -> Path | None:
    """`path` resolved, if it is `root` or inside it (both resolved) and holds a config.json or is an adapter's
    folder; else None."""
    try:
        folder, root = path.resolve(), root.resolve()
        inside = folder == root or folder.is_relative_to(root)
        return folder if inside and ((folder / "config.json").is_file() or is_adapter_folder(folder)) else None
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a name too long, ...
        return None


def open_model(source: str, revision: str | None = None, token: str | None = None) -> str:
    """The local folder of `source`: a folder as is, a Hub repo id pulled first. Raises HubError / ModelLoadError."""
    folder = str(model_folder(source, revision=revision, token=token))
    load_model(folder)  # fail now, with the reason, rather than at the first chat message
    return folder


def load_model(folder: str):
    """(model, tokenizer) of a folder, from the open models while its weights file is unchanged."""
    return OPEN_MODELS.entry(folder).loaded


def chat_model(folder: str, options: DecodingOptions, *, pin: bool = False) -> ChatModel:
    """The folder's model ready to chat with these options (placed on first use), from the open models. `pin`:
    never closed to make room (the model app.py serves on its API)."""
    entry = OPEN_MODELS.entry(folder, pin=pin)
    with OPEN_MODELS.lock:
        if options not in entry.chats:
            entry.chats[options] = ChatModel(*entry.loaded, options)
        return entry.chats[options]


@dataclass
class OpenModel:
    loaded: tuple  # (model, tokenizer), as the one loader gives them
    nbytes: int  # its weights' size
    chats: dict = field(default_factory=dict)  # DecodingOptions -> ChatModel, each with its scheduler thread
    pinned: bool = False


class OpenModels:
    """The models the app holds, the most recently used last, at most `max_models` of them and `max_bytes` of
    weights. Making room closes what it drops: each ChatModel's scheduler thread ends (once its replies in flight
    are done, in the background) and its weights, engine and KV cache go with it. Hand-written: functools'
    lru_cache drops an entry without a word, which is how evicted models used to keep their threads and memory."""

    def __init__(self, max_models: int = 3, max_bytes: int | None = None):
        self.max_models, self.max_bytes = max_models, max_bytes or memory_budget()
        self.entries: OrderedDict[tuple, OpenModel] = OrderedDict()
        self.lock = threading.RLock()

    def entry(self, folder: str, pin: bool = False) -> OpenModel:
        weights = Path(folder) / (ADAPTER_WEIGHTS if is_adapter_folder(folder) else "model.safetensors")
        key = (folder, weights.stat().st_mtime_ns if weights.is_file() else 0)  # a retrained folder is read again
        with self.lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                self.entries[key].pinned |= pin
                return self.entries[key]
        loaded = load(folder, token=False)  # outside the lock: one slow load holds no other visitor's
        nbytes = sum(parameter.numel() * parameter.element_size() for parameter in loaded[0].parameters())
        with self.lock:
            entry = self.entries.setdefault(key, OpenModel(loaded, nbytes, pinned=pin))
            self.entries.move_to_end(key)
            self.make_room(keep=key)
            return entry

    def make_room(self, keep: tuple) -> None:
        def too_much() -> bool:
            total = sum(entry.nbytes for entry in self.entries.values())
            return len(self.entries) > self.max_models or total > self.max_bytes

        for key in list(self.entries):
            if not too_much():
                return
            if key != keep and not self.entries[key].pinned:
                for chat in self.entries.pop(key).chats.values():
                    threading.Thread(target=chat.close, name="tinygpt-close", daemon=True).start()

    def close(self) -> None:
        """Close every open model's schedulers: at exit, a scheduler thread still running can abort the process."""
        with self.lock:
            entries, self.entries = list(self.entries.values()), OrderedDict()
        for entry in entries:
            for chat in entry.chats.values():
                chat.close()


def memory_budget() -> int:
    """Half the machine's memory, for the weights the app keeps open (their engines' caches come on top)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


OPEN_MODELS = OpenModels()
atexit.register(OPEN_MODELS.close)


def chat_controls(folder: str | None) -> tuple[float, int, float, int]:
    """The chat controls' first values (temperature, top-k, top-p, max new tokens): the model's generation_config,
    so a model trained to answer greedily opens at temperature 0."""
    if folder is None:
        return 0.8, 0, 1.0, 256
    settings = settings_from(load_model(folder)[0].generation_config)
    return settings["temperature"], settings["top_k"] or 0, settings["top_p"] or 1.0, settings["max_new_tokens"]


def read_eval_loss(folder: str | os.PathLike) -> float | None:
    """The validation loss a training run recorded beside its model, if any."""
    for name in METRICS_FILES:
        try:
            metrics = json.loads((Path(folder) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for key in LOSS_KEYS:
            if isinstance(metrics, dict) and isinstance(metrics.get(key), (int, float)):
                return float(metrics[key])
    return None


def describe_model(folder: str | None) -> tuple[str, str | None]:
    """(Markdown summary, loss.png path or None) of a loaded model folder."""
    if folder is None:
        return "No model loaded: choose a local model or pull one from the Hub.", None
    model, tokenizer = load_model(folder)
    config = model.config
    eval_loss = read_eval_loss(folder)
    lines = [
        f"**{folder}**",
        f"- parameters: {model.num_parameters():,}",
        f"- context: {config.n_positions} tokens; {config.n_layer} layers, {config.n_head} heads, {config.n_embd} wide",
        f"- tokenizer: {type(tokenizer).__name__}, {len(tokenizer):,} tokens (vocab size {config.vocab_size:,})",
        f"- eval loss: {eval_loss:.4f}" if eval_loss is not None else "- eval loss: not recorded",
        *(f"- evaluation: {eval_result_text(result)}" for result in read_eval_results(Path(folder) / "README.md")),
    ]
    if is_adapter_folder(folder):
        settings = adapter_settings(folder)
        lines.insert(1, f"- a LoRA adapter (r={settings.get('r')}) of {settings['base_model_name_or_path']}, merged")
    loss_plot = Path(folder) / "loss.png"
    return "\n".join(lines), str(loss_plot) if loss_plot.is_file() else None


def eval_result_text(result) -> str:
    """One model-index entry of a card in words: "bits per byte 2.4510 on text.txt (validation, rolling)"."""
    value = result.metric_value
    shown = f"{value:.4f}" if isinstance(value, float) else str(value)
    details = ", ".join(str(part) for part in (result.dataset_split, result.metric_config) if part)
    return f"{result.metric_name or result.metric_type} {shown} on {result.dataset_name}" + (
        f" ({details})" if details else ""
    )


# -- the Model and Hub tabs' events ------------------------------------------------------------------------


def load_local(choice: str | None, models_dir: str | os.PathLike = "runs"):
    """Load button: (session model, status, info, loss plot, the 4 chat controls). Only folders inside `models_dir`."""
    if not choice:
        return _unchanged("Choose a model folder first.")

    def open_local():
        folder = local_choice_folder(choice, models_dir)
        load_model(folder)  # fail now, with the reason, rather than at the first chat message
        return folder

    return _show_opened(open_local, f"Loaded {choice}.")


def pull_and_load(repo_id: str, revision: str, token: str, allow_server_token: bool = False):
    """Pull button: (session model, status, info, loss plot, the 4 chat controls, cleared token box). Hub repo ids
    only."""
    repo_id, revision = _text(repo_id), _text(revision) or None
    if not repo_id:
        return *_unchanged("Enter a Hub repo id (owner/name) first."), ""

    def pull_and_open():
        folder = str(
            pull_model(validate_repo_id(repo_id), revision=revision, token=_visitor_token(token, allow_server_token))
        )
        load_model(folder)
        return folder

    pulled = _show_opened(pull_and_open, f"Pulled and loaded {repo_id}" + (f" at {revision}." if revision else "."))
    return *pulled, ""


def _text(value) -> str:
    """A textbox's value, stripped; "" for None or anything else that an API caller may send."""
    return value.strip() if isinstance(value, str) else ""


def _visitor_token(token, allow_server_token: bool) -> str | bool | None:
    """The token a visitor typed; if blank, no token at all (False), or None (the server's) when allowed."""
    return _text(token) or (None if allow_server_token else False)


def _unchanged(status: str) -> tuple:
    """The Model tab's outputs when nothing was opened: only the status changes."""
    return gr.skip(), status, *[gr.skip()] * 6


def _show_opened(opener, success: str):
    try:
        folder = opener()
    except (HubError, ModelLoadError) as error:
        return _unchanged(f"Error: {error}")
    info, loss_plot = describe_model(folder)
    return folder, success, info, gr.Image(loss_plot, visible=loss_plot is not None), *chat_controls(folder)


def push(
    model_folder: str | None,
    repo_id: str,
    token: str,
    private: bool,
    commit_message: str,
    space_id: str = "",
    allow_server_token: bool = False,
):
    """Push button: (status, cleared token box). A blank token is an error unless `allow_server_token`; a Space id
    also publishes a demo Space (tinygpt push --space)."""
    if model_folder is None:
        return "Error: no model loaded; load one in the Model tab first.", ""
    token = _visitor_token(token, allow_server_token)
    if token is False:
        return "Error: enter a Hub token with write access to push (this server never pushes with its own).", ""
    try:
        url = push_model(
            model_folder,
            _text(repo_id),
            token=token,
            private=bool(private),
            commit_message=_text(commit_message) or None,
            space_id=_text(space_id) or None,
        )
    except HubError as error:
        return f"Error: {error}", ""
    if _text(space_id):
        return (
            f"Pushed {model_folder} to {url} and created the Space {space_url(_text(space_id), constants.ENDPOINT)}",
            "",
        )
    return f"Pushed {model_folder} to {url}", ""


__all__ = [
    "chat_controls",
    "chat_model",
    "describe_model",
    "load_local",
    "load_model",
    "local_choice_folder",
    "local_models",
    "open_model",
    "pull_and_load",
    "push",
    "read_eval_loss",
]
