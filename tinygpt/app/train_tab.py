"""The app's Train tab: upload text or conversations (or use the built-in synthetic chat corpus), pick a preset,
steps and knobs, and train; the loss curve and log stream to the page, Stop and Resume act on the run, and the
model lands in a new folder under --models_dir, where the Model tab's picker finds it. Also an API: `/train`
streams a run's progress, `/stop_training` stops the caller's run. The runs themselves: tinygpt.app.train_runs.

Who owns a run: a browser keeps a random token of its own (`secrets.token_urlsafe`, made at its first Start) in a
`gr.BrowserState`, so the run stays its own after a reload (a new Gradio session); the token goes with Start, Stop
and Resume and is never shown. An API client has no browser state: its Client's session id, private to it, is
the owner. Start, Stop and Resume in the page are not API endpoints (they take the token); `/train` and
`/stop_training` are.
"""

import os
import re
import secrets
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from tinygpt.app.models import local_models
from tinygpt.app.train_inputs import KNOBS
from tinygpt.app.train_runs import CHAT_SUFFIXES, TrainingRequestError, TrainingRun, TrainingRuns
from tinygpt.training.presets import DEFAULT_PRESET, PRESETS

TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)


def owner_of(token, session_hash: str | None) -> str | None:
    """The secret a request acts as: the browser's token when it holds one of ours, else its session id."""
    return token if isinstance(token, str) and TOKEN_PATTERN.fullmatch(token) else session_hash


# -- the tab --------------------------------------------------------------------------------------------------


@dataclass
class TrainTab:
    runs: TrainingRuns
    trained_folder: gr.State  # the folder of the session's last finished run, or None
    runs_ended: list  # events that end when a run ends: chain a picker refresh onto them


