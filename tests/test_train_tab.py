"""The Train tab without a browser: the run manager in-process (stop, resume), and `python app.py`'s "/train"
endpoint through gradio_client (a file, bad files, busy, chats while training). The browser test of the tab is in
tests/test_browser.py."""

import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from tests.chat_fixtures import running_app
from tests.train_cli import write_corpus
from tinygpt.app.page import local_models
from tinygpt.app.train_runs import TrainingRequestError, TrainingRuns

GREEDY = dict(system_prompt="", temperature=0, top_k=0, top_p=1, max_new_tokens=64)
SMALL = {"n_layer": 1, "n_embd": 32, "block_size": 32, "per_device_train_batch_size": 8}
pytestmark = pytest.mark.slow


def wait_until(condition, timeout: float = 120, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def finish(runs: TrainingRuns, run) -> None:
    for _ in runs.watch(run):
        pass


def test_a_stopped_run_resumes_to_a_finished_model(tmp_path):
    runs = TrainingRuns(tmp_path / "models")
    corpus = write_corpus(tmp_path / "my text.txt", words=20000)
    run = runs.start(str(corpus), "tiny", 400, "session-a", SMALL)
    assert run.folder.parent == tmp_path / "models" and run.name.startswith("train-tiny-")
    with pytest.raises(TrainingRequestError, match=r"busy: train-tiny-\S+ \(started by session [0-9a-f]{6}\)"):
        runs.start(None, "tiny", 10, "session-b")
    assert runs.stop("session-b").startswith("Only session")  # a stranger cannot stop it
    wait_until(lambda: any(run.folder.glob("checkpoint-*/trainer_state.json")), what="a checkpoint")
    assert runs.stop("session-a").startswith("Stopping")
    finish(runs, run)
    assert run.outcome().startswith(f"Stopped **{run.name}** at step")
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
    assert list(runs.data_dir.iterdir()) == [runs.data_dir / f"{run.name}.txt"]  # the upload stays in the data folder


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
    with pytest.raises(Exception, match=r"busy: train-tiny-\S+ \(started by session [0-9a-f]{6}\)"):
        Client(app.url, verbose=False).predict(None, "tiny", 10, api_name="/train")
    assert not job.done()  # still training after all that
    assert trainer.predict(api_name="/stop_training").startswith("Stopping train-tiny-")
    with pytest.raises(Exception, match="Stopped"):
        job.result()
