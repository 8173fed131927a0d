"""train.py under faults: a SIGKILLed run resumes on the same schedule, and every bad input ends in one line.

Bad inputs run `tinygpt.training.trainer.main` (what train.py calls) in this process, which is fast; one of them also
goes through the real CLI in a subprocess to show a user sees no traceback there either.
"""

import ast
import errno
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.train_cli import TINY, TRAIN_PY, describe, run_train, train_env, write_corpus
from tinygpt import TinyGPTCharTokenizer, TinyGPTConfig, TinyGPTForCausalLM
from tinygpt.data.tokenizers import build_tokenizer
from tinygpt.training.trainer import main


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
    except (OSError, ValueError):  # OSError: a checkpoint the Trainer removed (save_total_limit) as it was read
        return False
    return True


def logged_entries(text: str) -> list[dict]:
    """The Trainer's printed log dicts (--disable_tqdm prints them one per line), the line being written left out."""
    return [ast.literal_eval(line) for line in text.splitlines() if line.startswith("{'loss'") and line.endswith("}")]


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


def newest_complete_checkpoint(output) -> int:
    """The step of the newest checkpoint whose trainer_state.json (which the Trainer writes last) reads whole."""
    steps = [
        int(state.parent.name.split("-")[1])
        for state in output.glob("checkpoint-*/trainer_state.json")
        if readable_json(state)
    ]
    return max(steps, default=0)


@pytest.mark.slow
def test_sigkill_then_bare_resume_continues_the_same_schedule_and_data(workdir, corpus):
    max_steps, save_steps = 400, 4  # long enough that the kill always lands mid-run, however fast the steps
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
            # Any complete checkpoint: the preset keeps only the newest 2, so on a fast machine checkpoint-4 can be
            # gone before the polling sees it.
            if newest_complete_checkpoint(output) > 0:
                if len(logged_entries((workdir / "killed.log").read_text())) >= 6:
                    # Frozen, the run can be inspected without a race: kill it only if steps were logged after its
                    # newest complete checkpoint (on a busy machine the polling can land just on a save).
                    process.send_signal(signal.SIGSTOP)
                    logged = len(logged_entries((workdir / "killed.log").read_text()))
                    if logged > newest_complete_checkpoint(output):
                        break
                    process.send_signal(signal.SIGCONT)
            time.sleep(0.02)
        process.kill()  # SIGKILL: no handler, no cleanup
        process.wait()
    killed_output = (workdir / "killed.log").read_text()
    assert process.returncode == -9, f"the run ended before it was killed:\n{killed_output[-2000:]}"
    killed_losses = [float(entry["loss"]) for entry in logged_entries(killed_output)]  # steps 1..len, 4 digits

    complete = newest_complete_checkpoint(output)
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


def test_a_run_that_diverges_is_one_line_and_leaves_no_final_model(workdir, corpus, capsys):
    output = workdir / "diverged"
    argv = [*TINY, "--max_steps", "4", "--learning_rate", "1e30", "--text_file", corpus, "--output_dir", output]
    assert main([str(arg) for arg in argv]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        "train.py: error: the run diverged: the validation loss at step 4 is nan, so no final model was saved; try "
        "a lower --learning_rate (it was 1e+30)."
    )
    assert not (output / "config.json").exists() and not (output / "metrics.json").exists()


