"""tinygpt.decoding.engine.Engine, the one decoding engine: generate()'s greedy tokens inside the window, one sliding rule
past it, batched requests that join and leave, sampling knobs, stops, cancelling, min_new_tokens."""

import shutil
import threading

import pytest
import torch
from torch import nn

from tests.tiny_models import ENGINE_CORPUS, tiny_model
from tinygpt import TinyGPTCharTokenizer
from tinygpt.decoding.engine import Engine, Request

N_POSITIONS = 48

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on a CPU needs g++")


@pytest.fixture(scope="module")
def model_and_prompt(tokenizer):
    return tiny_model(tokenizer, n_positions=N_POSITIONS), tokenizer.encode("the quick brown")


def generate_greedy(model, prompt, new_tokens):
    """HF's generate(), greedy, exactly new_tokens long (prompt + new_tokens must fit the window)."""
    ids = torch.tensor([prompt])
    out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return out[0, len(prompt) :].tolist()


def reference_sliding_greedy(model, prompt, new_tokens, stop_id=None):
    """The window rule as a plain loop without a cache: the context grows until it fills n_positions, then is cut
    to its last 3/4 and encoded again from position 0. `stop_id` is banned, as min_new_tokens does."""
    window, keep = model.config.n_positions, model.config.n_positions * 3 // 4
    tokens, start = list(prompt), max(0, len(prompt) - keep) if len(prompt) >= window else 0
    with torch.no_grad():
        for _ in range(new_tokens):
            if len(tokens) - start >= window:
                start = len(tokens) - keep
            logits = model(torch.tensor([tokens[start:]], device=model.device), use_cache=False).logits[0, -1]
            if stop_id is not None:
                logits[stop_id] = -float("inf")
            tokens.append(int(logits.argmax()))
    return tokens[len(prompt) :]


def test_greedy_tokens_equal_generate_inside_the_window(model_and_prompt):
    model, prompt = model_and_prompt
    new_tokens = N_POSITIONS - len(prompt)
    expected = generate_greedy(model, prompt, new_tokens)
    assert len(set(expected)) > 3  # the random model's text depends on its context: a real comparison
    assert list(Engine(model).stream(prompt, max_new_tokens=new_tokens)) == expected


@pytest.mark.parametrize("prompt_text", ["the", "the quick brown fox jumps over the lazy dog, the quick brown fox"])
def test_past_the_window_it_slides_like_a_cropping_loop(model_and_prompt, tokenizer, prompt_text):
    model, _ = model_and_prompt
    prompt = tokenizer.encode(prompt_text)  # the second is longer than the window
    expected = reference_sliding_greedy(model, prompt, 3 * N_POSITIONS)
    assert list(Engine(model).stream(prompt, max_new_tokens=3 * N_POSITIONS)) == expected


def test_min_new_tokens_bans_the_stop_tokens_until_then(model_and_prompt):
    model, prompt = model_and_prompt
    free = list(Engine(model).stream(prompt, max_new_tokens=30))
    stop = free[3]  # a token greedy decoding picks early
    engine = Engine(model)
    assert list(engine.stream(prompt, max_new_tokens=30, stop_ids=[stop])) == free[:3]
    banned = list(
        engine.stream(prompt, max_new_tokens=2 * N_POSITIONS, min_new_tokens=2 * N_POSITIONS, stop_ids=[stop])
    )
    assert banned == reference_sliding_greedy(model, prompt, 2 * N_POSITIONS, stop_id=stop)
    assert stop not in banned


def test_a_batch_of_requests_gives_each_its_own_tokens(model_and_prompt, tokenizer):
    model, prompt = model_and_prompt
    prompts = [prompt, tokenizer.encode("a lazy dog"), tokenizer.encode("0123"), tokenizer.encode("fox")]
    lengths = [25, 10, 60, 5]  # they finish at different steps; the third slides; slots are reused
    requests = [Request(p, max_new_tokens=n) for p, n in zip(prompts, lengths, strict=True)]
    outputs = Engine(model, max_batch=2).generate(requests)
    for request, output in zip(requests, outputs, strict=True):
        assert output == reference_sliding_greedy(model, request.prompt_ids, request.max_new_tokens)


def test_batched_requests_keep_their_own_sampling_settings(model_and_prompt):
    model, prompt = model_and_prompt
    greedy = list(Engine(model).stream(prompt, max_new_tokens=30))
    requests = [
        Request(prompt, max_new_tokens=30, temperature=5.0),  # sampled at a high temperature
        Request(prompt, max_new_tokens=30),  # greedy, in the same steps
        Request(prompt, max_new_tokens=30, temperature=5.0, top_k=1),  # sampled, but only the top token is left
    ]
    sampled, batched_greedy, top1 = Engine(model, max_batch=3).generate(requests)
    assert batched_greedy == greedy and top1 == greedy
    assert sampled != greedy


