"""What `tinygpt eval` found, as a report (printed, and written by --output as JSON) and as model-index entries
for the model card (--push)."""

import json
import math
from pathlib import Path

from huggingface_hub import EvalResult

from tinygpt.evaluation.rolling import Score
from tinygpt.evaluation.text import EvalText

HARNESS_URL = "https://github.com/EleutherAI/lm-evaluation-harness"


def report(
    model: str,
    score: Score | None,
    text: EvalText | None,
    tasks: dict[str, dict[str, float]] | None,
    num_fewshot: int | None = None,
) -> dict:
    """Every figure, JSON-ready: the text's (bits_per_byte, tokens, bytes, nats_per_token, perplexity, seconds, the
    scoring) and each task's metrics."""
    figures: dict = {"model": model}
    if score is not None and text is not None:
        figures |= {
            "text": text.description,
            "scoring": "rolling" if score.rolling else "sliding",
            "window": score.window,
            "stride": score.stride,
            "bits_per_byte": score.bits_per_byte,
            "tokens": score.tokens,
            "bytes": score.bytes,
            "nats_per_token": score.nats_per_token,
            "perplexity": score.perplexity if math.isfinite(score.perplexity) else None,
            "seconds": score.seconds,
        }
    if tasks is not None:
        figures |= {"tasks": tasks, "num_fewshot": num_fewshot}
    return figures


def write_report(figures: dict, path: str) -> None:
    Path(path).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


def eval_results(figures: dict, text: EvalText | None) -> list[EvalResult]:
    """The report's figures as model-index entries: the text's bits per byte, and every task metric."""
    results = []
    if "bits_per_byte" in figures and text is not None:
        results.append(
            EvalResult(
                task_type="text-generation",
                task_name="Language modeling",
                dataset_type=text.dataset_type,
                dataset_name=text.description,
                dataset_config=text.dataset_config,
                dataset_split=text.dataset_split,
                metric_type="bits_per_byte",
                metric_name="bits per byte",
                metric_config=figures["scoring"] if figures["scoring"] == "rolling" else f"stride {figures['stride']}",
                metric_value=round(figures["bits_per_byte"], 6),
            )
        )
    shots = figures.get("num_fewshot")
    for task, metrics in (figures.get("tasks") or {}).items():
        for metric, value in metrics.items():
            results.append(
                EvalResult(
                    task_type="text-generation",
                    task_name=task,
                    dataset_type=task,
                    dataset_name=task,
                    metric_type=metric,
                    metric_value=round(value, 6),
                    metric_config=f"{shots}-shot" if shots is not None else None,
                    source_name="lm-evaluation-harness",
                    source_url=HARNESS_URL,
                )
            )
    return results


__all__ = ["eval_results", "report", "write_report"]
