"""The `tinygpt` console command, run as a subprocess, against the project's fake Hub (tests/fake_hub.py).

Every Hub command runs with its own fresh HF_HOME and a distinctive token in HF_TOKEN; after each run, neither
that token nor the wrong one appears in its output or in any file under its HF_HOME or the model folder. The
commands are independent, so they run a few at a time (each one pays the torch + transformers import).
"""

import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError

from tests.fake_hub import TOKEN, WRONG_TOKEN, closed_port_url
from tinygpt.cli import main
from tinygpt.decoding.chat import ChatModel, DecodingOptions
from tinygpt.hub.checks import load_model_and_tokenizer
from tinygpt.hub.push import push_model

pytestmark = pytest.mark.slow  # subprocesses of the real command line

TINYGPT = Path(sys.executable).with_name("tinygpt")  # the console script pyproject.toml installs
GENERATE_PROMPT = "<BOS><user>:how are you?<EOS><assistant>:"
LONG_GENERATION = 150  # new tokens: past the chat model's 64-token window, twice over
NO_CXX = pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on a CPU needs a C++ compiler (g++)")
RATE_LINE = re.compile(r"^(\d+) tokens in \d+\.\d\d s \([\d,]+ tok/s\)$")


@pytest.fixture(scope="module")
def no_weights_dir(tmp_path_factory, model_dir):
    folder = tmp_path_factory.mktemp("no-weights")
    for name in ("config.json", "tokenizer_config.json", "vocab.json"):
        (folder / name).write_bytes((model_dir / name).read_bytes())
    return folder


def cli_env(hub: str, hf_home: Path, **overrides: str) -> dict:
    return {**os.environ, "HF_ENDPOINT": hub, "HF_HOME": str(hf_home), "HF_TOKEN": TOKEN, **overrides}


def run_cases(cases: dict, hub: str, workdir: Path) -> dict:
    """name -> (CompletedProcess, its HF_HOME), running two commands at a time (the machine has two cores)."""

    def run(name):
        args, env_overrides = cases[name]
        hf_home = workdir / name.replace(" ", "-")
        result = subprocess.run(
            [str(TINYGPT), *map(str, args)],
            env=cli_env(hub, hf_home, **env_overrides),
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return result, hf_home

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(cases, pool.map(run, cases), strict=True))


def files_containing(secret: str, *folders: Path) -> list[Path]:
    return [
        path
        for folder in folders
        for path in folder.rglob("*")
        if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes()
    ]


# -- every command, run once against the fake hub --------------------------------------------------------------

ERROR_CASES = {  # name: (argv, env overrides, the one line printed on stderr contains)
    "push, wrong token (401)": (
        lambda d: ["push", d["model"], "alice/wrong-token"],
        {"HF_TOKEN": WRONG_TOKEN},
        "tinygpt push: error: the Hub at http://127.0.0.1:{port} refused the token (401 Unauthorized)",
    ),
    "pull, missing repo (404)": (
        lambda d: ["pull", "alice/no-such-model"],
        {},
        "tinygpt pull: error: alice/no-such-model was not found on http://127.0.0.1:{port}",
    ),
    "push, server error (500)": (
        lambda d: ["push", d["model"], "alice/server-error-model"],
        {},
        "tinygpt push: error: the Hub at http://127.0.0.1:{port} failed with a server error (500) during the push",
    ),
    "generate, hub unreachable": (
        lambda d: ["generate", "alice/chat", "--prompt", "hi"],
        {"HF_ENDPOINT": "{closed_port_url}"},
        "tinygpt generate: error: cannot reach the Hub at {closed_port_url} (ConnectError)",
    ),
    "push, offline mode": (
        lambda d: ["push", d["model"], "alice/offline"],
        {"HF_HUB_OFFLINE": "1"},
        "tinygpt push: error: cannot push to the Hub: offline mode is on (HF_HUB_OFFLINE=1)",
    ),
    "push, malformed repo id": (
        lambda d: ["push", d["model"], "alice/tiny--gpt"],
        {},
        "tinygpt push: error: 'alice/tiny--gpt' is not a Hub repo id: write owner/name",
    ),
    "push, folder without weights": (
        lambda d: ["push", d["no_weights"], "alice/no-weights"],
        {},
        "tinygpt push: error: {no_weights} holds no model.safetensors: save the model there first",
    ),
}
SUCCESS_CASES = {  # name: (argv, env overrides); what they must do is checked in their own tests below
    "push": (lambda d: ["push", d["model"], "alice/from-cli", "--private", "--commit_message", "from the cli"], {}),
    "pull into a fresh cache": (lambda d: ["pull", "alice/chat"], {}),
    "generate greedy from the hub": (
        lambda d: [
            "generate",
            "alice/chat",
            "--prompt",
            GENERATE_PROMPT,
            "--temperature",
            "0",
            "--max_new_tokens",
            "40",
        ],
        {},
    ),
    "generate int8 past the window": (
        lambda d: [
            "generate",
            d["model"],
            "--prompt",
            GENERATE_PROMPT,
            "--temperature",
            "0",
            *(["--int8"] if shutil.which("g++") else []),
            "--max_new_tokens",
            LONG_GENERATION,
            "--min_new_tokens",
            LONG_GENERATION,
        ],
        {},
    ),
}


