"""Train a TinyGPT with the Hugging Face Trainer: the logic behind `python train.py`.

    python train.py                                   # the synthetic chat task, offline, minutes on a CPU
    python train.py --preset shakespeare-cpu --text_file tinyshakespeare.txt
    torchrun --nproc_per_node=2 train.py ...          # DDP: NCCL on GPUs, gloo on CPUs

The flow, one module each: args.py (flags, presets, the device policy, checks) -> corpus.py (text or
conversations into datasets) -> trainer.py (model, tokenizer, Trainer, the run, the final save) -> run_dir.py
(the output folder: settings, checkpoints, resuming, failed writes) -> report.py (figures, metrics, the card).
"""

from .args import DataArguments, ModelArguments, TrainingSetupError, parse_args
from .trainer import main, new_model, train

__all__ = ["DataArguments", "ModelArguments", "TrainingSetupError", "main", "new_model", "parse_args", "train"]
