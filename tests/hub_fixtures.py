"""Fixtures shared by test_hub.py and test_cli.py: the fake Hub on a free port, the model to push to it, and
the tokens the leak checks look for.

The fixtures are registered under their `name=`, so a test module imports them by their function names
(`hub_fixture`, `model_dir_fixture`) and its tests ask for `hub` and `model_dir`.
"""

import socket

import pytest
from chat_fixtures import trained_chat_model
from fake_hub import start_fake_hub

TOKEN = "hf_tinygptTestToken_q8Zr2m3Vb9"  # the fake hub's one valid token
WRONG_TOKEN = "hf_tinygptWrongToken_x5Kp7w7Qs1"


@pytest.fixture(scope="module", name="hub")
def hub_fixture(tmp_path_factory):
    """Base URL of a fresh fake Hub that accepts TOKEN."""
    url, stop = start_fake_hub(tmp_path_factory.mktemp("fake-hub"), TOKEN)
    yield url
    stop()


@pytest.fixture(scope="module", name="model_dir")
def model_dir_fixture():
    """A trained chat model's folder (model + tokenizer + trainer leftovers such as training_args.bin)."""
    return trained_chat_model()


def closed_port_url() -> str:
    """An endpoint on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
