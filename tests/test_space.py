"""`tinygpt push MODEL owner/name --space owner/space` against the fake Hub: the model repo gains a plain GPT-2
`gpt2/` folder and a card linking the Space; the Space's app.py, started where tinygpt cannot be imported, pulls
the model at the pinned commit and answers a gradio_client call.
"""

import os
import re
import subprocess
import sys

import pytest
from huggingface_hub import HfApi, constants, snapshot_download

from tests.fake_hub import TOKEN
from tests.servers import free_port, wait_until_answering
from tinygpt.cli import main

pytestmark = pytest.mark.slow  # a Space app started as a subprocess

# Runs the Space's app.py as Spaces do (python app.py), with `import tinygpt` failing.
RUN_WITHOUT_TINYGPT = "import runpy, sys; sys.modules['tinygpt'] = None; runpy.run_path('app.py', run_name='__main__')"


@pytest.fixture(scope="module")
def pushed(hub, model_dir):
    """Push the trained chat model with a Space through the CLI; returns the model push's commit."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "ENDPOINT", hub)
        patch.setenv("HF_TOKEN", TOKEN)
        assert main(["push", str(model_dir), "alice/chat", "--space", "alice/chat-demo"]) == 0
    return HfApi(endpoint=hub).list_repo_commits("alice/chat")[0].commit_id


def test_push_with_space_adds_plain_gpt2_and_a_pinned_space(hub, pushed, capsys):
    api = HfApi(endpoint=hub)
    files = {sibling.rfilename for sibling in api.model_info("alice/chat").siblings}
    assert {"model.safetensors", "gpt2/model.safetensors", "gpt2/tokenizer.json", "gpt2/config.json"} <= files
    model_repo = snapshot_download("alice/chat", endpoint=hub, allow_patterns=["README.md", "gpt2/README.md"])
    assert f"{hub}/spaces/alice/chat-demo" in open(f"{model_repo}/README.md").read()
    assert f"{hub}/spaces/alice/chat-demo" in open(f"{model_repo}/gpt2/README.md").read()
    space = snapshot_download("alice/chat-demo", repo_type="space", endpoint=hub)
    readme = open(f"{space}/README.md").read()
    assert readme.startswith("---\n") and "\nsdk: gradio\n" in readme and "\napp_file: app.py\n" in readme
    app = open(f"{space}/app.py").read()
    assert "MODEL_REPO = 'alice/chat'\n" in app and f"MODEL_REVISION = {pushed!r}\n" in app
    assert not re.search(r"^\s*(import|from)\s+tinygpt", app, re.MULTILINE) and "trust_remote_code" not in app
    requirements = open(f"{space}/requirements.txt").read().split()
    assert f"transformers=={__import__('transformers').__version__.split('+')[0]}" in requirements


def test_space_app_runs_without_tinygpt_and_answers_gradio_client(hub, pushed, tmp_path):
    from gradio_client import Client

    space = snapshot_download("alice/chat-demo", repo_type="space", endpoint=hub, local_dir=tmp_path / "space")
    # A later commit breaks the plain model: the Space, pinned to the push's commit, must not see it.
    HfApi(endpoint=hub, token=TOKEN).delete_file("gpt2/model.safetensors", "alice/chat")
    port = free_port()
    env = {
        **os.environ,
        "HF_ENDPOINT": hub,
        "HF_HOME": str(tmp_path / "hf-home"),  # a fresh cache: the app downloads the model itself
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
    }
    env.pop("PYTHONPATH", None)
    log = tmp_path / "app.log"
    with open(log, "wb") as log_file:
        app = subprocess.Popen(
            [sys.executable, "-c", RUN_WITHOUT_TINYGPT], cwd=space, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_answering(app, url, log, "the Space's app.py")
        client = Client(url, verbose=False)
        assert client.predict("hi", api_name="/chat") == "hello!"  # what the chat model learned to answer
        job = client.submit("what is your name?", api_name="/chat")
        assert list(job)[-1] == "my name is tinygpt."
    finally:
        app.terminate()
        app.wait(timeout=30)


def test_app_hub_tab_publishes_a_space(hub, model_dir, monkeypatch):
    from tinygpt.app import models as webui

    monkeypatch.setattr(constants, "ENDPOINT", hub)
    status, token_box = webui.push(str(model_dir), "bob/chat", TOKEN, False, "", "bob/chat-demo")
    assert status == f"Pushed {model_dir} to {hub}/bob/chat and created the Space {hub}/spaces/bob/chat-demo"
    assert token_box == ""
    space_files = {sibling.rfilename for sibling in HfApi(endpoint=hub).space_info("bob/chat-demo").siblings}
    assert space_files == {"README.md", "app.py", "requirements.txt"}
    status, _ = webui.push(str(model_dir), "bob/chat", TOKEN, False, "", "not a space id")
    assert status.startswith("Error: 'not a space id' is not a Hub repo id")