def test_sampling_knobs(model_and_prompt):
    model, prompt = model_and_prompt
    engine = Engine(model)
    greedy = list(engine.stream(prompt, max_new_tokens=30))
    assert list(engine.stream(prompt, max_new_tokens=30, temperature=1.5, top_k=1)) == greedy
    assert list(engine.stream(prompt, max_new_tokens=30, temperature=1.5, top_p=1e-6)) == greedy
    torch.manual_seed(7)
    sampled = list(engine.stream(prompt, max_new_tokens=30, temperature=1.5))
    torch.manual_seed(7)
    assert list(engine.stream(prompt, max_new_tokens=30, temperature=1.5)) == sampled  # seeded: reproducible
    assert sampled != greedy
    top3 = list(engine.stream(prompt, max_new_tokens=60, temperature=5.0, top_k=3))
    assert len(set(top3)) > 1  # still random, but every draw was among the 3 likeliest: check the first one
    logits = model(torch.tensor([prompt])).logits[0, -1]
    assert top3[0] in logits.topk(3).indices.tolist()


def test_several_steps_per_replay_give_the_same_tokens(model_and_prompt, tokenizer):
    """What CUDA does by default (8 steps per graph replay), on the CPU: tokens past a stop or max_new_tokens are
    dropped, so are a slot's steps past the window's end (it slides before its next replay), and sampling draws
    the same."""
    model, prompt = model_and_prompt
    prompts = [prompt, tokenizer.encode("a lazy dog"), tokenizer.encode("0123"), tokenizer.encode("fox")]
    stop = reference_sliding_greedy(model, prompt, 30)[6]
    requests = [
        Request(prompts[0], max_new_tokens=25, stop_ids=[stop]),  # stops inside a replay
        Request(prompts[1], max_new_tokens=3),  # ends inside its first replay
        Request(prompts[2], max_new_tokens=3 * N_POSITIONS + 5),  # slides three times
        Request(prompts[3], max_new_tokens=40, temperature=1.5, seed=3),
        Request(prompts[0], max_new_tokens=2 * N_POSITIONS, min_new_tokens=2 * N_POSITIONS, stop_ids=[stop]),
    ]
    one_at_a_time = Engine(model, max_batch=3).generate(requests)
    assert one_at_a_time[2] == reference_sliding_greedy(model, prompts[2], 3 * N_POSITIONS + 5)
    assert len(one_at_a_time[0]) == 6 and len(one_at_a_time[1]) == 3
    alone = reference_sliding_greedy(model, prompt, N_POSITIONS)
    for steps in (4, 7):
        engine = Engine(model, max_batch=3, steps_per_replay=steps)
        assert engine.generate(requests) == one_at_a_time, steps
        assert list(engine.stream(prompt, max_new_tokens=N_POSITIONS)) == alone
    event = threading.Event()
    stream = Engine(model, steps_per_replay=4).stream(prompt, max_new_tokens=30, stop_event=event)
    assert [next(stream), next(stream)] == alone[:2]
    event.set()
    assert list(stream) == []  # not the rest of the replay already read
    with pytest.raises(ValueError, match="steps_per_replay must be 1 or more"):
        Engine(model, steps_per_replay=0)
    with pytest.raises(ValueError, match=r"window \(n_positions=1\) must hold 2 positions"):
        Engine(tiny_model(tokenizer, n_positions=1))  # it would loop forever: no slide makes room
    with pytest.raises(ValueError, match="seed must be a 64-bit integer"):
        Request(prompt, seed=2**63)


def test_stop_event_and_cancelling_free_the_slot(model_and_prompt):
    model, prompt = model_and_prompt
    engine = Engine(model)
    greedy = list(engine.stream(prompt, max_new_tokens=30))
    event = threading.Event()
    stream = engine.stream(prompt, max_new_tokens=30, stop_event=event)
    assert [next(stream), next(stream)] == greedy[:2]
    event.set()
    assert list(stream) == []
    # The slot is free again: the same engine answers the next request from a clean cache.
    assert list(engine.stream(prompt, max_new_tokens=30)) == greedy


def test_one_run_at_a_time(model_and_prompt):
    model, prompt = model_and_prompt
    engine = Engine(model)
    first = engine.stream(prompt, max_new_tokens=5)
    next(first)
    with pytest.raises(RuntimeError, match="already decoding"):
        next(engine.stream(prompt, max_new_tokens=5))
    first.close()  # closing the stream ends its run
    assert len(list(engine.stream(prompt, max_new_tokens=5))) == 5