def fails_cleanly(argv, capsys, output, message: str) -> None:
    before = snapshot(output)
    assert main([str(arg) for arg in argv]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"train.py: error: {message}"
    assert sum(line.startswith("train.py: error") for line in err.splitlines()) == 1
    assert snapshot(output) == before


def output_dir_refused(corpus, capsys, output_dir, problem: str) -> None:
    """A text run into `output_dir` fails cleanly with `problem` and the advice to pick another --output_dir."""
    argv = [*TINY, "--text_file", corpus, "--output_dir", output_dir]
    fails_cleanly(argv, capsys, output_dir, f"{problem}; pick another --output_dir.")


@pytest.mark.slow
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
        (
            "café au lait\n".encode("latin-1"),
            "{path} is not UTF-8 text (byte 0xe9 at offset 3; it looks like latin1); convert it to UTF-8, "
            "e.g. iconv -f latin1 -t utf-8 {path} > utf8.txt",
        ),
    ],
    ids=["empty", "binary", "shorter-than-context", "latin-1"],
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
    fails_cleanly(  # the optimizer is part of the run too
        [
            *TINY,
            "--optim",
            "sgd",
            "--max_grad_norm",
            "0.5",
            "--max_steps",
            "1",
            "--text_file",
            corpus,
            "--output_dir",
            output,
        ],
        capsys,
        output,
        f"{output} holds a different run: training.max_grad_norm was 1.0, now 0.5 (and 1 more); pick another "
        f"--output_dir, or delete {output} to start over.",
    )
    other = workdir / "not-a-run"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    output_dir_refused(corpus, capsys, other, f"{other} is not empty and holds no tinygpt run (no run_settings.json)")


def test_resume_from_an_incomplete_checkpoint_path_is_refused(workdir, corpus, capsys):
    broken = workdir / "elsewhere" / "checkpoint-7"
    broken.mkdir(parents=True)
    (broken / "model.safetensors").write_bytes(b"partial")
    output = workdir / "out-broken"
    fails_cleanly(
        [*TINY, "--text_file", corpus, "--output_dir", output, "--resume_from_checkpoint", broken],
        capsys,
        output,
        f"--resume_from_checkpoint {broken} is not a complete checkpoint (incomplete, the run stopped while writing "
        "it; it needs model.safetensors, optimizer.pt, scheduler.pt, trainer_state.json and the model's config and "
        "tokenizer); pass another checkpoint-N folder, or the bare flag for the newest.",
    )


# ----------------------------------------------------------------------------------------------------------
# Flags no run can use: refused before anything is written, so the corrected rerun is not blocked


def gpt2_folder_without_tokenizer(workdir):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = workdir / "gpt2-no-tokenizer"
    if not folder.exists():
        GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--learning_rate", "nan"], "--learning_rate nan: not a finite number; pass a finite value."),
        (["--learning_rate", "inf"], "--learning_rate inf: not a finite number; pass a finite value."),
        (["--weight_decay=-inf"], "--weight_decay -inf: not a finite number; pass a finite value."),
        (["--learning_rate", "0"], "--learning_rate must be positive, got 0.0."),
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be at least 1, got 0."),
        (["--eval_windows", "0"], "--eval_windows must be at least 1, got 0."),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be at least 1, got 0."),
        (["--block_size", "1"], "--block_size must be at least 2, got 1."),
        (["--adam_beta1", "5"], "--adam_beta1 must be in [0, 1), got 5.0."),
        (["--adam_epsilon=-1"], "--adam_epsilon must be 0 or more, got -1.0."),
        (
            ["--use_liger_kernel", "--use_cpu"],
            "--use_liger_kernel runs Liger Kernel's Triton kernels on CUDA GPUs, and this run is on cpu; drop it "
            "(the plain loss is used).",
        ),
    ],
    ids=[
        *("lr-nan", "lr-inf", "weight-decay-inf", "lr-zero", "batch-0", "eval-windows-0", "accumulation-0"),
        *("window-1", "beta1-5", "epsilon-negative", "fused-loss-on-cpu"),
    ],
)
def test_unusable_flag_values_are_refused_before_anything_is_written(workdir, corpus, capsys, flags, message):
    output = workdir / "out-bad-flag"
    fails_cleanly(
        [*TINY, "--max_steps", "2", "--text_file", corpus, "--output_dir", output, *flags], capsys, output, message
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--text_file", "{corpus}"],
            "--streaming reads a Hub or local dataset (--dataset_name) as it downloads; drop --streaming for "
            "--text_file, tiny_shakespeare or conversations.",
        ),
        (
            ["--dataset_name", "{corpus}", "--tokenizer", "char"],
            "--streaming never holds the corpus, so --tokenizer char cannot be built from it; pass --tokenizer gpt2 "
            "or a saved tokenizer folder.",
        ),
    ],
    ids=["text-file", "char-tokenizer"],
)
def test_streaming_needs_a_dataset_and_a_fixed_tokenizer(workdir, corpus, capsys, flags, message):
    output = workdir / "out-streaming"
    flags = [flag.format(corpus=corpus) for flag in flags]
    fails_cleanly([*TINY, "--max_steps", "2", "--streaming", *flags, "--output_dir", output], capsys, output, message)


