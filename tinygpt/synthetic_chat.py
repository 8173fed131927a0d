"""The built-in corpus of bare `python train.py`: synthetic conversations with a held-out exam.

A seeded generator writes short chats from five task families:

    greeting    "hey tinygpt!"                     -> "Hello! How can I help?"
    identity    "quick question: who made you?"    -> "I was made with transformers."
    arithmetic  "what is 27 plus 48?"               -> "75"
    word        "what is the last letter of river?" -> "r"
    facts       "which city is the capital of peru?" -> "Lima"

Each family is a set of phrasings (templates) crossed with contents. The held-out questions are genuinely new
to the model, yet learnable from the training set:
- arithmetic holds out whole number pairs: no phrasing of "27 plus 48" is ever trained on, so the model must add;
- the other families hold out (phrasing, content) combinations: "which city is the capital of peru?" is never
  seen, but Lima is taught through other phrasings and "which city is ..." through other countries.
After training, `exact_match` asks the held-out questions with greedy decoding and scores the exact replies.
"""

import itertools
import random
from dataclasses import dataclass, field

import torch

SYSTEM_PROMPTS = ["You are tinygpt, a small helpful assistant.", "Answer briefly."]
SYSTEM_PROMPT_RATE = 0.2  # share of conversations that open with a system prompt
SECOND_TURN_RATE = 0.25  # share of training conversations with a second question


@dataclass(frozen=True)
class HeldOutQuestion:
    messages: list[dict]  # the prompt: an optional system turn and the user's question
    answer: str  # the exact reply expected (compared after stripping whitespace)
    family: str = field(default="")  # which task family it tests


@dataclass(frozen=True)
class _Example:
    question: str
    answer: str
    holdout_unit: str  # what holding this question out removes from training: itself, or (arithmetic) its number pair
    fact: str | None  # a fact the model can only learn from training data: keep it there in another phrasing


def _greetings() -> list[_Example]:
    openers = {
        "hi": "Hello! How can I help?",
        "hello": "Hello! How can I help?",
        "hey": "Hello! How can I help?",
        "hi there": "Hello! How can I help?",
        "good morning": "Good morning! How can I help?",
        "good evening": "Good evening! How can I help?",
        "good afternoon": "Good afternoon! How can I help?",
    }
    names = ["", " tinygpt", " friend", " bot"]
    endings = ["", "!", ".", "!!"]
    return [
        _Example(f"{cased}{name}{ending}", answer, f"{cased}{name}{ending}", answer)
        for (opener, answer), name, ending in itertools.product(openers.items(), names, endings)
        for cased in (opener, opener.capitalize())
    ]


def _identity() -> list[_Example]:
    intents = {
        "My name is tinygpt.": ["what is your name", "what's your name", "who are you", "what should i call you"],
        "I am a small language model.": ["what are you", "are you a human", "are you a person", "are you real"],
        "I was made with transformers.": ["who made you", "who built you", "who created you", "where do you come from"],
        "I can chat and do sums.": ["what can you do", "how can you help me", "what are you good at", "can you help"],
    }
    openers = ["", "hey, ", "tell me, ", "so ", "quick question: ", "ok, "]
    endings = ["?", "??", " ?"]
    return [
        _Example(f"{opener}{question}{ending}", answer, f"{opener}{question}{ending}", answer)
        for answer, questions in intents.items()
        for question, opener, ending in itertools.product(questions, openers, endings)
    ]


ARITHMETIC_MAX = 49  # operands range over 0..ARITHMETIC_MAX


def _arithmetic() -> list[_Example]:
    phrasings = {
        "+": ["what is {a} plus {b}?", "{a} + {b} = ?", "add {a} and {b}.", "compute {a}+{b}"],
        "-": ["what is {a} minus {b}?", "{a} - {b} = ?", "subtract {b} from {a}.", "compute {a}-{b}"],
    }
    examples = []
    for a, b in itertools.product(range(ARITHMETIC_MAX + 1), repeat=2):
        for op, templates in phrasings.items():
            if op == "-" and b > a:
                continue  # answers stay non-negative
            answer = str(a + b if op == "+" else a - b)
            examples += [_Example(t.format(a=a, b=b), answer, f"{a}{op}{b}", None) for t in templates]
    return examples


