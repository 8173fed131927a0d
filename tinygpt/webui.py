"""The Gradio app: chat with a TinyGPT model, pick a local one or pull one from the Hub, push it to the Hub.

Design notes
- One Blocks page, three tabs. Chat is a `gr.ChatInterface` around `tinygpt.chat.ChatModel.stream_reply`,
  exposed to gradio_client as api_name="chat" with inputs (message, system_prompt, temperature, top_k, top_p,
  max_new_tokens).
- Each browser session chats with its own model: a `gr.State` holds the model's folder. Loaded models are
  shared by all sessions through a small cache, so eight users of one model hold one copy of it. How replies
  are decoded (device, compiling, int8 weights) is the app's `DecodingOptions`, given to `build_app`.
- Concurrency: the queue runs up to CHAT_CONCURRENCY replies at once, each generating in its own thread;
  loading, pulling and pushing are separate events with their own queues, so a long reply never blocks them
  or anybody's page.
- Offline and private: analytics are off before gradio is imported; the server binds 127.0.0.1 unless told
  otherwise. A Hub token goes from the password box to huggingface_hub and nowhere else: it is never logged,
  stored, put in a message or sent back, and the box is cleared after each use.

Security: every visitor is treated as a stranger, whatever the page shows (hidden events are callable over HTTP,
the dropdown takes typed values).
- Local models: a choice is used only if, symlinks resolved, it is a folder inside --models_dir holding
  config.json; anything else (`../x`, absolute paths, symlinks out) gets one and the same error, whether or not
  it exists. Pull takes Hub repo ids only, never a path.
- Tokens: a blank token box means no token, never the server's HF_TOKEN / stored login, unless the app was
  started with --allow_server_token.
- No code from a model folder runs (tinygpt.loading loads with the installed classes, trust_remote_code=False).
- Host header: requests naming another host than the bound one, localhost or 127.0.0.1 (and --allowed_host
  names) get a 400, against DNS rebinding; Gradio checks only Origin (CORS), which a rebound page passes.
- Files: Gradio may serve only --models_dir (and the --model folder), where loss.png files live.
"""

import functools
import json
import os
import socket
import sys
import threading
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio at import and when building Blocks
import gradio as gr  # noqa: E402
from huggingface_hub import constants  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.middleware.trustedhost import TrustedHostMiddleware  # noqa: E402

from .chat import ChatModel, DecodingOptions  # noqa: E402
from .hub import HubError, local_model_folder, pull_model, push_model, validate_repo_id  # noqa: E402
from .loading import ModelLoadError, load_model_and_tokenizer  # noqa: E402
from .space import space_url  # noqa: E402
from .training_tab import build_train_tab  # noqa: E402

CHAT_CONCURRENCY = 8  # replies generated at once; more wait in the queue
REPLIES_PER_SESSION = 2  # replies one session (a browser tab, a gradio_client Client) may stream at once
QUEUE_SIZE = 64  # waiting requests beyond this are refused ("queue full") instead of piling up
METRICS_FILES = ("metrics.json", "all_results.json", "eval_results.json")  # train.py's, then the Trainer's
LOSS_KEYS = ("val_loss", "eval_loss")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")  # always accepted in the Host header
WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # binding every interface: the machine's own names are accepted too


# -- models ---------------------------------------------------------------------------------------------------


def local_models(models_dir: str | os.PathLike) -> list[str]:
    """Folders holding a config.json: `models_dir` itself and its direct subfolders (not symlinks out), sorted."""
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
    raise ModelLoadError(f"choose one of the model folders in {models_dir} (a folder there holding config.json).")


def _model_folder_inside(path: Path, root: Path) -> Path | None:
    """`path` resolved, if it is `root` or inside it (both resolved) and holds a config.json; else None."""
    try:
        folder, root = path.resolve(), root.resolve()
        inside = folder == root or folder.is_relative_to(root)
        return folder if inside and (folder / "config.json").is_file() else None
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a name too long, ...
        return None


def open_model(source: str, revision: str | None = None, token: str | None = None) -> str:
    """The local folder of `source`: a folder as is, a Hub repo id pulled first. Raises HubError / ModelLoadError."""
    folder = str(local_model_folder(source, revision=revision, token=token))
    load_model(folder)  # fail now, with the reason, rather than at the first chat message
    return folder


