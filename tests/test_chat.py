"""tinygpt.decoding.chat: prompts through the chat template, trimming to the window, streaming, stopping."""

import threading
from itertools import pairwise

import pytest

from tests.chat_fixtures import CONVERSATIONS, N_POSITIONS, trained_chat_model
from tinygpt import TinyGPTCharTokenizer
from tinygpt.app.models import read_eval_loss
from tinygpt.decoding.chat import ChatModel, DecodingOptions, build_prompt
from tinygpt.hub.checks import load_model_and_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return TinyGPTCharTokenizer.from_corpus("abcdefghijklmnopqrstuvwxyz0123456789 ?!.,")


@pytest.fixture(scope="module")
def chat_model():
    return ChatModel(*load_model_and_tokenizer(trained_chat_model()), DecodingOptions(device="cpu"))


def render(tokenizer, ids) -> str:
    return tokenizer.decode(ids)


def test_prompt_is_the_chat_template_with_generation_prompt(tokenizer):
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "hello!"}]},  # as the browser sends it
        {"role": "user", "content": "how are you?"},
    ]
    ids = build_prompt(tokenizer, messages, system_prompt="be kind.", max_prompt_tokens=1000)
    assert (
        render(tokenizer, ids)
        == "<BOS>be kind.<EOS><user>:hi<EOS><assistant>:hello!<EOS><user>:how are you?<EOS><assistant>:"
    )


def test_long_history_drops_oldest_turns_and_starts_with_a_user_turn(tokenizer):
    messages = []
    for i in range(200):
        messages += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    messages.append({"role": "user", "content": "last question"})
    ids = build_prompt(tokenizer, messages, system_prompt="sys", max_prompt_tokens=60)
    text = render(tokenizer, ids)
    assert len(ids) <= 60
    assert text.startswith("<BOS>sys<EOS><user>:")  # system kept, first kept turn is a question
    assert text.endswith("<user>:last question<EOS><assistant>:")
    assert "question 199" in text and "question 0<" not in text  # the newest turns survive


def test_single_overlong_message_is_cut_from_the_left(tokenizer):
    message = "a" * 500 + "the end?"
    ids = build_prompt(tokenizer, [{"role": "user", "content": message}], system_prompt="sys", max_prompt_tokens=40)
    text = render(tokenizer, ids)
    assert len(ids) == 40
    assert text.startswith("<BOS><user>:a") and text.endswith("the end?<EOS><assistant>:")  # system prompt gave way
    assert build_prompt(tokenizer, [{"role": "user", "content": message}], max_prompt_tokens=0)  # never raises


def test_stream_reply_is_cumulative_and_learned(chat_model):
    partials = list(chat_model.stream_reply([{"role": "user", "content": "hi"}], temperature=0))
    assert len(partials) >= 3  # token by token, not one block
    assert all(later.startswith(earlier) for earlier, later in pairwise(partials))
    assert partials[-1] == "hello!"


def test_greedy_replies_to_every_trained_question_in_a_multi_turn_chat(chat_model):
    messages = []
    for question, answer in CONVERSATIONS:
        messages.append({"role": "user", "content": question})
        *_, reply = chat_model.stream_reply(messages, temperature=0, max_new_tokens=40)
        assert reply == answer
        messages.append({"role": "assistant", "content": reply})


def test_sampling_knobs_reach_the_engine(chat_model):
    hi = [{"role": "user", "content": "hi"}]
    *_, top1 = chat_model.stream_reply(hi, temperature=1.5, top_k=1)  # top-1 sampling is greedy
    *_, nucleus = chat_model.stream_reply(hi, temperature=1.5, top_p=1e-6)  # so is a tiny nucleus
    *_, short = chat_model.stream_reply(hi, temperature=0, max_new_tokens=3)
    assert top1 == nucleus == "hello!"
    assert short == "hel"  # one character per token


def test_history_longer_than_the_window_never_errors(chat_model):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}] * 40
    messages.append({"role": "user", "content": "bye"})
    *_, reply = chat_model.stream_reply(messages, temperature=0, max_new_tokens=N_POSITIONS)
    assert reply == "goodbye!"


def test_stop_event_ends_generation_early(chat_model):
    stop = threading.Event()
    stop.set()  # already pressed: no token comes out
    *_, reply = chat_model.stream_reply([{"role": "user", "content": "how are you?"}], temperature=0, stop_event=stop)
    assert len(reply) <= 1


def test_a_closed_stream_cancels_its_request_and_frees_its_slot(chat_model):
    assert chat_model.engine.max_batch == 1  # one slot: the next reply needs this one's
    # A reply that would go on for 5000 tokens (no <EOS> before then).
    stream = chat_model.stream_reply(
        [{"role": "user", "content": "zzz"}], temperature=2.0, max_new_tokens=5000, min_new_tokens=5000
    )
    next(stream)
    stream.close()  # what Gradio does when the user presses stop or leaves
    replies = []
    waiter = threading.Thread(
        target=lambda: replies.append(list(chat_model.stream_reply([{"role": "user", "content": "hi"}]))[-1]),
        daemon=True,
    )
    waiter.start()
    waiter.join(timeout=10)
    assert replies == ["hello!"]  # at once, and greedy: the model's generation_config is greedy


def test_replies_start_from_the_models_generation_config(chat_model):
    assert chat_model.defaults["temperature"] == 0 and chat_model.defaults["max_new_tokens"] == 256


def test_eval_loss_is_read_from_the_training_metrics():
    assert 0 < read_eval_loss(trained_chat_model()) < 1  # all_results.json written by Trainer.save_metrics
