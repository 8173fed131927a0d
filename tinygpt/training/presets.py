"""Named training recipes for `train.py --preset NAME`: a model shape plus the training defaults that suit it.

A preset only supplies defaults. `train.py` installs them as the argument parser's defaults, so every flag the
user types (model shape, data or any `TrainingArguments` field) overrides the preset's value, and `--help`
shows the values the chosen preset gives.

    tiny              the default: learns the built-in synthetic chat task on 2 CPU cores in a few minutes
    shakespeare-cpu   nanoGPT's CPU recipe for Tiny Shakespeare (characters), retuned for a small CPU
    shakespeare-char  nanoGPT's GPU recipe for Tiny Shakespeare (characters), 10.7M parameters
    gpt2-small        GPT-2 small's shape (124M) with GPT-2's tokenizer
"""

from dataclasses import dataclass, field, fields

# What every preset shares: evaluation and checkpoints on a step schedule, a cosine decay to a floor (as
# nanoGPT), and the data loader in the training process (batches are gathered on the device, no workers needed).
COMMON_TRAINING_DEFAULTS = {
    "eval_strategy": "steps",
    "save_strategy": "steps",
    "save_total_limit": 2,
    "lr_scheduler_type": "cosine_with_min_lr",
    "max_grad_norm": 1.0,
    "dataloader_num_workers": 0,
    "report_to": "none",
    "seed": 1337,
}


@dataclass(frozen=True)
class Preset:
    """One recipe. Shape fields are `ModelArguments`/`DataArguments` flags; `training` holds TrainingArguments."""

    description: str
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int  # context window (n_positions) and training window length
    dropout: float = 0.0
    bias: bool = True
    activation_function: str = "gelu_new"  # GPT-2's tanh GELU; "gelu" (exact) is much cheaper on CPUs
    muon_lr: float | None = (
        None  # Muon for the blocks' weight matrices at this rate (tinygpt.training.muon); None: AdamW
    )
    tokenizer: str = "char"
    eval_windows: int = 256  # validation windows scored at each evaluation: a fixed set, so evaluations compare
    # How the preset compiles on a CUDA GPU (None: eager): "cudagraphs" replays the traced forward/backward as
    # recorded (a quick compile; for small models, whose steps are bound by kernel launches), "inductor"
    # generates fused kernels (a long compile; for big kernels, where graphs no longer pay).
    cuda_compile: str | None = None
    training: dict = field(default_factory=dict)

    def flag_defaults(self) -> dict:
        """{flag name: default} for the argument parser: the shared defaults, then this preset's values."""
        own = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("description", "training", "cuda_compile")
        }
        return {**COMMON_TRAINING_DEFAULTS, **self.training, **own}


PRESETS = {
    # Sized so that a small CPU passes the synthetic task's held-out exam in a few minutes (the README's
    # figures: benchmarks/bench_train_cpu.py).
    "tiny": Preset(
        description="default: the built-in synthetic chat task on 2 CPU cores in a few minutes",
        n_layer=2,
        n_head=4,
        n_embd=128,
        block_size=128,
        eval_windows=128,
        training=dict(
            max_steps=1500,
            per_device_train_batch_size=32,
            per_device_eval_batch_size=64,
            learning_rate=3e-3,
            lr_scheduler_kwargs={"min_lr": 3e-4},
            warmup_steps=50,
            weight_decay=0.1,
            adam_beta2=0.99,
            logging_steps=50,
            eval_steps=250,
            save_steps=500,
        ),
    ),
    # nanoGPT's CPU recipe (4x4x128, batch 12, 2000 steps at 1e-3), retuned for 2 cores: two wider layers learn
    # faster and cost less per token on a CPU (2x4x160, batch 24). A step is compute-bound there (compiling saves
    # little), so what lowered the loss was the schedule: a linear decay to zero, then a lower peak rate and
    # beta1 0.8. The README gives the figures and what else was tried (benchmarks/bench_train_cpu.py).
    "shakespeare-cpu": Preset(
        description="nanoGPT's CPU Tiny Shakespeare recipe, retuned: val loss <= 1.70 in under 2 minutes on 2 cores",
        n_layer=2,
        n_head=4,
        n_embd=160,
        block_size=64,
        activation_function="gelu",
        eval_windows=1024,  # 65K validation tokens: close to the whole split's loss, at a fraction of its cost
        training=dict(
            max_steps=1400,
            per_device_train_batch_size=24,
            per_device_eval_batch_size=256,
            learning_rate=4e-3,
            lr_scheduler_type="linear",  # to zero at the last step
            warmup_steps=100,
            weight_decay=0.1,
            adam_beta1=0.8,
            adam_beta2=0.99,
            logging_steps=50,
            eval_steps=700,
            save_steps=700,
        ),
    ),
    "shakespeare-char": Preset(
        description="nanoGPT's Tiny Shakespeare character model (6x6x384, context 256), for a GPU",
        n_layer=6,
        n_head=6,
        n_embd=384,
        block_size=256,
        dropout=0.2,
        bias=False,  # as nanoGPT, so that the parameter count matches its model's
        eval_windows=2048,
        # "cudagraphs" compiles much sooner than inductor for slightly slower steps: for a run this short that
        # is the faster whole run (the README's performance section; benchmarks/bench_train_gpu.py).
        cuda_compile="cudagraphs",
        training=dict(
            # nanoGPT's recipe, with the cosine schedule ended at 2500 steps instead of 5000: this model reaches
            # its best validation loss well before nanoGPT's end and then overfits, so decaying the rate by then
            # gives a lower minimum (the README's figures; benchmarks/bench_train_gpu.py).
            max_steps=2500,
            per_device_train_batch_size=64,
            per_device_eval_batch_size=256,
            learning_rate=1e-3,
            lr_scheduler_kwargs={"min_lr": 1e-4},
            warmup_steps=100,
            weight_decay=0.1,
            adam_beta2=0.99,
            logging_steps=50,
            eval_steps=250,
            save_steps=500,
        ),
    ),
    "gpt2-small": Preset(
        description="GPT-2 small's shape (12x12x768, context 1024, 124M) with GPT-2's tokenizer",
        n_layer=12,
        n_head=12,
        n_embd=768,
        block_size=1024,
        tokenizer="gpt2",
        eval_windows=256,
        cuda_compile="inductor",
        training=dict(
            max_steps=5000,
            # 32K tokens a step in one micro-batch rather than 8 x 1024 x 4: each kernel launch carries 4x the
            # work, so the GPU no longer waits for the host (the README's performance section, with the peak
            # memory). On a GPU too small for it, pass --per_device_train_batch_size 8
            # --gradient_accumulation_steps 4 for the same step.
            per_device_train_batch_size=32,
            per_device_eval_batch_size=32,
            gradient_accumulation_steps=1,
            learning_rate=6e-4,
            lr_scheduler_kwargs={"min_lr": 6e-5},
            warmup_steps=200,
            weight_decay=0.1,
            adam_beta2=0.95,
            logging_steps=50,
            eval_steps=500,
            save_steps=1000,
        ),
    ),
}
DEFAULT_PRESET = "tiny"


def describe_presets() -> str:
    """The preset table shown at the end of `train.py --help`."""
    lines = ["presets (--preset NAME; any flag overrides them):"]
    for name, preset in PRESETS.items():
        shape = f"{preset.n_layer}x{preset.n_head}x{preset.n_embd}, context {preset.block_size}"
        lines.append(f"  {name:<17} {shape:<26} {preset.description}")
    return "\n".join(lines)


__all__ = ["DEFAULT_PRESET", "PRESETS", "Preset", "describe_presets"]
