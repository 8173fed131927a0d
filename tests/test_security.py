"""Issue L's security items, each through a public entry point: `python app.py` over HTTP (including its hidden
events, called as any HTTP client can), the `tinygpt` console command and `python train.py` as subprocesses, and
the project's fake Hub on 127.0.0.1.

The app runs as a stranger would meet it: HF_TOKEN set on the server, --models_dir outside the working directory
and the app's temp dir, a model with mismatched shapes listed first, a symlink out of --models_dir and a model
folder beside it that no visitor may load.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from huggingface_hub import HfApi

import tinygpt
from tests.chat_fixtures import REPO, trained_chat_model
from tests.fake_hub import TOKEN, WRONG_TOKEN, closed_port_url, commit_raw, start_fake_hub
from tests.servers import free_port, wait_until_answering
from tinygpt.hub.push import push_model
from tinygpt.hub.remote import HubError

TINYGPT = Path(sys.executable).with_name("tinygpt")  # the console script pyproject.toml installs
pytestmark = pytest.mark.slow


def edit_config(folder: Path, **fields) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))


def one_error_line(result: subprocess.CompletedProcess, prefix: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def run_commands(commands: dict, env_for) -> dict:
    """name -> CompletedProcess of `tinygpt ARGS`, two at a time (the machine has two cores)."""

    def run(name):
        args, overrides = commands[name]
        return subprocess.run(
            [str(TINYGPT), *map(str, args)], env=env_for(name, overrides), capture_output=True, text=True, timeout=300
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(commands, pool.map(run, commands), strict=True))


# -- the app over HTTP ------------------------------------------------------------------------------------------

SERVER_TOKEN = "hf_server_own_token_do_not_use_0123"  # the server's HF_TOKEN: the fake hub's one valid token


class App:
    """`python app.py` on a free port; `event(elem_id, data)` runs the event of a button, hidden or not."""

    def __init__(self, work: Path, models_dir: Path, outside: Path, hub_url: str):
        self.work, self.models_dir, self.outside, self.hub_url = work, models_dir, outside, hub_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        app_tmp = work / "app-tmp"  # so that models_dir is outside the app's temp dir, as well as outside its cwd
        app_tmp.mkdir()
        env = {
            **os.environ,
            "HF_ENDPOINT": hub_url,
            "HF_TOKEN": SERVER_TOKEN,
            "HF_HOME": str(work / "hf-home"),
            "TMPDIR": str(app_tmp),
            "PYTHONPATH": str(REPO),
        }
        env.pop("GRADIO_TEMP_DIR", None)
        self.log = work / "app.log"
        command = [sys.executable, "app.py", "--models_dir", str(models_dir), "--port", str(self.port)]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_until_answering(self.process, self.url, self.log, "app.py")
        self.config = httpx.get(self.url + "config").json()

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)

    def event(self, button_elem_id: str, data: list, session_hash: str | None = None) -> list:
        """POST /gradio_api/queue/join for the click of `button_elem_id`, then read the result from the stream."""
        ids = {c["props"].get("elem_id"): c["id"] for c in self.config["components"]}
        button = ids[button_elem_id]
        fn_index = next(
            d["id"] for d in self.config["dependencies"] if [button, "click"] in [list(t) for t in d["targets"]]
        )
        session_hash = session_hash or uuid.uuid4().hex[:10]
        payload = {"data": data, "fn_index": fn_index, "trigger_id": button, "session_hash": session_hash}
        joined = httpx.post(self.url + "gradio_api/queue/join", json=payload, timeout=30)
        assert joined.status_code == 200, joined.text
        with httpx.stream(
            "GET", self.url + "gradio_api/queue/data", params={"session_hash": session_hash}, timeout=120
        ) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    assert message.get("success"), message
                    return message["output"]["data"]
        raise AssertionError("the event stream ended without a result")


def shown_text(value) -> str:
    return value.get("value", "") if isinstance(value, dict) else str(value)


@pytest.fixture(scope="module")
def app():
    work = Path(tempfile.mkdtemp(prefix="tinygpt-security-"))
    model = trained_chat_model()
    models_dir, outside = work / "models", work / "outside"
    models_dir.mkdir()
    shutil.copytree(model, models_dir / "chat")  # with loss.png and all_results.json
    shutil.copytree(model, models_dir / "a-shape-mismatch")  # listed first: the app used to die on it
    edit_config(models_dir / "a-shape-mismatch", n_positions=4)  # against 64-row position weights
    shutil.copytree(model, outside / "secret_model")
    (models_dir / "link-out").symlink_to(outside / "secret_model")
    hub_url, stop_hub = start_fake_hub(work / "hub", SERVER_TOKEN)
    running = App(work, models_dir, outside, hub_url)
    yield running
    running.stop()
    stop_hub()


def test_a_bad_model_first_in_models_dir_is_skipped_and_its_load_says_why(app):
    assert "skipping" in app.log.read_text() and "a-shape-mismatch" in app.log.read_text()
    status = shown_text(app.event("load-button", [str(app.models_dir / "a-shape-mismatch")])[1])
    assert status.startswith("Error: ") and "\n" not in status
    assert "transformer.wpe.weight is 64x64" in status and "n_positions=4" in status


def test_load_serves_loss_png_from_a_models_dir_outside_cwd_and_tmp(app):
    _, status, info, image, *chat_controls = app.event("load-button", [str(app.models_dir / "chat")])
    assert shown_text(status) == f"Loaded {app.models_dir / 'chat'}."
    url = image["value"]["url"]
    assert httpx.get(url, timeout=30).content[:8] == b"\x89PNG\r\n\x1a\n"


def test_hidden_load_refuses_everything_outside_models_dir_alike(app):
    secret = app.outside / "secret_model"
    attempts = [
        str(secret),  # absolute
        os.path.relpath(secret, REPO),  # ../ from the working directory
        f"{app.models_dir}/../outside/secret_model",
        "../outside/secret_model",  # ../ from models_dir
        str(app.models_dir / "link-out"),  # a symlink out
        str(app.outside / "no-such-folder"),  # a folder that does not exist: the same answer
        "/etc",
    ]
    statuses = {attempt: shown_text(app.event("load-button", [attempt])[1]) for attempt in attempts}
    assert len(set(statuses.values())) == 1, statuses
    status = statuses[attempts[0]]
    assert status.startswith("Error: choose one of the model folders in") and "\n" not in status
    assert shown_text(app.event("load-button", ["chat"])[1]) == "Loaded chat."  # a name inside still loads


def test_pull_accepts_hub_repo_ids_only(app):
    for source in [str(app.outside / "secret_model"), str(app.models_dir / "chat")]:
        status = shown_text(app.event("pull-button", [source, "", ""])[1])
        assert status.startswith("Error: ") and "is not a Hub repo id" in status


def test_a_blank_token_never_pushes_with_the_servers_token(app):
    status = app.event("push-button", [None, "visitor/with-server-token", "", False, "", ""])[0]  # no Space
    assert shown_text(status).startswith("Error: enter a Hub token with write access")
    assert not HfApi(endpoint=app.hub_url, token=SERVER_TOKEN).repo_exists("visitor/with-server-token")


def test_a_blank_token_never_reads_private_repos_with_the_servers_token(app):
    api = HfApi(endpoint=app.hub_url, token=SERVER_TOKEN)
    api.create_repo("owner/private-model", private=True)
    status = shown_text(app.event("pull-button", ["owner/private-model", "", ""])[1])
    assert status.startswith("Error: owner/private-model was not found")


def test_a_none_chat_message_is_a_one_line_error(app):
    with pytest.raises(AppError, match="The message must be text") as raised:
        Client(app.url, verbose=False).predict(
            message=None, system_prompt="", temperature=0, top_k=0, top_p=1, max_new_tokens=8, api_name="/chat"
        )
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("host", ["rebound.attacker.example", "rebound.attacker.example:80", "192.0.2.7"])
def test_foreign_host_headers_get_400(app, host):
    assert httpx.get(app.url, headers={"Host": host}, timeout=30).status_code == 400
    assert httpx.post(app.url + "gradio_api/queue/join", json={}, headers={"Host": host}, timeout=30).status_code == 400


def test_local_host_headers_are_served(app):
    for host in [f"127.0.0.1:{app.port}", f"localhost:{app.port}"]:
        assert httpx.get(app.url, headers={"Host": host}, timeout=30).status_code == 200


# -- push and pull on the command line ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_model(model_dir, tmp_path_factory):
    """The chat model, with auto_map naming a server file and a tampered copy of the modeling code beside it."""
    secret = tmp_path_factory.mktemp("server") / "secret_settings.py"
    secret.write_text("PASSWORD = 'server secret'\n")
    folder = shutil.copytree(model_dir, tmp_path_factory.mktemp("hostile") / "model")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"]["AutoConfig"] = f"{secret.with_suffix('')}.TinyGPTConfig"
    (folder / "config.json").write_text(json.dumps(config))
    return folder, secret


def test_push_never_uploads_a_file_that_auto_map_names(hub, hostile_model, tmp_path):
    folder, secret = hostile_model
    result = subprocess.run(
        [str(TINYGPT), "push", str(folder), "alice/hostile"],
        env={**os.environ, "HF_ENDPOINT": hub, "HF_HOME": str(tmp_path), "HF_TOKEN": TOKEN, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    line = one_error_line(result, "tinygpt push: error:")
    assert "auto_map names" in line and "not tinygpt's own code" in line
    api = HfApi(endpoint=hub, token=TOKEN)
    uploaded = api.list_repo_files("alice/hostile") if api.repo_exists("alice/hostile") else []
    assert not [name for name in uploaded if "secret" in name]


def test_push_never_follows_a_link_out_of_the_folder(hub, model_dir, tmp_path):
    folder = shutil.copytree(model_dir, tmp_path / "model")
    secret = tmp_path / "secret.txt"
    secret.write_text("the user's private notes")
    (folder / "merges.txt").symlink_to(secret)  # a file push would send, pointing elsewhere
    with pytest.raises(HubError, match=r"merges.txt links to .*secret.txt, outside .*: push sends only"):
        push_model(folder, "alice/linked", token=TOKEN, endpoint=hub)
    assert not HfApi(endpoint=hub, token=TOKEN).repo_exists("alice/linked")
    (folder / "merges.txt").unlink()
    (folder / "merges.txt").symlink_to(folder / "vocab-copy.txt")  # a link inside the folder is its own file
    (folder / "vocab-copy.txt").write_text("")
    push_model(folder, "alice/linked", token=TOKEN, endpoint=hub)
    # A snapshot in the Hub's cache: every file a link to its repo's blobs/, which push follows.
    repo = tmp_path / "models--bob--cached"
    snapshot, blobs = repo / "snapshots" / "0123abc", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for file in model_dir.iterdir():
        if file.is_file():
            shutil.copyfile(file, blobs / file.name)
            (snapshot / file.name).symlink_to(Path("..", "..", "blobs", file.name))
    push_model(snapshot, "alice/from-the-cache", token=TOKEN, endpoint=hub)


def test_push_uploads_the_packages_own_code_not_the_folders(hub, model_dir, tmp_path):
    folder = shutil.copytree(model_dir, tmp_path / "model")
    (folder / "modeling_tinygpt.py").write_text("raise SystemExit('a tampered copy')\n")
    push_model(folder, "alice/own-code", token=TOKEN, endpoint=hub)
    api = HfApi(endpoint=hub, token=TOKEN)
    for module in ("configuration_tinygpt", "modeling_tinygpt", "tokenization_tinygpt"):
        uploaded = Path(api.hf_hub_download("alice/own-code", f"{module}.py")).read_bytes()
        assert uploaded == (Path(tinygpt.__file__).parent / f"{module}.py").read_bytes()


@pytest.fixture(scope="module")
def pull_results(hub, model_dir, tmp_path_factory):
    """Every `tinygpt pull` case, run once (two at a time): name -> (CompletedProcess, its HF_HOME, its DIR)."""
    work = tmp_path_factory.mktemp("pulls")
    push_model(model_dir, "alice/cached", token=TOKEN, endpoint=hub)
    model_files = {name: (model_dir / name).read_bytes() for name in ("config.json", "model.safetensors")}
    for repo_id, bad_name in [("alice/dotdot", "../escaped.py"), ("alice/absolute", "/tmp/tinygpt-absolute.py")]:
        HfApi(endpoint=hub, token=TOKEN).create_repo(repo_id)
        commit_raw(hub, repo_id, {**model_files, bad_name: b"print('written outside')\n"})

    # The stale-cache cases share one HF_HOME, filled by a first, good pull.
    cached_home = work / "cached-home"
    first = run_commands({"fill": (["pull", "alice/cached"], {})}, lambda name, o: pull_env(hub, cached_home, o))
    assert first["fill"].returncode == 0, first["fill"].stderr[-3000:]
    cases = {
        "wrong token, cached": (["pull", "alice/cached"], {"HF_TOKEN": WRONG_TOKEN}),
        "hub down, cached": (["pull", "alice/cached"], {"HF_ENDPOINT": closed_port_url()}),
        "offline, cached": (["pull", "alice/cached"], {"HF_HUB_OFFLINE": "1"}),
        "dotdot names": (["pull", "alice/dotdot", work / "dotdot-dir"], {"HF_HOME": str(work / "dotdot-home")}),
        "absolute names": (["pull", "alice/absolute"], {"HF_HOME": str(work / "absolute-home")}),
    }
    results = run_commands(cases, lambda name, overrides: pull_env(hub, cached_home, overrides))
    return results, work


def pull_env(hub: str, hf_home: Path, overrides: dict) -> dict:
    return {
        **os.environ,
        "HF_ENDPOINT": hub,
        "HF_HOME": str(hf_home),
        "HF_TOKEN": TOKEN,
        "PYTHONPATH": str(REPO),
        **overrides,
    }


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong token, cached", "refused the token (401 Unauthorized)"),
        ("hub down, cached", "cannot reach the Hub at http://127.0.0.1:"),
    ],
)
def test_pull_never_reports_success_from_a_stale_cache(pull_results, case, expected):
    result = pull_results[0][case]
    assert result.returncode == 1 and "pulled" not in result.stdout
    line = one_error_line(result, "tinygpt pull: error:")
    assert expected in line and "A copy of alice/cached is in the cache" in line and "HF_HUB_OFFLINE=1" in line
    assert TOKEN not in line and WRONG_TOKEN not in line


def test_offline_pull_says_it_uses_the_cached_copy(pull_results):
    result = pull_results[0]["offline, cached"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("using the cached copy of alice/cached in ")
    assert "HF_HUB_OFFLINE=1" in result.stdout


@pytest.mark.parametrize(("case", "name"), [("dotdot names", "../escaped.py"), ("absolute names", "/tmp/")])
def test_pull_of_a_repo_with_unsafe_file_names_is_one_line_and_writes_nothing(pull_results, case, name):
    results, work = pull_results
    result = results[case]
    assert result.returncode == 1
    line = one_error_line(result, "tinygpt pull: error:")
    assert "lists a file named" in line and name in line and "nothing was written" in line
    assert not (work / "dotdot-dir").exists() and not (work / "escaped.py").exists()
    assert not Path("/tmp/tinygpt-absolute.py").exists()
    assert not list(work.glob(f"{case.split()[0]}-home/hub/models--*/snapshots/*/*"))


# -- no folder's code ever runs ----------------------------------------------------------------------------------


def test_train_init_from_a_folder_with_custom_code_refuses_without_prompting(tmp_path):
    folder, marker = tmp_path / "custom", tmp_path / "code-ran"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "othergpt", "auto_map": {"AutoConfig": "configuration_other.OtherConfig"}})
    )
    (folder / "configuration_other.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig\n\n\n"
        "class OtherConfig(PretrainedConfig):\n    model_type = 'othergpt'\n"
    )
    (tmp_path / "corpus.txt").write_text("the king and the queen walk to the river\n" * 200)
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--init_from", str(folder), "--text_file", "corpus.txt"]
        + ["--output_dir", "out", "--max_steps", "1"],
        cwd=tmp_path,
        input="y\n",  # what the [y/N] prompt would read
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert not marker.exists(), "the folder's code ran"
    assert "[y/N]" not in result.stdout + result.stderr
    assert result.returncode != 0
    line = one_error_line(result, "train.py: error:")
    assert f"--init_from {folder}: cannot load it" in line and "contains custom code" in line
