"""The one place the HF Trainer is made (`build_trainer`), and what tinygpt adds to it (`TinyGPTTrainer`): each
evaluation's loss in bits per byte too, and a checkpoint that cannot be written turned into one line. Speed work on
the training loop starts here.
"""

import shutil
from pathlib import Path

from transformers import Trainer, TrainingArguments

from tinygpt.evaluation.bits import loss_bits_per_byte
from tinygpt.training.args import LATEST
from tinygpt.training.corpus import TrainingData
from tinygpt.training.fused_loss import use_fused_loss
from tinygpt.training.muon import MuonWithAdamW
from tinygpt.training.run_dir import (
    WRITE_ERRORS,
    RunWriteError,
    checkpoint_problem,
    checkpoint_to_resume,
    write_failure,
)


class TinyGPTTrainer(Trainer):
    """The Trainer, with a checkpoint that cannot be written turned into one line (see `write_failure`), and each
    evaluation's loss given in bits per byte too (`eval_bits_per_byte`, logged and reported like eval_loss)."""

    bytes_per_token: float | None = None  # of the validation text (TrainingData.bytes_per_token)

    def evaluation_loop(self, *args, **kwargs):
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", "eval")
        loss = output.metrics.get(f"{prefix}_loss")
        if self.bytes_per_token and loss is not None:
            output.metrics[f"{prefix}_bits_per_byte"] = loss_bits_per_byte(loss, self.bytes_per_token)
        return output

    def _save_checkpoint(self, model, trial):
        try:
            super()._save_checkpoint(model, trial)
        except WRITE_ERRORS as error:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            problem = write_failure(error, folder, "a checkpoint")  # judged before the partial folder goes
            if self.args.should_save and folder.is_dir() and checkpoint_problem(folder):
                shutil.rmtree(folder, ignore_errors=True)  # incomplete: free its space, nothing refers to it
            newest, _ = checkpoint_to_resume(LATEST, folder.parent)
            then = (
                f"the earlier checkpoints are intact: free some space, then continue from {Path(newest).name} "
                "with --resume_from_checkpoint."
                if newest
                else "no earlier checkpoint was written: free some space, then run again."
            )
            self.close_progress_bars()
            raise RunWriteError(f"{problem}; {then}") from error

    def close_progress_bars(self) -> None:
        """Clear the progress bar now: closed at exit instead, it would print below the error line."""
        for callback in self.callback_handler.callbacks:
            for bar in (getattr(callback, "training_bar", None), getattr(callback, "prediction_bar", None)):
                if bar is not None:
                    bar.leave = False
                    bar.close()


def build_trainer(model, tokenizer, args: TrainingArguments, data: TrainingData, muon_lr: float | None) -> Trainer:
    """The one place the Trainer is made (speed work on the training loop starts here)."""
    optimizer = None  # None: the Trainer's own, from --optim
    if muon_lr is not None:
        optimizer = MuonWithAdamW(
            model,
            muon_lr=muon_lr,
            lr=args.learning_rate,
            weight_decay=args.weight_decay,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
        )
    if args.use_liger_kernel:
        use_fused_loss(model)
    trainer = TinyGPTTrainer(
        model=model,
        args=args,
        train_dataset=data.train_dataset,
        eval_dataset=data.eval_dataset,
        data_collator=data.collator,
        processing_class=tokenizer,  # saved into every checkpoint, so a resumed run keeps its vocabulary
        optimizers=(optimizer, None),  # the LR schedule is always the Trainer's
    )
    trainer.bytes_per_token = data.bytes_per_token
    return trainer


__all__ = ["TinyGPTTrainer", "build_trainer"]