def test_a_failed_run_leaves_nothing_that_blocks_the_corrected_rerun(workdir, corpus, capsys):
    output = workdir / "out-rerun"
    common = [*TINY, "--max_steps", "2", "--text_file", str(corpus), "--output_dir", str(output)]
    assert main([*common, "--per_device_train_batch_size", "0"]) == 1
    assert not output.exists()
    assert main(common) == 0  # the same folder, the batch size fixed
    assert "Traceback" not in capsys.readouterr().err and (output / "model.safetensors").is_file()


def test_output_dir_that_is_a_file_is_refused(workdir, corpus, capsys):
    taken = workdir / "a-file"
    taken.write_text("mine")
    output_dir_refused(corpus, capsys, taken, f"--output_dir {taken} is a file, not a folder")
    assert taken.read_text() == "mine"
    below = taken / "run"
    output_dir_refused(corpus, capsys, below, f"--output_dir {below}: {taken} is a file, not a folder")


def test_init_from_gpt2_weights_without_a_tokenizer(workdir, corpus, capsys):
    folder = gpt2_folder_without_tokenizer(workdir)
    output = workdir / "out-gpt2-no-tokenizer"
    fails_cleanly(
        [*TINY[8:], "--max_steps", "1", "--text_file", corpus, "--init_from", folder, "--output_dir", output],
        capsys,
        output,
        f"--init_from {folder} holds GPT-2 weights but no tokenizer ({folder} holds neither tokenizer.json nor "
        "vocab.json + merges.txt; point at a GPT-2 tokenizer folder.); copy GPT-2's vocab.json and merges.txt into it.",
    )


def foreign_pickle(path) -> None:
    """A torch.save file holding an object of a class torch does not allow (a date): no code runs when read with
    weights_only, but it is not plain tensors either."""
    import datetime

    torch.save({"when": datetime.date(2026, 12, 7)}, path)


def gpt2_folder_with_broken_weights(workdir, shared_data, name: str, break_weights):
    """A GPT-2 folder with its tokenizer, whose weights `break_weights(folder)` then damages."""
    folder = workdir / name
    if not folder.exists():
        shutil.copytree(gpt2_folder_without_tokenizer(workdir), folder)
        for file_name in ("vocab.json", "merges.txt"):
            shutil.copyfile(shared_data / "gpt2" / file_name, folder / file_name)
        (folder / "model.safetensors").unlink()
        break_weights(folder)
    return folder


@pytest.mark.parametrize(
    "name, break_weights",
    [
        ("gpt2-no-weights", lambda folder: None),
        ("gpt2-pickle", lambda folder: foreign_pickle(folder / "pytorch_model.bin")),  # torch reads no such pickle
    ],
    ids=["missing", "foreign-pickle"],
)
def test_init_from_gpt2_weights_that_cannot_be_read_is_one_line(
    workdir, corpus, capsys, shared_data, name, break_weights
):
    folder = gpt2_folder_with_broken_weights(workdir, shared_data, name, break_weights)
    output = workdir / f"out-{name}"
    argv = [*TINY[8:], "--max_steps", "1", "--text_file", corpus, "--init_from", folder, "--output_dir", output]
    before = snapshot(output)
    assert main([str(arg) for arg in argv]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "UnpicklingError" not in err
    assert err.strip().splitlines()[-1].startswith(f"train.py: error: --init_from {folder}: ")
    assert snapshot(output) == before


def can_mount_in_a_namespace() -> bool:
    if shutil.which("unshare") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "mount", "-t", "tmpfs", "none", "/mnt"], capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(
    not can_mount_in_a_namespace(), reason="needs root and `unshare -m` to mount a small or read-only tmpfs"
)


