"""Build the model, the tokenizer and the Trainer, train, and leave the final model behind: `train` and `main`.

- Evaluation scores a fixed set of validation windows (`--eval_windows`) with `prediction_loss_only`, so it is
  cheap and comparable from one evaluation to the next.
- Only the main process writes. The final model is staged in a temporary folder and moved in file by file with
  atomic renames, config.json last, so a crash never leaves a truncated file or a config that points at missing
  weights. A checkpoint that cannot be written ends the run with one line; the checkpoint it was writing is
  removed, and every earlier file is as it was.
- After training, the exam (held-out questions of the synthetic task) and the sample decode through the engine.
- A run stops cleanly on Ctrl-C, or once $TINYGPT_STOP_FILE exists (tinygpt.training.stopping): exit code 130, its
  checkpoints kept, no final model.
"""

import json
import math
import pickle
import sys
import time
from pathlib import Path

import datasets
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerState,
    set_seed,
)
from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

from tinygpt.configuration_tinygpt import TinyGPTConfig
from tinygpt.data.errors import DataError, first_line
from tinygpt.data.token_stream import corpus_characters
from tinygpt.data.tokenizers import build_tokenizer
from tinygpt.hub.adapter import is_adapter_folder
from tinygpt.hub.checks import ModelLoadError
from tinygpt.hub.loader import load, names_hub_repo
from tinygpt.hub.remote import HubError
from tinygpt.modeling_tinygpt import TinyGPTForCausalLM
from tinygpt.tokenization_tinygpt import load_gpt2_chat_tokenizer
from tinygpt.training.args import (
    SHAPE_FLAGS,
    ModelArguments,
    RunArguments,
    TrainingSetupError,
    check_arguments,
    parse_args,
)
from tinygpt.training.corpus import check_context_fits, conversation_data, read_sources, token_window_data
from tinygpt.training.fused_loss import fused_loss_pays, liger_installed
from tinygpt.training.hf_trainer import build_trainer
from tinygpt.training.lora import check_lora_arguments, describe_lora, load_adapter_weights, uses_lora, with_lora
from tinygpt.training.report import RunSummary, print_summary, save_final_model, summarize
from tinygpt.training.run_dir import (
    RUN_SETTINGS_FILE,
    WRITE_ERRORS,
    RunWriteError,
    check_checkpoint_run,
    check_output_dir,
    checkpoint_step,
    checkpoint_to_resume,
    final_model_step,
    run_settings,
    write_failure,
)
from tinygpt.training.stopping import TrainingStopped, stop_file_callback

# ----------------------------------------------------------------------------------------------------------
# Model and tokenizer


def new_model(tokenizer: PreTrainedTokenizerBase, m: ModelArguments) -> TinyGPTForCausalLM:
    try:
        config = TinyGPTConfig.for_tokenizer(
            tokenizer,
            n_positions=m.block_size,
            n_embd=m.n_embd,
            n_layer=m.n_layer,
            n_head=m.n_head,
            dropout=m.dropout,
            bias=m.bias,
            activation_function=m.activation_function,
        )
    except ValueError as error:
        raise TrainingSetupError(str(error)) from error
    return TinyGPTForCausalLM(config)


