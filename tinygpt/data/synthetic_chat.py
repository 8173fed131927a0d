"""The built-in corpus of bare `python train.py`: synthetic conversations with a held-out exam.

A seeded generator writes short chats from five task families, 660 core questions in all:

    greeting    "hi tinygpt"                        -> "Hello! How can I help?"
    identity    "who made you?"                     -> "I was made with transformers."
    arithmetic  "add 6 and 7."                      -> "13"
    word        "how do you spell river?"           -> "r-i-v-e-r"
    facts       "what is the capital of peru?"      -> "Lima"

Users dress each core question up: a lead-in ("quick question: ", "tinygpt, ", ...), a capital first letter, and
for greetings the punctuation. The held-out questions are dressed questions that never occur in training,
whose core does occur there under other dress: "Tinygpt, add 6 and 7." is new, but the sum is taught by
"add 6 and 7." and "so add 6 and 7.", and the lead-in by other questions. So the exam asks whether the model
learned the facts and operations apart from their wording, at a scale a small character model learns quickly
on a CPU (the "tiny" preset; the README has the measured figures).
After training, `exact_match` asks the held-out questions with greedy decoding and scores the exact replies.
"""

import itertools
import random
from dataclasses import dataclass, field

SYSTEM_PROMPTS = ["You are tinygpt.", "Answer briefly."]
SYSTEM_PROMPT_RATE = 0.1  # share of conversations that open with a system prompt
SECOND_TURN_RATE = 0.1  # share of training conversations with a second question
PREFIXES = ["", "hey, ", "ok, ", "so ", "quick question: ", "tinygpt, ", "please, "]  # how users lead into a question


@dataclass(frozen=True)
class HeldOutQuestion:
    messages: list[dict]  # the prompt: an optional system turn and the user's question
    answer: str  # the exact reply expected (compared after stripping whitespace)
    family: str = field(default="")  # which task family it tests


@dataclass(frozen=True)
class _Example:
    question: str  # what the user types: a core question dressed up (prefix, capital letter, punctuation)
    answer: str
    core: str  # the bare question: held-out questions keep their core in training under another dress


def _dressed(core: str, answer: str, prefixes=PREFIXES, endings=("",)) -> list[_Example]:
    """Every way the user may put one core question: a lead-in, a capital first letter, the final punctuation."""
    plain = [prefix + core + ending for prefix, ending in itertools.product(prefixes, endings)]
    cased = dict.fromkeys(case for q in plain for case in (q, q[0].upper() + q[1:]))  # ordered, no repeats
    return [_Example(question, answer, core) for question in cased]


def _greetings() -> list[_Example]:
    openers = {
        "hi": "Hello! How can I help?",
        "hello": "Hello! How can I help?",
        "hey": "Hello! How can I help?",
        "good morning": "Good morning! How can I help?",
        "good evening": "Good evening! How can I help?",
    }
    names = ["", " tinygpt", " friend", " there"]
    return [
        example
        for (opener, answer), name in itertools.product(openers.items(), names)
        for example in _dressed(opener + name, answer, prefixes=[""], endings=("", "!", ".", "!!"))
    ]


def _identity() -> list[_Example]:
    intents = {
        "My name is tinygpt.": ["what is your name?", "who are you?", "what should i call you?"],
        "I am a small language model.": ["what are you?", "are you a human?", "are you real?"],
        "I was made with transformers.": ["who made you?", "who built you?", "who created you?"],
        "I can chat and do sums.": ["what can you do?", "how can you help me?", "what are you good at?"],
    }
    return [example for answer, cores in intents.items() for core in cores for example in _dressed(core, answer)]


def _arithmetic() -> list[_Example]:
    phrasings = ["what is {a} plus {b}?", "{a} + {b} = ?", "add {a} and {b}."]
    return [
        example
        for a, b in itertools.product(range(10), repeat=2)
        for phrasing in phrasings
        for example in _dressed(phrasing.format(a=a, b=b), str(a + b))
    ]


WORDS = (
    "apple bread chair dance eagle flame grape house juice knife lemon mouse night ocean piano queen river snake "
    "table water zebra cloud storm plant stone green sugar tiger horse train"
).split()


