"""The checks behind the one loader (tinygpt.hub.loader): every way a saved folder can be broken becomes one clear
line, a `ModelLoadError`, before anything is built from it.

`from_pretrained` already does the loading; this module only checks first what it would otherwise report as
a traceback from deep inside safetensors, a size-mismatch table or a "MISSING" report over random weights: a
config.json that is not JSON, a wrong `model_type`, missing, truncated or corrupt weights, weights that do not
fit config.json (every tensor's name and shape is compared, from the safetensors header only), a tokenizer
larger than the embedding.

No code from a folder ever runs: the installed TinyGPT classes do the loading, and every Auto* call passes
`trust_remote_code=False`, so transformers never asks "[y/N]" and a folder that needs its own code is refused.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoTokenizer, GenerationConfig
from transformers.utils import cached_file

from tinygpt.configuration_tinygpt import TinyGPTConfig
from tinygpt.data.errors import first_line
from tinygpt.modeling_tinygpt import TinyGPTForCausalLM
from tinygpt.tokenization_tinygpt import CHAT_TEMPLATE

EXCHANGE = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]  # what a template must render
TEMPLATE_SECONDS = 5  # a template renders one exchange in milliseconds; the rest is for the imports
TEMPLATE_MEMORY = 2 << 30  # address space of the rendering process, imports included
TEMPLATE_MAX_CHARS = 1 << 20


class ModelLoadError(ValueError):
    """A saved model cannot be used; the message names the file or value and what to do."""


def load_config(name_or_path: str | os.PathLike, revision: str | None = None) -> TinyGPTConfig:
    if os.path.isdir(name_or_path) and not os.path.isfile(os.path.join(name_or_path, "config.json")):
        raise ModelLoadError(
            f"{name_or_path}: no config.json in this folder; point at a folder written by save_pretrained or train.py."
        )
    if not os.path.exists(name_or_path) and (
        str(name_or_path).count("/") != 1 or str(name_or_path).startswith((".", "/"))
    ):
        raise ModelLoadError(f"{name_or_path}: no such folder, and not a Hub repo id of the form owner/name.")
    if os.path.isdir(name_or_path):
        _check_json(os.path.join(name_or_path, "config.json"))
    try:
        config = AutoConfig.from_pretrained(name_or_path, revision=revision, trust_remote_code=False)
    except ValueError as error:  # includes unknown model types; check the raw field for a friendlier line
        raise ModelLoadError(f"{name_or_path}: config.json is not a tinygpt config ({first_line(error)})") from error
    except StrictDataclassError as error:  # a field of the wrong type, e.g. "n_layer": "2"; the last line names it
        raise ModelLoadError(
            f"{name_or_path}: config.json has a bad field ({str(error).splitlines()[-1].strip()})"
        ) from error
    except OSError as error:
        raise ModelLoadError(f"{name_or_path}: no config.json found ({first_line(error)})") from error
    if config.model_type != TinyGPTConfig.model_type:
        raise ModelLoadError(
            f"{name_or_path}: config.json has model_type {config.model_type!r}, not 'tinygpt'; "
            "load it with its own model class, or convert GPT-2 with TinyGPTForCausalLM.from_gpt2."
        )
    return config


def check_weights(name_or_path: str | os.PathLike, config: TinyGPTConfig, revision: str | None = None) -> None:
    """Read only the safetensors header: catches missing/truncated/corrupt files and shape mismatches."""
    try:
        weights_file = cached_file(name_or_path, "model.safetensors", revision=revision)
    except OSError as error:
        if os.path.isdir(name_or_path):  # transformers' text would send the user to a Hub URL made of the path
            raise ModelLoadError(
                f"{name_or_path}: no model.safetensors; save the model there (save_pretrained) or pick its folder."
            ) from error
        raise ModelLoadError(f"{name_or_path}: no model.safetensors ({first_line(error)})") from error
    try:
        with safe_open(weights_file, framework="pt") as weights:
            saved = {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}
    except SafetensorError as error:
        raise ModelLoadError(f"{weights_file} is truncated or corrupt ({error}); save or download it again.") from error
    if "transformer.wte.weight" not in saved:  # a readable file without our embedding
        raise ModelLoadError(f"{weights_file} holds no TinyGPT weights (no transformer.wte.weight).")
    wte_rows, wte_width = saved["transformer.wte.weight"]
    if (wte_rows, wte_width) != (config.vocab_size, config.n_embd):
        raise ModelLoadError(
            f"{weights_file}: token embedding is {wte_rows}x{wte_width} but config.json says "
            f"vocab_size={config.vocab_size}, n_embd={config.n_embd}; the weights belong to another config."
        )
    _check_every_weight(weights_file, saved, config)


def _check_every_weight(weights_file: str, saved: dict[str, tuple], config: TinyGPTConfig) -> None:
    """Every tensor the config's model needs is there with its shape, and nothing else: else from_pretrained
    would fill the gaps with random weights (only logging "MISSING") or stop on a size-mismatch traceback."""
    expected = expected_shapes(config)
    if config.tie_word_embeddings:  # the tied head is not stored: it is the embedding
        for tied in TinyGPTForCausalLM._tied_weights_keys or {}:
            expected.pop(tied, None)
            saved = {name: shape for name, shape in saved.items() if name != tied}
    shape_text = (
        f"n_layer={config.n_layer}, n_embd={config.n_embd}, n_positions={config.n_positions}, "
        f"vocab_size={config.vocab_size}"
    )
    missing = [name for name in expected if name not in saved]
    if missing:
        raise ModelLoadError(
            f"{weights_file}: lacks {len(missing)} tensor(s) that config.json ({shape_text}) needs, such as "
            f"{missing[0]}; the weights are incomplete or belong to another config."
        )
    unexpected = [name for name in saved if name not in expected]
    if unexpected:
        raise ModelLoadError(
            f"{weights_file}: holds {len(unexpected)} tensor(s) that the model of config.json ({shape_text}) has "
            f"no place for, such as {unexpected[0]}; the weights belong to another config."
        )
    for name, shape in expected.items():
        if saved[name] != shape:
            raise ModelLoadError(
                f"{weights_file}: {name} is {'x'.join(map(str, saved[name]))} but config.json ({shape_text}) "
                f"needs {'x'.join(map(str, shape))}; the weights belong to another config."
            )


def expected_shapes(config: TinyGPTConfig) -> dict[str, tuple]:
    """Every tensor name and shape of `config`'s model, from a sketch of one block (on the meta device: no memory)
    repeated n_layer times: a config claiming a thousand layers costs no more to check than one of two."""
    one_block = config.to_dict() | {"n_layer": 1}
    one_block.pop("auto_map", None)
    with torch.device("meta"):
        sketch = TinyGPTForCausalLM(
            TinyGPTConfig(**{k: v for k, v in one_block.items() if k in TinyGPTConfig.__dataclass_fields__})
        )
    expected = {}
    for name, tensor in sketch.state_dict().items():
        if name.startswith("transformer.h.0."):
            for layer in range(config.n_layer):
                expected[name.replace("transformer.h.0.", f"transformer.h.{layer}.", 1)] = tuple(tensor.shape)
        else:
            expected[name] = tuple(tensor.shape)
    return expected


def _check_json(path: str) -> None:
    """A config.json that is not JSON is named as such (transformers calls it 'not found' or a traceback)."""
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path} is not valid JSON ({error}); fix it or save the model again.") from error
    if not isinstance(content, dict):
        raise ModelLoadError(f"{path} is not a JSON object of settings; fix it or save the model again.")


def load_model_and_tokenizer(name_or_path: str | os.PathLike, revision: str | None = None, **model_kwargs):
    """(model, tokenizer) from a local folder or a Hub repo id, in eval mode; raises ModelLoadError."""
    config = load_config(name_or_path, revision)
    if config.n_positions < 2:  # tinygpt.decoding.engine needs room for the newest token in the window
        raise ModelLoadError(
            f"{name_or_path}: n_positions is {config.n_positions}; tinygpt decodes in 2 positions or more."
        )
    check_weights(name_or_path, config, revision)
    check_generation_config(name_or_path, revision)
    try:  # the model refuses NaN weights itself (TinyGPTPreTrainedModel.from_pretrained)
        model = TinyGPTForCausalLM.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=False, **model_kwargs
        ).eval()
    except ValueError as error:
        fix = "load an earlier checkpoint or train again with a lower learning rate"
        raise ModelLoadError(f"{name_or_path}: {str(error).split(': ', 1)[-1].rstrip('.')}; {fix}.") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{name_or_path}: no usable tokenizer ({first_line(error)})") from error
    check_tokenizer_fits(tokenizer, config, name_or_path)
    check_chat_template(tokenizer, name_or_path)
    return model, tokenizer


def check_generation_config(name_or_path: str | os.PathLike, revision: str | None = None) -> None:
    """generation_config.json, where there is one, holds settings generation accepts (transformers' own check:
    max_new_tokens of 0, a negative temperature, ... are refused now, not at the first reply)."""
    try:
        GenerationConfig.from_pretrained(name_or_path, revision=revision)
    except OSError:
        return  # none: generation uses the model's defaults
    except (ValueError, TypeError) as error:
        raise ModelLoadError(
            f"{name_or_path}: generation_config.json is not usable ({str(error).splitlines()[0].rstrip('.')}); "
            "fix or delete it."
        ) from None


def check_chat_template(tokenizer, where: str | os.PathLike) -> None:
    """A chat template that cannot render one exchange (a syntax error, an exception it raises) is refused now,
    not at the first chat. tinygpt's own template renders here; any other is code from the folder, rendered in a
    process of its own (render_template.py) with a time and a memory budget, so a template that loops for hours or
    asks for gigabytes is refused in seconds."""
    if tokenizer.chat_template is None:
        return
    if tokenizer.chat_template == CHAT_TEMPLATE:
        tokenizer.apply_chat_template(EXCHANGE, tokenize=False)
        return
    request = json.dumps({"template": tokenizer.chat_template, "special_tokens": tokenizer.special_tokens_map})
    try:
        result = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("render_template.py"))],
            input=request,
            capture_output=True,
            text=True,
            timeout=TEMPLATE_SECONDS,
            preexec_fn=_limit_memory if os.name == "posix" else None,
        )
        answer = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else {}
    except subprocess.TimeoutExpired:
        answer = {"error": f"it did not finish within {TEMPLATE_SECONDS} s"}
    except (ValueError, IndexError):
        answer = {}
    if "length" not in answer:
        reason = answer.get("error") or f"it needed more than {TEMPLATE_MEMORY >> 20} MiB or failed"
        raise ModelLoadError(f"{where}: its chat template does not render ({reason}); fix chat_template.jinja.")
    if answer["length"] > TEMPLATE_MAX_CHARS:
        raise ModelLoadError(
            f"{where}: its chat template renders one short exchange as {answer['length']:,} characters; "
            "fix chat_template.jinja."
        )


def _limit_memory() -> None:  # in the template's process, before it starts
    import resource  # POSIX only, as is this hook

    resource.setrlimit(resource.RLIMIT_AS, (TEMPLATE_MEMORY, TEMPLATE_MEMORY))


def check_tokenizer_fits(tokenizer, config: TinyGPTConfig, where: str | os.PathLike = "model") -> None:
    """Every id the tokenizer can give has a row of the embedding: its count, and its highest id (a vocabulary
    may skip ids)."""
    highest = max(tokenizer.get_vocab().values(), default=-1)
    if len(tokenizer) > config.vocab_size or highest >= config.vocab_size:
        raise ModelLoadError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens (ids up to {highest}) but the model's embedding has "
            f"only {config.vocab_size} rows; use the tokenizer the model was trained with, or resize_token_embeddings."
        )
