"""FastDecoder, the chat decoding loop: the same tokens as generate(), and the knobs a chat needs."""

import shutil
import threading

import pytest
import torch
from torch import nn

from tests.tiny_models import tiny_model
from tinygpt import TinyGPTCharTokenizer
from tinygpt.decoding import FastDecoder

N_POSITIONS = 48


CORPUS = "the quick brown fox jumps over the lazy dog 0123456789"


@pytest.fixture(scope="module")
def model_and_prompt():
    tokenizer = TinyGPTCharTokenizer.from_corpus(CORPUS)
    model = tiny_model(tokenizer, n_positions=N_POSITIONS)
    return model, tokenizer.encode("the quick brown")


def generate_greedy(model, prompt, new_tokens):
    ids = torch.tensor([prompt])
    out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("new_tokens", [20, 3 * N_POSITIONS])  # inside the window, and sliding past it twice
def test_greedy_tokens_equal_generate(model_and_prompt, new_tokens):
    model, prompt = model_and_prompt
    expected = generate_greedy(model, prompt, new_tokens)
    assert len(set(expected)) > 3  # the random model's text depends on its context: a real comparison
    assert list(FastDecoder(model).stream(prompt, max_new_tokens=new_tokens)) == expected


needs_compiler = pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on a CPU needs g++")


@needs_compiler
def test_compiled_cpu_decoder_gives_the_same_tokens(model_and_prompt):
    model, prompt = model_and_prompt
    decoder = FastDecoder(model, compile=True)  # inductor: 1-row matmuls as fused multiply-and-sums, C++ wrapper
    expected = generate_greedy(model, prompt, 3 * N_POSITIONS)
    assert list(decoder.stream(prompt, max_new_tokens=3 * N_POSITIONS)) == expected  # sliding included
    top1 = decoder.stream(prompt, max_new_tokens=3 * N_POSITIONS, temperature=1.5, top_k=1)  # the sampling step
    assert list(top1) == expected
    # A model of another shape in the same process: its compiled step is its own, not the first model's.
    other = tiny_model(TinyGPTCharTokenizer.from_corpus("a model of another shape"), n_positions=N_POSITIONS // 2)
    eager = list(FastDecoder(other, compile=False).stream(prompt[:5], max_new_tokens=N_POSITIONS))
    assert list(FastDecoder(other, compile=True).stream(prompt[:5], max_new_tokens=N_POSITIONS)) == eager


@needs_compiler
def test_int8_decoder_picks_what_fp32_would(model_and_prompt):
    model, prompt = model_and_prompt
    # A second model of the same shape, decoded in the same process: it reuses the compiled step (freezing
    # treats weights as constants), and must still decode with its own weights.
    same_shape = tiny_model(TinyGPTCharTokenizer.from_corpus(CORPUS), n_positions=N_POSITIONS, seed=1)
    new_tokens = N_POSITIONS - len(prompt)
    for fp32_model in (model, same_shape):
        decoder = FastDecoder(fp32_model, int8_weights=True)  # compiled by default: int8 is only fast compiled
        tokens = list(decoder.stream(prompt, max_new_tokens=new_tokens))
        assert len(tokens) == new_tokens
        # The fp32 model's scores at every position where the int8 decoder chose a token.
        logits = fp32_model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1]  # (new_tokens, V)
        chosen = logits.gather(-1, torch.tensor(tokens)[:, None])[:, 0]
        best, worst = logits.max(dim=-1).values, logits.min(dim=-1).values
        assert (chosen == best).float().mean() >= 0.9  # mostly fp32's own greedy choice...
        assert ((best - chosen) <= 0.02 * (best - worst)).all()  # ...and otherwise a near tie under fp32
    # The decoder quantized a copy: the model itself is still fp32 with its nn.Linear layers.
    assert model.lm_head.weight.dtype == torch.float32 and isinstance(model.lm_head, nn.Linear)
    assert list(FastDecoder(model).stream(prompt, max_new_tokens=20)) == generate_greedy(model, prompt, 20)


def test_int8_weights_need_a_compiled_cpu_decoder(model_and_prompt):
    model, _ = model_and_prompt
    with pytest.raises(ValueError, match="int8_weights needs compiled decoding.*drop compile=False"):
        FastDecoder(model, compile=False, int8_weights=True)
    with pytest.raises(ValueError, match="int8_weights is for decoding on a CPU, and the model is on meta"):
        FastDecoder(tiny_model(TinyGPTCharTokenizer.from_corpus("abc")).to("meta"), int8_weights=True)


def test_one_decoder_serves_request_after_request(model_and_prompt):
    model, prompt = model_and_prompt
    decoder = FastDecoder(model)
    first = list(decoder.stream(prompt, max_new_tokens=30))
    list(decoder.stream(prompt[::-1], max_new_tokens=30))  # another conversation in between
    assert list(decoder.stream(prompt, max_new_tokens=30)) == first  # the cache was reset, not reused


def test_sampling_knobs(model_and_prompt):
    model, prompt = model_and_prompt
    decoder = FastDecoder(model)
    greedy = list(decoder.stream(prompt, max_new_tokens=30))
    assert list(decoder.stream(prompt, max_new_tokens=30, temperature=1.5, top_k=1)) == greedy
    assert list(decoder.stream(prompt, max_new_tokens=30, temperature=1.5, top_p=1e-6)) == greedy
    torch.manual_seed(7)
    sampled = list(decoder.stream(prompt, max_new_tokens=30, temperature=1.5))
    torch.manual_seed(7)
    assert list(decoder.stream(prompt, max_new_tokens=30, temperature=1.5)) == sampled  # seeded: reproducible
    assert sampled != greedy
    top3 = list(decoder.stream(prompt, max_new_tokens=60, temperature=5.0, top_k=3))
    assert len(set(top3)) > 1  # still random, but every draw was among the 3 likeliest: check the first one
    logits = model(torch.tensor([prompt])).logits[0, -1]
    assert top3[0] in logits.topk(3).indices.tolist()


def test_stops(model_and_prompt):
    model, prompt = model_and_prompt
    decoder = FastDecoder(model)
    greedy = list(decoder.stream(prompt, max_new_tokens=30))
    stop = greedy[10]
    assert list(decoder.stream(prompt, max_new_tokens=30, stop_ids=[stop])) == greedy[: greedy.index(stop)]
    event = threading.Event()
    stream = decoder.stream(prompt, max_new_tokens=30, stop_event=event)
    assert [next(stream), next(stream)] == greedy[:2]
    event.set()
    assert list(stream) == []


def test_empty_prompt_is_a_clear_error(model_and_prompt):
    model, _ = model_and_prompt
    with pytest.raises(ValueError, match="prompt is empty"):
        list(FastDecoder(model).stream([], max_new_tokens=5))