def run_train_on_a_tmpfs(workdir, mount_options: str, *args, cwd) -> subprocess.CompletedProcess:
    """`python train.py ARGS` in a private mount namespace where workdir/mnt is a fresh tmpfs (mount_options)."""
    mountpoint = workdir / "mnt"
    mountpoint.mkdir(exist_ok=True)
    command = " ".join(shlex.quote(str(a)) for a in [sys.executable, TRAIN_PY, *args])
    script = f"mount -t tmpfs -o {mount_options} tinygpt-test {shlex.quote(str(mountpoint))} && exec {command}"
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script], cwd=cwd, env=train_env(), capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
@needs_mounts
def test_output_dir_on_a_read_only_filesystem_through_the_cli(workdir, corpus):
    output = workdir / "mnt" / "run"
    result = run_train_on_a_tmpfs(workdir, "ro", *TINY, "--text_file", corpus, "--output_dir", output, cwd=workdir)
    assert result.returncode == 1, describe(result)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"train.py: error: --output_dir {output} is on a read-only filesystem ({output.parent}); "
        "pick a writable --output_dir."
    )


@pytest.mark.slow
def test_eval_windows_zero_through_the_cli(workdir, corpus):
    output = workdir / "out-cli-eval-windows"
    result = run_train(*TINY, "--text_file", corpus, "--output_dir", output, "--eval_windows", "0", cwd=workdir)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr, describe(result)
    assert result.stderr.strip() == "train.py: error: --eval_windows must be at least 1, got 0."
    assert not output.exists()


# ----------------------------------------------------------------------------------------------------------
# A context that cannot fit


def test_a_context_that_cannot_fit_in_memory_is_refused_up_front(workdir, corpus, capsys, monkeypatch):
    monkeypatch.setattr("tinygpt.training.corpus.memory_bytes", lambda device: 8 << 30)  # an 8 GiB machine
    output = workdir / "out-huge-context"
    started = time.perf_counter()
    fails_cleanly(
        [*TINY, "--block_size", "100000", "--per_device_train_batch_size", "32", "--text_file", corpus]
        + ["--output_dir", output],
        capsys,
        output,
        "a micro-batch of 32 windows of 100,000 tokens cannot fit: it needs about 17 GiB and this cpu has 8 GiB; "
        "pass a smaller --per_device_train_batch_size (a larger --gradient_accumulation_steps keeps the tokens a "
        "step) or --block_size.",
    )
    assert time.perf_counter() - started < 10


def test_a_context_that_makes_steps_slow_is_announced(capsys, monkeypatch):
    from tinygpt.training.args import parse_args
    from tinygpt.training.corpus import check_context_fits

    monkeypatch.setattr("tinygpt.training.corpus.memory_bytes", lambda device: 1 << 40)  # a 1 TiB machine: it fits
    run = parse_args(["--use_cpu", "--block_size", "100000", "--per_device_train_batch_size", "24"])
    config = TinyGPTConfig(vocab_size=65, n_positions=100000, n_embd=160, n_layer=2, n_head=4)
    check_context_fits(run, config)  # each step is hundreds of TFLOP, 99% of it attention
    out = capsys.readouterr().out
    assert "note: a step of 24 x 100,000 tokens is about" in out and "a smaller --block_size is much faster" in out
    small = parse_args(["--use_cpu"])
    check_context_fits(small, TinyGPTConfig(vocab_size=65, n_positions=128, n_embd=128, n_layer=2, n_head=4))
    assert capsys.readouterr().out == ""


