"""`tinygpt eval`'s flags, apart from the command (tinygpt.evaluation.command) so that building the CLI's parser
imports neither datasets nor lm_eval."""

import argparse

from tinygpt.decoding.flags import checked, non_negative_int, positive_int

task_limit = checked(float, lambda value: value > 0, "above 0 (a count, or a fraction below 1)", "number")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model folder or Hub repo id (owner/name)")
    text = parser.add_argument_group("bits per byte of a text (tinygpt's own scoring)")
    text.add_argument(
        "--text_file", action="append", default=[], metavar="F", help="a UTF-8 text file or URL (repeatable)"
    )
    text.add_argument("--dataset_name", default=None, help="a Hub dataset id, or a local dataset folder or file")
    text.add_argument("--dataset_config", default=None, help="the dataset's configuration")
    text.add_argument("--text_column", default="text", help="the dataset's text column (default text)")
    text.add_argument("--dataset_split", default="test", help="the dataset's split (default test)")
    text.add_argument(
        "--stride",
        type=positive_int,
        default=None,
        help="slide windows by S tokens: each token after the first window is predicted from at least "
        "context - S tokens (default: lm-eval's rolling scoring, disjoint windows of the whole context)",
    )
    tasks = parser.add_argument_group("lm-evaluation-harness tasks (the eval extra)")
    tasks.add_argument("--tasks", default=None, metavar="T1,T2", help="lm-eval task names, comma-separated")
    tasks.add_argument("--num_fewshot", type=non_negative_int, default=None, help="examples before each question")
    tasks.add_argument("--limit", type=task_limit, default=None, help="at most N examples per task (below 1: a share)")
    tasks.add_argument("--include_path", default=None, metavar="DIR", help="a folder of your own task YAMLs")
    parser.add_argument(
        "--batch_size",
        type=positive_int,
        default=8,
        help="windows (or lm-eval requests) a forward (default 8; on a GPU, 64 or more is faster)",
    )
    parser.add_argument("--output", default=None, metavar="R.json", help="write every figure to this JSON file")
    parser.add_argument(
        "--push", action="store_true", help="merge the results into the model-index of the Hub repo's card (README.md)"
    )


__all__ = ["add_eval_arguments"]
