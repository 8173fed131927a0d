"""What a push publishes: a train.py folder's card names its repo id (never the folder it was trained in), keeps the
run's figures and curve, and links its Space; credentials written into HF_ENDPOINT appear in no output or file.
"""

import os
import shutil
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard, constants, snapshot_download

from tests.fake_hub import TOKEN, closed_port_url
from tests.train_cli import TINY, describe, run_train, write_corpus
from tinygpt.cli import main
from tinygpt.hub.remote import public_url
from tinygpt.hub.space import space_card, space_url

pytestmark = pytest.mark.slow  # a real train.py run, and a push with a Space


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    """A train.py output folder: its own card (README.md), metrics.json and loss.png beside the model."""
    workdir = tmp_path_factory.mktemp("trained")
    corpus = write_corpus(workdir / "corpus.txt")
    result = run_train(
        "--preset", "shakespeare-cpu", *TINY, "--text_file", corpus, "--max_steps", "4", "--output_dir", "run",
        cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, describe(result)
    folder = workdir / "run"
    assert {"README.md", "metrics.json", "loss.png"} <= {path.name for path in folder.iterdir()}
    return folder


def push(hub: str, *args: str) -> None:
    """`tinygpt push ARGS` in this process, against the fake Hub (patched only for the push: downloads built
    from huggingface_hub's import-time URL template need the real constant back)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "ENDPOINT", hub)
        patch.setenv("HF_TOKEN", TOKEN)
        assert main(["push", *args]) == 0


def test_a_pushed_train_py_folder_has_a_card_naming_its_repo_and_its_space(trained_folder, hub):
    local_card = (trained_folder / "README.md").read_text()
    assert str(trained_folder) in local_card or '"run"' in local_card  # the local card names the folder
    push(hub, str(trained_folder), "carol/run", "--space", "carol/run-demo")
    repo = snapshot_download("carol/run", endpoint=hub, allow_patterns=["README.md", "loss.png", "metrics.json"])
    card = open(f"{repo}/README.md").read()
    assert 'from_pretrained("carol/run")' in card and "tinygpt chat carol/run" in card
    assert str(trained_folder) not in card and 'from_pretrained("run")' not in card
    assert f"{hub}/spaces/carol/run-demo" in card
    assert "validation loss" in card and "![loss](loss.png)" in card  # the run's figures and its curve
    assert open(f"{repo}/loss.png", "rb").read() == (trained_folder / "loss.png").read_bytes()
    pushed_card = ModelCard.load(f"{repo}/README.md")
    assert pushed_card.data.model_name == "carol/run"
    (result,) = pushed_card.data.eval_results  # train.py's validation bits per byte, from its metrics.json
    assert result.metric_type == "bits_per_byte" and "validation bits per byte" in card
    assert (trained_folder / "README.md").read_text() == local_card  # the folder itself is never written to


def test_a_card_of_the_users_own_goes_up_unchanged(trained_folder, hub, tmp_path):
    folder = tmp_path / "own-card"
    shutil.copytree(trained_folder, folder)
    (folder / "README.md").write_text("# My model\n\nWritten by hand.\n")
    push(hub, str(folder), "carol/own")
    repo = snapshot_download("carol/own", endpoint=hub, allow_patterns=["README.md"])
    assert open(f"{repo}/README.md").read() == "# My model\n\nWritten by hand.\n"


def credentials_url(url: str) -> str:
    return url.replace("http://", "http://hubuser:s3cr3t-pass@", 1)


def test_credentials_in_hf_endpoint_appear_in_no_output_or_file(trained_folder, hub, tmp_path):
    """Pushes through endpoints carrying credentials: one the Hub refuses (httpx sends them as Basic auth), one
    unreachable; and what a push writes from its endpoint (the Space's card, the links) when it goes through."""
    results = [
        subprocess.run(
            [sys.executable, "-m", "tinygpt", "push", str(trained_folder), "dave/run", "--space", "dave/run-demo"],
            env={**os.environ, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf-home"), "HF_ENDPOINT": endpoint},
            capture_output=True,
            text=True,
            timeout=300,
        )
        for endpoint in (credentials_url(hub), credentials_url(closed_port_url()))
    ]
    assert [result.returncode for result in results] == [1, 1]
    assert "the Hub at http://127.0.0.1:" in results[0].stderr
    assert "cannot reach the Hub at http://127.0.0.1:" in results[1].stderr
    for result in results:
        assert "Traceback" not in result.stderr
        assert "s3cr3t" not in result.stdout + result.stderr and "hubuser" not in result.stdout + result.stderr
    endpoint = credentials_url(hub)
    written = [
        space_card("dave/run-demo", "dave/run", "0" * 40, endpoint),
        space_url("dave/run-demo", endpoint),
        public_url(endpoint + "/dave/run"),
    ]
    for text in written:
        assert "s3cr3t" not in text and "hubuser" not in text and "127.0.0.1" in text
    assert public_url("http://[::1]:8080/x") == "http://[::1]:8080/x"
    assert public_url("http://u:p@[::1]:8080/x") == "http://[::1]:8080/x"
