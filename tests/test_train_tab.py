"""The Train tab without a browser: train.py's stop channels (the stop file, Ctrl-C), the run manager in-process
(stop, resume), and `python app.py`'s "/train" endpoint through gradio_client (a file, bad files, busy, chats while
training). Who may stop what, uploads and sizes: tests/test_train_owners.py. The browser test of the tab is in
tests/test_browser.py."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from tests.chat_fixtures import running_app
from tests.train_cli import TINY_SHAPE, TRAIN_PY, finish, train_env, wait_until, write_corpus
from tinygpt.app.page import local_models
from tinygpt.app.train_runs import TrainingRequestError, TrainingRuns

GREEDY = dict(system_prompt="", temperature=0, top_k=0, top_p=1, max_new_tokens=64)
SMALL = {"n_layer": 1, "n_embd": 32, "block_size": 32, "per_device_train_batch_size": 8}
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("how", ["stop file", "SIGINT"])
def test_train_py_stops_cleanly_at_a_checkpoint_on_a_stop_file_or_ctrl_c(tmp_path, how):
    """$TINYGPT_STOP_FILE appearing stops train.py as Ctrl-C does: exit 130, one line, a checkpoint of the step it
    stopped at, no final model. (A stop file needs no signal: a run started in the background ignores SIGINT.)"""
    out, stop_file = tmp_path / "run", tmp_path / "stop"
    schedule = ["--per_device_train_batch_size", "4", "--eval_windows", "8", "--warmup_steps", "0"]
    schedule += ["--logging_steps", "5", "--eval_steps", "20", "--save_steps", "20", "--max_steps", "5000"]
    command = [sys.executable, str(TRAIN_PY), *TINY_SHAPE, *schedule, "--disable_tqdm", "true"]
    command += ["--text_file", str(write_corpus(tmp_path / "corpus.txt")), "--output_dir", str(out)]
    env = {**train_env(), "TINYGPT_STOP_FILE": str(stop_file)}
    with open(tmp_path / "stdout", "w") as stdout:  # a file, not a pipe: nothing blocks the run while we wait
        child = subprocess.Popen(command, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: any(out.glob("checkpoint-*/trainer_state.json")) or child.poll() is not None)
        stop_file.touch() if how == "stop file" else child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 130, stderr[-3000:]
    last_line = stderr.strip().splitlines()[-1]
    if how == "stop file":
        step = int(last_line.split("stopped at step ")[1].split()[0])
        assert (
            last_line
            == f"train.py: stopped at step {step} as asked, checkpoint saved; continue with --resume_from_checkpoint"
        )
        assert 20 <= step < 5000 and (out / f"checkpoint-{step}" / "model.safetensors").is_file()  # saved as it stopped
        state = json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())
        assert state["global_step"] == step
        assert max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")) == step
    else:
        assert last_line == "train.py: interrupted; continue with --resume_from_checkpoint"
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()  # no final model
    assert "Traceback" not in stderr


def test_a_stopped_run_resumes_to_a_finished_model(tmp_path):
    runs = TrainingRuns(tmp_path / "models")
    corpus = write_corpus(tmp_path / "my text.txt", words=20000)
    run = runs.start(str(corpus), "tiny", 400, "session-a", SMALL)
    assert run.folder.parent == tmp_path / "models" and run.name.startswith("train-tiny-")
    with pytest.raises(TrainingRequestError, match=r"busy: train-tiny-\S+ \(started by another visitor\)"):
        runs.start(None, "tiny", 10, "session-b")
    assert runs.stop("session-b").startswith("Only the visitor who started")  # a stranger cannot stop it
    wait_until(lambda: any(run.folder.glob("checkpoint-*/trainer_state.json")), what="a checkpoint")
    assert runs.stop("session-a").startswith("Stopping")
    finish(runs, run)
    assert run.outcome().startswith(f"Stopped **{run.name}** at step {run.saved_step}, its last checkpoint")
    assert run.process.returncode == 130 and not (run.folder / "config.json").exists()  # train.py's clean exit
    assert str(runs.data_dir) not in run.log_text() and "my text.txt" in run.log_text()  # the upload's own name

    resumed = runs.resume("session-a")
    assert resumed.start_step > 0
    finish(runs, resumed)
    assert resumed.finished, resumed.log_text()
    assert f"resuming from {resumed.folder}/checkpoint-{resumed.start_step}" in resumed.log_text()
    curve = resumed.curve()  # the stopped run's points up to its checkpoint, then the resumed run's
    assert list(curve[curve.split == "train"].step) == list(range(13, 400, 13))  # logged every 400 // 30 steps
    assert list(curve[curve.split == "eval"].step) == [78, 156, 234, 312, 390, 400]  # and a last evaluation
    assert str(resumed.folder) in local_models(tmp_path / "models")
    assert list(runs.data_dir.iterdir()) == []  # the upload's copy went when the run finished


def test_bad_values_are_one_line_errors(tmp_path):
    runs = TrainingRuns(tmp_path / "models")
    for args, message in [
        ((None, "../etc", 10), "unknown preset '../etc'"),
        ((None, "tiny", 0), "max steps must be a whole number from 1"),
        ((None, "tiny", 2.5), "max steps must be a whole number"),
        ((None, "tiny", 10, "s", {"learning_rate": -1}), "Learning rate must be a positive number"),
    ]:
        with pytest.raises(TrainingRequestError, match=message):
            runs.start(*args[:3], "s", *args[4:])
    assert not (tmp_path / "models").exists() and runs.current is None


@pytest.fixture(scope="module")
def app():
    return running_app()


def test_train_endpoint_streams_progress_and_the_model_lands_in_models_dir(app, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    job = Client(app.url, verbose=False).submit(handle_file(str(corpus)), "tiny", 30, api_name="/train")
    progress = list(job)
    assert any(line.startswith("step ") for line in progress), progress
    assert progress[-1] == job.result() and job.result().startswith("done: 30 steps, loss ")
    folder = Path(job.result().rsplit("the model is in ", 1)[1])
    assert folder.parent == app.models_dir and folder.name.startswith("train-tiny-")
    assert str(folder) in local_models(app.models_dir)
    assert (folder / "model.safetensors").is_file() and (folder / "loss.png").is_file()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("photo.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 50, "photo.txt is not UTF-8 text (looks binary)"),
        (
            "chats.jsonl",
            b'{"messages": [{"role": "robot", "content": "hi"}]}\n',
            "chats.jsonl: record 0, turn 0: unknown role 'robot'",
        ),
    ],
)
def test_train_endpoint_refuses_a_bad_file_with_train_py_s_one_line_error(app, tmp_path, name, content, message):
    bad = tmp_path / name
    bad.write_bytes(content)
    with pytest.raises(Exception, match="train.py: error:") as error:
        Client(app.url, verbose=False).predict(handle_file(str(bad)), "tiny", 10, api_name="/train")
    text = str(error.value)
    assert message in text and "\n" not in text.strip() and "Traceback" not in text
    assert "tinygpt-train-data-" not in text  # the app's data folder is never named


def test_chats_are_answered_while_a_run_trains_and_a_second_run_is_busy(app, tmp_path):
    trainer = Client(app.url, verbose=False)
    job = trainer.submit(handle_file(str(write_corpus(tmp_path / "long.txt"))), "tiny", 2000, api_name="/train")
    wait_until(lambda: any(line.startswith("step ") and not line.startswith("step 0/") for line in job.outputs()))
    assert Client(app.url, verbose=False).predict(message="hi", **GREEDY, api_name="/chat") == "hello!"
    with pytest.raises(Exception, match=r"busy: train-tiny-\S+ \(started by another visitor\)"):
        Client(app.url, verbose=False).predict(None, "tiny", 10, api_name="/train")
    assert not job.done()  # still training after all that
    assert Client(app.url, verbose=False).predict(api_name="/stop_training").startswith("Only the visitor")
    assert trainer.predict(api_name="/stop_training").startswith("Stopping train-tiny-")
    with pytest.raises(Exception, match="Stopped"):
        job.result()
