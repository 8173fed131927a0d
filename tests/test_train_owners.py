"""Train-tab runs belong to their owners: only the secret that started a run stops or resumes it (a stranger, a
forged session or a reloaded page of another browser cannot), Stop works when the run ignores SIGINT and reports
the step of the checkpoint it left, uploads go when their run ends or the app is killed, and a shape too big for
the machine is refused at once. The run manager is driven in-process (tiny runs of the `tiny` preset); the SIGTERM
test starts `python app.py` as a shell's `&` would. The page itself after a reload: tests/test_browser.py."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from tests.chat_fixtures import REPO
from tests.servers import free_port, wait_until_answering
from tests.train_cli import finish, wait_until, write_corpus
from tinygpt.app.train_runs import TrainingRequestError, TrainingRuns

SMALL = {"n_layer": 1, "n_embd": 32, "block_size": 32, "per_device_train_batch_size": 8}
# sha256("forged-14719961")[:6] == sha256("session-a")[:6] == "fa57a5": a session the old 24-bit label mistook
# for session-a (found in 10 s), so it could stop session-a's run.
OWNER, FORGED = "session-a", "forged-14719961"
pytestmark = pytest.mark.slow


@contextmanager
def sigint_ignored():
    """Children started inside inherit SIGINT ignored, as those of `python app.py &` in a shell script do."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def ignores_sigint(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    return bool(int(re.search(r"SigIgn:\s*([0-9a-f]+)", status).group(1), 16) & (1 << (signal.SIGINT - 1)))


def newest_checkpoint_step(folder: Path) -> int:
    return max(int(path.name.split("-")[1]) for path in folder.glob("checkpoint-*"))


def test_a_stranger_or_a_forged_session_can_neither_stop_nor_resume_a_run(tmp_path):
    runs = TrainingRuns(tmp_path / "models")
    run = runs.start(str(write_corpus(tmp_path / "text.txt")), "tiny", 400, OWNER, SMALL)
    try:
        for stranger in (FORGED, "session-b", "", None, OWNER[:-1], OWNER + " "):
            assert runs.stop(stranger) == f"Only the visitor who started {run.name} can stop it."
        assert run.running and not run.stop_requested
        with pytest.raises(TrainingRequestError) as busy:
            runs.start(None, "tiny", 10, "session-b")
        assert f"busy: {run.name} (started by another visitor) is training" in str(busy.value)
        assert not re.search(r"[0-9a-f]{6}", str(busy.value).replace(run.name, ""))  # no label of any session
        with pytest.raises(TrainingRequestError, match=rf"busy: {run.name} \(yours\)"):
            runs.start(None, "tiny", 10, OWNER)
        assert runs.stop(OWNER) == f"Stopping {run.name}..."  # at once: it stops at its first step, saved
        finish(runs, run)
        assert run.stopped and run.saved_step is not None, run.log_text()
        for stranger in ("session-b", FORGED, None):
            with pytest.raises(TrainingRequestError, match=f"only the visitor who started {run.name} can resume it"):
                runs.resume(stranger)
        assert runs.current is run and not run.running  # nothing was started for them
        resumed = runs.resume(OWNER)
        assert resumed.start_step == run.saved_step
        assert runs.stop(FORGED).startswith("Only the visitor") and runs.stop(OWNER).startswith("Stopping")
        finish(runs, resumed)
        assert resumed.stopped
    finally:
        runs.stop(OWNER)
        finish(runs, runs.current)


