"""The app's open models (tinygpt.app.models): switching between models any number of times holds one scheduler
thread per model kept, and memory returns to where it was; pinned models (the one app.py serves on its API) stay.
"""

import json
import shutil
import subprocess
import sys

import pytest

from tests.chat_fixtures import REPO

pytestmark = pytest.mark.slow  # a fresh interpreter, so that only its own threads and memory are counted

# 15 Load + chat cycles over 5 folders, as the Model tab does them; prints thread counts and RSS after the first
# cycle and after the last.
SWITCHING = """
import json, sys, threading, time
import psutil
from tinygpt.app.models import OPEN_MODELS, chat_model, load_model
from tinygpt.decoding.chat import DecodingOptions

folders, options = sys.argv[1:], DecodingOptions(device="cpu")

def schedulers():
    for closer in [t for t in threading.enumerate() if t.name == "tinygpt-close"]:
        closer.join(timeout=30)
    return sum(t.name == "tinygpt-scheduler" for t in threading.enumerate())

def cycle(folder):
    load_model(folder)  # the Load button
    reply = list(chat_model(folder, options).stream_reply([{"role": "user", "content": "hi"}], temperature=0))[-1]
    assert reply == "hello!", reply

cycle(folders[0])
first = {"threads": schedulers(), "rss": psutil.Process().memory_info().rss}
for i in range(1, 15):
    cycle(folders[i % len(folders)])
last = {"threads": schedulers(), "rss": psutil.Process().memory_info().rss, "open": len(OPEN_MODELS.entries)}
print(json.dumps({"first": first, "last": last}))
"""


def test_fifteen_switches_over_five_models_keep_one_thread_per_open_model_and_the_memory(model_dir, tmp_path):
    folders = [shutil.copytree(model_dir, tmp_path / f"model-{i}") for i in range(5)]
    result = subprocess.run(
        [sys.executable, "-c", SWITCHING, *map(str, folders)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, "\n".join(
        line for line in result.stderr.splitlines() if "Loading weights" not in line
    )[-3000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["first"]["threads"] == 1
    assert counts["last"]["open"] == 3 and counts["last"]["threads"] == 3  # one per model kept, not 15
    assert counts["last"]["rss"] <= 1.10 * counts["first"]["rss"], counts


def test_a_pinned_model_stays_open_and_memory_bounds_the_rest(model_dir, tmp_path, monkeypatch):
    from tinygpt.app import models
    from tinygpt.decoding.chat import DecodingOptions

    folders = [str(shutil.copytree(model_dir, tmp_path / f"model-{i}")) for i in range(4)]
    options = DecodingOptions(device="cpu")
    one_model = models.OpenModels(max_models=10).entry(folders[0]).nbytes
    monkeypatch.setattr(models, "OPEN_MODELS", models.OpenModels(max_models=10, max_bytes=2 * one_model))
    pinned = models.chat_model(folders[0], options, pin=True)
    others = [models.chat_model(folder, options) for folder in folders[1:]]
    held = [entry.loaded[0] for entry in models.OPEN_MODELS.entries.values()]
    assert len(held) == 2 and models.OPEN_MODELS.entries[next(iter(models.OPEN_MODELS.entries))].pinned
    for chat in others[:2]:  # made room for the last: closed, their threads ended
        chat.scheduler._thread.join(timeout=30)
        assert not chat.scheduler._thread.is_alive()
    assert pinned.scheduler._thread.is_alive() and others[2].scheduler._thread.is_alive()
    pinned.close()
    others[2].close()