def load_model(folder: str):
    """(model, tokenizer) of a folder, from the cache while its weights file is unchanged."""
    weights = Path(folder) / "model.safetensors"
    return _load_cached(folder, weights.stat().st_mtime_ns if weights.is_file() else 0)


@functools.lru_cache(maxsize=3)
def _load_cached(folder: str, weights_mtime_ns: int):
    # Keyed by the weights' mtime too: a folder retrained while the app runs is read again.
    return load_model_and_tokenizer(folder)


def chat_model(folder: str, options: DecodingOptions) -> ChatModel:
    """The folder's model ready to chat with these options (placed on first use), from the cache."""
    weights = Path(folder) / "model.safetensors"
    return _chat_model_cached(folder, weights.stat().st_mtime_ns if weights.is_file() else 0, options)


@functools.lru_cache(maxsize=3)
def _chat_model_cached(folder: str, weights_mtime_ns: int, options: DecodingOptions) -> ChatModel:
    return ChatModel(*_load_cached(folder, weights_mtime_ns), options)


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
    ]
    loss_plot = Path(folder) / "loss.png"
    return "\n".join(lines), str(loss_plot) if loss_plot.is_file() else None


# -- the page -------------------------------------------------------------------------------------------------


def build_app(
    model_folder: str | None = None,
    models_dir: str | os.PathLike = "runs",
    options: DecodingOptions | None = None,
    allow_server_token: bool = False,
) -> gr.Blocks:
    """The Blocks page; `model_folder` (an already opened folder, see open_model) is every new session's model.

    `options` (default: DecodingOptions()) say how every reply is decoded. `allow_server_token`: a blank token box
    falls back to the server's HF_TOKEN / stored login (off: no token)."""
    options = options or DecodingOptions()
    info, loss_plot = describe_model(model_folder)
    local = local_models(models_dir)

    streaming: dict[str, int] = {}  # session -> replies it is streaming now
    streaming_lock = threading.Lock()

    def reply(
        message, history, system_prompt, temperature, top_k, top_p, max_new_tokens, model_folder, request: gr.Request
    ):
        """Reply to `message` in this session's conversation; streams the reply so far (the chat's API endpoint).
        A session streams at most REPLIES_PER_SESSION replies at once, so one client cannot take every slot."""
        session = request.session_hash or ""
        with streaming_lock:
            if streaming.get(session, 0) >= REPLIES_PER_SESSION:
                raise gr.Error(
                    f"This session is already streaming {REPLIES_PER_SESSION} replies; wait for one to finish.",
                    print_exception=False,
                )
            streaming[session] = streaming.get(session, 0) + 1
        try:
            yield from chat(
                message, history, system_prompt, temperature, top_k, top_p, max_new_tokens, model_folder, options
            )
        finally:
            with streaming_lock:
                streaming[session] -= 1
                if not streaming[session]:
                    del streaming[session]

    with gr.Blocks(title="tinygpt", analytics_enabled=False) as demo:
        current_model = gr.State(model_folder)  # per session: the folder this session chats with
        gr.Markdown("# tinygpt")

        with gr.Tab("Chat"):
            with gr.Row():
                with gr.Column(scale=1, min_width=240):
                    system_prompt = gr.Textbox("", label="System prompt", lines=2, elem_id="system-prompt")
                    temperature = gr.Slider(
                        0, 2, value=0.8, step=0.05, label="Temperature (0 = greedy)", elem_id="temperature"
                    )
                    top_k = gr.Slider(0, 200, value=0, step=1, label="Top-k (0 = off)", elem_id="top-k")
                    top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p (1 = off)", elem_id="top-p")
                    max_new_tokens = gr.Slider(
                        1, 1024, value=256, step=1, label="Max new tokens", elem_id="max-new-tokens"
                    )
                with gr.Column(scale=4):
                    gr.ChatInterface(
                        reply,
                        chatbot=gr.Chatbot(elem_id="chatbot", height=480),
                        textbox=message_box(
                            placeholder="Say something", elem_id="chat-input", submit_btn=True, stop_btn=True
                        ),
                        additional_inputs=[system_prompt, temperature, top_k, top_p, max_new_tokens, current_model],
                        api_name="chat",
                        concurrency_limit=CHAT_CONCURRENCY,
                        analytics_enabled=False,
                    )

        with gr.Tab("Model"):
            model_status = gr.Markdown(elem_id="model-status")
            with gr.Row():
                local_choice = gr.Dropdown(
                    local,
                    value=model_folder if model_folder in local else None,
                    label=f"Local model (folders in {models_dir} holding config.json)",
                    allow_custom_value=True,
                    elem_id="local-model",
                    scale=4,
                )
                refresh_button = gr.Button("Refresh", scale=1)
                load_button = gr.Button("Load", variant="primary", scale=1, elem_id="load-button")
            with gr.Row():
                pull_repo = gr.Textbox(label="Hub repo id", placeholder="owner/name", elem_id="pull-repo", scale=3)
                pull_revision = gr.Textbox(label="Revision", placeholder="main", elem_id="pull-revision", scale=1)
                pull_token = gr.Textbox(
                    label="Token (private repos)" + (" or the server's" if allow_server_token else ""),
                    type="password",
                    elem_id="pull-token",
                    scale=2,
                )
                pull_button = gr.Button("Pull and load", variant="primary", scale=1, elem_id="pull-button")
            model_info = gr.Markdown(info, elem_id="model-info")
            loss_image = gr.Image(
                loss_plot,
                label="Training loss",
                type="filepath",
                interactive=False,
                visible=loss_plot is not None,
                elem_id="loss-plot",
            )

        with gr.Tab("Hub"):
            gr.Markdown("Push the loaded model (weights, config, tokenizer, code files and a model card).")
            push_repo = gr.Textbox(label="Hub repo id", placeholder="owner/name", elem_id="push-repo")
            push_token = gr.Textbox(
                label="Token with write access" + (" (blank: the server's)" if allow_server_token else ""),
                type="password",
                elem_id="push-token",
            )
            push_private = gr.Checkbox(label="Private repo", elem_id="push-private")
            push_message = gr.Textbox(
                label="Commit message", placeholder="Upload TinyGPT model", elem_id="push-message"
            )
            push_space = gr.Textbox(
                label="Also publish a demo Space (optional): the model as plain GPT-2 in gpt2/, and a Gradio Space "
                "chatting with it",
                placeholder="owner/space",
                elem_id="push-space",
            )
            push_button = gr.Button("Push", variant="primary", elem_id="push-button")
            push_status = gr.Markdown(elem_id="push-status")

        train_tab = build_train_tab(models_dir)

        shown_model = [current_model, model_status, model_info, loss_image]
        refresh_button.click(
            lambda: gr.Dropdown(choices=local_models(models_dir)), outputs=local_choice, api_name=False
        )
        for run_ended in train_tab.runs_ended:  # a finished run's folder joins the picker, chosen
            run_ended.then(
                lambda folder: gr.Dropdown(choices=local_models(models_dir), value=folder or gr.skip()),
                inputs=train_tab.trained_folder,
                outputs=local_choice,
                api_name=False,
            )
        load_button.click(
            functools.partial(load_local, models_dir=models_dir),
            inputs=local_choice,
            outputs=shown_model,
            api_name=False,
        )
        pull_button.click(
            functools.partial(pull_and_load, allow_server_token=allow_server_token),
            inputs=[pull_repo, pull_revision, pull_token],
            outputs=[*shown_model, pull_token],
            api_name=False,
        )
        push_button.click(
            functools.partial(push, allow_server_token=allow_server_token),
            inputs=[current_model, push_repo, push_token, push_private, push_message, push_space],
            outputs=[push_status, push_token],
            api_name=False,
        )
    return demo