def test_bad_requests_are_clear_errors(model_and_prompt):
    model, _ = model_and_prompt
    with pytest.raises(ValueError, match="prompt is empty"):
        list(Engine(model).stream([], max_new_tokens=5))
    for temperature in (-1, 1e308):  # 1e308 would overflow the engine's float32 setting
        with pytest.raises(ValueError, match=r"temperature must be from 0 \(greedy\) to 100"):
            Request([1], temperature=temperature)


@pytest.mark.slow
@needs_compiler
def test_compiled_cpu_engine_gives_the_same_tokens(model_and_prompt):
    model, prompt = model_and_prompt
    engine = Engine(model, compile=True)  # inductor: 1-row matmuls as fused multiply-and-sums, C++ wrapper
    expected = reference_sliding_greedy(model, prompt, 3 * N_POSITIONS)
    assert list(engine.stream(prompt, max_new_tokens=3 * N_POSITIONS)) == expected  # sliding included
    top1 = engine.stream(prompt, max_new_tokens=3 * N_POSITIONS, temperature=1.5, top_k=1)  # the sampling step
    assert list(top1) == expected
    # A model of another shape in the same process: its compiled step is its own, not the first model's.
    other = tiny_model(TinyGPTCharTokenizer.from_corpus("a model of another shape"), n_positions=N_POSITIONS // 2)
    eager = list(Engine(other, compile=False).stream(prompt[:5], max_new_tokens=N_POSITIONS))
    assert list(Engine(other, compile=True).stream(prompt[:5], max_new_tokens=N_POSITIONS)) == eager


@pytest.mark.slow
@needs_compiler
def test_int8_engine_picks_what_fp32_would(model_and_prompt):
    model, prompt = model_and_prompt
    # A second model of the same shape, decoded in the same process: it reuses the compiled step (freezing
    # treats weights as constants), and must still decode with its own weights.
    same_shape = tiny_model(TinyGPTCharTokenizer.from_corpus(ENGINE_CORPUS), n_positions=N_POSITIONS, seed=1)
    new_tokens = N_POSITIONS - len(prompt)
    for fp32_model in (model, same_shape):
        engine = Engine(fp32_model, int8_weights=True)  # compiled by default: int8 is only fast compiled
        tokens = list(engine.stream(prompt, max_new_tokens=new_tokens))
        assert len(tokens) == new_tokens
        # The fp32 model's scores at every position where the int8 engine chose a token.
        logits = fp32_model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1]  # (new_tokens, V)
        chosen = logits.gather(-1, torch.tensor(tokens)[:, None])[:, 0]
        best, worst = logits.max(dim=-1).values, logits.min(dim=-1).values
        assert (chosen == best).float().mean() >= 0.9  # mostly fp32's own greedy choice...
        assert ((best - chosen) <= 0.02 * (best - worst)).all()  # ...and otherwise a near tie under fp32
    # The engine quantized a copy: the model itself is still fp32 with its nn.Linear layers.
    assert model.lm_head.weight.dtype == torch.float32 and isinstance(model.lm_head, nn.Linear)
    assert list(Engine(model).stream(prompt, max_new_tokens=20)) == generate_greedy(model, prompt, 20)


def test_int8_weights_need_a_compiled_cpu_engine(model_and_prompt):
    model, _ = model_and_prompt
    with pytest.raises(ValueError, match="int8_weights needs compiled decoding.*drop compile=False"):
        Engine(model, compile=False, int8_weights=True)
    with pytest.raises(ValueError, match="int8_weights is for decoding on a CPU, and the model is on meta"):
        Engine(tiny_model(TinyGPTCharTokenizer.from_corpus("abc")).to("meta"), int8_weights=True)


def test_cumulative_sum_in_blocks_is_cumsum():
    from tinygpt.decoding.sampling import cumulative_sum

    for width in (100, 256, 257, 50257):
        x = torch.rand(3, width, dtype=torch.float64)
        assert torch.allclose(cumulative_sum(x), x.cumsum(dim=-1)), width


def test_every_copy_in_flight_keeps_its_own_buffer():
    """The engine may have two replays and a prefill per joining request on their way to the host at once."""
    from tinygpt.decoding.cuda_graphs import HostCopies

    copies = HostCopies((2, 3), torch.device("cpu"))
    handles = [copies.start(torch.full((1 + i % 2, 3), i)) for i in range(6)]
    assert [copies.read(handle) for handle in handles] == [[[i] * 3] * (1 + i % 2) for i in range(6)]
    again = copies.start(torch.full((1, 3), 9))  # a read buffer is reused
    assert copies.read(again) == [[9, 9, 9]] and len(copies.spare) == 6
