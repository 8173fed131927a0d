"""The CUDA paths: the engine's compiled steps captured as CUDA graphs, bf16 placement, and bf16 training steps
(eager and compiled) through train.py. Marked `cuda`; they skip, saying so, where torch sees no CUDA device.

Run them on a GPU machine with `python -m pytest -m cuda tests/test_gpu.py`.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_engine import reference_sliding_greedy
from tests.tiny_models import ENGINE_CORPUS, tiny_model
from tinygpt.decoding.chat import ChatModel, DecodingOptions
from tinygpt.decoding.engine import Engine, Request
from tinygpt.decoding.scheduler import Scheduler
from tinygpt.training.fused_loss import liger_installed

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

REPO = Path(__file__).resolve().parent.parent
N_POSITIONS = 48


@pytest.fixture(scope="module")
def fp32_model(tokenizer):
    return tiny_model(tokenizer, n_positions=N_POSITIONS).to("cuda")


def test_cuda_graph_engine_gives_the_plain_loops_tokens(fp32_model, tokenizer):
    prompt = tokenizer.encode("the quick brown")
    engine = Engine(fp32_model)  # on CUDA: compiled, each step one CUDA graph, prefill a padded graph
    assert engine.compiled
    inside = N_POSITIONS - len(prompt)
    generated = fp32_model.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=inside, do_sample=False)
    assert list(engine.stream(prompt, max_new_tokens=inside)) == generated[0, len(prompt) :].tolist()
    expected = reference_sliding_greedy(fp32_model, prompt, 3 * N_POSITIONS)
    assert list(engine.stream(prompt, max_new_tokens=3 * N_POSITIONS)) == expected  # slides twice
    top1 = engine.stream(prompt, max_new_tokens=3 * N_POSITIONS, temperature=1.5, top_k=1)  # the sampled graph
    assert list(top1) == expected


def test_cuda_graph_engine_batches_requests_that_join_and_leave(fp32_model, tokenizer):
    prompts = [tokenizer.encode(text) for text in ("the quick", "a lazy dog", "0123", "fox", "over the")]
    lengths = [30, 8, 70, 3, 20]
    requests = [Request(p, max_new_tokens=n) for p, n in zip(prompts, lengths, strict=True)]
    outputs = Engine(fp32_model, max_batch=2).generate(requests)
    for request, output in zip(requests, outputs, strict=True):
        assert output == reference_sliding_greedy(fp32_model, request.prompt_ids, request.max_new_tokens)


def test_prefill_spans_give_generates_greedy_tokens(tokenizer):
    """A prompt is encoded right-padded to the shortest span that holds it (64, 128, 160 for a 160-token window):
    each span's graph gives generate()'s greedy tokens."""
    model = tiny_model(tokenizer, n_positions=160).to("cuda")
    engine = Engine(model)
    assert engine.prompt_spans == [64, 128, 160]
    text = tokenizer.encode(ENGINE_CORPUS * 4)
    for length in (5, 64, 65, 130):  # spans 64, 64, 128, 160
        prompt = text[:length]
        expected = model.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=12, do_sample=False)
        assert list(engine.stream(prompt, max_new_tokens=12)) == expected[0, length:].tolist(), length


def test_decoding_waits_for_the_device_only_to_read_tokens(fp32_model, tokenizer):
    """Once warmed up, admitting requests (settings, stop tokens, prefill) and replaying steps never synchronize
    with the device: a sync there stalls the replays in flight. torch's sync debug mode raises on any."""
    engine = Engine(fp32_model, max_batch=4)
    engine.warm_up()
    prompts = [tokenizer.encode(text) for text in ("the quick", "a lazy dog", "0123", "fox", "over the")]
    stop = tokenizer.encode("o")
    requests = [
        Request(p, max_new_tokens=20, min_new_tokens=3, stop_ids=stop, temperature=0.9, top_p=0.9, seed=i)
        for i, p in enumerate(prompts)
    ]
    expected = engine.generate(requests)
    torch.cuda.set_sync_debug_mode("error")
    try:
        assert engine.generate(requests) == expected
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_scheduler_on_cuda_graph_buckets_serves_threads_like_the_plain_loop(fp32_model, tokenizer):
    import threading

    scheduler = Scheduler(Engine(fp32_model, max_batch=4))  # buckets 1, 2, 4: one graph each and step kind
    prompts = [tokenizer.encode(text) for text in ("the quick", "a lazy dog", "0123", "fox", "over the", "jumps")]
    outputs = [None] * len(prompts)

    def ask(i):
        outputs[i] = list(scheduler.stream(Request(prompts[i], max_new_tokens=20 + 7 * i)))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    scheduler.close()
    for i, prompt in enumerate(prompts):
        assert outputs[i] == reference_sliding_greedy(fp32_model, prompt, 20 + 7 * i), i


def test_auto_placement_is_bf16_on_the_gpu_and_chat_streams(tokenizer):
    model = tiny_model(tokenizer, n_positions=N_POSITIONS)  # on the CPU, fp32
    chat = ChatModel(model, tokenizer, DecodingOptions())
    assert chat.model.device.type == "cuda" and chat.model.dtype == torch.bfloat16
    replies = list(chat.stream_reply([{"role": "user", "content": "the quick"}], temperature=0, max_new_tokens=20))
    assert replies and all(later.startswith(earlier) for earlier, later in zip(replies, replies[1:], strict=False))
    sampled = list(chat.stream_reply([{"role": "user", "content": "the"}], temperature=1.0, max_new_tokens=20))
    assert sampled