def message_box(**textbox_kwargs) -> gr.Textbox:
    """The chat's textbox. Over the API a message can be None, which ChatInterface itself trips on before `chat`
    runs: the box's preprocess refuses it as one line. (Overridden on the instance: a Textbox subclass would make
    gradio write a webui.pyi stub beside this file at import.)"""
    box = gr.Textbox(**textbox_kwargs)
    preprocess = box.preprocess

    def text_only(payload):
        if not isinstance(payload, str):
            raise gr.Error("The message must be text.", print_exception=False)
        return preprocess(payload)

    box.preprocess = text_only
    return box


def chat(message, history, system_prompt, temperature, top_k, top_p, max_new_tokens, model_folder, options):
    """Reply to `message` in this session's conversation with `model_folder`'s model; streams the reply so far."""
    if model_folder is None:
        raise gr.Error("No model loaded: choose or pull one in the Model tab.", print_exception=False)
    try:
        model = chat_model(model_folder, options)
    except ModelLoadError as error:
        raise gr.Error(str(error), print_exception=False) from None
    yield from model.stream_reply(
        [*history, {"role": "user", "content": message}],
        system_prompt=system_prompt or None,
        temperature=temperature,
        top_k=int(top_k) or None,
        top_p=top_p,
        max_new_tokens=int(max_new_tokens),
    )