# ----------------------------------------------------------------------------------------------------------
# Resuming: a finished run, corrupt checkpoints


def final_files(folder):
    """The final model's files: everything at the top of a run folder but its settings and checkpoints."""
    return [p for p in folder.iterdir() if p.is_file() and p.name != "run_settings.json"]


def test_resume_from_a_checkpoint_at_max_steps_trains_nothing(workdir, capsys):
    """On conversations the Trainer trained a step past --max_steps; now the run is recognized as finished."""
    from safetensors.torch import load_file

    output = workdir / "finished"
    argv = [*TINY, "--block_size", "128", "--synthetic_conversations", "100", "--max_steps", "4"]
    argv += ["--output_dir", str(output), "--disable_tqdm", "true"]
    assert main(argv) == 0
    first = json.loads((output / "metrics.json").read_text())
    before = snapshot(output)
    capsys.readouterr()

    assert main([*argv, "--resume_from_checkpoint"]) == 0
    assert (
        f"{output / 'checkpoint-4'} is already at step 4 of --max_steps 4: nothing left to train; the final model in "
        f"{output} is kept as it is"
    ) in capsys.readouterr().out
    assert snapshot(output) == before  # not a byte changed

    for path in final_files(output):  # what a run that died during its final save leaves
        path.unlink()
    assert main([*argv, "--resume_from_checkpoint"]) == 0
    out = capsys.readouterr().out
    assert f"{output / 'checkpoint-4'} is already at step 4 of --max_steps 4: nothing left to train; saving its" in out
    again = json.loads((output / "metrics.json").read_text())
    assert (
        again["global_step"] == 4
        and again["val_loss"] == first["val_loss"]
        and again["train_loss"] == first["train_loss"]
    )
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    final, checkpoint = (
        load_file(output / "model.safetensors"),
        load_file(output / "checkpoint-4" / "model.safetensors"),
    )
    assert final.keys() == checkpoint.keys() and all(torch.equal(final[k], checkpoint[k]) for k in final)


def tiny_text_run(corpus, output, steps: int = 4) -> list[str]:
    """train.py's argv for a tiny text run of `steps` steps (a checkpoint every 2) into `output`."""
    run = ("--max_steps", str(steps), "--text_file", str(corpus), "--output_dir", str(output))
    return [*TINY, *run, "--disable_tqdm", "true"]


@pytest.fixture(scope="module")
def checkpointed_run(workdir, corpus):
    """A finished 4-step text run with checkpoint-2 and checkpoint-4, and its argv."""
    output = workdir / "checkpointed"
    argv = tiny_text_run(corpus, output)
    assert main(argv) == 0
    return output, argv