def loss_and_gradients(model, input_ids, labels, **loss_kwargs):
    model.zero_grad()
    with torch.autocast("cuda", torch.bfloat16):
        loss = model(input_ids, labels=labels, **loss_kwargs).loss
    loss.backward()
    return loss.detach().float(), {name: p.grad.float().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("counted", [False, True], ids=["mean", "num_items_in_batch"])
def test_liger_fused_loss_gives_the_plain_loss_and_gradients(counted):
    """Liger's fused linear cross-entropy (the default on CUDA with the `gpu` extra) against transformers' plain
    loss, in bf16 autocast: GPT-2's vocabulary, so the rows go through Liger's kernel in many chunks, labels with
    ignored positions, the Trainer's num_items_in_batch or a plain mean."""
    pytest.importorskip("liger_kernel", reason="the fused loss needs Liger Kernel: pip install 'tinygpt[gpu]'")
    from tinygpt import TinyGPTConfig, TinyGPTForCausalLM
    from tinygpt.training.fused_loss import liger_causal_lm_loss

    torch.manual_seed(0)
    config = TinyGPTConfig(vocab_size=50304, n_positions=256, n_embd=128, n_layer=2, n_head=4)
    model = TinyGPTForCausalLM(config).cuda().train()
    input_ids = torch.randint(0, 50257, (8, 256), device="cuda")
    labels = input_ids.clone()
    labels[0, :100] = -100  # a prompt that is not learned
    labels[3, 200:] = -100
    loss_kwargs = {"num_items_in_batch": (labels[:, 1:] != -100).sum()} if counted else {}
    plain_loss, plain_grads = loss_and_gradients(model, input_ids, labels, **loss_kwargs)
    model.fused_linear_loss = liger_causal_lm_loss
    fused_loss, fused_grads = loss_and_gradients(model, input_ids, labels, **loss_kwargs)
    torch.testing.assert_close(fused_loss, plain_loss, rtol=2e-3, atol=0)
    for name, grad in plain_grads.items():
        assert grad.abs().sum() > 0, name
        relative_error = (fused_grads[name] - grad).norm() / grad.norm()
        assert relative_error < 2e-2, (name, float(relative_error))  # bf16 logits on both sides


@pytest.mark.parametrize(
    "compile_flags",
    [[], ["--torch_compile"], ["--torch_compile", "--use_liger_kernel", "true"]],
    ids=["eager", "compiled", "compiled-fused-loss"],
)
def test_bf16_training_steps_on_the_gpu(tmp_path, compile_flags):
    if "--use_liger_kernel" in compile_flags:
        pytest.importorskip("liger_kernel", reason="the fused loss needs Liger Kernel: pip install 'tinygpt[gpu]'")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((ENGINE_CORPUS + "\n") * 400, encoding="utf-8")
    output_dir = tmp_path / "run"
    command = [sys.executable, str(REPO / "train.py"), "--text_file", str(corpus), "--output_dir", str(output_dir)]
    command += ["--n_layer", "2", "--n_head", "2", "--n_embd", "64", "--block_size", "32"]
    command += ["--max_steps", "60", "--eval_steps", "30", "--logging_steps", "10", "--bf16", *compile_flags]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["device"] == "cuda" and metrics["precision"] == "bf16", metrics
    assert metrics["val_loss"] < 2.5, metrics  # a 40-character corpus, learned well past uniform (ln 40 = 3.7)
    if liger_installed():  # the fused loss only where asked: a char vocabulary
        fused = "--use_liger_kernel" in compile_flags
        assert ("loss: Liger Kernel's fused linear cross-entropy" in result.stdout) == fused, result.stdout[:2000]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP needs 2 CUDA GPUs")
def test_fsdp_on_two_gpus_saves_whole_weights_and_resumes(tmp_path):
    """`torchrun --nproc_per_node=2 train.py --fsdp`: the Trainer shards the model through accelerate, the saved
    model holds whole weights, and a resumed run ends where the uninterrupted one did."""
    from transformers import AutoModelForCausalLM

    corpus = tmp_path / "corpus.txt"
    corpus.write_text((ENGINE_CORPUS + "\n") * 400, encoding="utf-8")
    output = tmp_path / "fsdp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [str(REPO / "train.py"), "--text_file", str(corpus), "--output_dir", str(output), "--fsdp"]
    command += ["--n_layer", "2", "--n_head", "2", "--n_embd", "64", "--block_size", "32", "--torch_compile", "False"]
    command += ["--max_steps", "20", "--eval_steps", "10", "--save_steps", "10", "--logging_steps", "10"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    whole = json.loads((output / "metrics.json").read_text())
    assert whole["device"] == "2 x cuda, FSDP" and whole["global_step"] == 20, whole
    assert AutoModelForCausalLM.from_pretrained(output).num_parameters() == whole["parameters"]
    shutil.rmtree(output / "checkpoint-20")
    resumed = subprocess.run(
        command + ["--resume_from_checkpoint", str(output / "checkpoint-10")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((output / "metrics.json").read_text())["val_loss"] == pytest.approx(whole["val_loss"], abs=1e-3)
