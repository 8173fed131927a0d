"""train.py under faults: a SIGKILLed run resumes on the same schedule, and every bad input ends in one line.

Bad inputs run `tinygpt.training.main` (what train.py calls) in this process, which is fast; one of them also
goes through the real CLI in a subprocess to show a user sees no traceback there either.
"""

import ast
import hashlib
import json
import shutil
import subprocess
import sys
import time

import pytest
import torch
from train_cli import TINY, TRAIN_PY, describe, run_train, train_env, write_corpus

from tinygpt import TinyGPTCharTokenizer, TinyGPTConfig, TinyGPTForCausalLM
from tinygpt.data import build_tokenizer
from tinygpt.training import main


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("train-faults")


@pytest.fixture(scope="module")
def corpus(workdir):
    return write_corpus(workdir / "corpus.txt")


def snapshot(folder) -> dict[str, str]:
    """{relative path: sha256} of every file under folder ({} when it does not exist)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def readable_json(path) -> bool:
    try:
        json.loads(path.read_text())
    except ValueError:
        return False
    return True


def logged_entries(text: str) -> list[dict]:
    """The Trainer's printed log dicts (--disable_tqdm prints them one per line)."""
    return [ast.literal_eval(line) for line in text.splitlines() if line.startswith("{'loss'")]


# ----------------------------------------------------------------------------------------------------------
# Resume after SIGKILL