def load_local(choice: str | None, models_dir: str | os.PathLike = "runs"):
    """Load button: (session model, status, info, loss plot). Only folders inside `models_dir`."""
    if not choice:
        return gr.skip(), "Choose a model folder first.", gr.skip(), gr.skip()

    def open_local():
        folder = local_choice_folder(choice, models_dir)
        load_model(folder)  # fail now, with the reason, rather than at the first chat message
        return folder

    return _show_opened(open_local, f"Loaded {choice}.")


def pull_and_load(repo_id: str, revision: str, token: str, allow_server_token: bool = False):
    """Pull button: (session model, status, info, loss plot, cleared token box). Hub repo ids only."""
    repo_id, revision = _text(repo_id), _text(revision) or None
    if not repo_id:
        return gr.skip(), "Enter a Hub repo id (owner/name) first.", gr.skip(), gr.skip(), ""

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


def _show_opened(opener, success: str):
    try:
        folder = opener()
    except (HubError, ModelLoadError) as error:
        return gr.skip(), f"Error: {error}", gr.skip(), gr.skip()
    info, loss_plot = describe_model(folder)
    return folder, success, info, gr.Image(loss_plot, visible=loss_plot is not None)


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


def launch(
    model: str | None = None,
    models_dir: str = "runs",
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    compile: bool | None = None,
    int8_weights: bool = False,
    allow_server_token: bool = False,
    allowed_hosts: list[str] | tuple[str, ...] = (),
) -> None:
    """Open `model` (a folder or a Hub repo id; default: the first local model that loads), build the page, serve.

    `compile`, `int8_weights`: how chat replies are decoded (tinygpt.chat.DecodingOptions); compiling happens
    on the opened model before serving.
    `allow_server_token`: let a blank token box use the server's HF_TOKEN / stored login (default: never).
    `allowed_hosts`: Host header names accepted besides `host`, localhost and 127.0.0.1.
    Raises HubError / ModelLoadError when `model` cannot be opened.
    """
    options = DecodingOptions(compile=compile, int8_weights=int8_weights)
    model_folder = open_model(model) if model else None
    for folder in [] if model else local_models(models_dir):
        try:
            model_folder = open_model(folder)
            break
        except (HubError, ModelLoadError) as error:  # that model only: the app starts and Load shows the error
            print(f"skipping {error}", file=sys.stderr)
    if model_folder is not None:
        chat_model(model_folder, options).warm_up()
    demo = build_app(model_folder, models_dir, options, allow_server_token=allow_server_token)
    demo.queue(max_size=QUEUE_SIZE)
    # Gradio serves files (loss.png) from the working directory and the temp dir only, unless told more.
    served = [Path(models_dir).resolve()] + ([Path(model_folder).resolve()] if model_folder else [])
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        allowed_paths=[str(path) for path in served],
        app_kwargs={"middleware": [host_check(host, allowed_hosts, share)]},
    )


def host_check(host: str, allowed_hosts=(), share: bool = False) -> Middleware:
    """Starlette's TrustedHostMiddleware: a request whose Host header names another server gets a 400 (against
    DNS rebinding, where a foreign page's own name resolves to this server)."""
    names = {*LOCAL_HOSTS, *allowed_hosts}
    if host in WILDCARD_HOSTS:
        names |= {socket.gethostname(), socket.getfqdn()}
    else:
        names.add(host)
    if share:
        names.add("*.gradio.live")
    return Middleware(
        TrustedHostMiddleware, allowed_hosts=sorted(name.lower() for name in names if name), www_redirect=False
    )


__all__ = [
    "build_app",
    "describe_model",
    "host_check",
    "launch",
    "load_model",
    "local_choice_folder",
    "local_models",
    "open_model",
    "read_eval_loss",
]
