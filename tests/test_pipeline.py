"""A saved folder works with transformers' own serving pieces: `pipeline("text-generation")` for plain prompts and
chat messages, and `TextIteratorStreamer` fed by generate() in a background thread."""

from threading import Thread

import pytest
from transformers import TextIteratorStreamer, pipeline

from tests.tiny_models import save_tiny_model
from tinygpt import TinyGPTCharTokenizer, TinyGPTForCausalLM

CORPUS = "O Romeo, Romeo! wherefore art thou Romeo?\nDeny thy father and refuse thy name.\n"
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who is Romeo?"}]
GREEDY = {"max_new_tokens": 40, "min_new_tokens": 40, "do_sample": False}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(folder, model, tokenizer). vocab_size = len(tokenizer) so that every sampled id decodes to a character."""
    tokenizer = TinyGPTCharTokenizer.from_corpus(CORPUS)
    folder = tmp_path_factory.mktemp("pipeline") / "model"
    model = save_tiny_model(folder, tokenizer, n_positions=128, vocab_size=len(tokenizer))
    return folder, model, tokenizer


def test_text_generation_pipeline_on_a_string_prompt(saved):
    folder, model, tokenizer = saved
    generator = pipeline("text-generation", model=str(folder))
    assert type(generator.model) is TinyGPTForCausalLM

    [result] = generator("O Romeo", **GREEDY)

    inputs = tokenizer("O Romeo", return_tensors="pt")
    expected = tokenizer.decode(model.generate(**inputs, **GREEDY)[0], skip_special_tokens=True)
    assert result["generated_text"] == expected
    assert result["generated_text"].startswith("O Romeo") and len(expected) > len("O Romeo") + 10


def test_text_generation_pipeline_on_chat_messages(saved):
    folder, model, tokenizer = saved
    generator = pipeline("text-generation", model=str(folder))

    [result] = generator(CONVERSATION, **GREEDY)

    *history, reply = result["generated_text"]
    assert history == CONVERSATION and reply["role"] == "assistant"
    prompt = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, return_tensors="pt")
    new_tokens = model.generate(**prompt, **GREEDY)[0, prompt["input_ids"].shape[1] :]
    assert reply["content"] == tokenizer.decode(new_tokens, skip_special_tokens=True)
    assert reply["content"]


def test_text_iterator_streamer_streams_the_same_text_as_generate(saved):
    _, model, tokenizer = saved
    inputs = tokenizer("O Romeo", return_tensors="pt")
    expected = tokenizer.decode(model.generate(**inputs, **GREEDY)[0, inputs.input_ids.shape[1] :])

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=60)
    thread = Thread(target=model.generate, kwargs={**inputs, **GREEDY, "streamer": streamer})
    thread.start()
    pieces = list(streamer)  # blocks on each piece as the thread produces it
    thread.join()

    assert "".join(pieces) == expected
    assert len([piece for piece in pieces if piece]) > 1, "the text should arrive in several pieces"
