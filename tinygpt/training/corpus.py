"""What a run trains on: plain text as token windows, or conversations (a chat file, or by default the built-in
synthetic task) as padded sequences whose labels supervise only the assistant's tokens.

- Plain text is tokenized once into datasets' cache (tinygpt.data.tokenize_corpus; later runs reuse it) and read
  as random windows from the memory-mapped files. On a GPU, a corpus of up to 1/16 of its memory (as int32) is
  copied there whole, as before: a batch is then one gather on the device, with no host work, no workers and no
  pinned memory, which matters for small models whose steps take milliseconds. `--streaming` reads a dataset as
  it downloads, for corpora larger than the disk.
- A context that cannot fit the device's memory is refused up front (`check_context_fits`).
"""

import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from transformers import DataCollatorForSeq2Seq, default_data_collator

from tinygpt.data.conversations import conversation_dataset, read_conversations
from tinygpt.data.synthetic_chat import make_synthetic_chat
from tinygpt.data.text import streamed_windows, text_documents
from tinygpt.data.token_stream import TokenStream, TokenWindows, WindowCollator, split_point, tokenize_corpus
from tinygpt.evaluation.bits import MAX_COUNTED_TOKENS, labelled_bytes_per_token, stream_bytes_per_token
from tinygpt.training.args import DataArguments, RunArguments, TrainingSetupError

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
    # UTF-8 bytes of the validation text per token (conversations: of the replies per labelled token), which turns
    # the validation loss into bits per byte (eval_bits_per_byte); None when unknown
    bytes_per_token: float | None = None


def read_sources(data: DataArguments, seed: int):
    """(corpus, conversations or None, held-out questions or None, description) from the chosen source.

    The corpus is a string for conversations, the chunks (`tinygpt.data.text_documents`, a datasets.Dataset)
    for plain text, and None when streaming.
    """
    if data.chat_file and (data.text_file or data.dataset_name):
        raise TrainingSetupError(
            "--chat_file trains a chat model and cannot be mixed with --text_file/--dataset_name; pick one."
        )
    if data.streaming:
        if data.text_file or not data.dataset_name or data.dataset_name == "tiny_shakespeare":
            raise TrainingSetupError(
                "--streaming reads a Hub or local dataset (--dataset_name) as it downloads; drop --streaming for "
                "--text_file, tiny_shakespeare or conversations."
            )
        if data.tokenizer in ("char", "bpe"):
            raise TrainingSetupError(
                f"--streaming never holds the corpus, so --tokenizer {data.tokenizer} cannot be built from it; pass "
                "--tokenizer gpt2 or a saved tokenizer folder."
            )
        return None, None, None, f"text: {data.dataset_name} (streamed)"
    if data.text_file or data.dataset_name:
        documents = text_documents(
            text_files=data.text_file or None,
            dataset_name=data.dataset_name,
            dataset_config=data.dataset_config,
            text_column=data.text_column,
            dataset_split=data.dataset_split,
        )
        described = [Path(path).name for path in data.text_file] + ([data.dataset_name] if data.dataset_name else [])
        return documents, None, None, "text: " + ", ".join(described)
    if data.chat_file:
        conversations, heldout = read_conversations(data.chat_file), None
        described = f"conversations: {Path(data.chat_file).name}"
    else:
        conversations, heldout = make_synthetic_chat(seed=seed, num_train=data.synthetic_conversations)
        described = "the built-in synthetic chat task (tinygpt.data.synthetic_chat)"
    corpus = "".join(message["content"] for conversation in conversations for message in conversation)
    return corpus, conversations, heldout, f"{described}, {len(conversations)} conversations"


