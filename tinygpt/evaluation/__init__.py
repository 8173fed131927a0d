"""Evaluation: bits per byte of a text (lm-eval's rolling loglikelihood, batched), lm-evaluation-harness tasks run
in the same process on a loaded model, and the results as a report and as the model card's model-index.
`tinygpt eval` is tinygpt.evaluation.command; lm_eval (the `eval` extra) is imported only when tasks are asked for.
"""