def load_init_model(run: RunArguments) -> tuple[TinyGPTForCausalLM, PreTrainedTokenizerBase]:
    """The model and tokenizer `--init_from` names: a tinygpt model, or GPT-2 weights converted to TinyGPT.

    A Hub repo id (owner/name) is a tinygpt model, pulled and checked by the one loader (tinygpt.hub.loader) like
    every other command's; 'gpt2' and a folder of GPT-2 weights are converted."""
    source = run.model.init_from
    for flag in SHAPE_FLAGS:
        if flag in run.passed:
            raise TrainingSetupError(
                f"--{flag} cannot reshape --init_from {source}; drop --{flag} (the shape comes from the model)."
            )
    overrides = {"dropout": run.model.dropout} if "dropout" in run.passed else {}
    if names_hub_repo(source) or is_adapter_folder(source):  # an adapter's base is merged with it
        return load(source, **overrides)
    try:
        model_type = AutoConfig.from_pretrained(source, trust_remote_code=False).model_type
    except (OSError, ValueError) as error:
        raise TrainingSetupError(f"--init_from {source}: cannot load it ({first_line(error)})") from error
    if model_type != "gpt2":
        return load(source, **overrides)
    if uses_lora(run):
        raise TrainingSetupError(
            f"--init_from {source} is GPT-2, converted on the fly, which an adapter cannot name as its base: convert "
            "it into a tinygpt folder first (a full fine-tune from it writes one), then train the adapter on that."
        )
    try:  # before converting the weights: the cheap check first
        tokenizer = load_gpt2_chat_tokenizer(source)
    except (OSError, ValueError) as error:
        raise TrainingSetupError(
            f"--init_from {source} holds GPT-2 weights but no tokenizer ({first_line(error)}); "
            "copy GPT-2's vocab.json and merges.txt into it."
        ) from error
    try:
        model = TinyGPTForCausalLM.from_gpt2(source, **overrides)
    except (OSError, ValueError, SafetensorError) as error:  # no weights, truncated ones, missing ones, another block
        raise TrainingSetupError(f"--init_from {source}: {first_line(error)}") from None
    except pickle.UnpicklingError:  # pytorch_model.bin: torch reads only plain tensors from a pickle, never code
        raise TrainingSetupError(
            f"--init_from {source}: its weights are a pickle (pytorch_model.bin) that torch will not read safely; "
            "convert them to model.safetensors, or use a GPT-2 folder that has one."
        ) from None
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)  # room for the chat tokens
    for config in (model.config, model.generation_config):
        config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def forget_load_options(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Drop what `from_pretrained` records about how it was called (transformers 5 keeps "is_local" and
    "local_files_only" in init_kwargs, and save_pretrained would write them into tokenizer_config.json)."""
    for key in ("is_local", "local_files_only"):
        tokenizer.init_kwargs.pop(key, None)
    return tokenizer


def model_and_tokenizer(run: RunArguments, corpus: str, resume_from: str | None):
    model, tokenizer = loaded_model_and_tokenizer(run, corpus, resume_from)
    return model, forget_load_options(tokenizer)


def loaded_model_and_tokenizer(run: RunArguments, corpus: str, resume_from: str | None):
    if resume_from is not None and not uses_lora(run):  # the checkpoint holds the tokenizer this run started with
        return load(resume_from)  # (a LoRA checkpoint holds the adapter alone: the base comes from --init_from)
    if run.model.init_from is None:
        tokenizer = build_tokenizer(run.data.tokenizer, corpus, bpe_vocab_size=run.data.bpe_vocab_size)
        return new_model(tokenizer, run.model), tokenizer
    model, tokenizer = load_init_model(run)
    if "tokenizer" in run.passed:
        requested = build_tokenizer(run.data.tokenizer, corpus, bpe_vocab_size=run.data.bpe_vocab_size)
        if requested.get_vocab() != tokenizer.get_vocab():
            raise TrainingSetupError(
                f"--tokenizer {run.data.tokenizer} ({len(requested)} tokens) does not match the tokenizer of "
                f"--init_from {run.model.init_from} ({len(tokenizer)} tokens); drop --tokenizer to use the model's own."
            )
    return model, tokenizer


def final_evaluation(trainer: Trainer) -> dict:
    """The validation metrics at the last step: logged already when the last step was an evaluation step."""
    evaluations = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    if evaluations and evaluations[-1]["step"] == trainer.state.global_step:
        return evaluations[-1]
    return trainer.evaluate()


def set_generation_defaults(model, tokenizer, chat: bool) -> None:
    """What `generate()`, pipelines and app.py use unless told otherwise."""
    config = model.generation_config
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.max_new_tokens = 256
    if chat:  # answers have one right form (the synthetic task is scored by exact match): greedy
        config.do_sample = False
    else:  # nanoGPT's sample.py settings
        config.do_sample, config.temperature, config.top_k = True, 0.8, 200


def choose_loss(run: RunArguments, config: TinyGPTConfig) -> str:
    """Keep the fused loss (the default on CUDA with Liger installed) where it pays, and say which loss a CUDA run
    trains with: a note for the device line."""
    if run.training.use_liger_kernel and "use_liger_kernel" not in run.passed and not fused_loss_pays(config):
        run.training.use_liger_kernel = False
        return "; loss: plain (a vocabulary this small gains nothing from the fused one)"
    if run.training.use_liger_kernel:
        return "; loss: Liger Kernel's fused linear cross-entropy (--use_liger_kernel false: the plain one)"
    if run.policy.device == "cuda" and not liger_installed():
        return "; loss: plain (pip install 'tinygpt[gpu]' for the fused one)"
    if run.policy.device == "cuda":
        return "; loss: plain"
    return ""


def train(run: RunArguments, wall_start: float) -> RunSummary | None:
    """Check every input, train, evaluate; the main process then saves the model with its report."""
    args = run.training
    is_main = args.process_index == 0
    check_arguments(run)
    check_lora_arguments(run)
    output_dir = Path(args.output_dir)
    settings = run_settings(run)
    check_output_dir(output_dir, settings)
    resume_from, resume_note = checkpoint_to_resume(args.resume_from_checkpoint, output_dir)
    if resume_from is not None:
        check_checkpoint_run(Path(resume_from), settings)
    start_step = checkpoint_step(resume_from) if resume_from else 0
    # The Trainer would train one more step from a checkpoint at max_steps (on conversations): nothing to train.
    finished = resume_from is not None and 0 < args.max_steps <= start_step
    with args.main_process_first(desc="reading the corpus"):  # one process fills datasets' cache, the rest read it
        corpus, conversations, heldout, description = read_sources(run.data, seed=args.seed)
        texts = corpus["text"] if isinstance(corpus, datasets.Dataset) else corpus  # chunks read lazily, in batches
        if run.data.tokenizer == "char" and isinstance(corpus, datasets.Dataset) and corpus.cache_files:
            texts = corpus_characters(corpus)  # all a char vocabulary needs, cached for the next run
    # The Trainer seeds only when it starts, after the model exists: seeded here, --seed decides the initial
    # weights too, so one seed is one run (nanoGPT's torch.manual_seed before it builds its GPT).
    set_seed(args.seed)
    model, tokenizer = model_and_tokenizer(run, texts, resume_from)
    block_size = model.config.n_positions
    if conversations is None:  # every window is block_size tokens long: check that one fits before encoding
        check_context_fits(run, model.config)
    tokenizer.model_max_length = VERY_LARGE_INTEGER  # a saved limit would warn about the whole corpus's length
    if conversations is not None:
        data = conversation_data(run, tokenizer, block_size, conversations, heldout, description)
    else:
        data = token_window_data(run, tokenizer, block_size, corpus, description)
    tokenizer.model_max_length = block_size  # saved with it: pipelines then never feed the model more
    set_generation_defaults(model, tokenizer, chat=data.chat)
    loss = choose_loss(run, model.config)
    if uses_lora(run):  # the base frozen, a LoRA adapter on its projections trained
        model = with_lora(model, run)

    if finished and final_model_step(output_dir) == start_step:  # the run ended already; change nothing
        if is_main:
            print(
                f"{resume_from} is already at step {start_step} of --max_steps {args.max_steps}: nothing left to "
                f"train; the final model in {output_dir} is kept as it is"
            )
        return None
    if is_main:  # every input is checked: from here on the folder belongs to this run
        print(f"device: {run.policy.device}, precision: {run.policy.precision} ({run.policy.reason}){loss}")
        if resume_note:
            print(resume_note)
        elif any(output_dir.glob("checkpoint-*")):
            print(f"note: starting {output_dir} over; --resume_from_checkpoint would continue its checkpoints")
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / RUN_SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            raise RunWriteError(f"{write_failure(error, output_dir, RUN_SETTINGS_FILE)}.") from error
        if uses_lora(run):
            print(f"{describe_lora(model, run)} on {data.description}")
        else:
            print(f"training {model.num_parameters() / 1e6:.2f}M parameters on {data.description}")

    trainer = build_trainer(model, tokenizer, args, data, run.model.muon_lr)
    stopper = stop_file_callback()  # $TINYGPT_STOP_FILE: a stop asked for without a signal (the app's Stop)
    if stopper is not None:
        trainer.add_callback(stopper)
    if finished:  # its final save was lost (or it came from elsewhere): evaluate the checkpoint's weights and save
        if is_main:
            print(
                f"{resume_from} is already at step {start_step} of --max_steps {args.max_steps}: nothing left to "
                "train; saving its model as the final one"
            )
        trainer.state = TrainerState.load_from_json(str(Path(resume_from, "trainer_state.json")))
        if uses_lora(run):  # the base came from --init_from: the checkpoint's adapter goes on it
            load_adapter_weights(model, resume_from)
        train_metrics = {"train_runtime": 0.0}
    else:
        try:
            train_metrics = trainer.train(resume_from_checkpoint=resume_from).metrics
        except pickle.UnpicklingError:  # a checkpoint's optimizer.pt / rng_state.pth: plain tensors only, never code
            raise TrainingSetupError(
                f"{resume_from} holds a pickled file (its optimizer or random state) that is not plain tensors, "
                "which torch will not read: resume from another checkpoint, or start over."
            ) from None
        if stopper is not None and stopper.stopped_at is not None:  # its checkpoint is saved; no final model
            raise TrainingStopped(stopper.stopped_at)
    eval_metrics = final_evaluation(trainer)
    if not math.isfinite(eval_metrics["eval_loss"]):  # NaN weights: nothing worth saving over what is there
        raise TrainingSetupError(
            f"the run diverged: the validation loss at step {trainer.state.global_step} is "
            f"{eval_metrics['eval_loss']}, so no final model was saved; try a lower --learning_rate "
            f"(it was {args.learning_rate:g})."
        )
    summary = None
    if is_main:
        # keep_fp32_wrapper=False: the model as built, without the autocast that bf16 training wrapped its forward in
        model = trainer.accelerator.unwrap_model(
            trainer.model, keep_fp32_wrapper=False, keep_torch_compile=False
        ).eval()
        summary = summarize(
            run,
            model,
            tokenizer,
            data,
            trainer.state,
            train_metrics,
            eval_metrics,
            start_step,
            wall_start,
            fsdp=trainer.is_fsdp_enabled,  # --fsdp, or accelerate launch's FSDP config
        )
        try:
            save_final_model(output_dir, model, tokenizer, summary, trainer.state.log_history)
        except WRITE_ERRORS as error:
            raise RunWriteError(
                f"{write_failure(error, output_dir, 'the final model')}; the checkpoints and every file already "
                "there are intact: free some space, then run again with --resume_from_checkpoint to save it."
            ) from error
        print_summary(summary, output_dir)
    trainer.accelerator.wait_for_everyone()  # the other processes keep the process group up until the save
    trainer.accelerator.end_training()
    return summary


def main(argv: list[str] | None = None, started_at: float | None = None) -> int:
    """`python train.py ...`: returns the exit code; bad input is one line on stderr, never a traceback.

    `started_at` (a `time.perf_counter()` reading) starts the run's wall clock; train.py takes it before its
    imports, so the reported wall time is what the user waited for.
    """
    wall_start = time.perf_counter() if started_at is None else started_at
    try:
        train(parse_args(argv), wall_start)
    except (TrainingSetupError, DataError, ModelLoadError, HubError, RunWriteError) as error:
        print(f"train.py: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("train.py: interrupted; continue with --resume_from_checkpoint", file=sys.stderr)
        return 130
    except TrainingStopped as stop:  # the stop file: as Ctrl-C, with a checkpoint of the step it stopped at
        print(f"train.py: {stop}, checkpoint saved; continue with --resume_from_checkpoint", file=sys.stderr)
        return 130
    return 0