def token_window_data(
    run: RunArguments, tokenizer, block_size: int, documents: datasets.Dataset | None, description: str
) -> TrainingData:
    """Random windows of the tokenized chunks (None when streaming: read as the stream arrives)."""
    t = run.training
    if t.max_steps <= 0:
        raise TrainingSetupError("token-window training is counted in steps: pass --max_steps N (N > 0).")
    if run.data.streaming:
        return streamed_window_data(run, tokenizer, block_size, description)
    with t.main_process_first(desc="tokenizing the corpus"):  # one process writes the cache, the others read it
        tokens, reused = tokenize_corpus(tokenizer, documents)
    stream = TokenStream(tokens)
    if t.process_index == 0:
        verb = "reusing" if reused else "wrote"
        print(
            f"{verb} {len(stream):,} tokens ({stream.pieces[0].dtype}) in datasets' cache: {tokens.cache_files[0]['filename']}"
        )
    n_train = split_point(len(stream), val_fraction=run.data.val_fraction)
    n_val = len(stream) - n_train
    if n_val <= block_size < n_train:  # TokenWindows would blame "the corpus" for it
        raise TrainingSetupError(
            f"the validation split has {n_val} tokens but a context of {block_size} needs at least "
            f"{block_size + 1}; raise --val_fraction, pass more text, or a smaller --block_size."
        )
    # The Trainer has one collator for training and evaluation, so it gathers from the whole stream: training
    # windows from its head, validation windows from its tail (their offsets shifted past the training tokens).
    tokens_on_device = t.device.type == "cuda" and 4 * len(stream) <= memory_bytes("cuda") // 16
    source = stream.to_tensor().to(t.device) if tokens_on_device else stream
    windows_needed = t.max_steps * t.per_device_train_batch_size * t.gradient_accumulation_steps * t.world_size
    train_windows = TokenWindows(n_train, block_size, num_windows=windows_needed, seed=t.seed)
    val_windows = TokenWindows(n_val, block_size, num_windows=run.data.eval_windows, seed=0)
    eval_dataset = [{"offset": n_train + val_windows[i]["offset"]} for i in range(len(val_windows))]
    return TrainingData(
        description=f"{description} ({n_train:,} training and {n_val:,} validation tokens)",
        train_dataset=train_windows,
        eval_dataset=eval_dataset,
        collator=WindowCollator(source, block_size),
        tokens_per_example=block_size,
        sample_prompt=stream.windows([n_train], min(16, block_size // 2)),
        chat=False,
        bytes_per_token=stream_bytes_per_token(tokenizer, stream.read(n_train, min(n_val, MAX_COUNTED_TOKENS))),
    )


def streamed_window_data(run: RunArguments, tokenizer, block_size: int, description: str) -> TrainingData:
    """Consecutive windows of a streamed dataset, shuffled in a buffer. A stream has no known end, so nanoGPT's
    last-10% split cannot be taken: its first --eval_windows windows validate and training starts after them."""
    d, t = run.data, run.training
    windows = streamed_windows(tokenizer, d.dataset_name, d.dataset_config, d.text_column, d.dataset_split, block_size)
    eval_dataset = list(windows.take(d.eval_windows))
    if not eval_dataset:
        raise TrainingSetupError(f"--dataset_name {d.dataset_name} streams fewer than {block_size + 1} tokens.")
    train_dataset = windows.skip(d.eval_windows).shuffle(seed=t.seed, buffer_size=10_000)
    return TrainingData(
        description=f"{description} ({len(eval_dataset):,} validation windows first, then training windows)",
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        collator=default_data_collator,
        tokens_per_example=block_size,
        sample_prompt=eval_dataset[0]["input_ids"][None, : min(16, block_size // 2)],
        chat=False,
        bytes_per_token=stream_bytes_per_token(tokenizer, torch.cat([row["input_ids"] for row in eval_dataset])),
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


def shape_parameters(n_layer: int, n_embd: int, vocab_size: int, block_size: int) -> int:
    """About how many parameters a model of this shape has (12 n_embd^2 a block, plus the embeddings)."""
    return n_layer * 12 * n_embd**2 + (vocab_size + block_size) * n_embd


def training_bytes(n_layer: int, n_embd: int, vocab_size: int, block_size: int, batch: int, value_bytes: int) -> int:
    """About the memory a training step of this shape takes: the weights, gradients and Adam's two moments are
    16 bytes a parameter; a micro-batch keeps about 18 activations of width n_embd per layer and token for the
    backward pass, plus the logits (and their softmax and gradient) over the vocabulary."""
    per_token = n_layer * 18 * n_embd + 3 * vocab_size + 2 * n_embd
    return batch * block_size * per_token * value_bytes + 16 * shape_parameters(n_layer, n_embd, vocab_size, block_size)


def check_context_fits(run: RunArguments, config) -> None:
    """Refuse a micro-batch of windows that cannot fit in memory (`training_bytes`); warn when a step would take
    minutes. SDPA never materializes the T x T attention matrix, but its work grows with T: a step costs
    6 x parameters + 6 x n_layer x T x n_embd FLOPs a token (causal).
    """
    t, T = run.training, config.n_positions
    value_bytes = 4 if run.policy.precision == "fp32" else 2
    parameters = shape_parameters(config.n_layer, config.n_embd, config.vocab_size, T)
    needed = training_bytes(
        config.n_layer, config.n_embd, config.vocab_size, T, t.per_device_train_batch_size, value_bytes
    )
    available = memory_bytes(run.policy.device)
    if available is not None and needed > available:
        raise TrainingSetupError(
            f"a micro-batch of {t.per_device_train_batch_size} windows of {T:,} tokens cannot fit: it needs about "
            f"{needed / 2**30:,.0f} GiB and this {run.policy.device} has {available / 2**30:,.0f} GiB; pass a "
            "smaller --per_device_train_batch_size (a larger --gradient_accumulation_steps keeps the tokens a step) "
            "or --block_size."
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
        bytes_per_token=labelled_bytes_per_token(tokenizer, eval_dataset["input_ids"], eval_dataset["labels"]),
    )
