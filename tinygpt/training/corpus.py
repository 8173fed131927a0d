"""What a run trains on: plain text as token windows, or conversations (a chat file, or by default the built-in
synthetic task) as padded sequences whose labels supervise only the assistant's tokens.

- Plain text becomes one token tensor that lives on the training device; the dataset yields window offsets and
  `WindowCollator` gathers (B, T) batches there, so the input pipeline costs no host work, no workers and no
  pinned memory.
- A context that cannot fit the device's memory is refused up front (`check_context_fits`).
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    DataCollatorForSeq2Seq,
)

from ..data import (
    TokenWindows,
    WindowCollator,
    conversation_dataset,
    encode_text,
    read_conversations,
    read_text_sources,
    split_train_val,
)
from ..synthetic_chat import make_synthetic_chat
from .args import DataArguments, RunArguments, TrainingSetupError

# ----------------------------------------------------------------------------------------------------------
# Data


@dataclass
class TrainingData:
    description: str  # for the model card
    train_dataset: object
    eval_dataset: object
    collator: object
    tokens_per_example: float  # for tokens/s: the window length, or the mean conversation length
    sample_prompt: torch.Tensor  # (1, T) ids to show a sample from
    chat: bool  # conversations (a chat model) rather than plain text
    heldout: list | None = None  # synthetic questions scored by exact match


def read_sources(data: DataArguments, seed: int):
    """(corpus text, conversations or None, held-out questions or None, description) from the chosen source."""
    if data.chat_file and (data.text_file or data.dataset_name):
        raise TrainingSetupError(
            "--chat_file trains a chat model and cannot be mixed with --text_file/--dataset_name; pick one."
        )
    if data.text_file or data.dataset_name:
        corpus = read_text_sources(
            text_files=data.text_file or None,
            dataset_name=data.dataset_name,
            dataset_config=data.dataset_config,
            text_column=data.text_column,
            dataset_split=data.dataset_split,
        )
        described = [Path(path).name for path in data.text_file] + ([data.dataset_name] if data.dataset_name else [])
        return corpus, None, None, "text: " + ", ".join(described)
    if data.chat_file:
        conversations, heldout = read_conversations(data.chat_file), None
        described = f"conversations: {Path(data.chat_file).name}"
    else:
        conversations, heldout = make_synthetic_chat(seed=seed, num_train=data.synthetic_conversations)
        described = "the built-in synthetic chat task (tinygpt.synthetic_chat)"
    corpus = "".join(message["content"] for conversation in conversations for message in conversation)
    return corpus, conversations, heldout, f"{described}, {len(conversations)} conversations"


def token_window_data(run: RunArguments, tokenizer, block_size: int, corpus: str, description: str) -> TrainingData:
    t = run.training
    if t.max_steps <= 0:
        raise TrainingSetupError("token-window training is counted in steps: pass --max_steps N (N > 0).")
    ids = encode_text(tokenizer, corpus)  # (N,)
    train_ids, val_ids = split_train_val(ids, val_fraction=run.data.val_fraction)
    if len(val_ids) <= block_size < len(train_ids):  # TokenWindows would blame "the corpus" for it
        raise TrainingSetupError(
            f"the validation split has {len(val_ids)} tokens but a context of {block_size} needs at least "
            f"{block_size + 1}; raise --val_fraction, pass more text, or a smaller --block_size."
        )
    # The Trainer has one collator for training and evaluation, so it gathers from the whole stream on the
    # device: training windows from its head, validation windows from its tail (their offsets shifted past
    # the training tokens).
    tokens = ids.to(t.device)
    windows_needed = t.max_steps * t.per_device_train_batch_size * t.gradient_accumulation_steps * t.world_size
    train_windows = TokenWindows(train_ids, block_size, num_windows=windows_needed, seed=t.seed)
    val_windows = TokenWindows(val_ids, block_size, num_windows=run.data.eval_windows, seed=0)
    eval_dataset = [{"offset": len(train_ids) + val_windows[i]["offset"]} for i in range(len(val_windows))]
    return TrainingData(
        description=f"{description} ({len(train_ids):,} training and {len(val_ids):,} validation tokens)",
        train_dataset=train_windows,
        eval_dataset=eval_dataset,
        collator=WindowCollator(tokens, block_size),
        tokens_per_example=block_size,
        sample_prompt=val_ids[None, : min(16, block_size // 2)],
        chat=False,
    )


def memory_bytes(device: str) -> int | None:
    """What the training device can hold: a CUDA GPU's memory, else the machine's (or its cgroup's) RAM."""
    if device == "cuda":
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def check_context_fits(run: RunArguments, config) -> None:
    """Refuse a window whose training step cannot fit in memory; warn when a step would take minutes.

    Estimates, from the shape: a step keeps about 18 activations of width n_embd per layer and token for the
    backward pass, plus the logits (and their softmax and gradient) over the vocabulary; the weights, gradients
    and Adam's two moments are 16 bytes a parameter. SDPA never materializes the T x T attention matrix, but
    its work grows with T: a step costs 6 x parameters + 6 x n_layer x T x n_embd FLOPs a token (causal).
    """
    t, T = run.training, config.n_positions
    value_bytes = 4 if run.policy.precision == "fp32" else 2
    per_token = config.n_layer * 18 * config.n_embd + 3 * config.vocab_size + 2 * config.n_embd
    parameters = config.n_layer * 12 * config.n_embd**2 + (config.vocab_size + T) * config.n_embd
    needed = t.per_device_train_batch_size * T * per_token * value_bytes + 16 * parameters
    available = memory_bytes(run.policy.device)
    if available is not None and needed > available:
        raise TrainingSetupError(
            f"a context of {T:,} tokens cannot fit: a step of {t.per_device_train_batch_size} windows needs about "
            f"{needed / 2**30:,.0f} GiB and this {run.policy.device} has {available / 2**30:,.0f} GiB; pass a "
            "smaller --block_size or --per_device_train_batch_size."
        )
    flops_per_token = 6 * parameters + 6 * config.n_layer * T * config.n_embd
    flops = flops_per_token * t.per_device_train_batch_size * T * t.gradient_accumulation_steps
    rate = {"cuda": 1e14, "mps": 5e12}.get(run.policy.device, 5e10 * torch.get_num_threads())  # FLOP/s, roughly
    if flops / rate > 60 and run.training.process_index == 0:
        attention = 6 * config.n_layer * T * config.n_embd / flops_per_token
        print(
            f"note: a step of {t.per_device_train_batch_size} x {T:,} tokens is about {flops / 1e12:,.0f} TFLOP "
            f"({attention:.0%} of it attention over the context): minutes or more per step on this "
            f"{run.policy.device}; a smaller --block_size is much faster."
        )


def conversation_data(
    run: RunArguments, tokenizer, block_size: int, conversations, heldout, description: str
) -> TrainingData:
    n_val = max(1, round(len(conversations) * run.data.val_fraction))
    if n_val >= len(conversations):
        raise TrainingSetupError(
            f"{len(conversations)} conversation(s) leave none to train on after holding out {n_val}; add more."
        )
    train_dataset = conversation_dataset(tokenizer, conversations[:-n_val], max_length=block_size)
    eval_dataset = conversation_dataset(
        tokenizer, conversations[-n_val:][: run.data.eval_windows], max_length=block_size
    )
    first_reply = next((i for i, message in enumerate(conversations[-1]) if message["role"] == "assistant"), None)
    prompt_messages = heldout[0].messages if heldout else conversations[-1][:first_reply]
    sample_prompt = tokenizer.apply_chat_template(
        prompt_messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    return TrainingData(
        description=description,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
        tokens_per_example=sum(len(ids) for ids in train_dataset["input_ids"]) / len(train_dataset),
        sample_prompt=sample_prompt["input_ids"],
        chat=True,
        heldout=heldout,
    )
