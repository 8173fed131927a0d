"""A Hugging Face Space that chats with a tinygpt model exported as plain GPT-2: transformers + gradio + torch only.

`tinygpt push MODEL owner/name --space owner/space` uploads this file as the Space's app.py, with MODEL_REPO and
MODEL_REVISION filled in: the model repo and the commit of that push, so the Space keeps running the model it was
published with. The plain GPT-2 export sits in the model repo's `gpt2/` folder. Nothing here imports tinygpt or
runs remote code, so the Space builds from requirements.txt alone.

Replies stream (transformers' TextIteratorStreamer, generate() in a thread). GPT-2's learned positions end at
n_positions: the oldest turns are dropped until the prompt leaves room for a reply.
"""

import threading

import gradio as gr
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

MODEL_REPO = "owner/name"  # set by tinygpt push
MODEL_REVISION = "main"  # set by tinygpt push: the model push's commit
SUBFOLDER = "gpt2"
MIN_REPLY_TOKENS = 16  # drop old turns until at least this many positions are left for the reply

tokenizer = AutoTokenizer.from_pretrained(MODEL_REPO, revision=MODEL_REVISION, subfolder=SUBFOLDER)
model = AutoModelForCausalLM.from_pretrained(MODEL_REPO, revision=MODEL_REVISION, subfolder=SUBFOLDER).eval()
window = model.config.n_positions


def text_of(content) -> str:
    """A message's text: a string (gradio_client) or a list of parts (the browser)."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def chat(message, history):
    messages = [{"role": turn["role"], "content": text_of(turn["content"])} for turn in history]
    messages.append({"role": "user", "content": text_of(message)})
    while True:
        input_ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]  # (1, T)
        if input_ids.shape[1] <= window - MIN_REPLY_TOKENS or len(messages) == 1:
            break
        messages = messages[1:]
    input_ids = input_ids[:, -(window - MIN_REPLY_TOKENS) :]  # one message longer than the window: keep its end
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    settings = dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=window - input_ids.shape[1],
        do_sample=False,
        streamer=streamer,
    )
    threading.Thread(target=model.generate, kwargs=settings, daemon=True).start()
    reply = ""
    for piece in streamer:
        reply += piece
        yield reply


demo = gr.ChatInterface(chat, title=MODEL_REPO, description=f"{MODEL_REPO} as plain GPT-2, at {MODEL_REVISION[:10]}")

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=2).launch()
