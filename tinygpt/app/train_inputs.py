"""What the Train tab accepts, checked before a run starts: a known preset, whole numbers in range, and a model
shape the machine can hold (tinygpt.app.train_runs turns the values into train.py flags).

Sizes come from anybody who can open the page, so a shape is refused at once, in one line naming the largest size
that fits, when training it cannot fit the device's memory (tinygpt.training.corpus.training_bytes: 16 bytes a
parameter for AdamW, plus the activations of a micro-batch), rather than failing with MemoryError minutes later.
The vocabulary is guessed from the preset's tokenizer (a character vocabulary of a few hundred, or GPT-2's 50k);
train.py checks the real one again once it has built it.
"""

from tinygpt.training.args import choose_device
from tinygpt.training.corpus import memory_bytes, training_bytes
from tinygpt.training.presets import PRESETS

MAX_STEPS_LIMIT = 1_000_000
SIZE_LIMIT = 1 << 20  # any whole-number knob; the memory check below is what bounds a shape
# Optional knobs: (flag, label, Python type); blank keeps the preset's value.
KNOBS = (
    ("n_layer", "Layers", int),
    ("n_embd", "Width (n_embd)", int),
    ("block_size", "Context (block_size)", int),
    ("per_device_train_batch_size", "Batch size", int),
    ("learning_rate", "Learning rate", float),
)
SHAPE = ("n_layer", "n_embd", "block_size", "per_device_train_batch_size")  # the knobs that decide the memory
VOCAB_GUESS = {"gpt2": 50_304}  # GPT-2's tokenizer with the chat tokens, padded; anything else: characters
CHAR_VOCAB_GUESS = 256


class TrainingRequestError(ValueError):
    """A run that cannot start as asked (busy, bad input); one line for the page."""


def knob_flags(preset: str, knobs: dict | None) -> list[str]:
    """train.py flags for the knobs that were set (blank or 0: the preset's value), after checking each value and
    that the shape fits this machine; raises TrainingRequestError."""
    chosen = {}
    for name, label, kind in KNOBS:
        value = (knobs or {}).get(name)
        if value not in (None, "", 0):  # a blank Number arrives as 0 from the page
            chosen[name] = whole_number(label, value, 1, SIZE_LIMIT) if kind is int else positive(label, value)
    check_shape_fits(preset, chosen)
    return [part for name, value in chosen.items() for part in (f"--{name}", str(value))]


def check_shape_fits(preset: str, chosen: dict) -> None:
    """Refuse a shape whose training cannot fit the memory of the device train.py will pick."""
    recipe = PRESETS[preset]
    defaults = {
        "n_layer": recipe.n_layer,
        "n_embd": recipe.n_embd,
        "block_size": recipe.block_size,
        "per_device_train_batch_size": recipe.training.get("per_device_train_batch_size", 8),
    }
    policy = choose_device({})
    available = memory_bytes(policy.device)
    if available is None:
        return
    vocab = VOCAB_GUESS.get(recipe.tokenizer, CHAR_VOCAB_GUESS)
    value_bytes = 4 if policy.precision == "fp32" else 2

    def needed(shape: dict) -> int:
        return training_bytes(
            shape["n_layer"],
            shape["n_embd"],
            vocab,
            shape["block_size"],
            shape["per_device_train_batch_size"],
            value_bytes,
        )

    shape = {**defaults, **{name: chosen[name] for name in SHAPE if name in chosen}}
    if needed(shape) <= available:
        return
    labels = {name: label for name, label, _ in KNOBS}
    asked = [name for name in SHAPE if name in chosen]
    # The sizes asked for first, then the batch, the context...; each alone, the others as asked, else as preset.
    candidates = asked + [name for name in reversed(SHAPE) if name not in asked]
    suggestion = ""
    for others, note in (
        (shape, "with the other sizes as asked"),
        (defaults, "with the preset's other sizes"),
    ):
        fitting = ((name, largest_fitting(name, shape[name], others, needed, available)) for name in candidates)
        name, value = next(((name, value) for name, value in fitting if value), (None, None))
        if name == "n_embd" and value and value >= recipe.n_head:
            value -= value % recipe.n_head  # the width splits into the preset's heads
        if value:
            suggestion = f"; the largest that fits is {labels[name]} {value} ({note})"
            break
    described = ", ".join(f"{labels[name]} {shape[name]}" for name in asked or SHAPE)
    raise TrainingRequestError(
        f"{described}: too big to train here, it needs about {needed(shape) / 2**30:,.0f} GiB and this "
        f"{policy.device} has {available / 2**30:,.0f} GiB{suggestion}."
    )


def largest_fitting(name: str, asked: int, others: dict, needed, available: int) -> int | None:
    """The largest value of `name` up to `asked` that fits with `others` (memory grows with each size), or None."""
    low, high = 0, asked  # low always fits (0: nothing does yet)
    if needed({**others, name: 1}) > available:
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if needed({**others, name: middle}) <= available:
            low = middle
        else:
            high = middle - 1
    return low or None


def whole_number(label: str, value, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TrainingRequestError(f"{label} must be a whole number, got {value!r}.") from None
    if not number.is_integer() or not low <= number <= high:
        raise TrainingRequestError(f"{label} must be a whole number from {low} to {high}, got {value!r}.")
    return int(number)


def positive(label: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0 or number == float("inf"):
        raise TrainingRequestError(f"{label} must be a positive number, got {value!r}.")
    return number
