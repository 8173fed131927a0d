"""Renders a chat template once, in a process of its own: `python render_template.py` reads {"template",
"special_tokens"} as JSON on stdin and prints {"length"} or {"error"} as JSON.

Why a process: a template is code from a model folder. Jinja's sandbox keeps it from touching anything, but not
from looping for hours or asking for gigabytes, and a thread cannot be stopped. tinygpt.hub.checks runs this file
with a time limit and a memory limit, and kills it past them. It imports nothing of tinygpt (so it starts in a
second, without torch): transformers renders the template exactly as it will at chat time, on a throwaway
tokenizer that carries the model's special tokens.
"""

import json
import sys

from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

EXCHANGE = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def main() -> None:
    request = json.load(sys.stdin)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
        **{name: value for name, value in request["special_tokens"].items() if isinstance(value, str)},
    )
    tokenizer.chat_template = request["template"]
    try:
        text = tokenizer.apply_chat_template(EXCHANGE, tokenize=False)
    except Exception as error:  # noqa: BLE001 - whatever the template raises is the answer
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(json.dumps({"error": type(error).__name__ + (f": {detail}" if detail else "")}))
        return
    print(json.dumps({"length": len(text)}))


if __name__ == "__main__":
    main()
