"""The Gradio app: chat with a TinyGPT model, pick a local one or pull one from the Hub, push it to the Hub.

Design notes
- One Blocks page, three tabs. Chat is a `gr.ChatInterface` around `tinygpt.decoding.chat.ChatModel.stream_reply`,
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
- No code from a model folder runs (tinygpt.hub.loader loads with the installed classes, trust_remote_code=False).
- Host header: requests naming another host than the bound one, localhost or 127.0.0.1 (and --allowed_host
  names) get a 400, against DNS rebinding; Gradio checks only Origin (CORS), which a rebound page passes.
- Files: Gradio may serve only --models_dir (and the --model folder), where loss.png files live.
"""

import argparse
import functools
import os
import signal
import sys
import threading
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio at import and when building Blocks
import gradio as gr  # noqa: E402

from tinygpt.app.models import (  # noqa: E402
    chat_controls,
    chat_model,
    describe_model,
    load_local,
    local_models,
    open_model,
    pull_and_load,
    push,
)
from tinygpt.app.train_tab import build_train_tab  # noqa: E402
from tinygpt.decoding.chat import DecodingOptions  # noqa: E402
from tinygpt.decoding.flags import add_decoding_arguments, check_decoding_arguments  # noqa: E402
from tinygpt.hub.checks import ModelLoadError  # noqa: E402
from tinygpt.hub.remote import HubError  # noqa: E402
from tinygpt.serving.flags import add_server_arguments  # noqa: E402
from tinygpt.serving.limits import ServingLimits  # noqa: E402
from tinygpt.serving.openai import openai_router  # noqa: E402
from tinygpt.serving.server import host_check  # noqa: E402

CHAT_CONCURRENCY = 8  # replies generated at once; more wait in the queue
REPLIES_PER_SESSION = 2  # replies one session (a browser tab, a gradio_client Client) may stream at once
QUEUE_SIZE = 64  # waiting requests beyond this are refused ("queue full") instead of piling up
OPENS_AT_ONCE = 4  # Loads, Pulls and Pushes run side by side (Gradio's default is one): a slow one holds no other


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
    first_temperature, first_top_k, first_top_p, first_max_new_tokens = chat_controls(model_folder)
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
                        0,
                        2,
                        value=first_temperature,
                        step=0.05,
                        label="Temperature (0 = greedy)",
                        elem_id="temperature",
                    )
                    top_k = gr.Slider(0, 200, value=first_top_k, step=1, label="Top-k (0 = off)", elem_id="top-k")
                    top_p = gr.Slider(0.05, 1, value=first_top_p, step=0.05, label="Top-p (1 = off)", elem_id="top-p")
                    max_new_tokens = gr.Slider(
                        1, 1024, value=first_max_new_tokens, step=1, label="Max new tokens", elem_id="max-new-tokens"
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

        # A model opened in the Model tab also sets the chat controls to its own generation_config.
        shown_model = [current_model, model_status, model_info, loss_image, temperature, top_k, top_p, max_new_tokens]
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
            concurrency_limit=OPENS_AT_ONCE,
        )
        pull_button.click(
            functools.partial(pull_and_load, allow_server_token=allow_server_token),
            inputs=[pull_repo, pull_revision, pull_token],
            outputs=[*shown_model, pull_token],
            api_name=False,
            concurrency_limit=OPENS_AT_ONCE,
        )
        push_button.click(
            functools.partial(push, allow_server_token=allow_server_token),
            inputs=[current_model, push_repo, push_token, push_private, push_message, push_space],
            outputs=[push_status, push_token],
            api_name=False,
            concurrency_limit=OPENS_AT_ONCE,
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
    max_batch: int = 16,
    api_key: str | None = None,
    limits: ServingLimits | None = None,
) -> None:
    """Open `model` (a folder or a Hub repo id; default: the first local model that loads), build the page, serve
    it and, on the same server, the OpenAI-compatible /v1 routes (tinygpt.serving) for that model, under the id
    `model` (or its folder, as local_models lists it).

    `compile`, `int8_weights`, `max_batch`: how chat replies are decoded (tinygpt.decoding.chat.DecodingOptions); compiling
    happens on the opened model before serving. Browser chats and API requests join one batch of `max_batch`.
    `api_key`: what the /v1 routes require as `Authorization: Bearer` (default: nothing; the page never needs it).
    `limits`: what one API client may take (tinygpt.serving.limits; default: the API decodes half the batch at
    most, so the browser chat keeps the other half whatever the API does).
    `allow_server_token`: let a blank token box use the server's HF_TOKEN / stored login (default: never).
    `allowed_hosts`: Host header names accepted besides `host`, localhost and 127.0.0.1.
    Raises HubError / ModelLoadError when `model` cannot be opened.
    """
    options = DecodingOptions(compile=compile, int8_weights=int8_weights, max_batch=max_batch)
    model_folder = open_model(model) if model else None
    for folder in [] if model else local_models(models_dir):
        try:
            model_folder = open_model(folder)
            break
        except (HubError, ModelLoadError) as error:  # that model only: the app starts and Load shows the error
            print(f"skipping {error}", file=sys.stderr)
    api_models = {}
    if model_folder is not None:
        api_models[model or model_folder] = chat_model(model_folder, options, pin=True)  # the browser's too
        api_models[model or model_folder].warm_up()
    demo = build_app(model_folder, models_dir, options, allow_server_token=allow_server_token)
    demo.queue(max_size=QUEUE_SIZE)
    # Gradio serves files (loss.png) from the working directory and the temp dir only, unless told more.
    served = [Path(models_dir).resolve()] + ([Path(model_folder).resolve()] if model_folder else [])
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        allowed_paths=[str(path) for path in served],
        # FastAPI's own `routes` argument: the /v1 routes come first in Gradio's app, with their own error shape.
        app_kwargs={
            "middleware": [host_check(host, allowed_hosts, share)],
            "routes": openai_router(
                api_models, api_key, limits or ServingLimits.for_batch(max_batch, browser=True)
            ).routes,
        },
    )


