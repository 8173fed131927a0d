"""The command-line flags of every surface that decodes (`tinygpt chat`, `generate`, `serve` and app.py): how text
is decoded (tinygpt.decoding.engine) and how it is sampled, with argument types that turn a bad value into
argparse's one-line usage error.

The sampling flags default to None, which means "the model's generation_config": a flag the user did not type
never overrides what the model was saved with.
"""

import argparse

from tinygpt.decoding.request import INT64_MAX, MAX_TEMPERATURE


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """How text is decoded (tinygpt.decoding.engine.Engine): flags shared by `tinygpt chat`, `tinygpt generate` and app.py."""
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile decoding (default: on a GPU only; on a CPU it is 2-3x faster after compiling, which takes a "
        "while the first time and comes from the compile cache after)",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="decode on the CPU with int8 weights: compiled, ~1.5x faster again; the same loss, but greedy replies "
        "may part from fp32's where two tokens are nearly tied",
    )


def check_decoding_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--int8 with --no-compile is a usage error: int8 weights decode through a compiled step."""
    if args.int8 and args.compile is False:
        parser.error("--int8 decodes through a compiled step (uncompiled it is slower than fp32): drop --no-compile")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """--temperature, --top_k, --top_p and --max_new_tokens, each defaulting to the model's generation_config."""
    default = "default: the model's generation_config"
    parser.add_argument("--temperature", type=temperature, default=None, help=f"0 = greedy ({default})")
    parser.add_argument(
        "--top_k", type=non_negative_int, default=None, help=f"sample from the k likeliest tokens only ({default})"
    )
    parser.add_argument(
        "--top_p",
        type=probability,
        default=None,
        help=f"sample from the smallest set holding this much probability ({default})",
    )
    parser.add_argument(
        "--max_new_tokens", type=positive_int, default=None, help=f"longest reply, in tokens ({default})"
    )


def sampling_settings(args: argparse.Namespace) -> dict:
    """The sampling flags the user typed, and only those: what is left out comes from the model."""
    typed = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, max_new_tokens=args.max_new_tokens)
    return {name: value for name, value in typed.items() if value is not None}


def checked(cast, is_valid, requirement: str, name: str):
    """An argparse type: `cast` the text, then refuse values that fail `is_valid` ("must be <requirement>")."""

    def parse(text: str):
        value = cast(text)
        if not is_valid(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}")
        return value

    parse.__name__ = name  # argparse names the type in "invalid <name> value"
    return parse


non_empty = checked(str, bool, "non-empty", "text")
positive_int = checked(int, lambda value: 1 <= value <= INT64_MAX, "at least 1 (and at most 2^63 - 1)", "integer")
non_negative_int = checked(int, lambda value: 0 <= value <= INT64_MAX, "0 or more (and at most 2^63 - 1)", "integer")
temperature = checked(float, lambda value: 0 <= value <= MAX_TEMPERATURE, f"from 0 to {MAX_TEMPERATURE:g}", "number")
seed = checked(int, lambda value: 0 <= value < 1 << 32, "from 0 to 2^32 - 1", "integer")  # numpy's range
probability = checked(float, lambda value: 0 < value <= 1, "in (0, 1]", "number")