def test_stop_works_when_the_run_ignores_sigint_and_reports_its_checkpoint_step(tmp_path):
    """Started from `python app.py &`, the run ignores SIGINT: Stop must still stop it at once, cleanly, and the page
    shows the step of the checkpoint it saved (what Resume continues from), with no final model written."""
    runs = TrainingRuns(tmp_path / "models")
    with sigint_ignored():
        run = runs.start(str(write_corpus(tmp_path / "text.txt", words=20000)), "tiny", 5000, OWNER, SMALL)
    assert ignores_sigint(run.process.pid)
    wait_until(lambda: any(run.folder.glob("checkpoint-*/trainer_state.json")), what="a checkpoint")  # step 1000
    asked = time.monotonic()
    assert runs.stop(OWNER) == f"Stopping {run.name}..."
    finish(runs, run)
    assert time.monotonic() - asked < 30, "Stop waited for the SIGTERM fallback"
    assert run.process.returncode == 130, run.log_text()
    step = newest_checkpoint_step(run.folder)
    assert f"train.py: stopped at step {step} as asked" in run.log_text()
    assert run.step == step > 1000  # past the first periodic checkpoint: the one saved as it stopped
    assert run.outcome() == f"Stopped **{run.name}** at step {step}, its last checkpoint; Resume continues from it."
    assert run.curve().step.max() <= step
    assert not (run.folder / "model.safetensors").exists() and not (run.folder / "config.json").exists()
    assert (runs.data_dir / f"{run.name}.txt").is_file()  # kept for Resume
    assert not list(runs.data_dir.glob("*.stop"))


def test_the_owner_stops_after_a_reload(tmp_path):
    """A page reload is a new Gradio session; the browser's token (gr.BrowserState) still names the owner."""
    from tinygpt.app.train_tab import owner_of

    runs = TrainingRuns(tmp_path / "models")
    token = "T" * 43  # the shape of secrets.token_urlsafe(32)
    run = runs.start(None, "tiny", 400, owner_of(token, "session-before-reload"), SMALL)
    try:
        assert owner_of(token, "session-before-reload") == owner_of(token, "session-after-reload") == token
        assert owner_of(None, "session-after-reload") == "session-after-reload"  # an API client: its session
        assert owner_of("short", "session-after-reload") == "session-after-reload"  # not a token of ours
        for stranger in (owner_of(None, "session-after-reload"), owner_of("T" * 42 + "U", "x")):
            assert runs.stop(stranger).startswith("Only the visitor")
        assert runs.stop(owner_of(token, "session-after-reload")) == f"Stopping {run.name}..."
    finally:
        finish(runs, run)


def test_an_upload_is_removed_when_its_run_ends_and_kept_while_stopped(tmp_path):
    runs = TrainingRuns(tmp_path / "models")
    stopped = runs.start(str(write_corpus(tmp_path / "a.txt")), "tiny", 400, OWNER, SMALL)
    runs.stop(OWNER)
    finish(runs, stopped)
    assert stopped.outcome().startswith("Stopped") and list(runs.data_dir.glob("*.txt")), stopped.log_text()
    binary = tmp_path / "photo.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 50)
    failed = runs.start(str(binary), "tiny", 10, OWNER, SMALL)
    assert [path.name for path in runs.data_dir.glob("*.txt")] == [f"{failed.name}.txt"]  # the stopped one's went
    finish(runs, failed)
    assert "photo.txt is not UTF-8 text" in failed.outcome()
    assert list(runs.data_dir.glob("*.txt")) == []
    with pytest.raises(TrainingRequestError, match="was removed when it ended"):
        runs.resume(OWNER)
    done = runs.start(str(write_corpus(tmp_path / "b.txt")), "tiny", 10, OWNER, SMALL)
    finish(runs, done)
    assert done.finished, done.log_text()
    assert list(runs.data_dir.iterdir()) == []