def main(argv: list[str] | None = None) -> int:
    """`python app.py`: parse the flags and serve; what a user can get wrong is one line on stderr, exit 1."""
    parser = argparse.ArgumentParser(prog="app.py", description="Chat with a TinyGPT model in the browser.")
    parser.add_argument(
        "--model", default=None, help="model folder or Hub repo id (default: the first in --models_dir)"
    )
    parser.add_argument("--models_dir", default="runs", help="folder whose subfolders are offered as models")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs the internet)")
    parser.add_argument(
        "--allow_server_token",
        action="store_true",
        help="let a blank token box in the page use this server's HF_TOKEN / `hf auth login` token (default: never; "
        "with it, every visitor can push and read private repos as you)",
    )
    add_server_arguments(parser, default_port=7860)
    add_decoding_arguments(parser)
    args = parser.parse_args(argv)
    check_decoding_arguments(parser, args)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (kill, systemd, docker stop) exits through SystemExit, out of Gradio's blocking launch, so atexit
        # still runs: a training run is stopped at a checkpoint and the uploaded data is removed.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        launch(
            model=args.model,
            models_dir=args.models_dir,
            host=args.host,
            port=args.port,
            share=args.share,
            compile=args.compile,
            int8_weights=args.int8,
            allow_server_token=args.allow_server_token,
            allowed_hosts=args.allowed_host,
            max_batch=args.max_batch,
            api_key=args.api_key,
            limits=ServingLimits.from_flags(args, browser=True),
        )
    except (HubError, ModelLoadError, OSError) as error:  # OSError: the port is taken
        print(f"app.py: error: {error}", file=sys.stderr)
        return 1
    return 0


__all__ = ["build_app", "launch", "main"]