@pytest.fixture(scope="module")
def runs(hub, model_dir, no_weights_dir, tmp_path_factory):
    push_model(model_dir, "alice/chat", token=TOKEN, endpoint=hub)
    details = {"model": model_dir, "no_weights": no_weights_dir, "closed_port_url": closed_port_url()}
    cases = {
        name: (argv(details), {key: value.format(**details) for key, value in env.items()})
        for name, (argv, env, *_) in {**ERROR_CASES, **SUCCESS_CASES}.items()
    }
    results = run_cases(cases, hub, tmp_path_factory.mktemp("cli-runs"))
    return {"details": {**details, "port": hub.rsplit(":", 1)[1]}, "results": results}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_hub_errors_are_one_line_without_traceback(case, runs):
    result, _ = runs["results"][case]
    expected = ERROR_CASES[case][2].format(**runs["details"])
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr  # exactly one line
    assert result.stderr.startswith(expected), result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("case", [*ERROR_CASES, *SUCCESS_CASES])
def test_the_token_is_never_printed_or_stored(case, runs, model_dir):
    result, hf_home = runs["results"][case]
    for secret in (TOKEN, WRONG_TOKEN):
        assert secret not in result.stdout + result.stderr
        assert files_containing(secret, hf_home, model_dir) == []


def test_push_creates_a_private_repo_and_shows_its_url(runs, hub, model_dir):
    result, _ = runs["results"]["push"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"pushed {model_dir} to {hub}/alice/from-cli"
    api = HfApi(endpoint=hub, token=TOKEN)
    assert api.model_info("alice/from-cli").private
    assert api.list_repo_commits("alice/from-cli")[0].title == "from the cli"
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub, token=False).model_info("alice/from-cli")


