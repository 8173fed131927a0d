"""lm-evaluation-harness tasks on a model already loaded, in this process: `lm_eval.simple_evaluate` with
`HFLM(pretrained=model, tokenizer=tokenizer)` and a `TaskManager` that also reads `include_path`'s task YAMLs.

lm_eval is the optional `eval` extra, imported only here and only when tasks are asked for. What a user can get
wrong (lm_eval missing, a task name it does not know, a task whose data cannot be read) is an `EvalError` whose
message is one line naming the fix; the names are checked before any model is loaded.
"""

import contextlib
import logging
from pathlib import Path

import datasets
import torch

from tinygpt.evaluation.errors import EvalError

STDERR_SUFFIX = "_stderr"


def import_lm_eval():
    """The lm_eval module, or EvalError naming the extra that installs it."""
    try:
        import lm_eval
        import lm_eval.models.huggingface  # noqa: F401  (HFLM)
        import lm_eval.tasks  # noqa: F401  (TaskManager)
    except ImportError as error:
        raise EvalError(
            f"--tasks runs lm-evaluation-harness, which is not installed ({error.name or 'lm_eval'} is missing): "
            "pip install 'tinygpt[eval]'"
        ) from None
    # Its warnings about a model passed in (not by name) and its INFO lines would bury the results.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    return lm_eval


def task_manager(include_path: str | None, tasks: list[str]):
    """lm-eval's TaskManager (its own tasks plus those under `include_path`), with every name in `tasks` checked."""
    lm_eval = import_lm_eval()
    if include_path is not None and not Path(include_path).is_dir():
        raise EvalError(f"--include_path {include_path} is not a folder: pass the folder holding the task YAMLs.")
    manager = lm_eval.tasks.TaskManager(include_path=include_path)
    known = set(manager.match_tasks(tasks))
    unknown = [task for task in tasks if task not in known and not Path(task).is_file()]
    if unknown:
        where = f" or in {include_path}" if include_path else "; pass --include_path DIR for your own task YAMLs"
        raise EvalError(
            f"lm-eval has no task {', '.join(map(repr, unknown))}{where}: check the name (`lm_eval ls tasks` lists them)."
        )
    return manager


def run_tasks(
    model,
    tokenizer,
    tasks: list[str],
    manager,
    *,
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = 8,
) -> tuple[dict[str, dict[str, float]], str]:
    """({task: {metric: value}}, lm-eval's results table) of `tasks` on the loaded model (bf16 autocast on CUDA)."""
    lm_eval = import_lm_eval()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import make_table

    device = next(model.parameters()).device
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)  # its max_length: n_positions
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    try:
        with autocast:
            output = lm_eval.simple_evaluate(
                model=lm,
                tasks=tasks,
                num_fewshot=num_fewshot,
                limit=limit,
                task_manager=manager,
                log_samples=False,
                bootstrap_iters=0,  # no stderr by resampling: minutes on a CPU for what a single run cannot give
            )
    except (OSError, datasets.exceptions.DatasetsError) as error:  # a missing file, no network, offline mode
        first = " ".join(str(error).split())[:300]
        raise EvalError(
            f"a task's data could not be read ({type(error).__name__}: {first}): check its dataset_path / "
            "data_files, or the network (Hub datasets download on first use)."
        ) from None
    metrics = {}
    for task, values in output["results"].items():
        metrics[task] = {
            key.removesuffix(",none"): value
            for key, value in values.items()
            if "," in key and isinstance(value, (int, float)) and STDERR_SUFFIX not in key
        }
    return metrics, make_table(output)


__all__ = ["import_lm_eval", "run_tasks", "task_manager"]
