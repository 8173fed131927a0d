"""The exam after training on the synthetic chat corpus: the share of held-out questions answered exactly, decoded
greedily by the engine. It lives with training, not with the corpus, because it decodes.
"""

from tinygpt.data.synthetic_chat import HeldOutQuestion
from tinygpt.decoding.engine import Engine
from tinygpt.decoding.request import Request


def exact_match(
    model, tokenizer, questions: list[HeldOutQuestion], max_new_tokens: int = 32, batch_size: int = 64
) -> float:
    """Fraction of `questions` whose greedy reply (the text before <EOS>, stripped) equals the answer exactly.

    Prompts are rendered with the chat template's generation prompt and decoded `batch_size` at a time by the
    engine, on the model's own device.
    """
    was_training = model.training
    engine = Engine(model, max_batch=max(1, min(batch_size, len(questions))), compile=False)
    requests = [
        Request(
            tokenizer.apply_chat_template(q.messages, add_generation_prompt=True, tokenize=True, return_dict=False),
            max_new_tokens=max_new_tokens,
            stop_ids=[tokenizer.eos_token_id],
        )
        for q in questions
    ]
    replies = engine.generate(requests)
    model.train(was_training)
    correct = sum(
        tokenizer.decode(reply, skip_special_tokens=True).strip() == question.answer.strip()
        for question, reply in zip(questions, replies, strict=True)
    )
    return correct / max(len(questions), 1)
