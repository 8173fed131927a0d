"""The one model card (README.md) every tinygpt model folder or repo gets, through huggingface_hub's `ModelCard`.

Three places write one: a training run (its figures, loss curve and sample), a push of a folder that has no card
(its shape and how to load it), and an export to plain GPT-2 (how to load it without tinygpt, with vLLM too). They
share this template, so the shape table, the usage and the Space link read the same everywhere; each section
appears only when its facts are known. The YAML front matter (library_name, pipeline_tag, tags, base_model) is
what the Hub reads; a run's validation bits per byte, and what `tinygpt eval --push` measures, go in its
model-index (`ModelCardData.eval_results`), which the Hub shows as the model's evaluation results.
"""

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{% if adapter -%}
A LoRA adapter (rank {{ adapter.r }}, alpha {{ adapter.alpha }}, on {{ adapter.targets }}) for the TinyGPT model
{{ adapter.base }}{% if run %}, trained by tinygpt's `train.py --preset {{ run.preset }} --lora_r {{ adapter.r }}` on the
Hugging Face Trainer and PEFT{% endif %}. It holds the adapter's weights only: the base comes from {{ adapter.base }}.
{%- elif plain -%}
A plain GPT-2 exported from a tinygpt model, with a {{ tokenizer }} tokenizer and the chat template
(`<BOS>system<EOS><user>:...<EOS><assistant>:...<EOS>`). It needs neither tinygpt nor remote code.
{%- elif run -%}
A {{ shape.n_layer }}-layer GPT trained by tinygpt's `train.py --preset {{ run.preset }}` on the Hugging Face
Trainer, with a {{ tokenizer }} tokenizer and a chat template (`<BOS>system<EOS><user>:...<EOS><assistant>:...<EOS>`).
{%- else -%}
A TinyGPT model: a GPT-2-shaped decoder with a {{ tokenizer }} tokenizer and a chat template
(`<BOS>system<EOS><user>:...<EOS><assistant>:...<EOS>`).{% if merged %} It is {{ merged }} (`tinygpt merge`).{% endif %}
{%- endif %}
{% if space_url %}
Chat with it in the Space [{{ space_id }}]({{ space_url }}).
{% endif %}
{% if shape %}
## Model

