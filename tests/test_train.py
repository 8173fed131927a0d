"""train.py end to end: every data source and tokenizer through the real CLI, and what a run leaves behind.

Each run is a few steps of a tiny model in a subprocess; one run's output (module fixture) is inspected by
several tests: the saved model through the Auto classes and a pipeline, loss.png, metrics.json, the card.
"""

import json
import math
import shutil
import struct

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

import tinygpt  # noqa: F401  (registers the tinygpt Auto classes)
from tests.train_cli import TINY, TINY_SCHEDULE, describe, run_train, write_corpus
from tinygpt.data.tokenizers import build_tokenizer
from tinygpt.training import args as training_args
from tinygpt.training.args import LATEST, DevicePolicy, parse_args
from tinygpt.training.presets import PRESETS
from tinygpt.training.trainer import main

pytestmark = pytest.mark.slow  # subprocesses of the real command line


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def corpus(workdir):
    return write_corpus(workdir / "a.txt", seed=0), write_corpus(workdir / "b.txt", seed=1)


@pytest.fixture(scope="module")
def text_run(workdir, corpus):
    """Every plain-text source at once (two text files and a local dataset's column), char tokenizer, on a
    shakespeare-cpu run reshaped to a tiny model, with no --output_dir (so the preset's default)."""
    rows = [{"body": line} for line in write_corpus(workdir / "rows.txt", seed=2).read_text().splitlines()]
    (workdir / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = run_train(
        "--preset", "shakespeare-cpu", *TINY, "--max_steps", "4", "--save_total_limit", "1",
        "--text_file", corpus[0], "--text_file", corpus[1], "--dataset_name", workdir / "rows.jsonl", "--text_column", "body",
        "--report_to", "tensorboard", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, describe(result)
    return result, workdir / "runs" / "shakespeare-cpu"


def test_help_lists_model_data_and_trainer_flags_and_presets(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    for flag in (
        "--preset",
        "--init_from",
        "--text_file",
        "--dataset_name",
        "--chat_file",
        "--tokenizer",
        "--eval_windows",
    ):
        assert flag in help_text
    for trainer_flag in ("--learning_rate", "--torch_compile", "--resume_from_checkpoint", "--report_to"):
        assert trainer_flag in help_text
    for preset in ("tiny", "shakespeare-cpu", "shakespeare-char", "gpt2-small"):
        assert preset in help_text


def test_preset_gives_defaults_and_typed_flags_win():
    run = parse_args(["--preset", "shakespeare-char", "--n_layer", "3", "--learning_rate", "5e-4", "--use_cpu"])
    assert (run.model.n_layer, run.model.n_head, run.model.n_embd, run.model.block_size) == (3, 6, 384, 256)
    assert run.model.dropout == 0.2 and run.model.bias is False
    assert run.training.learning_rate == 5e-4  # typed
    preset = PRESETS["shakespeare-char"].training
    assert run.training.max_steps == preset["max_steps"] and run.training.warmup_steps == 100
    assert run.training.adam_beta2 == 0.99
    assert not run.training.torch_compile  # compiling with CUDA graphs is the preset's default on CUDA only
    assert run.training.lr_scheduler_kwargs == {"min_lr": 1e-4} and run.training.weight_decay == 0.1
    assert run.training.output_dir.replace("\\", "/") == "runs/shakespeare-char"
    assert run.passed.keys() == {"preset", "n_layer", "learning_rate", "use_cpu"}
    assert (run.policy.device, run.policy.precision) == ("cpu", "fp32")


@pytest.mark.parametrize(
    "flags, backend, mode",
    [
        (["--preset", "shakespeare-char"], "cudagraphs", None),  # small kernels: the traced step replayed
        (["--preset", "gpt2-small"], "inductor", None),  # long kernels: fused, no graphs
        (["--preset", "tiny", "--torch_compile"], "inductor", "reduce-overhead"),  # compiling asked for
        (["--preset", "shakespeare-char", "--gradient_accumulation_steps", "2"], "inductor", None),
        (["--preset", "gpt2-small", "--torch_compile_mode", "max-autotune"], "inductor", "max-autotune"),
    ],
)
def test_how_each_preset_compiles_on_cuda(monkeypatch, flags, backend, mode):
    """Which compiler backend and mode a run on a CUDA GPU gets (the device choice faked): the preset's, CUDA
    graphs only where they are safe, and a typed backend or mode always wins."""
    monkeypatch.setattr(training_args, "choose_device", lambda passed: DevicePolicy("cuda", "fp32", "a faked GPU"))
    run = parse_args(flags)
    assert run.policy.device == "cuda" and run.training.torch_compile
    assert (run.training.torch_compile_backend or "inductor", run.training.torch_compile_mode) == (backend, mode)


def test_bare_resume_flag_means_the_newest_checkpoint():
    assert parse_args(["--resume_from_checkpoint"]).training.resume_from_checkpoint == LATEST
    assert parse_args(["--resume_from_checkpoint", "--max_steps", "5"]).training.resume_from_checkpoint == LATEST
    assert (
        parse_args(["--resume_from_checkpoint", "runs/x/checkpoint-4"]).training.resume_from_checkpoint
        == "runs/x/checkpoint-4"
    )


def test_text_run_prints_device_progress_losses_and_a_sample(text_run):
    result, output = text_run
    assert "device: cpu, precision: fp32" in result.stdout
    assert "'loss':" in result.stdout and "'eval_loss':" in result.stdout and "'eval_bits_per_byte':" in result.stdout
    assert "it/s]" in result.stderr  # the progress bar
    assert " bits per byte), " in result.stdout  # the summary line gives it beside the loss
    assert "sample:" in result.stdout and f"saved to {output.relative_to(output.parent.parent)}" in result.stdout


def test_text_run_leaves_a_model_the_auto_classes_and_a_pipeline_load(text_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    _, output = text_run
    config = json.loads((output / "config.json").read_text())
    assert (
        config["use_cache"] is True
        and config["auto_map"]["AutoModelForCausalLM"] == "modeling_tinygpt.TinyGPTForCausalLM"
    )
    assert (config["n_layer"], config["n_head"], config["n_embd"], config["n_positions"]) == (2, 2, 32, 32)
    for name in ("model.safetensors", "generation_config.json", "tokenizer_config.json", "modeling_tinygpt.py"):
        assert (output / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(output)
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert tokenizer.model_max_length == 32
    assert config["vocab_size"] % 64 == 0 and config["vocab_size"] >= len(tokenizer)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = generator("the king", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("the king") and len(text) > len("the king")


def test_text_run_keeps_the_newest_checkpoint_and_tensorboard_logs(text_run):
    _, output = text_run
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-4"]  # saves at 2 and 4, limit 1
    assert list(output.glob("runs/*/events.out.tfevents.*"))
    assert not list(output.glob(".final-*"))  # the staging folder of the final save is gone


def test_loss_png_is_a_real_png(text_run):
    _, output = text_run
    png = (output / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])  # IHDR
    assert (width, height) == (700, 450) and len(png) > 10_000


def test_metrics_json_agrees_with_the_trainer_state(text_run):
    _, output = text_run
    metrics = json.loads((output / "metrics.json").read_text())
    state = json.loads((output / "checkpoint-4" / "trainer_state.json").read_text())
    last_eval = [entry for entry in state["log_history"] if "eval_loss" in entry][-1]
    assert metrics["global_step"] == 4 and metrics["preset"] == "shakespeare-cpu"
    assert metrics["val_loss"] == pytest.approx(last_eval["eval_loss"], rel=1e-5)
    # Every evaluation logs bits per byte; an ASCII text in characters is one byte a token: loss / ln 2.
    assert metrics["eval_bits_per_byte"] == pytest.approx(last_eval["eval_bits_per_byte"], rel=1e-5)
    assert metrics["eval_bits_per_byte"] == pytest.approx(metrics["val_loss"] / math.log(2), rel=1e-5)
    assert metrics["val_perplexity"] == pytest.approx(math.exp(metrics["val_loss"]))
    assert metrics["tokens_seen"] == 4 * 4 * 32  # steps x batch x context
    assert metrics["tokens_per_second"] > 0 and metrics["wall_seconds"] > metrics["train_seconds"] > 0
    assert metrics["peak_memory_bytes"] > 10_000_000 and metrics["exact_match"] is None
    assert metrics["parameters"] == metrics["parameters_without_positions"] + 32 * 32


def test_model_card_has_hub_metadata_shape_metrics_and_usage(text_run):
    _, output = text_run
    card = (output / "README.md").read_text()
    front_matter = card.split("---")[1]
    assert "library_name: transformers" in front_matter and "pipeline_tag: text-generation" in front_matter
    metrics = json.loads((output / "metrics.json").read_text())
    assert "2 x 2 x 32" in card and f"{metrics['parameters']:,}" in card
    assert f"{metrics['val_loss']:.4f}" in card and "text: a.txt, b.txt, " in card and "rows.jsonl" in card
    assert "AutoModelForCausalLM.from_pretrained" in card and "pipeline(" in card and "![loss](loss.png)" in card
    assert f"| validation bits per byte | {metrics['eval_bits_per_byte']:.4f} |" in card
    (result,) = ModelCard.load(output / "README.md").data.eval_results  # the model-index the Hub shows
    assert (result.metric_type, result.dataset_split) == ("bits_per_byte", "validation")
    assert result.metric_value == pytest.approx(metrics["eval_bits_per_byte"], rel=1e-5)


def test_a_second_run_on_the_same_text_reuses_the_tokenized_cache(workdir):
    text = write_corpus(workdir / "cached.txt", seed=5)
    args = [*TINY, "--max_steps", "2", "--text_file", text, "--disable_tqdm", "true"]
    first = run_train(*args, "--output_dir", workdir / "cached-1", cwd=workdir)
    assert first.returncode == 0, describe(first)
    second = run_train(*args, "--output_dir", workdir / "cached-2", cwd=workdir)
    assert second.returncode == 0, describe(second)
    wrote = next(line for line in first.stdout.splitlines() if line.startswith("wrote "))
    assert "tokens (uint16) in datasets' cache: " in wrote
    assert f"reusing {wrote.removeprefix('wrote ')}" in second.stdout  # the same files, not tokenized again
    assert "Tokenizing" in first.stderr and "Tokenizing" not in second.stderr  # datasets' map progress bar


def test_one_seed_is_one_run_from_the_initial_weights_on(workdir, corpus):
    """--seed decides the initial weights as well as the data order: the same seed twice gives the same model."""
    args = [*TINY, "--max_steps", "1", "--text_file", corpus[0], "--disable_tqdm", "true"]
    runs = {name: (workdir / name, seed) for name, seed in [("seed-a", "3"), ("seed-b", "3"), ("seed-c", "4")]}
    for output, seed in runs.values():
        result = run_train(*args, "--seed", seed, "--output_dir", output, cwd=workdir)
        assert result.returncode == 0, describe(result)
    a, b, c = (load_file(output / "model.safetensors") for output, _ in runs.values())
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not torch.equal(a["transformer.wte.weight"], c["transformer.wte.weight"])


def test_a_streamed_dataset_trains(workdir, corpus, capsys):
    rows = workdir / "stream.jsonl"
    rows.write_text("".join(json.dumps({"text": line}) + "\n" for line in corpus[0].read_text().splitlines()))
    tokenizer = workdir / "stream-tokenizer"
    build_tokenizer("char", corpus[0].read_text()).save_pretrained(tokenizer)
    output = workdir / "streamed"
    argv = [*TINY, "--max_steps", "4", "--streaming", "--dataset_name", rows, "--tokenizer", tokenizer]
    assert main([str(arg) for arg in [*argv, "--output_dir", output, "--disable_tqdm", "true"]]) == 0
    out = capsys.readouterr().out
    assert "(streamed) (16 validation windows first, then training windows)" in out
    assert json.loads((output / "metrics.json").read_text())["global_step"] == 4


def test_muon_trains_the_block_matrices_and_resumes_exactly(workdir, corpus):
    common = [*TINY, "--max_steps", "6", "--save_steps", "3", "--save_total_limit", "3", "--text_file", corpus[0]]
    muon = run_train(*common, "--muon_lr", "0.02", "--output_dir", workdir / "muon", cwd=workdir)
    adamw = run_train(*common, "--output_dir", workdir / "adamw", cwd=workdir)
    assert muon.returncode == 0 and adamw.returncode == 0, describe(muon) + describe(adamw)
    state = torch.load(workdir / "muon" / "checkpoint-3" / "optimizer.pt", weights_only=True)
    assert set(state) == {"muon", "adamw"}
    assert len(state["muon"]["state"]) == 2 * 4  # 2 blocks x (c_attn, attn.c_proj, c_fc, mlp.c_proj)
    assert state["muon"]["param_groups"][0]["lr"] < 0.02 and state["adamw"]["param_groups"][0]["lr"] < 3e-3  # scheduled

    def losses(folder):
        history = json.loads((folder / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
        return [entry["loss"] for entry in history if "loss" in entry]

    assert losses(workdir / "muon")[3:] != losses(workdir / "adamw")[3:]  # the flag changed how the model learns
    first = losses(workdir / "muon")
    shutil.rmtree(workdir / "muon" / "checkpoint-6")
    resumed = run_train(
        *common, "--muon_lr", "0.02", "--output_dir", workdir / "muon", "--resume_from_checkpoint", cwd=workdir
    )
    assert resumed.returncode == 0, describe(resumed)
    assert losses(workdir / "muon") == pytest.approx(first, rel=1e-4)  # both optimizers' states came back


def test_chat_file_with_bpe_learns_from_assistant_tokens_only(workdir):
    """User turns are random letters, the reply is always "ok": only a masked loss can get near zero.

    Were the user's tokens in the loss, about 19 of a conversation's 24 predicted tokens would be random letters at
    about ln(26) = 3.3 nats each, an average above 2. Masked, 30 steps reach 0.2-0.7 over the seeds 1 to 8, so the
    bound below has room on both sides. The tokenizer is a byte-level BPE trained on the chat text.
    """
    rng = torch.Generator().manual_seed(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    with open(workdir / "chat.jsonl", "w") as f:
        for _ in range(300):
            question = "".join(letters[i] for i in torch.randint(0, 26, (20,), generator=rng))
            f.write(
                json.dumps(
                    {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "ok"}]}
                )
                + "\n"
            )
    output = workdir / "chat"
    result = run_train(
        *TINY, "--block_size", "64", "--max_steps", "30", "--learning_rate", "1e-2", "--eval_steps", "30",
        "--chat_file", workdir / "chat.jsonl", "--tokenizer", "bpe", "--bpe_vocab_size", "300",
        "--output_dir", output, "--disable_tqdm", "true", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, describe(result)
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["val_loss"] < 1.0, metrics["val_loss"]
    assert metrics["sample"].endswith("<assistant>:ok<EOS>")
    tokenizer = tinygpt.AutoTokenizer.from_pretrained(output)  # the trained BPE, saved as tokenizer.json
    # Bits per byte of the replies: each is "ok" (2 bytes) and <EOS> (no bytes, but a loss) in the labelled tokens.
    labelled = len(tokenizer("ok", add_special_tokens=False)["input_ids"]) + 1
    assert metrics["eval_bits_per_byte"] == pytest.approx(metrics["val_loss"] / math.log(2) / (2 / labelled), rel=1e-5)
    assert (output / "tokenizer.json").is_file() and 256 < len(tokenizer) <= 300
    assert json.loads((output / "config.json").read_text())["vocab_size"] == 64 * math.ceil(len(tokenizer) / 64)
    assert json.loads((output / "generation_config.json").read_text())["do_sample"] is False


def test_default_run_is_the_synthetic_chat_task_with_exact_match(workdir):
    output = workdir / "synthetic"
    result = run_train(
        *TINY, "--block_size", "128", "--max_steps", "3", "--synthetic_conversations", "200",
        "--output_dir", output, "--disable_tqdm", "true", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, describe(result)
    metrics = json.loads((output / "metrics.json").read_text())
    assert 0.0 <= metrics["exact_match"] <= 1.0 and metrics["heldout_questions"] == 200
    assert metrics["preset"] == "tiny" and "synthetic chat" in metrics["data"]
    assert f"exact match {100 * metrics['exact_match']:.1f}% on 200 held-out questions" in result.stdout
    assert "held-out exact match" in (output / "README.md").read_text()
    assert tinygpt.AutoTokenizer.from_pretrained(output).apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False
    )


def test_init_from_gpt2_weights_with_the_gpt2_tokenizer_folder(workdir, corpus, shared_data):
    """A GPT-2 checkpoint converted to TinyGPT; --tokenizer names the same GPT-2 files, so it matches."""
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2_dir = workdir / "tiny-gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)).save_pretrained(gpt2_dir)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(shared_data / "gpt2" / name, gpt2_dir / name)
    output = workdir / "from-gpt2"
    result = run_train(
        *TINY_SCHEDULE, "--max_steps", "2", "--text_file", corpus[0], "--init_from", gpt2_dir, "--output_dir", output,
        "--tokenizer", shared_data / "gpt2", "--disable_tqdm", "true", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, describe(result)
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "tinygpt" and config["vocab_size"] == 50304 and config["n_positions"] == 64
    tokenizer = tinygpt.AutoTokenizer.from_pretrained(output)
    assert len(tokenizer) == 50257 + 6  # GPT-2 plus the chat tokens
    chat_ids = tokenizer.convert_tokens_to_ids(tinygpt.SPECIAL_TOKENS)
    assert len(set(chat_ids)) == 6 and 50257 <= min(chat_ids) and max(chat_ids) < config["vocab_size"]
    assert config["eos_token_id"] == tokenizer.convert_tokens_to_ids("<EOS>")


def test_torchrun_two_cpu_processes_fine_tune_a_run_and_write_once(workdir, corpus, text_run):
    """DDP over gloo, fine-tuning the text run's model: only rank 0 prints the summary and writes the model."""
    _, source = text_run
    output = workdir / "ddp"
    result = run_train(
        *TINY_SCHEDULE, "--max_steps", "3", "--text_file", corpus[1], "--init_from", source, "--output_dir", output,
        "--disable_tqdm", "true", cwd=workdir, torchrun_processes=2,
    )  # fmt: skip
    assert result.returncode == 0, describe(result)
    assert result.stdout.count("saved to") == 1 and result.stdout.count("device: cpu") == 1
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["device"] == "2 x cpu, DDP" and metrics["tokens_seen"] == 3 * 4 * 2 * 32  # global batch: 2 x 4
    assert json.loads((output / "run_settings.json").read_text())["training"]["world_size"] == 2
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert (output / "vocab.json").read_text() == (source / "vocab.json").read_text()  # the model's own tokenizer
    assert f"fine-tuned from | {source}" in (output / "README.md").read_text()


def test_fsdp_off_a_gpu_is_one_clear_line(workdir, corpus):
    """accelerate shards only over GPUs: on CPUs --fsdp would train plain copies; it is refused instead."""
    result = run_train(*TINY, "--max_steps", "1", "--text_file", corpus[0], "--fsdp", "--use_cpu", cwd=workdir)
    assert result.returncode == 1 and "Traceback" not in result.stderr, describe(result)
    assert result.stderr.strip() == (
        "train.py: error: --fsdp shards the model over CUDA GPUs, and this run is on cpu; drop --fsdp "
        "(under torchrun the processes then train with DDP)."
    )