@pytest.mark.parametrize(
    "knobs, named",
    [
        ({"n_layer": 1_000_000}, "Layers"),
        ({"n_embd": 1 << 20}, "Width (n_embd)"),
        ({"n_layer": 1 << 20, "n_embd": 1 << 20}, "Layers"),
        ({"block_size": 1 << 20, "per_device_train_batch_size": 1 << 20}, "Context (block_size)"),
    ],
)
def test_a_shape_too_big_for_the_machine_is_refused_at_once_in_one_line(tmp_path, knobs, named):
    runs = TrainingRuns(tmp_path / "models")
    asked = time.monotonic()
    try:
        with pytest.raises(TrainingRequestError) as refused:
            runs.start(None, "tiny", 10, OWNER, knobs)
    finally:
        if runs.current is not None:  # the old code started it: do not leave it allocating for minutes
            os.killpg(runs.current.process.pid, signal.SIGKILL)
    assert time.monotonic() - asked < 2
    message = str(refused.value)
    assert "\n" not in message and ": too big to train here, it needs about" in message, message
    largest = int(re.search(rf"the largest that fits is {re.escape(named)} (\d+) \(", message).group(1))
    assert largest >= 1 and runs.current is None and not (tmp_path / "models").exists()


def test_the_largest_size_named_is_the_largest_that_fits(monkeypatch):
    from tinygpt.app import train_inputs

    monkeypatch.setattr(train_inputs, "memory_bytes", lambda device: 1 << 30)  # a 1 GiB machine
    with pytest.raises(TrainingRequestError, match=r"has 1 GiB; the largest that fits is Layers \d+ \(with") as e:
        train_inputs.knob_flags("tiny", {"n_layer": 500})
    largest = int(re.search(r"Layers (\d+) \(", str(e.value)).group(1))
    assert train_inputs.knob_flags("tiny", {"n_layer": largest}) == ["--n_layer", str(largest)]
    with pytest.raises(TrainingRequestError):
        train_inputs.knob_flags("tiny", {"n_layer": largest + 1})
    # gpt2-small's batch of 32 x 1,024 tokens needs more than 8 GiB whatever the depth: the batch is named.
    monkeypatch.setattr(train_inputs, "memory_bytes", lambda device: 8 << 30)
    with pytest.raises(TrainingRequestError, match=r"the largest that fits is Batch size \d+ \(with the preset's"):
        train_inputs.knob_flags("gpt2-small", {"n_layer": 500})
    assert train_inputs.knob_flags("tiny", SMALL)  # the tests' own shape fits anywhere


def test_sigterm_to_a_backgrounded_app_stops_its_run_and_removes_the_upload(tmp_path, request):
    """`python app.py &` from a shell (SIGINT ignored), then `kill`: the run stops at a checkpoint through its stop
    file, and the app's data folder (the uploaded data) is gone, as after a clean exit."""
    tmp = Path(tempfile.mkdtemp(prefix="tinygpt-sigterm-"))  # the app's TMPDIR: its data folder is made in it
    request.addfinalizer(lambda: shutil.rmtree(tmp, ignore_errors=True))
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp), "NO_PROXY": "localhost,127.0.0.1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "app.py", "--models_dir", str(tmp_path / "runs"), "--port", str(port)]
    with sigint_ignored(), open(tmp_path / "app.log", "wb") as log:
        app = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_answering(app, url, tmp_path / "app.log", "app.py")
        job = Client(url, verbose=False).submit(
            handle_file(str(write_corpus(tmp_path / "long.txt", words=20000))), "tiny", 300, api_name="/train"
        )
        wait_until(lambda: any(line.startswith("step ") and " 0/" not in line for line in job.outputs()))
        (data_dir,) = tmp.glob("tinygpt-train-data-*")
        assert any(data_dir.iterdir())
        app.send_signal(signal.SIGTERM)
        assert app.wait(timeout=90) == 128 + signal.SIGTERM, (tmp_path / "app.log").read_text()[-3000:]
    finally:
        app.kill()
    assert not data_dir.exists(), (tmp_path / "app.log").read_text()[-3000:]
    (folder,) = (tmp_path / "runs").iterdir()
    assert any(folder.glob("checkpoint-*")) and not (folder / "model.safetensors").exists()
    assert subprocess.run(["pgrep", "-f", str(folder)], capture_output=True).stdout == b""  # the run is gone too