| | |
|---|---|
| layers x heads x width | {{ shape.n_layer }} x {{ shape.n_head }} x {{ shape.n_embd }} |
| context window | {{ shape.n_positions }} tokens |
| vocabulary | {{ shape.vocab_size }} rows |
{%- if run %}
| parameters | {{ "{:,}".format(run.parameters) }} ({{ "{:,}".format(run.parameters_without_positions) }} without position embeddings) |
{%- if run.trainable_parameters %}
| LoRA parameters (trained) | {{ "{:,}".format(run.trainable_parameters) }} ({{ "%.2f" | format(100 * run.trainable_parameters / run.parameters) }}% of the base's) |
{%- endif %}
{%- if run.init_from %}
| fine-tuned from | {{ run.init_from }} |
{%- endif %}
{%- endif %}
{% endif %}{% if run %}
## Training

- data: {{ run.data }}
- {{ "{:,}".format(run.global_step) }} steps, {{ "{:,}".format(run.tokens_seen) }} tokens, on {{ run.device }} in {{ run.precision }}
- {{ "%.1f" | format(run.train_seconds) }} s of training ({{ "%.0f" | format(run.tokens_per_second) }} tokens/s), {{ "%.1f" | format(run.wall_seconds) }} s wall in all

![loss](loss.png)

## Results

| metric | value |
|---|---|
{%- if run.val_loss is not none %}
| validation loss | {{ "%.4f" | format(run.val_loss) }} |
{%- endif %}
{%- if run.val_perplexity is not none %}
| validation perplexity | {{ "%.3f" | format(run.val_perplexity) }} |
{%- endif %}
{%- if bits_per_byte is not none %}
| validation bits per byte | {{ "%.4f" | format(bits_per_byte) }} |
{%- endif %}
{%- if run.exact_match is not none %}
| held-out exact match ({{ run.heldout_questions }} questions) | {{ "%.1f" | format(100 * run.exact_match) }}% |
{%- endif %}

A sample with the saved generation settings ({{ "greedy" if run.chat else "temperature 0.8, top-k 200" }}):

```
{{ run.sample }}
```
{% endif %}
## Use
{% if adapter %}
```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

# The base's own code files (trust_remote_code) build it; PEFT then applies the adapter.
model = AutoPeftModelForCausalLM.from_pretrained("{{ where }}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{{ where }}", trust_remote_code=True)
```

With tinygpt: `tinygpt chat {{ where }}` (the adapter is merged into the base, which decodes at full speed), and
`tinygpt merge {{ where }} OUT` writes the merged model as a full model folder.
{% elif plain %}
```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{{ where }}"{{ subfolder_arg }})
tokenizer = AutoTokenizer.from_pretrained("{{ where }}"{{ subfolder_arg }})
messages = [{"role": "user", "content": "hi"}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
room = model.config.n_positions - inputs["input_ids"].shape[1]  # GPT-2's positions end at n_positions
reply = model.generate(**inputs, max_new_tokens=room)[0, inputs["input_ids"].shape[1]:]
print(tokenizer.decode(reply, skip_special_tokens=True))
```

With vLLM:

```bash
{% if subfolder %}hf download {{ where }} --include "{{ subfolder }}/*" --local-dir {{ local_name }}
vllm serve {{ local_name }}/{{ subfolder }} --max-model-len {{ shape.n_positions }}
{% else %}vllm serve {{ where }} --max-model-len {{ shape.n_positions }}
{% endif %}```

and chat through its OpenAI-compatible API (`/v1/chat/completions`), which applies the chat template.
{% else %}
```python
import tinygpt  # registers the tinygpt classes; without it pass trust_remote_code=True below
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

model = AutoModelForCausalLM.from_pretrained("{{ where }}")
tokenizer = AutoTokenizer.from_pretrained("{{ where }}")
generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
{%- if not run or run.chat %}
print(generator([{"role": "user", "content": "hello"}], max_new_tokens=64)[0]["generated_text"][-1]["content"])
{%- else %}
print(generator({{ prompt }}, max_new_tokens=200)[0]["generated_text"])
{%- endif %}
```

Without tinygpt installed: `AutoModelForCausalLM.from_pretrained("{{ where }}", trust_remote_code=True)` (and the
same for `AutoTokenizer`) runs the model files saved beside the weights. With tinygpt: `tinygpt chat {{ where }}`.
{% endif %}"""

SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")


def model_card(
    config,
    *,
    title: str,
    where: str,
    tokenizer: str,
    run=None,
    plain: bool = False,
    space_id: str | None = None,
    space_url: str | None = None,
    subfolder: str | None = None,
    adapter: dict | None = None,
    merged: str | None = None,
) -> ModelCard:
    """The card of a model with `config` (a TinyGPTConfig, or a GPT2Config for a plain export; None: shape unknown)
    found at `where` (a repo id or a folder). `run`: a finished training run's RunSummary; `plain`: the plain GPT-2
    export's card; `adapter`: a LoRA adapter's settings (`adapter_card_settings`), whose base the card names;
    `merged`: what a merged model was made of, in words."""
    base = adapter["base"] if adapter else run.init_from if run else None
    bits_per_byte = getattr(run, "eval_bits_per_byte", None)  # None too in a metrics.json from before it existed
    card_data = ModelCardData(
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        tags=[
            "tinygpt",
            "gpt2",
            "text-generation",
            *(["lora", "peft"] if adapter else []),
            *([f"preset-{run.preset}"] if run else []),
        ],
        # The Hub's base_model names a repo; a local folder is only mentioned in the text.
        base_model=base if base and not Path(base).exists() else None,
        model_name=title,
        eval_results=[validation_result(run.data, bits_per_byte)] if bits_per_byte is not None else None,
    )
    return ModelCard.from_template(
        card_data,
        template_str=TEMPLATE,
        title=title,
        where=where,
        tokenizer=tokenizer,
        shape={field: getattr(config, field) for field in SHAPE_FIELDS} if config is not None else None,
        adapter=adapter,
        merged=merged,
        run=run,
        bits_per_byte=bits_per_byte,
        plain=plain,
        prompt=json.dumps(run.sample[:12]) if run else None,  # the sample's opening as a Python string literal
        space_id=space_id,
        space_url=space_url,
        subfolder=subfolder,
        subfolder_arg=f', subfolder="{subfolder}"' if subfolder else "",
        local_name=where.split("/")[-1],
    )


def validation_result(data: str, bits_per_byte: float) -> EvalResult:
    """A training run's validation bits per byte as a model-index entry (`data`: the run's data in words)."""
    return EvalResult(
        task_type="text-generation",
        task_name="Language modeling",
        dataset_type="text",
        dataset_name=data,
        dataset_split="validation",
        metric_type="bits_per_byte",
        metric_name="validation bits per byte",
        metric_value=round(bits_per_byte, 6),
    )


def merge_eval_results(card: ModelCard, results: list[EvalResult], model_name: str) -> ModelCard:
    """`card` with `results` in its model-index: each replaces an entry that differs from it only in value, the
    rest are added; nothing else in the card changes. `model_name` names the model-index where the card has none."""
    kept = [old for old in card.data.eval_results or [] if not any(old.is_equal_except_value(new) for new in results)]
    card.data.model_name = card.data.model_name or model_name
    card.data.eval_results = kept + list(results)
    return card


def read_eval_results(readme: str | Path) -> list[EvalResult]:
    """The model-index of a card file ([] when there is none, or no card, or one the library cannot parse)."""
    if not Path(readme).is_file():  # ModelCard.load would take the name for a repo id and ask the Hub
        return []
    try:
        return ModelCard.load(readme, ignore_metadata_errors=True).data.eval_results or []
    except (OSError, ValueError):
        return []


def adapter_card_settings(adapter_config: dict) -> dict:
    """What a card says of a LoRA adapter, from its adapter_config.json."""
    targets = adapter_config.get("target_modules") or []
    return {
        "base": adapter_config.get("base_model_name_or_path"),
        "r": adapter_config.get("r"),
        "alpha": adapter_config.get("lora_alpha"),
        "targets": ", ".join(sorted(targets)) if isinstance(targets, list) else str(targets),
    }


__all__ = ["adapter_card_settings", "merge_eval_results", "model_card", "read_eval_results", "validation_result"]
