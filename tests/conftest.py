"""Shared test settings (offline, no telemetry, a private HF_HOME) and every shared fixture: the fake Hub, the
trained chat model, the ../shared data when present."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# Before anything imports huggingface_hub / gradio: no telemetry, no stray token or cache from the machine.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="tinygpt-hf-home-")
os.environ.pop("HF_TOKEN", None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "localhost,127.0.0.1"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Base URL of a fresh fake Hub (tests/fake_hub.py) on 127.0.0.1 that accepts TOKEN, for one test module."""
    from tests.fake_hub import TOKEN, start_fake_hub

    url, stop = start_fake_hub(tmp_path_factory.mktemp("fake-hub"), TOKEN)
    yield url
    stop()


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """A trained chat model's folder (tests/chat_fixtures.py; trained once per run): model, tokenizer, loss.png."""
    from tests.chat_fixtures import trained_chat_model

    return trained_chat_model()


@pytest.fixture(scope="session")
def tokenizer():
    """The engine tests' character tokenizer (tests/tiny_models.py's ENGINE_CORPUS); a module may define its own."""
    from tests.tiny_models import ENGINE_CORPUS
    from tinygpt import TinyGPTCharTokenizer

    return TinyGPTCharTokenizer.from_corpus(ENGINE_CORPUS)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (Tiny Shakespeare, GPT-2 vocab/merges, ShareGPT chat); skips the test where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs {SHARED_DATA} (the project's shared data folder beside the checkout)")
    return SHARED_DATA
