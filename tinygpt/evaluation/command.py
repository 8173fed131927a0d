"""`tinygpt eval MODEL`: bits per byte of a text, lm-evaluation-harness tasks, a JSON report, the model card.

    tinygpt eval MODEL --text_file F [--text_file G] [--stride S]       bits per byte of the files' text
    tinygpt eval MODEL --dataset_name D [--dataset_config C --dataset_split S --text_column T]
    tinygpt eval MODEL --tasks T1,T2 [--num_fewshot K --limit N --include_path DIR]
    ... [--batch_size B] [--output R.json] [--push]

The flags are tinygpt.evaluation.flags (light, for the CLI's parser); this module is imported only when the command
runs. Everything a user can get wrong is checked before the model is loaded, and long before anything is pushed: the
flags, the text (tinygpt.data.text's checks), lm_eval and the task names; then come the model (the one loader),
the scoring, the tasks, the report, and last the push, which only merges the results into the repo's card.
"""

import argparse
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging

from tinygpt.evaluation.errors import EvalError
from tinygpt.evaluation.harness import run_tasks, task_manager
from tinygpt.evaluation.results import eval_results, report, write_report
from tinygpt.evaluation.rolling import prefix_token_id, score_stream
from tinygpt.evaluation.text import read_eval_text, tokenize_text
from tinygpt.hub.loader import load, names_hub_repo
from tinygpt.hub.push import push_eval_results


def run_eval(args: argparse.Namespace) -> int:
    """`tinygpt eval` with its parsed flags (tinygpt.evaluation.flags); EvalError, DataError, HubError or
    ModelLoadError for what the user can fix."""
    tasks = [task.strip() for task in (args.tasks or "").split(",") if task.strip()]
    has_text = bool(args.text_file or args.dataset_name)
    check_flags(args, tasks, has_text)
    manager = task_manager(args.include_path, tasks) if tasks else None
    text = read_eval_text(
        args.text_file, args.dataset_name, args.dataset_config, args.text_column, args.dataset_split
    ) if has_text else None  # fmt: skip
    transformers_logging.disable_progress_bar()  # "Loading weights" would only clutter the terminal
    model, tokenizer = load(args.model)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    score = None
    if text is not None:
        window = model.config.n_positions
        if args.stride is not None and args.stride > window:
            raise EvalError(
                f"--stride {args.stride} is longer than the model's context ({window} tokens): pass at most {window}."
            )
        ids, num_bytes = tokenize_text(tokenizer, text)
        score = score_stream(
            model, ids, prefix_token_id(tokenizer), num_bytes, stride=args.stride, batch_size=args.batch_size
        )
        print_score(args.model, text.description, score)
    metrics = None
    if tasks:
        num_fewshot, limit = args.num_fewshot, args.limit
        limit = int(limit) if limit is not None and limit >= 1 else limit
        metrics, table = run_tasks(
            model, tokenizer, tasks, manager, num_fewshot=num_fewshot, limit=limit, batch_size=args.batch_size
        )
        print(table, end="", flush=True)
    figures = report(args.model, score, text, metrics, args.num_fewshot)
    if args.output:
        write_report(figures, args.output)
        print(f"wrote {args.output}")
    if args.push:
        url = push_eval_results(args.model, eval_results(figures, text))
        print(f"pushed the results to the card of {args.model}: {url}")
    return 0


def check_flags(args: argparse.Namespace, tasks: list[str], has_text: bool) -> None:
    if not has_text and not tasks:
        raise EvalError("nothing to evaluate: pass --text_file F or --dataset_name D (bits per byte), or --tasks T.")
    if args.push and (Path(args.model).is_dir() or not names_hub_repo(args.model)):
        raise EvalError(
            f"--push writes the results into a Hub repo's card, so MODEL must be a repo id (owner/name), not "
            f"{args.model}: push the folder first (tinygpt push DIR owner/name), then evaluate owner/name."
        )
    if args.output and not Path(args.output).resolve().parent.is_dir():
        raise EvalError(f"--output {args.output}: its folder does not exist; create it or pick another path.")
    if not tasks and (args.num_fewshot is not None or args.limit is not None or args.include_path):
        raise EvalError("--num_fewshot, --limit and --include_path are for lm-eval tasks: pass --tasks too.")


def print_score(model: str, described: str, score) -> None:
    rate = score.tokens / max(score.seconds, 1e-9)
    print(f"{model} on {described}; scoring {score.scoring()}")
    print(
        f"bits per byte {score.bits_per_byte:.4f} ({score.tokens:,} tokens, {score.bytes:,} UTF-8 bytes; "
        f"{score.nats_per_token:.4f} nats per token, perplexity {score.perplexity:.3f}) "
        f"in {score.seconds:.2f} s ({rate:,.0f} tokens/s)",
        flush=True,
    )


__all__ = ["run_eval"]
