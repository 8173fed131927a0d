"""Checks for .ci/wheel_stage.sh, the package as users install it. Standard library only.

    wheel_check.py contents WHEEL SDIST     (from the checkout) every tinygpt/**.py of the checkout is in both
    wheel_check.py installed VERSION        (the wheel venv's python) tinygpt imports from site-packages
    wheel_check.py port                     prints a free TCP port on 127.0.0.1
    wheel_check.py serve PORT PID           waits for `tinygpt serve` (process PID) to answer, then one chat request
    wheel_check.py hub-files RUN            (the wheel venv's python) the files `tinygpt push` reads from the package
    wheel_check.py train-tab MODELS_DIR     (the wheel venv's python) the app's Train tab runner trains a model

Each fails with one line naming what is wrong (exit 1).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

SERVE_START_SECONDS = 180  # model load and the engine's warm-up on 2 busy cores
REQUEST_SECONDS = 120
TRAIN_TAB_SECONDS = 600


def fail(message: str) -> None:
    print(f"wheel_check: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def checkout_modules() -> set[str]:
    """tinygpt/**.py of the checkout, as 'tinygpt/...' paths: git's list where this is a git checkout (files on
    disk only), else the files on disk (never __pycache__)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", "tinygpt/*.py"], capture_output=True, text=True, check=True
        ).stdout.split("\0")
        modules = {path for path in listed if path and Path(path).is_file()}
    except (OSError, subprocess.CalledProcessError):
        modules = set()
    if not modules:
        modules = {p.as_posix() for p in Path("tinygpt").rglob("*.py") if "__pycache__" not in p.parts}
    if "tinygpt/__init__.py" not in modules:
        fail("run from the checkout's root: no tinygpt/__init__.py here")
    return modules


def contents(wheel: str, sdist: str) -> None:
    expected = checkout_modules()
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = {name.split("/")[0] for name in names if name.split("/")[0].endswith(".dist-info")}
        entry_points = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
        scripts = archive.read(entry_points).decode() if entry_points else ""
    missing = sorted(expected - names)
    if missing:
        fail(f"the wheel {Path(wheel).name} lacks {len(missing)} module(s) of the checkout: {', '.join(missing)}")
    strays = sorted({name.split("/")[0] for name in names} - {"tinygpt"} - dist_info)
    if strays:
        fail(f"the wheel {Path(wheel).name} installs more than tinygpt: {', '.join(strays)}")
    if "tinygpt = tinygpt.cli:main" not in scripts:
        fail(f"the wheel {Path(wheel).name} declares no `tinygpt` console command (entry_points.txt: {scripts!r})")
    print(f"the wheel has all {len(expected)} modules of tinygpt/ and the `tinygpt` command")

    with tarfile.open(sdist) as archive:
        # 'tinygpt-1.2.3/tinygpt/cli.py' -> 'tinygpt/cli.py'
        names = {PurePosixPath(*PurePosixPath(name).parts[1:]).as_posix() for name in archive.getnames()}
    missing = sorted(expected - names)
    if missing:
        fail(f"the sdist {Path(sdist).name} lacks {len(missing)} module(s) of the checkout: {', '.join(missing)}")
    for needed in ("pyproject.toml", "README.md"):
        if needed not in names:
            fail(f"the sdist {Path(sdist).name} lacks {needed}")
    print(f"the sdist has all {len(expected)} modules of tinygpt/, pyproject.toml and README.md")


def assert_installed(version: str | None = None) -> Path:
    """tinygpt is imported from this interpreter's site-packages (the wheel), not from a checkout."""
    import sysconfig

    import tinygpt

    where = Path(tinygpt.__file__).resolve()
    site = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    if not any(where.is_relative_to(folder) for folder in site):
        fail(f"tinygpt was imported from {where}, not from site-packages ({', '.join(map(str, sorted(site)))})")
    if version is not None and tinygpt.__version__ != version:
        fail(f"the installed tinygpt is {tinygpt.__version__}, the wheel is {version}")
    return where


def installed(version: str) -> None:
    import importlib.metadata

    where = assert_installed(version)
    direct_url = importlib.metadata.distribution("tinygpt").read_text("direct_url.json") or "{}"
    if json.loads(direct_url).get("dir_info", {}).get("editable"):
        fail(f"tinygpt is installed editable ({direct_url})")
    print(f"tinygpt {version} from {where}")


def free_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        print(sock.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # not a zombie
    except (OSError, IndexError):
        return True


def call(url: str, body: dict | None = None, timeout: float = 10) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {"error": error.read().decode(errors="replace")[:500]}


def serve(port: str, pid: str) -> None:
    base = f"http://127.0.0.1:{int(port)}/v1"
    deadline = time.monotonic() + SERVE_START_SECONDS
    while True:
        if not alive(int(pid)):
            fail(f"`tinygpt serve` (pid {pid}) exited before it answered")
        try:
            status, reply = call(f"{base}/models", timeout=5)
            if status == 200:
                break
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            fail(f"`tinygpt serve` did not answer GET {base}/models within {SERVE_START_SECONDS} s")
        time.sleep(1)
    models = [model["id"] for model in reply.get("data", [])]
    if not models:
        fail(f"GET {base}/models lists no model: {reply}")
    body = {"model": models[0], "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    status, reply = call(f"{base}/chat/completions", body, timeout=REQUEST_SECONDS)
    if status != 200:
        fail(f"POST {base}/chat/completions answered {status}: {reply}")
    try:
        choice = reply["choices"][0]
        text = choice["message"]["content"]
        assert isinstance(text, str) and choice["finish_reason"] in ("stop", "length"), choice
    except (KeyError, IndexError, TypeError, AssertionError) as error:
        fail(f"POST {base}/chat/completions answered 200 but not a chat completion ({error!r}): {reply}")
    print(f"POST /v1/chat/completions (model {models[0]!r}): 200, {reply.get('usage')}, reply {text!r}")


def hub_files(run: str) -> None:
    """What `tinygpt push` reads from the installed package rather than from the model folder: the modules that the
    model's auto_map names (copied next to the weights) and the Space's app.py template (tinygpt/hub/space_app.py)."""
    assert_installed()
    from tinygpt.configuration_tinygpt import TinyGPTConfig
    from tinygpt.hub.push import PACKAGE_DIR, _code_modules
    from tinygpt.hub.space import APP_TEMPLATE, space_app

    modules = _code_modules(Path(run), TinyGPTConfig.from_pretrained(run))
    absent = [f"{module}.py" for module in modules if not (PACKAGE_DIR / f"{module}.py").is_file()]
    if not modules or absent:
        fail(f"`tinygpt push` would copy {modules} from {PACKAGE_DIR}; absent there: {absent}")
    app = space_app("ci/model", "0" * 40)
    if "MODEL_REPO = 'ci/model'" not in app:
        fail(f"the Space template {APP_TEMPLATE} did not take the model repo")
    print(f"push copies {', '.join(f'{m}.py' for m in sorted(modules))} from {PACKAGE_DIR}; the Space template reads")


def train_tab(models_dir: str) -> None:
    """TrainingRuns, as the Train tab drives it: `python -m tinygpt.training` in a child process, from this
    interpreter's installed package (the working folder is outside any checkout)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # atexit then stops the child run
    assert_installed()
    from tinygpt.app.train_runs import TrainingRuns

    runs = TrainingRuns(models_dir)
    small = {"n_layer": 1, "n_embd": 32, "block_size": 32, "per_device_train_batch_size": 8}
    run = runs.start(None, "tiny", 20, "ci", small)
    print("started:", " ".join(run.command))
    deadline = time.monotonic() + TRAIN_TAB_SECONDS
    while run.running:
        if time.monotonic() > deadline:
            print(run.log_text(), file=sys.stderr)
            fail(f"the Train tab's run did not finish within {TRAIN_TAB_SECONDS} s")
        time.sleep(0.5)
    if not run.finished or not (run.folder / "model.safetensors").is_file():
        print(run.log_text(), file=sys.stderr)
        fail(f"the Train tab's run did not leave a model: {run.outcome()}")
    train_points = [point for point in run.losses if point[2] == "train"]
    if not train_points:
        print(run.log_text(), file=sys.stderr)
        fail("the Train tab's run logged no training loss")
    print(f"{run.outcome()} ({len(train_points)} loss points, last {train_points[-1]})")


COMMANDS = {
    "contents": contents,
    "installed": installed,
    "port": free_port,
    "serve": serve,
    "hub-files": hub_files,
    "train-tab": train_tab,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        fail(f"usage: wheel_check.py {{{'|'.join(COMMANDS)}}} ARGS...")
    COMMANDS[sys.argv[1]](*sys.argv[2:])