WORDS = (
    "apple bread chair dance eagle flame grape house juice knife lemon mouse night ocean piano queen river snake "
    "table uncle voice water youth zebra cloud storm plant stone green black white sugar honey tiger horse sheep "
    "train plane smile light sound paper pencil garden window rabbit bottle butter candle dragon forest guitar "
    "hammer island jacket kitten ladder magnet orange parrot rocket silver summer winter spring autumn cat dog sun "
    "sky sea map cup pen box fox owl bee ant egg ice"
).split()


def _word_tasks() -> list[_Example]:
    tasks = [
        (
            ["what is the first letter of {w}?", "first letter of {w}?", "which letter does {w} start with?"],
            lambda w: w[0],
        ),
        (
            ["what is the last letter of {w}?", "last letter of {w}?", "which letter does {w} end with?"],
            lambda w: w[-1],
        ),
        (
            ["how many letters are in {w}?", "how long is the word {w}?", "count the letters in {w}."],
            lambda w: str(len(w)),
        ),
        (["write {w} in capitals.", "uppercase {w}.", "shout {w}!"], str.upper),
        (["spell {w}.", "spell the word {w}.", "how do you spell {w}?"], lambda w: "-".join(w)),
    ]
    return [
        _Example(template.format(w=word), answer(word), template.format(w=word), None)
        for templates, answer in tasks
        for template in templates
        for word in WORDS
    ]


FACTS = {
    "capital": (
        ["what is the capital of {x}?", "name the capital of {x}.", "which city is the capital of {x}?", "capital of {x}?"],
        {
            "france": "Paris", "spain": "Madrid", "italy": "Rome", "germany": "Berlin", "japan": "Tokyo",
            "egypt": "Cairo", "peru": "Lima", "kenya": "Nairobi", "china": "Beijing", "russia": "Moscow",
            "greece": "Athens", "norway": "Oslo", "cuba": "Havana", "chile": "Santiago", "ireland": "Dublin",
            "poland": "Warsaw", "austria": "Vienna", "canada": "Ottawa", "india": "New Delhi", "portugal": "Lisbon",
        },
    ),
    "color": (
        ["what color is {x}?", "what colour is {x}?", "tell me the color of {x}.", "{x} is what color?"],
        {
            "the sky": "blue", "grass": "green", "snow": "white", "coal": "black", "a banana": "yellow",
            "a tomato": "red", "an orange": "orange", "a lemon": "yellow", "milk": "white", "a plum": "purple",
            "the sea": "blue", "a leaf": "green", "blood": "red", "chocolate": "brown", "the night": "black",
        },
    ),
    "opposite": (
        ["what is the opposite of {x}?", "opposite of {x}?", "give me the opposite of {x}.", "the opposite of {x} is?"],
        {
            "hot": "cold", "big": "small", "fast": "slow", "up": "down", "day": "night", "old": "young",
            "happy": "sad", "light": "dark", "open": "closed", "full": "empty", "early": "late", "hard": "soft",
            "high": "low", "wet": "dry", "left": "right", "in": "out", "win": "lose", "yes": "no", "near": "far",
        },
    ),
    "sound": (
        ["what sound does a {x} make?", "what does a {x} say?", "how does a {x} sound?", "a {x} says what?"],
        {"cow": "Moo", "dog": "Woof", "cat": "Meow", "duck": "Quack", "sheep": "Baa", "owl": "Hoot", "snake": "Hiss", "lion": "Roar"},
    ),
}  # fmt: skip


def _facts() -> list[_Example]:
    return [
        _Example(template.format(x=subject), answer, template.format(x=subject), f"{kind}:{subject}")
        for kind, (templates, table) in FACTS.items()
        for subject, answer in table.items()
        for template in templates
    ]


