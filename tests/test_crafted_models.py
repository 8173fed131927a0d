"""Model folders crafted to hurt whoever loads them: a chat template that loops for hours, a config of 200,000
layers over one weight, a window of 2^62 positions, a generation_config of max_new_tokens 0. Each is one line from
`tinygpt generate` within seconds, and app.py starts with them first in --models_dir, naming what it skipped.
"""

import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from safetensors.torch import load_file, save_file

from tests.chat_fixtures import REPO
from tests.servers import free_port, wait_until_answering

pytestmark = pytest.mark.slow  # subprocesses of the real commands

NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def edit_json(path, **fields):
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def craft(model_dir, folder, kind: str):
    shutil.copytree(model_dir, folder)
    if kind == "nested-loop-template":
        (folder / "chat_template.jinja").write_text(NESTED_LOOPS)
    elif kind == "huge-template-string":
        (folder / "chat_template.jinja").write_text("{{ 'x' * 4000000000 }}")
    elif kind == "200000-layers-one-weight":
        edit_json(folder / "config.json", n_layer=200_000)
        weights = load_file(folder / "model.safetensors")
        save_file({"transformer.wte.weight": weights["transformer.wte.weight"]}, folder / "model.safetensors")
    elif kind == "2^62-positions":
        edit_json(folder / "config.json", n_positions=2**62)
    elif kind == "max-new-tokens-0":
        edit_json(folder / "generation_config.json", max_new_tokens=0)
    return folder


KINDS = [
    "nested-loop-template",
    "huge-template-string",
    "200000-layers-one-weight",
    "2^62-positions",
    "max-new-tokens-0",
]


@pytest.fixture(scope="module")
def crafted(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("crafted")
    return {kind: craft(model_dir, root / f"a-{kind.replace('^', '')}", kind) for kind in KINDS}


def test_each_crafted_folder_is_one_line_from_generate_within_seconds(crafted):
    def generate(folder):
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "tinygpt", "generate", str(folder), "--prompt", "hi"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        return result, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(crafted, pool.map(generate, crafted.values()), strict=True))
    for kind, (result, seconds) in results.items():
        assert result.returncode == 1 and result.stdout == "", (kind, result.stderr)
        assert "Traceback" not in result.stderr, (kind, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tinygpt generate: error: "), (kind, result.stderr)
        assert str(crafted[kind]) in lines[0], (kind, lines[0])
        assert seconds <= 20, (kind, seconds)


def test_app_starts_with_the_crafted_folders_first_and_names_them(crafted, model_dir, tmp_path):
    models_dir = tmp_path / "runs"
    models_dir.mkdir()
    for folder in crafted.values():  # copies: the app lists no link that leads out of --models_dir
        shutil.copytree(folder, models_dir / folder.name)
    shutil.copytree(model_dir, models_dir / "z-good")
    port = free_port()
    log = tmp_path / "app.log"
    with open(log, "wb") as log_file:
        app = subprocess.Popen(
            [sys.executable, "app.py", "--models_dir", str(models_dir), "--port", str(port)],
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_answering(app, f"http://127.0.0.1:{port}/", log, "app.py", timeout=240)
        text = log.read_text()
        for folder in crafted.values():
            assert f"skipping {models_dir / folder.name}" in text, text
        assert "Traceback" not in text
    finally:
        app.terminate()
        app.wait(timeout=30)