def expected_learning_rates(max_steps: int, warmup_steps: int, learning_rate: float, min_lr: float) -> list[float]:
    """The rate the Trainer uses at steps 1..max_steps, from transformers' own scheduler."""
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=learning_rate)
    scheduler = get_scheduler(
        "cosine_with_min_lr", optimizer, warmup_steps, max_steps, scheduler_specific_kwargs={"min_lr": min_lr}
    )
    rates = []
    for _ in range(max_steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates


def test_sigkill_then_bare_resume_continues_the_same_schedule_and_data(workdir, corpus):
    max_steps, save_steps = 60, 4
    output = workdir / "killed"
    args = [*TINY, "--max_steps", max_steps, "--save_steps", save_steps, "--warmup_steps", "5", "--text_file", corpus]
    args += ["--output_dir", output, "--disable_tqdm", "true"]
    with open(workdir / "killed.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, str(TRAIN_PY), *map(str, args)],
            cwd=workdir,
            env={**train_env(), "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:  # kill once a checkpoint and 2 more steps exist
            if (output / "checkpoint-4" / "trainer_state.json").is_file():
                if len(logged_entries((workdir / "killed.log").read_text())) >= 6:
                    break
            time.sleep(0.02)
        process.kill()  # SIGKILL: no handler, no cleanup
        process.wait()
    killed_output = (workdir / "killed.log").read_text()
    assert process.returncode == -9, f"the run ended before it was killed:\n{killed_output[-2000:]}"
    killed_losses = [float(entry["loss"]) for entry in logged_entries(killed_output)]  # steps 1..len, 4 digits

    complete = max(
        int(state.parent.name.split("-")[1])
        for state in output.glob("checkpoint-*/trainer_state.json")
        if readable_json(state)
    )
    assert complete >= len(killed_losses) - save_steps  # at most one save interval lost
    # What a kill in the middle of a save leaves: the Trainer writes trainer_state.json last.
    incomplete = output / f"checkpoint-{complete + save_steps}"
    if not incomplete.exists():
        shutil.copytree(output / f"checkpoint-{complete}", incomplete)
    (incomplete / "trainer_state.json").unlink(missing_ok=True)

    result = run_train(*args, "--resume_from_checkpoint", cwd=workdir)
    assert result.returncode == 0, describe(result)
    assert f"resuming from {output / f'checkpoint-{complete}'} (skipping {incomplete.name}: incomplete" in result.stdout

    history = json.loads((output / f"checkpoint-{max_steps}" / "trainer_state.json").read_text())["log_history"]
    by_step = {entry["step"]: entry for entry in history if "loss" in entry}
    assert sorted(by_step) == list(range(1, max_steps + 1))  # the same end, every step logged once
    expected = expected_learning_rates(max_steps, warmup_steps=5, learning_rate=3e-3, min_lr=3e-4)  # tiny preset
    assert [by_step[step]["learning_rate"] for step in sorted(by_step)] == pytest.approx(expected, rel=1e-6)
    # The steps replayed after the checkpoint saw the same batches from the same weights: the same losses.
    replayed = range(complete + 1, len(killed_losses) + 1)
    assert len(replayed) >= 1
    assert [by_step[step]["loss"] for step in replayed] == pytest.approx(killed_losses[complete:], rel=1e-3)
    assert json.loads((output / "metrics.json").read_text())["global_step"] == max_steps


# ----------------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit code 1, no traceback, nothing written


def fails_cleanly(argv, capsys, output, message: str) -> None:
    before = snapshot(output)
    assert main([str(arg) for arg in argv]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"train.py: error: {message}"
    assert sum(line.startswith("train.py: error") for line in err.splitlines()) == 1
    assert snapshot(output) == before


def test_missing_text_file_through_the_cli(workdir):
    missing = workdir / "nope.txt"
    result = run_train("--text_file", missing, "--output_dir", workdir / "out-missing", cwd=workdir)
    assert result.returncode == 1
    assert (
        result.stderr.strip() == f"train.py: error: {missing}: no such file; check the path (or pass an http(s) URL)."
    )
    assert "Traceback" not in result.stdout + result.stderr and not (workdir / "out-missing").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "{path} is empty; give it some text."),
        (
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
            "{path} is not UTF-8 text (looks binary); pass a plain text file.",
        ),
        (
            b"far too short",
            "the corpus has 12 tokens but a context of 32 needs at least 33; pass a smaller --block_size (at most 11) or more text.",
        ),
    ],
    ids=["empty", "binary", "shorter-than-context"],
)
def test_unusable_text_file(workdir, capsys, content, message):
    path = workdir / "bad.txt"
    path.write_bytes(content)
    output = workdir / "out-bad-text"
    fails_cleanly([*TINY, "--text_file", path, "--output_dir", output], capsys, output, message.format(path=path))


def test_chat_file_with_a_bad_record_names_it(workdir, capsys):
    chat = workdir / "bad-chat.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    chat.write_text(json.dumps(good) + "\n" + json.dumps({"text": "no turns here"}) + "\n")
    output = workdir / "out-bad-chat"
    message = f"{chat}: record 1 has no 'conversations' (ShareGPT) or 'messages' list; give one of them."
    fails_cleanly([*TINY, "--chat_file", chat, "--output_dir", output], capsys, output, message)


def test_tokenizer_that_does_not_match_init_from(workdir, corpus, capsys):
    model_dir = workdir / "char-model"
    tokenizer = TinyGPTCharTokenizer.from_corpus(corpus.read_text())
    config = TinyGPTConfig(
        vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=2, bos_token_id=2, eos_token_id=3, pad_token_id=0
    )
    TinyGPTForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    requested = build_tokenizer("bpe", corpus.read_text(), bpe_vocab_size=300)
    output = workdir / "out-mismatch"
    argv = ["--init_from", model_dir, "--tokenizer", "bpe", "--bpe_vocab_size", "300", "--text_file", corpus]
    fails_cleanly(
        [*argv, "--output_dir", output, "--max_steps", "1"],
        capsys,
        output,
        f"--tokenizer bpe ({len(requested)} tokens) does not match the tokenizer of --init_from {model_dir} ({len(tokenizer)} tokens); "
        "drop --tokenizer to use the model's own.",
    )


def test_output_dir_holding_another_run_or_other_files_is_refused(workdir, corpus, capsys):
    output = workdir / "taken"
    assert main([*TINY, "--max_steps", "1", "--text_file", str(corpus), "--output_dir", str(output)]) == 0
    capsys.readouterr()
    fails_cleanly(
        [*TINY, "--n_layer", "3", "--max_steps", "1", "--text_file", corpus, "--output_dir", output],
        capsys,
        output,
        f"{output} holds a different run: model.n_layer was 2, now 3; pick another --output_dir, or delete {output} to start over.",
    )
    other = workdir / "not-a-run"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    fails_cleanly(
        [*TINY, "--text_file", corpus, "--output_dir", other],
        capsys,
        other,
        f"{other} is not empty and holds no tinygpt run (no run_settings.json); pick another --output_dir.",
    )


def test_resume_from_an_incomplete_checkpoint_path_is_refused(workdir, corpus, capsys):
    broken = workdir / "elsewhere" / "checkpoint-7"
    broken.mkdir(parents=True)
    (broken / "model.safetensors").write_bytes(b"partial")
    output = workdir / "out-broken"
    fails_cleanly(
        [*TINY, "--text_file", corpus, "--output_dir", output, "--resume_from_checkpoint", broken],
        capsys,
        output,
        f"--resume_from_checkpoint {broken} is not a complete checkpoint (it needs model.safetensors, optimizer.pt, "
        "scheduler.pt, trainer_state.json); pass another checkpoint-N folder, or the bare flag for the newest.",
    )
