"""LoRA through PEFT (`train.py --lora_r`): what a run writes (a standard PEFT adapter, no full weights), the same
greedy text from tinygpt, from PEFT without tinygpt and from the merged model, a killed run's resume, an adapter
pushed to the fake Hub and run by its repo id, the app's picker and Train tab, and the one-line errors.

The base is a random two-layer, 128-wide model (big enough that the adapter is under a tenth of it); the adapter
trains on it at a high learning rate, so its greedy text is the corpus's words, not the base's.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from safetensors.torch import load_file

from tests.fake_hub import TOKEN, commit_raw
from tests.train_cli import TRAIN_PY, describe, run_train, train_env, write_corpus
from tinygpt import TinyGPTCharTokenizer, TinyGPTConfig, TinyGPTForCausalLM
from tinygpt.hub.checks import ModelLoadError
from tinygpt.hub.loader import load
from tinygpt.hub.push import push_model
from tinygpt.hub.remote import HubError, pull_model
from tinygpt.training.trainer import main

pytestmark = pytest.mark.slow  # subprocesses of the real command line

TINYGPT = Path(sys.executable).with_name("tinygpt")
PROMPT = "the king"
SCHEDULE = [
    *("--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "16", "--eval_windows", "16"),
    *("--logging_steps", "1", "--eval_steps", "10", "--warmup_steps", "0", "--learning_rate", "1e-2"),
    *("--disable_tqdm", "true"),
]
ADAPTER_FILES = {
    "adapter_config.json",
    "adapter_model.safetensors",
    "generation_config.json",
    "tokenizer_config.json",
    "vocab.json",
    "chat_template.jinja",
    "tokenization_tinygpt.py",
    "README.md",
    "loss.png",
    "metrics.json",
}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("lora")


@pytest.fixture(scope="module")
def corpus(work):
    return write_corpus(work / "corpus.txt")


def save_base(folder: Path, corpus: Path) -> Path:
    torch.manual_seed(0)
    tokenizer = TinyGPTCharTokenizer.from_corpus(corpus.read_text(encoding="utf-8"))
    config = TinyGPTConfig.for_tokenizer(tokenizer, n_positions=32, n_embd=128, n_layer=2, n_head=2)
    TinyGPTForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def base(work, corpus):
    return save_base(work / "base", corpus)


@pytest.fixture(scope="module")
def adapter(work, corpus, base):
    """(output folder, the run's result): 30 LoRA steps on the base, a checkpoint every 10."""
    output = work / "adapter"
    result = run_train(
        "--init_from", base, "--lora_r", "8", "--text_file", corpus, "--max_steps", "30", "--save_steps", "10",
        "--output_dir", output, *SCHEDULE, cwd=work,
    )  # fmt: skip
    assert result.returncode == 0, describe(result)
    return output, result


def tinygpt(*args, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(TINYGPT), *map(str, args)],
        cwd=cwd,
        env={**train_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def greedy(model: str | Path, cwd: Path, env: dict | None = None) -> str:
    result = tinygpt(
        "generate", model, "--prompt", PROMPT, "--temperature", "0", "--max_new_tokens", "24", cwd=cwd, env=env
    )
    assert result.returncode == 0, describe(result)
    return result.stdout.rstrip("\n")


def test_a_lora_run_writes_a_peft_adapter_and_no_full_weights(adapter, base):
    output, result = adapter
    assert {path.name for path in output.iterdir() if path.is_file()} == ADAPTER_FILES | {"run_settings.json"}
    weights = output / "adapter_model.safetensors"
    assert weights.stat().st_size < 0.1 * (base / "model.safetensors").stat().st_size
    tensors = load_file(weights)
    lora_b = [tensor for name, tensor in tensors.items() if ".lora_B." in name]
    assert len(lora_b) == 2 * 4  # two blocks, four projections each (c_attn, attn and mlp c_proj, c_fc)
    assert all(tensor.abs().sum() > 0 for tensor in lora_b)  # trained: PEFT starts every B at zero
    settings = json.loads((output / "adapter_config.json").read_text())
    assert settings["base_model_name_or_path"] == str(base.resolve())  # the folder --init_from gave, absolute
    assert (settings["peft_type"], settings["task_type"], settings["r"], settings["lora_alpha"]) == (
        "LORA",
        "CAUSAL_LM",
        8,
        16,
    )
    assert sorted(settings["target_modules"]) == ["c_attn", "c_fc", "c_proj"]
    line = next(line for line in result.stdout.splitlines() if line.startswith("training a LoRA adapter"))
    assert "32,768 trainable parameters of" in line and "%)" in line
    card = (output / "README.md").read_text()
    assert "library_name: peft" in card and "AutoPeftModelForCausalLM" in card and str(base.resolve()) in card
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["lora_r"] == 8 and metrics["trainable_parameters"] == 32768
    checkpoint = output / "checkpoint-30"
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "optimizer.pt").is_file()
    assert not (checkpoint / "model.safetensors").exists()


def first_loss(output: Path, step: int = 2) -> float:
    history = json.loads((output / f"checkpoint-{step}" / "trainer_state.json").read_text())["log_history"]
    return next(entry["loss"] for entry in history if entry.get("step") == 1 and "loss" in entry)


def test_a_lora_chat_run_masks_the_loss_as_a_full_fine_tune_does(work, base):
    """PEFT starts every lora_B at zero, so a LoRA run's first batch meets the base itself: its loss equals a full
    fine-tune's on the same conversations only if both score the same (assistant-only) tokens."""
    conversation = {"messages": [{"role": "user", "content": "the king"}, {"role": "assistant", "content": "and song"}]}
    chats = work / "chats.jsonl"
    chats.write_text((json.dumps(conversation) + "\n") * 40)
    runs = {}
    for name, flags in (("chat-lora", ["--lora_r", "8"]), ("chat-full", [])):
        runs[name] = work / name
        result = run_train(
            "--init_from", base, *flags, "--chat_file", chats, "--max_steps", "2", "--save_steps", "2",
            "--output_dir", runs[name], *SCHEDULE, cwd=work,
        )  # fmt: skip
        assert result.returncode == 0, describe(result)
    assert first_loss(runs["chat-lora"]) == pytest.approx(first_loss(runs["chat-full"]), rel=1e-5)
    assert json.loads((runs["chat-lora"] / "metrics.json").read_text())["chat"] is True
    assert json.loads((runs["chat-lora"] / "generation_config.json").read_text())["do_sample"] is False


PEFT_WITHOUT_TINYGPT = textwrap.dedent(
    """
    import sys
    sys.modules["tinygpt"] = None  # `import tinygpt` fails: only the base folder's remote code can build it
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    model = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)
    ids = tokenizer(sys.argv[2], return_tensors="pt")["input_ids"]
    out = model.generate(input_ids=ids, max_new_tokens=24, do_sample=False)
    print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    """
)


def test_the_same_greedy_text_from_tinygpt_from_peft_without_tinygpt_and_from_the_merged_model(adapter, base, work):
    output, _ = adapter
    elsewhere = work / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    from_tinygpt = greedy(output, cwd=work)
    assert from_tinygpt.strip() and from_tinygpt != greedy(base, cwd=work)  # the adapter is applied

    env = {key: value for key, value in train_env().items() if key != "PYTHONPATH"}  # no path to the checkout
    peft = subprocess.run(
        [sys.executable, "-c", PEFT_WITHOUT_TINYGPT, str(output), PROMPT],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert peft.returncode == 0, describe(peft)
    assert peft.stdout.rstrip("\n") == from_tinygpt

    merged = work / "merged"
    result = tinygpt("merge", output, merged, cwd=work)
    assert result.returncode == 0, describe(result)
    names = {path.name for path in merged.iterdir()}
    assert {"model.safetensors", "config.json", "modeling_tinygpt.py", "vocab.json", "README.md"} <= names
    assert "adapter_config.json" not in names
    assert greedy(merged, cwd=work) == from_tinygpt
    model, _ = load(merged)  # a full model folder, checked like any other
    assert type(model) is TinyGPTForCausalLM


def test_a_killed_lora_run_resumes_to_the_uninterrupted_runs_adapter(work, corpus, base):
    max_steps = 300  # long enough that the kill lands mid-run
    args = ["--init_from", base, "--lora_r", "4", "--text_file", corpus, "--max_steps", max_steps]
    args += ["--save_steps", "20", *SCHEDULE]
    reference = run_train(*args, "--output_dir", work / "uninterrupted", cwd=work)
    assert reference.returncode == 0, describe(reference)

    output = work / "killed"
    process = subprocess.Popen(
        [sys.executable, str(TRAIN_PY), *map(str, args), "--output_dir", str(output)],
        cwd=work,
        env={**train_env(), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if any(output.glob("checkpoint-*/trainer_state.json")):
            break
        time.sleep(0.02)
    process.kill()  # SIGKILL: no handler, no cleanup
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it was killed"
    assert not (output / "adapter_model.safetensors").exists()

    resumed = run_train(*args, "--output_dir", output, "--resume_from_checkpoint", cwd=work)
    assert resumed.returncode == 0, describe(resumed)
    assert f"resuming from {output}/checkpoint-" in resumed.stdout
    expected = load_file(work / "uninterrupted" / "adapter_model.safetensors")
    got = load_file(output / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5)


def test_a_pushed_adapter_runs_by_its_repo_id(hub, work, corpus, base, adapter):
    """The base on the Hub, the adapter trained on it by repo id, pushed alone (kilobytes), then generated from by
    its repo id in a fresh cache: the loader pulls the adapter, then its base, with pull_model's checks."""
    push_model(base, "alice/lora-base", token=TOKEN, endpoint=hub)
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub, "HF_TOKEN": TOKEN, "HF_HOME": str(work / "train-home")}
    output = work / "hub-adapter"
    result = run_train(
        "--init_from", "alice/lora-base", "--lora_r", "8", "--text_file", corpus, "--max_steps", "10",
        "--save_steps", "10", "--output_dir", output, *SCHEDULE, cwd=work, env=env,
    )  # fmt: skip
    assert result.returncode == 0, describe(result)
    assert json.loads((output / "adapter_config.json").read_text())["base_model_name_or_path"] == "alice/lora-base"

    push_model(output, "alice/lora-adapter", token=TOKEN, endpoint=hub)
    uploaded = {entry.path: entry.size for entry in HfApi(endpoint=hub).list_repo_tree("alice/lora-adapter")}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenization_tinygpt.py", "README.md"} <= set(uploaded)
    assert "model.safetensors" not in uploaded and "config.json" not in uploaded
    assert sum(uploaded.values()) < 1 << 20  # the adapter alone
    card = HfApi(endpoint=hub).hf_hub_download("alice/lora-adapter", "README.md")
    assert "base_model: alice/lora-base" in Path(card).read_text() and "library_name: peft" in Path(card).read_text()

    by_id = greedy("alice/lora-adapter", cwd=work, env={**env, "HF_HOME": str(work / "fresh-home")})
    assert by_id == greedy(output, cwd=work, env=env)
    assert by_id != greedy("alice/lora-base", cwd=work, env=env)

    # An adapter made elsewhere may not send the loader to this machine's folders, nor may its repo list `..`.
    files = {path.name: path.read_bytes() for path in output.iterdir() if path.is_file()}
    settings = json.loads(files["adapter_config.json"])
    files["adapter_config.json"] = json.dumps({**settings, "base_model_name_or_path": str(base)}).encode()
    HfApi(endpoint=hub, token=TOKEN).create_repo("alice/local-base")
    commit_raw(hub, "alice/local-base", files)
    with pytest.raises(HubError, match="a pulled adapter may only name a base on the Hub"):
        pull_model("alice/local-base", endpoint=hub)
    HfApi(endpoint=hub, token=TOKEN).create_repo("alice/dotdot-adapter")
    commit_raw(hub, "alice/dotdot-adapter", {**files, "../escaped.py": b"print('out')\n"})
    with pytest.raises(HubError, match="outside the repo's folder"):
        pull_model("alice/dotdot-adapter", endpoint=hub)


def test_pushing_an_adapter_of_a_local_folder_is_one_line(adapter, hub):
    output, _ = adapter
    with pytest.raises(HubError, match="is a LoRA adapter of the folder .*push the base first"):
        push_model(output, "alice/unreachable-base", token=TOKEN, endpoint=hub)


def fails_cleanly(argv: list, capsys, output: Path, message: str) -> None:
    assert main([*map(str, argv), "--output_dir", str(output)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("train.py: error:")]
    assert len(errors) == 1 and message in errors[0] and err.strip().endswith(errors[0]), err
    assert not output.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lora_r", "0"], "--lora_r must be at least 1, got 0"),
        (["--lora_r", "8", "--lora_target_modules", "q_proj"], "--lora_target_modules q_proj: the model has no such"),
        (["--lora_alpha", "16"], "--lora_alpha only applies to a LoRA run: add --lora_r"),
        (["--lora_r", "8", "--lora_dropout", "1"], "--lora_dropout must be in [0, 1)"),
    ],
)
def test_bad_lora_flags_are_one_line(work, corpus, base, capsys, flags, message):
    argv = ["--init_from", base, *flags, "--text_file", corpus, "--max_steps", "2"]
    fails_cleanly(argv, capsys, work / "bad-flags", message)


def test_lora_without_a_base_or_without_peft_is_one_line(work, corpus, capsys, monkeypatch):
    argv = ["--lora_r", "8", "--text_file", corpus, "--max_steps", "2"]
    fails_cleanly(argv, capsys, work / "no-base", "--lora_r trains an adapter on an existing model: add --init_from")
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` fails, as without the extra
    fails_cleanly(
        [*argv, "--init_from", work / "base"], capsys, work / "no-peft", "needs the 'lora' extra (peft is missing)"
    )


def test_an_adapter_whose_base_is_missing_is_one_line(adapter, work, monkeypatch):
    output, _ = adapter
    orphan = work / "orphan"
    shutil.copytree(output, orphan, ignore=shutil.ignore_patterns("checkpoint-*"))
    settings = json.loads((orphan / "adapter_config.json").read_text())
    missing_base = str(work / "no-such-base")
    (orphan / "adapter_config.json").write_text(json.dumps({**settings, "base_model_name_or_path": missing_base}))
    result = tinygpt("generate", orphan, "--prompt", PROMPT, cwd=work)
    assert result.returncode == 1 and "Traceback" not in result.stderr, describe(result)
    assert result.stderr.count("\n") == 1
    assert f"is a LoRA adapter of {missing_base}, which cannot be loaded" in result.stderr
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ModelLoadError, match=r"needs the 'lora' extra \(peft is missing\)"):
        load(output)


def test_the_app_lists_adapters_and_its_train_tab_trains_one(adapter, base, corpus, tmp_path):
    from tinygpt.app.models import describe_model, local_models
    from tinygpt.app.train_runs import TrainingRequestError, TrainingRuns

    models_dir = tmp_path / "models"
    shutil.copytree(base, models_dir / "base")
    shutil.copytree(adapter[0], models_dir / "adapter", ignore=shutil.ignore_patterns("checkpoint-*"))
    assert str(models_dir / "adapter") in local_models(models_dir)
    assert "a LoRA adapter (r=8)" in describe_model(str(models_dir / "adapter"))[0]

    runs = TrainingRuns(models_dir)
    with pytest.raises(TrainingRequestError, match="choose the base first"):
        runs.start(str(corpus), "tiny", 10, "s", None, None, 4)
    with pytest.raises(TrainingRequestError, match="base model: choose one of the model folders"):
        runs.start(str(corpus), "tiny", 10, "s", None, os.fspath(tmp_path), 4)
    run = runs.start(str(corpus), "tiny", 10, "s", None, str(models_dir / "base"), 4)
    for _ in runs.watch(run):
        pass
    assert run.finished, run.log_text()
    assert run.name.startswith("train-lora-tiny-") and (run.folder / "adapter_model.safetensors").is_file()
    assert not (run.folder / "model.safetensors").exists() and str(run.folder) in local_models(models_dir)
