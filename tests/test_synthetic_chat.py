"""The built-in synthetic chat corpus: deterministic, every family present, held-out questions new but learnable,
and `exact_match` agreeing with greedy decoding done by hand on a real (random) model."""

import pytest
import torch

from tinygpt import TinyGPTConfig, TinyGPTForCausalLM
from tinygpt.data.synthetic_chat import FAMILIES, PREFIXES, HeldOutQuestion, make_synthetic_chat
from tinygpt.data.tokenizers import build_tokenizer
from tinygpt.training.exam import exact_match


@pytest.fixture(scope="module")
def corpus():
    return make_synthetic_chat(seed=0)


def user_questions(conversations):
    return [m["content"] for c in conversations for m in c if m["role"] == "user"]


def test_same_seed_same_corpus_other_seed_other_corpus():
    first = make_synthetic_chat(seed=3, num_train=300, num_heldout=25)
    assert first == make_synthetic_chat(seed=3, num_train=300, num_heldout=25)
    other = make_synthetic_chat(seed=4, num_train=300, num_heldout=25)
    assert other[0] != first[0] and other[1] != first[1]
    assert len(first[0]) == 300 and len(first[1]) == 25


def test_conversations_are_well_formed(corpus):
    conversations, heldout = corpus
    for messages in conversations:
        roles = [m["role"] for m in messages if m["role"] != "system"]
        assert roles in (["user", "assistant"], ["user", "assistant"] * 2)
        assert all(m["content"] for m in messages)
    assert any(c[0]["role"] == "system" for c in conversations)  # some open with a system prompt
    for question in heldout:
        assert question.messages[-1]["role"] == "user" and question.answer


def test_every_family_is_in_the_exam_in_equal_shares(corpus):
    _, heldout = corpus
    assert [q.family for q in heldout].count("arithmetic") == 40
    assert {q.family: [h.family for h in heldout].count(q.family) for q in heldout} == dict.fromkeys(FAMILIES, 40)


def test_heldout_questions_never_appear_in_training(corpus):
    conversations, heldout = corpus
    trained = set(user_questions(conversations))
    assert not [q.messages[-1]["content"] for q in heldout if q.messages[-1]["content"] in trained]


def core(question: str) -> str:
    """The bare question: no lead-in, lower case, no final "!" or "." (greetings vary those)."""
    question = question.lower()
    for prefix in sorted(PREFIXES, key=len, reverse=True):
        if prefix and question.startswith(prefix):
            question = question[len(prefix) :]
            break
    return question.rstrip("!.")


def test_each_heldout_answer_is_taught_under_other_wording(corpus):
    conversations, heldout = corpus
    taught = {}  # core question -> the replies training gives to it
    for messages in conversations:
        for question, reply in zip(messages, messages[1:], strict=False):
            if reply["role"] == "assistant":
                taught.setdefault(core(question["content"]), set()).add(reply["content"])
    for question in heldout:
        assert taught.get(core(question.messages[-1]["content"])) == {question.answer}, question


def test_the_char_vocabulary_of_training_covers_the_exam(corpus):
    conversations, heldout = corpus
    trained_chars = {char for c in conversations for m in c for char in m["content"]}
    exam_chars = {char for q in heldout for m in q.messages for char in m["content"] + q.answer}
    assert exam_chars <= trained_chars


def greedy_reply(model, tokenizer, messages, max_new_tokens):
    """Greedy decoding by hand: full forward each step, no cache, no padding, no generate()."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    reply = []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            next_id = int(model(torch.tensor([ids + reply])).logits[0, -1].argmax())
        if next_id == tokenizer.eos_token_id:
            break
        reply.append(next_id)
    return tokenizer.decode(reply, skip_special_tokens=True).strip()


def test_exact_match_agrees_with_greedy_decoding_by_hand(corpus):
    conversations, heldout = corpus
    tokenizer = build_tokenizer("char", [m["content"] for c in conversations for m in c])
    config = TinyGPTConfig(
        vocab_size=128,
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        initializer_range=0.3,  # a random model with clear preferences: greedy choices are not near-ties
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = TinyGPTForCausalLM(config).eval()
    questions = heldout[::20]  # 10 prompts of different lengths, some with a system turn
    replies = [greedy_reply(model, tokenizer, q.messages, max_new_tokens=12) for q in questions]
    assert len(set(replies)) > 3  # the hand-decoded replies differ, so the check below is not vacuous

    right = [HeldOutQuestion(q.messages, reply, q.family) for q, reply in zip(questions, replies, strict=True)]
    assert exact_match(model, tokenizer, right, max_new_tokens=12, batch_size=4) == 1.0
    half_wrong = [HeldOutQuestion(q.messages, q.answer + "x" if i % 2 else q.answer) for i, q in enumerate(right)]
    assert exact_match(model, tokenizer, half_wrong, max_new_tokens=12, batch_size=3) == 0.5
    assert exact_match(model, tokenizer, heldout[:10], max_new_tokens=12) == 0.0  # an untrained model knows nothing
