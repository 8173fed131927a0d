"""tinygpt.hub against the project's Hub-compatible server (tests/fake_hub.py) on 127.0.0.1.

push_model / pull_model in-process (with endpoint= explicit, since HF_ENDPOINT is read at import), every error
they turn into a one-line HubError, and a model pulled from the Hub running in a process where tinygpt cannot be
imported (trust_remote_code). The console commands are in test_cli.py.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import HfApi
from transformers import GPT2Config, GPT2LMHeadModel

from tests.fake_hub import TOKEN, WRONG_TOKEN, closed_port_url
from tinygpt import TinyGPTCharTokenizer, TinyGPTConfig, TinyGPTForCausalLM
from tinygpt.hub.checks import load_model_and_tokenizer
from tinygpt.hub.push import push_model
from tinygpt.hub.remote import HubError, pull_model, validate_repo_id

MODEL_FILES = {
    "README.md",
    "chat_template.jinja",
    "config.json",
    "configuration_tinygpt.py",
    "generation_config.json",
    "loss.png",  # the chat fixture's curve, which a push carries since its card shows it
    "model.safetensors",
    "modeling_tinygpt.py",
    "tokenization_tinygpt.py",
    "tokenizer_config.json",
    "vocab.json",
}


@pytest.fixture(scope="module")
def chat_repo(hub, model_dir):
    push_model(model_dir, "alice/chat", token=TOKEN, endpoint=hub, commit_message="first upload")
    return "alice/chat"


def save_random_model(folder, seed: int):
    torch.manual_seed(seed)
    tokenizer = TinyGPTCharTokenizer.from_corpus("a few characters")
    config = TinyGPTConfig(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    TinyGPTForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_push_uploads_the_model_files_and_a_generated_card(hub, model_dir, chat_repo):
    api = HfApi(endpoint=hub, token=TOKEN)
    assert set(api.list_repo_files(chat_repo)) == MODEL_FILES  # not training_args.bin or all_results.json
    assert api.list_repo_commits(chat_repo)[0].title == "first upload"
    card = open(api.hf_hub_download(chat_repo, "README.md"), encoding="utf-8").read()
    assert "tags:\n- tinygpt" in card and f'from_pretrained("{chat_repo}", trust_remote_code=True)' in card
    assert not (model_dir / "README.md").exists()  # the card went up from memory: the folder is untouched
    config = json.loads(open(api.hf_hub_download(chat_repo, "config.json"), encoding="utf-8").read())
    assert config["model_type"] == "tinygpt" and "AutoModelForCausalLM" in config["auto_map"]


def test_push_returns_the_repo_url_and_keeps_an_existing_card(hub, tmp_path):
    folder = save_random_model(tmp_path / "model", seed=1)
    (folder / "README.md").write_text("# my own card\n")
    assert push_model(folder, "alice/carded", token=TOKEN, endpoint=hub) == f"{hub}/alice/carded"
    card = HfApi(endpoint=hub).hf_hub_download("alice/carded", "README.md")
    assert open(card, encoding="utf-8").read() == "# my own card\n"


def test_pull_gets_identical_files_at_the_requested_revision(hub, model_dir, tmp_path):
    api = HfApi(endpoint=hub, token=TOKEN)
    push_model(model_dir, "alice/versions", token=TOKEN, endpoint=hub)
    first_commit = api.model_info("alice/versions").sha
    other = save_random_model(tmp_path / "other", seed=2)
    push_model(other, "alice/versions", token=TOKEN, endpoint=hub, commit_message="replace the weights")

    latest = pull_model("alice/versions", endpoint=hub, local_dir=tmp_path / "latest")
    first = pull_model("alice/versions", revision=first_commit, endpoint=hub)
    assert latest == tmp_path / "latest"
    assert (latest / "model.safetensors").read_bytes() == (other / "model.safetensors").read_bytes()
    assert (first / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
    assert {path.name for path in first.iterdir()} == MODEL_FILES


def test_pull_never_overwrites_a_folder_it_did_not_fill(hub, chat_repo, tmp_path):
    (tmp_path / "config.json").write_text("mine")
    with pytest.raises(HubError, match="already exists and is not an earlier pull"):
        pull_model(chat_repo, local_dir=tmp_path, endpoint=hub)
    assert (tmp_path / "config.json").read_text() == "mine"
    pull_model(chat_repo, local_dir=tmp_path / "pulled", endpoint=hub)
    assert pull_model(chat_repo, local_dir=tmp_path / "pulled", endpoint=hub) == tmp_path / "pulled"  # a refresh


def test_private_repo_needs_the_token(hub, model_dir):
    push_model(model_dir, "alice/hidden", token=TOKEN, private=True, endpoint=hub)
    with pytest.raises(HubError, match="alice/hidden was not found"):
        pull_model("alice/hidden", endpoint=hub)  # the tests run with no HF_TOKEN and no stored login
    assert (pull_model("alice/hidden", token=TOKEN, endpoint=hub) / "model.safetensors").is_file()


def test_pull_refuses_a_repo_of_another_model_type(hub, tmp_path):
    gpt2_dir = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2)).save_pretrained(gpt2_dir)
    api = HfApi(endpoint=hub, token=TOKEN)
    api.create_repo("alice/gpt2-small")
    api.upload_folder(repo_id="alice/gpt2-small", folder_path=gpt2_dir)
    with pytest.raises(HubError, match="alice/gpt2-small is not a usable TinyGPT model: .*model_type 'gpt2'"):
        pull_model("alice/gpt2-small", endpoint=hub)


@pytest.mark.parametrize(
    "repo_id", ["alice", "alice/", "/tiny", "a/b/c", "alice/tiny gpt", "alice/-tiny", "alice/a--b", 42]
)
def test_malformed_repo_ids_are_refused(repo_id):
    with pytest.raises(HubError, match="is not a Hub repo id: write owner/name"):
        validate_repo_id(repo_id)


def test_wellformed_repo_id_passes():
    assert validate_repo_id("alice-01/tiny_gpt.v2") == "alice-01/tiny_gpt.v2"


def test_push_refuses_a_folder_without_weights(tmp_path, hub, model_dir):
    (tmp_path / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    with pytest.raises(HubError, match="holds no model.safetensors: save the model there first"):
        push_model(tmp_path, "alice/empty", token=TOKEN, endpoint=hub)
    assert not HfApi(endpoint=hub).repo_exists("alice/empty")  # refused before anything was created


HUB_FAILURES = {  # name: (call(hub, model_dir), what the one-line message says)
    "push, wrong token": (
        lambda hub, model: push_model(model, "alice/x", token=WRONG_TOKEN, endpoint=hub),
        "refused the token (401 Unauthorized): set HF_TOKEN to a valid token with write access",
    ),
    "pull, wrong token": (
        lambda hub, model: pull_model("alice/x", token=WRONG_TOKEN, endpoint=hub),
        "refused the token (401 Unauthorized): set HF_TOKEN to a valid token, or",
    ),
    "push, no token": (
        lambda hub, model: push_model(model, "alice/x", endpoint=hub),
        "wants a token to push to alice/x (401 Unauthorized): set HF_TOKEN or run `hf auth login`",
    ),
    "pull, missing repo": (
        lambda hub, model: pull_model("alice/no-such-model", token=TOKEN, endpoint=hub),
        "alice/no-such-model was not found on http://127.0.0.1:",
    ),
    "pull, missing revision": (
        lambda hub, model: pull_model("alice/chat", revision="v9", token=TOKEN, endpoint=hub),
        "alice/chat has no revision 'v9'",
    ),
    "push, server error": (
        lambda hub, model: push_model(model, "alice/server-error-model", token=TOKEN, endpoint=hub),
        "failed with a server error (500) during the push: try again later",
    ),
    "pull, server error": (
        lambda hub, model: pull_model("alice/server-error-model", token=TOKEN, endpoint=hub),
        "failed with a server error (500) during the pull: try again later",
    ),
    "push, hub unreachable": (
        lambda hub, model: push_model(model, "alice/x", token=TOKEN, endpoint=closed_port_url()),
        "cannot reach the Hub at http://127.0.0.1:",
    ),
    "pull, hub unreachable": (
        lambda hub, model: pull_model("alice/x", token=TOKEN, endpoint=closed_port_url()),
        "cannot reach the Hub at http://127.0.0.1:",
    ),
}


@pytest.mark.parametrize("failure", HUB_FAILURES)
def test_hub_failures_become_one_line_errors_without_the_token(failure, hub, model_dir, chat_repo):
    call, expected = HUB_FAILURES[failure]
    with pytest.raises(HubError) as raised:
        call(hub, model_dir)
    message = str(raised.value)
    assert expected in message
    assert "\n" not in message and TOKEN not in message and WRONG_TOKEN not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # no library traceback attached


# Runs where `import tinygpt` fails, in a folder outside the repo: only the code files the repo carries can
# build the model and tokenizer.
REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import sys

    sys.modules["tinygpt"] = None
    try:
        import tinygpt
    except ImportError:
        pass
    else:
        raise SystemExit("tinygpt is importable: the test would prove nothing")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    out = model.generate(**prompt, do_sample=False, max_new_tokens=20)
    print(type(model).__module__)
    print(tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True))
    """
)


def test_pulled_model_runs_with_remote_code_where_tinygpt_is_missing(hub, model_dir, chat_repo, tmp_path):
    model, tokenizer = load_model_and_tokenizer(model_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    out = model.generate(**prompt, do_sample=False, max_new_tokens=20)
    expected = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert expected.strip()  # the trained model answers: the comparison is not between two empty strings

    env = {**os.environ, "HF_ENDPOINT": hub, "HF_HOME": str(tmp_path / "fresh-hf-home"), "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_SCRIPT, chat_repo],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    module, reply = result.stdout.splitlines()
    assert module.startswith("transformers_modules.") and module.endswith("modeling_tinygpt")
    assert reply == expected
