"""Shared by the chat, app and browser tests: a tiny chat model that learned a few replies, and the app serving it.

"Sensible replies" need a model that learned something: a 2-layer character model trained with the
transformers Trainer on a handful of repeated conversations, rendered with the tokenizer's chat template exactly
as real training does (a few seconds on 2 cores). Both are made once per test process (functools.cache), as
pytest cannot share a session fixture between test files without conftest.py.
"""

import atexit
import functools
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments, set_seed

from tests.fake_hub import start_fake_hub
from tests.servers import free_port, wait_until_answering
from tinygpt import TinyGPTCharTokenizer
from tinygpt.training.args import ModelArguments
from tinygpt.training.report import plot_losses
from tinygpt.training.trainer import new_model

REPO = Path(__file__).resolve().parent.parent

CONVERSATIONS = [
    ("hi", "hello!"),
    ("how are you?", "i am fine, thanks."),
    ("what is your name?", "my name is tinygpt."),
    ("bye", "goodbye!"),
]
N_POSITIONS = 64


@functools.cache
def trained_chat_model() -> Path:
    """Folder of a saved model + tokenizer answering "hi" with "hello!" (greedy), with all_results.json and loss.png."""
    out_dir = Path(tempfile.mkdtemp(prefix="tinygpt-chat-model-"))
    tokenizer = TinyGPTCharTokenizer.from_corpus(q + a for q, a in CONVERSATIONS)
    shape = ModelArguments(
        n_layer=2, n_head=4, n_embd=64, block_size=N_POSITIONS, dropout=0.0, bias=True, activation_function="gelu"
    )
    # Every question alone, after every other one and after every two others, so replies do not depend on the turns
    # before them or on where in the window they start.
    chats = [list(chat) for turns in (1, 2, 3) for chat in itertools.product(CONVERSATIONS, repeat=turns)]
    texts = [
        tokenizer.apply_chat_template(
            [{"role": role, "content": text} for q, a in chat for role, text in (("user", q), ("assistant", a))],
            tokenize=False,
        )
        for chat in chats
    ]
    dataset = Dataset.from_dict({"text": texts}).map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=N_POSITIONS),
        batched=True,
        remove_columns=["text"],
    )
    args = TrainingArguments(
        output_dir=str(out_dir),
        max_steps=120,
        per_device_train_batch_size=16,
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=20,
        seed=0,
    )
    set_seed(0)  # the same initial weights every run, so the same learned replies
    trainer = Trainer(
        model=new_model(tokenizer, shape),  # as train.py builds a model from its tokenizer
        args=args,
        train_dataset=dataset,
        eval_dataset=dataset.select(range(len(CONVERSATIONS))),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
    )
    # One intra-op thread: on a busy 2-core machine two threads fight over the cores and each step of this tiny
    # model gets ~10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer.train()
        trainer.save_metrics("all", trainer.evaluate())  # all_results.json with eval_loss, as train.py writes
    finally:
        torch.set_num_threads(threads)
    trainer.save_model(str(out_dir))
    plot_losses(trainer.state.log_history, out_dir / "loss.png", title="chat fixture")  # as train.py does
    return out_dir


HUB_TOKEN = "hf_chat_app_test_token_0123456789"  # the only token the fake hub accepts


@dataclass
class RunningApp:
    url: str  # the app, http://127.0.0.1:PORT/
    hub_url: str  # its HF_ENDPOINT: a fake hub in this process
    models_dir: Path  # its --models_dir: "chat" (the trained model) and "no-weights" (config.json only)
    log: Path  # its stdout + stderr


@functools.cache
def running_app() -> RunningApp:
    """`python app.py` serving trained_chat_model() on a free port, with HF_ENDPOINT at a fake hub; stopped at exit.

    One per test process: the client and browser tests share it (starting one costs ~10 s of imports).
    """
    work = Path(tempfile.mkdtemp(prefix="tinygpt-app-"))
    model = trained_chat_model()
    models_dir = work / "runs"
    (models_dir / "no-weights").mkdir(parents=True)
    (models_dir / "chat").symlink_to(model)
    shutil.copy(model / "config.json", models_dir / "no-weights" / "config.json")
    hub_url, stop_hub = start_fake_hub(work / "hub", HUB_TOKEN)

    port = free_port()
    env = {**os.environ, "HF_ENDPOINT": hub_url, "NO_PROXY": "localhost,127.0.0.1", "no_proxy": "localhost,127.0.0.1"}
    env.pop("HF_TOKEN", None)
    log = work / "app.log"
    command = [sys.executable, "app.py", "--model", str(model), "--models_dir", str(models_dir), "--port", str(port)]
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)

    def stop():
        process.terminate()
        process.wait(timeout=30)
        stop_hub()

    atexit.register(stop)
    url = f"http://127.0.0.1:{port}/"
    wait_until_answering(process, url, log, "app.py")
    return RunningApp(url=url, hub_url=hub_url, models_dir=models_dir, log=log)