def _word_tasks() -> list[_Example]:
    tasks = [
        (["what is the first letter of {w}?", "first letter of {w}?"], lambda w: w[0]),
        (["what is the last letter of {w}?", "last letter of {w}?"], lambda w: w[-1]),
        (["write {w} in capitals.", "uppercase {w}."], str.upper),
        (["spell {w}.", "how do you spell {w}?"], lambda w: "-".join(w)),
    ]
    return [
        example
        for phrasings, answer in tasks
        for phrasing in phrasings
        for word in WORDS
        for example in _dressed(phrasing.format(w=word), answer(word))
    ]


FACTS = {
    "capital": (
        ["what is the capital of {x}?", "capital of {x}?"],
        {
            "france": "Paris", "spain": "Madrid", "italy": "Rome", "germany": "Berlin", "japan": "Tokyo",
            "egypt": "Cairo", "peru": "Lima", "kenya": "Nairobi", "china": "Beijing", "russia": "Moscow",
            "greece": "Athens", "norway": "Oslo", "cuba": "Havana", "chile": "Santiago", "ireland": "Dublin",
        },
    ),
    "color": (
        ["what color is {x}?", "tell me the color of {x}."],
        {
            "the sky": "blue", "grass": "green", "snow": "white", "coal": "black", "a banana": "yellow",
            "a tomato": "red", "an orange": "orange", "milk": "white", "a plum": "purple", "chocolate": "brown",
        },
    ),
    "opposite": (
        ["what is the opposite of {x}?", "opposite of {x}?"],
        {
            "hot": "cold", "big": "small", "fast": "slow", "up": "down", "day": "night", "old": "young",
            "happy": "sad", "light": "dark", "open": "closed", "full": "empty", "early": "late", "wet": "dry",
        },
    ),
    "sound": (
        ["what sound does a {x} make?", "what does a {x} say?"],
        {"cow": "Moo", "dog": "Woof", "cat": "Meow", "duck": "Quack", "sheep": "Baa", "owl": "Hoot", "lion": "Roar"},
    ),
}  # fmt: skip


def _facts() -> list[_Example]:
    return [
        example
        for phrasings, table in FACTS.values()
        for subject, answer in table.items()
        for phrasing in phrasings
        for example in _dressed(phrasing.format(x=subject), answer)
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

    The held-out questions are spread evenly over the families; none appears in training, but each one's core
    question does, under other dress.
    """
    rng = random.Random(seed)
    train_pools, heldout = {}, []
    for f, (family, make_examples) in enumerate(FAMILIES.items()):
        examples = make_examples()
        count = num_heldout // len(FAMILIES) + (f < num_heldout % len(FAMILIES))
        held = _choose_heldout(examples, count, rng)
        train_pools[family] = [e for e in examples if e.question not in held]
        for question in held:
            example = held[question]
            prompt = _with_system_prompt([{"role": "user", "content": question}], rng)
            heldout.append(HeldOutQuestion(prompt, example.answer, family))
    # Families with more distinct core questions need more examples: sample each in proportion to sqrt(#cores).
    families = list(train_pools)
    weights = [len({e.core for e in train_pools[family]}) ** 0.5 for family in families]
    conversations = []
    for _ in range(num_train):
        messages = []
        for _turn in range(1 + (rng.random() < SECOND_TURN_RATE)):
            example = rng.choice(train_pools[rng.choices(families, weights)[0]])
            messages += [
                {"role": "user", "content": example.question},
                {"role": "assistant", "content": example.answer},
            ]
        conversations.append(_with_system_prompt(messages, rng))
    return conversations, heldout


def _choose_heldout(examples: list[_Example], count: int, rng: random.Random) -> dict[str, _Example]:
    """{question: example} of `count` random examples, never taking a core's last dress out of training."""
    dresses_left = {}  # core -> how many of its dressed questions stay in training
    for e in examples:
        dresses_left[e.core] = dresses_left.get(e.core, 0) + 1
    held = {}
    for e in rng.sample(examples, len(examples)):
        if len(held) == count:
            break
        if dresses_left[e.core] > 1:
            dresses_left[e.core] -= 1
            held[e.question] = e
    return held


def _with_system_prompt(messages: list[dict], rng: random.Random) -> list[dict]:
    if rng.random() < SYSTEM_PROMPT_RATE:
        return [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}, *messages]
    return messages


__all__ = ["FAMILIES", "HeldOutQuestion", "make_synthetic_chat"]
