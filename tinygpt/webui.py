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
"""

import functools
import json
import os
import sys
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio at import and when building Blocks
import gradio as gr  # noqa: E402

from .chat import ChatModel, DecodingOptions  # noqa: E402
from .hub import HubError, local_model_folder, push_model  # noqa: E402
from .loading import ModelLoadError, load_model_and_tokenizer  # noqa: E402

CHAT_CONCURRENCY = 8  # replies generated at once; more wait in the queue
QUEUE_SIZE = 64  # waiting requests beyond this are refused ("queue full") instead of piling up
METRICS_FILES = ("metrics.json", "all_results.json", "eval_results.json")  # train.py's, then the Trainer's
LOSS_KEYS = ("val_loss", "eval_loss")


# -- models ---------------------------------------------------------------------------------------------------


def local_models(models_dir: str | os.PathLike) -> list[str]:
    """Folders holding a config.json: `models_dir` itself and its direct subfolders, sorted."""
    root = Path(models_dir)
    if not root.is_dir():
        return []
    candidates = [root, *sorted(path for path in root.iterdir() if path.is_dir())]
    return [str(path) for path in candidates if (path / "config.json").is_file()]


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
) -> gr.Blocks:
    """The Blocks page; `model_folder` (an already opened folder, see open_model) is every new session's model,
    and `options` (default: DecodingOptions()) say how every reply is decoded."""
    options = options or DecodingOptions()
    info, loss_plot = describe_model(model_folder)
    local = local_models(models_dir)

    def reply(message, history, system_prompt, temperature, top_k, top_p, max_new_tokens, model_folder):
        """Reply to `message` in this session's conversation; streams the reply so far (the chat's API endpoint)."""
        yield from chat(
            message, history, system_prompt, temperature, top_k, top_p, max_new_tokens, model_folder, options
        )

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
                        textbox=gr.Textbox(
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
                    label="Token (private repos; or HF_TOKEN)", type="password", elem_id="pull-token", scale=2
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
                label="Token with write access (or HF_TOKEN)", type="password", elem_id="push-token"
            )
            push_private = gr.Checkbox(label="Private repo", elem_id="push-private")
            push_message = gr.Textbox(
                label="Commit message", placeholder="Upload TinyGPT model", elem_id="push-message"
            )
            push_button = gr.Button("Push", variant="primary", elem_id="push-button")
            push_status = gr.Markdown(elem_id="push-status")

        shown_model = [current_model, model_status, model_info, loss_image]
        refresh_button.click(
            lambda: gr.Dropdown(choices=local_models(models_dir)), outputs=local_choice, api_name=False
        )
        load_button.click(load_local, inputs=local_choice, outputs=shown_model, api_name=False)
        pull_button.click(
            pull_and_load,
            inputs=[pull_repo, pull_revision, pull_token],
            outputs=[*shown_model, pull_token],
            api_name=False,
        )
        push_button.click(
            push,
            inputs=[current_model, push_repo, push_token, push_private, push_message],
            outputs=[push_status, push_token],
            api_name=False,
        )
    return demo


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


def load_local(folder: str | None):
    """Load button: (session model, status, info, loss plot)."""
    if not folder:
        return gr.skip(), "Choose a model folder first.", gr.skip(), gr.skip()
    return _show_opened(lambda: open_model(folder), f"Loaded {folder}.")


def pull_and_load(repo_id: str, revision: str, token: str):
    """Pull button: (session model, status, info, loss plot, cleared token box)."""
    repo_id, revision = repo_id.strip(), revision.strip() or None
    if not repo_id:
        return gr.skip(), "Enter a Hub repo id (owner/name) first.", gr.skip(), gr.skip(), ""
    pulled = _show_opened(
        lambda: open_model(repo_id, revision=revision, token=token.strip() or None),
        f"Pulled and loaded {repo_id}" + (f" at {revision}." if revision else "."),
    )
    return *pulled, ""


def _show_opened(opener, success: str):
    try:
        folder = opener()
    except (HubError, ModelLoadError) as error:
        return gr.skip(), f"Error: {error}", gr.skip(), gr.skip()
    info, loss_plot = describe_model(folder)
    return folder, success, info, gr.Image(loss_plot, visible=loss_plot is not None)


def push(model_folder: str | None, repo_id: str, token: str, private: bool, commit_message: str):
    """Push button: (status, cleared token box)."""
    if model_folder is None:
        return "Error: no model loaded; load one in the Model tab first.", ""
    try:
        url = push_model(
            model_folder,
            repo_id.strip(),
            token=token.strip() or None,
            private=private,
            commit_message=commit_message.strip() or None,
        )
    except HubError as error:
        return f"Error: {error}", ""
    return f"Pushed {model_folder} to {url}", ""


def launch(
    model: str | None = None,
    models_dir: str = "runs",
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    compile: bool | None = None,
    int8_weights: bool = False,
) -> None:
    """Open `model` (a folder or a Hub repo id; default: the first local model that loads), build the page, serve.

    `compile`, `int8_weights`: how chat replies are decoded (tinygpt.chat.DecodingOptions); compiling happens
    on the opened model before serving.
    Raises HubError / ModelLoadError when `model` cannot be opened.
    """
    options = DecodingOptions(compile=compile, int8_weights=int8_weights)
    model_folder = open_model(model) if model else None
    for folder in [] if model else local_models(models_dir):
        try:
            model_folder = open_model(folder)
            break
        except ModelLoadError as error:
            print(f"skipping {error}", file=sys.stderr)
    if model_folder is not None:
        chat_model(model_folder, options).warm_up()
    demo = build_app(model_folder, models_dir, options)
    demo.queue(max_size=QUEUE_SIZE)
    demo.launch(server_name=host, server_port=port, share=share)


__all__ = ["build_app", "describe_model", "launch", "load_model", "local_models", "open_model", "read_eval_loss"]