FAMILIES = {
    "greeting": _greetings,
    "identity": _identity,
    "arithmetic": _arithmetic,
    "word": _word_tasks,
    "facts": _facts,
}


def make_synthetic_chat(
    seed: int = 0, num_train: int = 20000, num_heldout: int = 200
) -> tuple[list[list[dict]], list[HeldOutQuestion]]:
    """(training conversations, held-out questions), the same for the same arguments.

    The held-out questions are spread evenly over the families; no held-out question appears in training.
    """
    rng = random.Random(seed)
    train_pools, heldout = {}, []
    for f, (family, make_examples) in enumerate(FAMILIES.items()):
        by_unit = {}  # hold-out unit -> its examples (arithmetic: every phrasing of one number pair)
        for example in make_examples():
            by_unit.setdefault(example.holdout_unit, []).append(example)
        count = num_heldout // len(FAMILIES) + (f < num_heldout % len(FAMILIES))
        held_units = _choose_heldout_units(by_unit, count, rng)
        train_pools[family] = [e for unit, examples in by_unit.items() if unit not in held_units for e in examples]
        for unit in held_units:
            example = rng.choice(by_unit[unit])
            prompt = _with_system_prompt([{"role": "user", "content": example.question}], rng)
            heldout.append(HeldOutQuestion(prompt, example.answer, family))
    families = list(train_pools)
    conversations = []
    for _ in range(num_train):
        messages = []
        for _turn in range(1 + (rng.random() < SECOND_TURN_RATE)):
            example = rng.choice(train_pools[rng.choice(families)])
            messages += [
                {"role": "user", "content": example.question},
                {"role": "assistant", "content": example.answer},
            ]
        conversations.append(_with_system_prompt(messages, rng))
    return conversations, heldout


def _choose_heldout_units(by_unit: dict[str, list[_Example]], count: int, rng: random.Random) -> list[str]:
    """`count` random hold-out units, skipping any that would take a fact's last phrasing out of training."""
    phrasings_left = {}  # fact -> how many of its phrasings are still in training
    for examples in by_unit.values():
        for e in examples:
            if e.fact is not None:
                phrasings_left[e.fact] = phrasings_left.get(e.fact, 0) + 1
    units = list(by_unit)
    rng.shuffle(units)
    held = []
    for unit in units:
        if len(held) == count:
            break
        facts = [e.fact for e in by_unit[unit] if e.fact is not None]
        if any(phrasings_left[fact] <= 1 for fact in facts):
            continue
        for fact in facts:
            phrasings_left[fact] -= 1
        held.append(unit)
    return held


def _with_system_prompt(messages: list[dict], rng: random.Random) -> list[dict]:
    if rng.random() < SYSTEM_PROMPT_RATE:
        return [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}, *messages]
    return messages


@torch.no_grad()
def exact_match(
    model, tokenizer, questions: list[HeldOutQuestion], max_new_tokens: int = 32, batch_size: int = 64
) -> float:
    """Fraction of `questions` whose greedy reply (the text before <EOS>, stripped) equals the answer exactly.

    Prompts are rendered with the chat template's generation prompt and batched with left padding, so every
    prompt ends where generation starts.
    """
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(questions), batch_size):
        batch = questions[start : start + batch_size]
        prompts = [tokenizer.apply_chat_template(q.messages, tokenize=False, add_generation_prompt=True) for q in batch]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        inputs = inputs.to(model.device)
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )  # (B, prompt + new)
        for question, reply_ids in zip(batch, output[:, inputs["input_ids"].shape[1] :].tolist(), strict=True):
            if tokenizer.eos_token_id in reply_ids:
                reply_ids = reply_ids[: reply_ids.index(tokenizer.eos_token_id)]
            correct += tokenizer.decode(reply_ids, skip_special_tokens=True).strip() == question.answer.strip()
    model.train(was_training)
    return correct / max(len(questions), 1)


__all__ = ["FAMILIES", "HeldOutQuestion", "exact_match", "make_synthetic_chat"]