def build_train_tab(models_dir: str | os.PathLike) -> TrainTab:
    """The Train tab, built inside the caller's Blocks; also the "/train" and "/stop_training" API endpoints."""
    runs = TrainingRuns(models_dir)
    with gr.Tab("Train"):
        gr.Markdown(
            "Train a new model with `train.py`: upload a text file (`.txt`) or conversations (`.json`/`.jsonl`, "
            "ShareGPT or messages form), or leave the file empty to train on the built-in synthetic chat corpus. "
            f"The model is saved in a new folder in {models_dir}. To fine-tune, pick a base model there; with a LoRA r, "
            "only a small adapter on it is trained and saved."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                upload = gr.File(
                    label="Training data (empty: the synthetic chat corpus)",
                    file_types=[".txt", *CHAT_SUFFIXES],
                    type="filepath",
                    elem_id="train-file",
                )
                preset = gr.Dropdown(list(PRESETS), value=DEFAULT_PRESET, label="Preset", elem_id="train-preset")
                max_steps = gr.Number(60, label="Steps", precision=0, minimum=1, elem_id="train-steps")
                with gr.Accordion("Fine-tune a model (blank: a new one)", open=False):
                    base = gr.Dropdown(
                        ["", *local_models(models_dir)], value="", label="Base model", elem_id="train-base"
                    )
                    lora_r = gr.Number(
                        None, label="LoRA r (blank: train every weight)", precision=0, elem_id="train-lora-r"
                    )
                with gr.Accordion("Model and optimizer (blank or 0: the preset's)", open=False):
                    knobs = [
                        gr.Number(None, label=label, precision=0 if kind is int else None, elem_id=f"train-{name}")
                        for name, label, kind in KNOBS
                    ]
                with gr.Row():
                    start_button = gr.Button("Start", variant="primary", elem_id="train-start")
                    stop_button = gr.Button("Stop", variant="stop", elem_id="train-stop")
                    resume_button = gr.Button("Resume", elem_id="train-resume")
            with gr.Column(scale=2):
                status = gr.Markdown("No run yet.", elem_id="train-status")
                curve = gr.LinePlot(
                    pd.DataFrame(columns=["step", "loss", "split"]),
                    x="step",
                    y="loss",
                    color="split",
                    label="Loss",
                    elem_id="train-curve",
                )
                log = gr.Textbox(label="Log", lines=12, max_lines=12, autoscroll=True, elem_id="train-log")
        trained_folder = gr.State(None)
        owner_token = gr.BrowserState(None, storage_key="tinygpt-train-owner")  # this browser's runs, across reloads
        api_stop = gr.Button(visible=False)  # the /stop_training endpoint's event (API clients own by session)
        api_trigger = gr.Button(visible=False)  # the /train endpoint's event: an API call, never a click
        progress = gr.Textbox(visible=False)  # its output

    def show(run: TrainingRun):
        return run.outcome(), run.log_text(), run.curve(), str(run.folder) if run.finished else gr.skip()

    def follow(starter, token=None):
        """Page updates of the run `starter` starts; the first also stores `token` in the browser (if given)."""
        stored = gr.skip() if token is None else token
        try:
            run = starter()
        except TrainingRequestError as error:
            yield f"Error: {error}", gr.skip(), gr.skip(), gr.skip(), stored
            return
        for _ in runs.watch(run):
            yield *show(run), stored
            stored = gr.skip()

    def start(
        upload,
        preset,
        max_steps,
        base,
        lora_r,
        n_layer,
        n_embd,
        block_size,
        batch_size,
        learning_rate,
        token,
        request: gr.Request,
    ):
        # Named one by one: Gradio passes the request only to a parameter it can name (not after *args).
        values = (n_layer, n_embd, block_size, batch_size, learning_rate)
        chosen = {name: value for (name, _, _), value in zip(KNOBS, values, strict=True)}
        if owner_of(token, None) is None:  # this browser's first run: it gets its token now
            token = secrets.token_urlsafe(32)
        yield from follow(lambda: runs.start(upload, preset, max_steps, token, chosen, base, lora_r), token)

    def resume(token, request: gr.Request):
        yield from follow(lambda: runs.resume(owner_of(token, request.session_hash)))

    def train(upload, preset, max_steps, request: gr.Request):
        """Train a model on `upload` (a text or chat JSON/JSONL file; None: the synthetic chat corpus); streams
        one progress line per update, the last naming the model's folder."""
        try:
            run = runs.start(upload, preset, max_steps, request.session_hash)
        except TrainingRequestError as error:
            raise gr.Error(str(error), print_exception=False) from None
        for _ in runs.watch(run):
            losses = run.curve()
            loss = f", loss {losses.loss.iloc[-1]:.4f}" if len(losses) else ""
            if run.running:
                yield f"step {run.step}/{run.max_steps}{loss}"
        if not run.finished:
            raise gr.Error(run.outcome(), print_exception=False)
        yield f"done: {run.max_steps} steps{loss}; the model is in {run.folder}"

    outputs = [status, log, curve, trained_folder, owner_token]
    # concurrency_limit: a second Start is answered "busy" at once rather than queued behind the run.
    started = start_button.click(
        start,
        [upload, preset, max_steps, base, lora_r, *knobs, owner_token],
        outputs,
        api_name=False,
        concurrency_limit=4,
    )
    base.focus(lambda: gr.Dropdown(choices=["", *local_models(models_dir)]), None, base, api_name=False)
    resumed = resume_button.click(resume, owner_token, outputs, api_name=False, concurrency_limit=4)

    def stop(token, request: gr.Request):
        """Stop this browser's run, then show how it ended (the page may have been reloaded since it started)."""
        message = runs.stop(owner_of(token, request.session_hash))
        yield message, gr.skip(), gr.skip()
        run = runs.current
        if message.startswith("Stopping") and run is not None:
            for _ in runs.watch(run):
                pass
            yield run.outcome(), run.log_text(), run.curve()

    def stop_api(request: gr.Request):
        """Stop the run this client started (`/train`)."""
        return runs.stop(request.session_hash)

    stop_button.click(stop, owner_token, [status, log, curve], api_name=False, concurrency_limit=4)
    api_stop.click(stop_api, None, status, api_name="stop_training")
    api_trigger.click(train, [upload, preset, max_steps], progress, api_name="train", concurrency_limit=4)
    return TrainTab(runs, trained_folder, [started, resumed])