def test_resuming_another_runs_checkpoint_with_other_flags_is_refused(workdir, corpus, checkpointed_run, capsys):
    checkpoint = checkpointed_run[0] / "checkpoint-2"
    elsewhere = workdir / "out-other-run"
    fails_cleanly(
        [*tiny_text_run(corpus, elsewhere), "--n_layer", "1", "--resume_from_checkpoint", checkpoint],
        capsys,
        elsewhere,
        f"{checkpoint} belongs to a different run: model.n_layer was 2, now 1; resume it with that run's flags, or "
        f"start a new run from its weights with --init_from {checkpoint}.",
    )


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda c: truncate(c / "optimizer.pt"), "optimizer.pt is truncated or corrupt"),
        (lambda c: truncate(c / "model.safetensors"), "model.safetensors is truncated or corrupt"),
        (lambda c: truncate(c / "trainer_state.json"), "trainer_state.json is truncated or corrupt"),
        (lambda c: (c / "config.json").unlink(), "no config.json"),
        (
            lambda c: (c / "vocab.json").unlink(),
            "its tokenizer does not load (TinyGPTCharTokenizer needs a vocab: use TinyGPTCharTokenizer.from_corpus(text).)",
        ),
    ],
    ids=["optimizer-truncated", "weights-truncated", "state-truncated", "no-config", "no-vocab"],
)
def test_a_corrupt_newest_checkpoint_falls_back_to_the_newest_usable_one(
    workdir, checkpointed_run, capsys, damage, problem
):
    source, argv = checkpointed_run
    output = workdir / f"corrupt-{len(list(workdir.glob('corrupt-*')))}"
    shutil.copytree(source, output)
    first = json.loads((output / "metrics.json").read_text())
    for path in final_files(output):
        path.unlink()  # the run died after writing checkpoint-4 (whose files are then damaged)
    damage(output / "checkpoint-4")
    capsys.readouterr()
    argv = [*argv[: argv.index("--output_dir")], "--output_dir", str(output), "--disable_tqdm", "true"]

    assert main([*argv, "--resume_from_checkpoint"]) == 0
    out = capsys.readouterr().out
    assert f"resuming from {output / 'checkpoint-2'} (skipping checkpoint-4: {problem})" in out
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and metrics["val_loss"] == pytest.approx(first["val_loss"], rel=1e-5)
    from tinygpt.training.run_dir import checkpoint_problem

    assert checkpoint_problem(output / "checkpoint-4") is None  # written again, whole
    for folder in (output, output / "checkpoint-4"):  # how this run loaded its tokenizer is not saved with it
        assert not {"is_local", "local_files_only"} & json.loads((folder / "tokenizer_config.json").read_text()).keys()


def test_resume_from_a_named_corrupt_checkpoint_is_refused(workdir, checkpointed_run, capsys):
    source, argv = checkpointed_run
    output = workdir / "named-corrupt"
    shutil.copytree(source, output)
    truncate(output / "checkpoint-4" / "optimizer.pt")
    argv = [*argv[: argv.index("--output_dir")], "--output_dir", str(output)]
    fails_cleanly(
        [*argv, "--resume_from_checkpoint", output / "checkpoint-4"],
        capsys,
        output,
        f"--resume_from_checkpoint {output / 'checkpoint-4'} is not a complete checkpoint (optimizer.pt is truncated "
        "or corrupt; it needs model.safetensors, optimizer.pt, scheduler.pt, trainer_state.json and the model's config "
        "and tokenizer); pass another checkpoint-N folder, or the bare flag for the newest.",
    )