def test_pull_into_a_fresh_cache_gets_identical_weights(runs, model_dir):
    result, hf_home = runs["results"]["pull into a fresh cache"]
    assert result.returncode == 0, result.stderr
    prefix = "pulled alice/chat to "
    assert result.stdout.startswith(prefix)
    folder = Path(result.stdout.strip()[len(prefix) :])
    assert folder.is_relative_to(hf_home / "hub" / "models--alice--chat" / "snapshots")
    assert (folder / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()


def test_generate_greedy_from_the_hub_prints_what_model_generate_gives(runs, model_dir):
    model, tokenizer = load_model_and_tokenizer(model_dir)
    inputs = tokenizer(GENERATE_PROMPT, return_tensors="pt")
    out = model.generate(**inputs, do_sample=False, max_new_tokens=40, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert expected.strip()  # the trained model answers: the comparison is not between two empty strings

    result, _ = runs["results"]["generate greedy from the hub"]
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"
    assert RATE_LINE.match(result.stderr.strip().splitlines()[-1]), result.stderr  # after the pull's progress bar


def test_generate_slides_past_the_window_for_min_new_tokens_and_reports_its_rate(runs):
    result, _ = runs["results"]["generate int8 past the window"]
    assert result.returncode == 0, result.stderr
    *announcements, rate = result.stderr.strip().splitlines()
    assert announcements == (
        ["compiling decoding (the first time takes a while; it is cached after)..."] if shutil.which("g++") else []
    )
    assert int(RATE_LINE.match(rate)[1]) == LONG_GENERATION  # no end-of-text before min_new_tokens
    assert len(result.stdout) > LONG_GENERATION // 2  # a character model's text, minus the special tokens


# -- chat, driven through stdin --------------------------------------------------------------------------------


def read_until(process: subprocess.Popen, marker: str, timeout: float = 120) -> str:
    """What the process prints up to and including `marker` (which must end the output so far)."""
    output, deadline = b"", time.monotonic() + timeout
    while not output.endswith(marker.encode()):
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no {marker!r} within {timeout}s; got {output!r}"
        chunk = os.read(process.stdout.fileno(), 4096)
        assert chunk, f"the process ended before {marker!r}; got {output!r}"
        output += chunk
    return output.decode()


# compiled: the same replies from the inductor-compiled CPU decoder, after a warm-up announced at start-up.
# int8: the replies of an int8-weight decoder (which may part from fp32's at a near tie), made here in-process.
@pytest.mark.parametrize(
    "decoding_flags",
    [(), pytest.param(("--compile",), marks=NO_CXX), pytest.param(("--int8",), marks=NO_CXX)],
    ids=["eager", "compiled", "int8"],
)
def test_chat_streams_a_reply_per_turn_with_the_history_then_quits(model_dir, tmp_path, decoding_flags):
    chat = ChatModel(*load_model_and_tokenizer(model_dir), DecodingOptions(int8_weights="--int8" in decoding_flags))
    history = [{"role": "user", "content": "hi"}]
    first = list(chat.stream_reply(history, temperature=0))[-1]
    history += [{"role": "assistant", "content": first}, {"role": "user", "content": "what is your name?"}]
    second = list(chat.stream_reply(history, temperature=0))[-1]
    assert first.strip() and second.strip()

    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [str(TINYGPT), "chat", str(model_dir), "--temperature", "0", *decoding_flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=tmp_path,
        )
        try:
            compiling = "compiling chat decoding (the first time takes a while; it is cached after)...\n"
            greeting = read_until(process, "you> ", timeout=300)
            assert greeting.startswith((compiling if decoding_flags else "") + f"Chatting with {model_dir}.")
            # Each reply is on screen before the next question is typed.
            process.stdin.write(b"hi\n")
            process.stdin.flush()
            assert read_until(process, "you> ") == f"tinygpt> {first}\nyou> "
            process.stdin.write(b"what is your name?\n")
            process.stdin.flush()
            assert read_until(process, "you> ") == f"tinygpt> {second}\nyou> "
            process.stdin.write(b"quit\n")
            process.stdin.flush()
            assert process.wait(timeout=60) == 0
        finally:
            process.kill()
        stderr.seek(0)
        assert b"Traceback" not in stderr.read()


# -- help and argument checks --------------------------------------------------------------------------------


def test_tinygpt_help_lists_the_commands(capsys):
    # In-process: the console script itself is what every other test here runs.
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    for word in ("chat", "generate", "push", "pull", "merge", "HF_ENDPOINT", "HF_TOKEN"):
        assert word in help_text


@pytest.mark.parametrize(
    "command, expected",
    [
        (
            "chat",
            ["MODEL", "--system_prompt", "--compile", "--int8", "--temperature", "--max_new_tokens", "exit or quit"],
        ),
        (
            "generate",
            [
                "MODEL",
                "--prompt",
                "--compile",
                "--int8",
                "--temperature",
                "--max_new_tokens",
                "--min_new_tokens",
                "--seed",
            ],
        ),
        ("push", ["DIR", "owner/name", "--private", "--commit_message", "auto_map", "model card"]),
        ("pull", ["owner/name", "DIR", "--revision", "HF cache"]),
        ("merge", ["ADAPTER", "OUT", "LoRA adapter", "full model folder"]),
    ],
)
def test_each_command_has_help(command, expected, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for word in expected:
        assert word in help_text


@pytest.mark.parametrize(
    "argv, complaint",
    [
        (["generate", "m", "--prompt", ""], "argument --prompt: must be non-empty"),
        (["generate", "m", "--prompt", "x", "--top_p", "1.5"], "argument --top_p: must be in (0, 1]"),
        (["chat", "m", "--temperature", "-1"], "argument --temperature: must be from 0 to 100"),
        (["chat", "m", "--temperature", "1e308"], "argument --temperature: must be from 0 to 100"),
        (["generate", "m", "--prompt", "x", "--seed", "-1"], "argument --seed: must be from 0 to 2^32 - 1"),
        (["generate", "m", "--prompt", "x", "--max_new_tokens", str(10**21)], "at most 2^63 - 1"),
        (["chat", "m", "--max_new_tokens", "0"], "argument --max_new_tokens: must be at least 1"),
        (["chat", "m", "--int8", "--no-compile"], "--int8 decodes through a compiled step"),
        (["generate", "m", "--prompt", "x", "--int8", "--no-compile"], "--int8 decodes through a compiled step"),
        (["generate", "m", "--prompt", "x", "--min_new_tokens", "-1"], "argument --min_new_tokens: must be 0 or more"),
        (["pull"], "the following arguments are required: owner/name"),
    ],
)
def test_bad_arguments_are_usage_errors(argv, complaint, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err


def test_missing_model_folder_is_one_line(capsys):
    assert main(["generate", "no/such/folder/here", "--prompt", "x"]) == 1
    assert capsys.readouterr().err == (
        "tinygpt generate: error: no/such/folder/here is neither a model folder nor a Hub repo id (owner/name): "
        "check the path.\n"
    )


# -- defaults come from the model --------------------------------------------------------------------------------


def model_with_generation_config(model_dir: Path, folder: Path, **settings) -> Path:
    """A copy of the chat model whose generation_config.json holds `settings`."""
    from transformers import GenerationConfig

    shutil.copytree(model_dir, folder)
    config = GenerationConfig.from_pretrained(folder)
    config.update(**settings)
    config.save_pretrained(folder)
    return folder


def test_chat_and_generate_without_flags_follow_the_models_generation_config(model_dir, tmp_path):
    """A model saved to answer greedily answers the same on every run, with no flags; one saved with a short
    max_new_tokens stops there. (Flag defaults of 0.8 and 256 overrode both.)"""
    greedy = model_with_generation_config(model_dir, tmp_path / "greedy", do_sample=False, max_new_tokens=40)
    short = model_with_generation_config(
        model_dir, tmp_path / "short", do_sample=True, temperature=1.0, top_k=None, max_new_tokens=7
    )
    prompt = ["--prompt", GENERATE_PROMPT]

    def run(*args, stdin=None):
        result = subprocess.run(
            [str(TINYGPT), *map(str, args)], input=stdin, capture_output=True, text=True, cwd=tmp_path, timeout=300
        )
        assert result.returncode == 0, result.stderr
        return result

    generated = [run("generate", greedy, *prompt).stdout for _ in range(3)]
    assert generated[0] == generated[1] == generated[2] == run("generate", greedy, *prompt, "--temperature", "0").stdout
    chats = [run("chat", greedy, stdin="hi\nwhat is your name?\nquit\n").stdout for _ in range(2)]
    assert (
        chats[0] == chats[1] == run("chat", greedy, "--temperature", "0", stdin="hi\nwhat is your name?\nquit\n").stdout
    )
    limited = run("generate", short, *prompt, "--min_new_tokens", "7")
    assert RATE_LINE.match(limited.stderr.strip().splitlines()[-1])[1] == "7"
    flagged = run("generate", short, *prompt, "--min_new_tokens", "9", "--max_new_tokens", "9")
    assert RATE_LINE.match(flagged.stderr.strip().splitlines()[-1])[1] == "9"  # a typed flag still wins


def test_version_and_the_handed_over_commands_are_listed(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    import tinygpt

    assert capsys.readouterr().out == f"tinygpt {tinygpt.__version__}\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    assert "train" in help_text and "app" in help_text


@pytest.mark.parametrize(
    "argv, hidden, extra",
    [(["serve", "MODEL"], "fastapi", "serve"), (["app", "--port", "0"], "gradio", "app")],
)
def test_a_command_without_its_extra_is_one_line_naming_it(argv, hidden, extra, model_dir):
    """As where the extra was never installed: the module cannot be imported."""
    argv = [str(model_dir) if arg == "MODEL" else arg for arg in argv]
    script = f"import sys; sys.modules[{hidden!r}] = None; from tinygpt.cli import main; sys.exit(main({argv!r}))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr == (
        f"tinygpt {argv[0]}: error: it needs the {extra!r} extra ({hidden} is missing): pip install 'tinygpt[{extra}]'\n"
    )