def test_resume_from_a_checkpoint_holding_a_foreign_pickle_is_one_line(workdir, checkpointed_run, capsys):
    source, argv = checkpointed_run
    output = workdir / "foreign-pickle"
    shutil.copytree(source, output)
    foreign_pickle(output / "checkpoint-2" / "optimizer.pt")
    argv = [*argv[: argv.index("--output_dir")], "--output_dir", output]
    before = {path: path.stat().st_mtime_ns for path in (output / "checkpoint-2").iterdir()}
    assert main([str(arg) for arg in [*argv, "--resume_from_checkpoint", output / "checkpoint-2"]]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "UnpicklingError" not in err
    assert err.strip().splitlines()[-1] == (
        f"train.py: error: {output / 'checkpoint-2'} holds a pickled file (its optimizer or random state) that is "
        "not plain tensors, which torch will not read: resume from another checkpoint, or start over."
    )
    assert before == {path: path.stat().st_mtime_ns for path in (output / "checkpoint-2").iterdir()}


# ----------------------------------------------------------------------------------------------------------
# A full disk


@pytest.mark.parametrize(
    "error, free, problem",
    [
        (
            OSError(errno.ENOSPC, "No space left on device"),
            None,
            "no space left on {folder} while writing a checkpoint",
        ),
        (RuntimeError("basic_ios::clear: iostream error"), 0, "no space left on {folder} while writing a checkpoint"),
        (
            RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 65664 vs 65556"),
            0,
            "no space left on {folder} while writing a checkpoint",
        ),
        (
            RuntimeError("basic_ios::clear: iostream error"),
            1 << 40,
            "cannot write a checkpoint to {folder} (basic_ios::clear: iostream error)",
        ),
    ],
    ids=["enospc", "torch-basic-ios", "torch-unexpected-pos", "not-the-disk"],
)
def test_a_failed_checkpoint_write_is_one_line_and_keeps_earlier_checkpoints(
    workdir, corpus, capsys, monkeypatch, error, free, problem
):
    from transformers import Trainer

    output = workdir / f"disk-full-{len(list(workdir.glob('disk-full-*')))}"
    argv = tiny_text_run(corpus, output, steps=6)
    original_save = Trainer._save_optimizer_and_scheduler
    earlier = {}

    def save_until_the_disk_fills(self, folder):
        if folder.endswith("checkpoint-4"):
            earlier.update(snapshot(output / "checkpoint-2"))
            raise error
        original_save(self, folder)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", save_until_the_disk_fills)
    if free is not None:
        monkeypatch.setattr("tinygpt.training.run_dir.free_bytes", lambda path: free)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"train.py: error: {problem.format(folder=output / 'checkpoint-4')}; the earlier checkpoints are intact: free "
        "some space, then continue from checkpoint-2 with --resume_from_checkpoint."
    )
    assert earlier and snapshot(output / "checkpoint-2") == earlier  # nothing earlier lost
    assert not (output / "checkpoint-4").exists()  # the partial folder is gone, its space free again
    monkeypatch.undo()
    assert main([*argv, "--resume_from_checkpoint"]) == 0
    assert json.loads((output / "metrics.json").read_text())["global_step"] == 6


def test_a_full_disk_during_the_final_save_keeps_everything_and_resuming_saves_it(workdir, corpus, capsys, monkeypatch):
    import transformers.modeling_utils
    from safetensors import SafetensorError

    output = workdir / "final-disk-full"
    argv = tiny_text_run(corpus, output)
    original_save_file = transformers.modeling_utils.safe_save_file
    checkpoints = {}

    def save_file(tensors, filename, metadata=None):
        if "/.final-" in str(filename):  # the final model's staging folder
            checkpoints.update({k: v for k, v in snapshot(output).items() if not k.startswith(".final-")})
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        original_save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", save_file)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"train.py: error: no space left on {output} while writing the final model; the checkpoints and every file "
        "already there are intact: free some space, then run again with --resume_from_checkpoint to save it."
    )
    assert checkpoints and snapshot(output) == checkpoints  # no staging folder left, nothing changed
    monkeypatch.undo()
    assert main([*argv, "--resume_from_checkpoint"]) == 0
    assert "nothing left to train; saving its model as the final one" in capsys.readouterr().out
    assert json.loads((output / "metrics.json").read_text())["global_step"] == 4


@pytest.mark.slow
@needs_mounts
def test_a_really_full_disk_through_the_cli(workdir, corpus):
    """A 700 KiB tmpfs holds the settings and checkpoint-2 (~450 KiB) but not checkpoint-4: torch.save fails."""
    output = workdir / "mnt" / "run"
    args = [*TINY, "--max_steps", "8", "--text_file", corpus, "--output_dir", output, "--save_total_limit", "5"]
    script_result = run_train_on_a_tmpfs(workdir, "size=700k", *args, cwd=workdir)
    assert script_result.returncode == 1, describe(script_result)
    assert "Traceback" not in script_result.stdout + script_result.stderr
    assert script_result.stderr.strip().splitlines()[-1] == (
        f"train.py: error: no space left on {output / 'checkpoint-4'} while writing a checkpoint; the earlier "
        "checkpoints are intact: free some space, then continue from checkpoint-2 with --resume_from_checkpoint."
    )
