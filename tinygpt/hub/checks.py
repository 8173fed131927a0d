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

import jinja2
import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoTokenizer
from transformers.utils import cached_file

from tinygpt.configuration_tinygpt import TinyGPTConfig
from tinygpt.data.errors import first_line
from tinygpt.modeling_tinygpt import TinyGPTForCausalLM


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
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        expected = {name: tuple(tensor.shape) for name, tensor in TinyGPTForCausalLM(config).state_dict().items()}
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
    model = TinyGPTForCausalLM.from_pretrained(
        name_or_path, revision=revision, trust_remote_code=False, **model_kwargs
    ).eval()
    if not all(bool(torch.isfinite(parameter).all()) for parameter in model.parameters()):
        raise ModelLoadError(
            f"{name_or_path}: the weights hold NaN or infinite values (a training run that diverged?); "
            "load an earlier checkpoint or train again with a lower learning rate."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{name_or_path}: no usable tokenizer ({first_line(error)})") from error
    check_tokenizer_fits(tokenizer, config, name_or_path)
    check_chat_template(tokenizer, name_or_path)
    return model, tokenizer


def check_chat_template(tokenizer, where: str | os.PathLike) -> None:
    """A chat template that cannot render one exchange (a syntax error, an exception it raises) is refused now,
    not at the first chat."""
    if tokenizer.chat_template is None:
        return
    try:
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], tokenize=False
        )
    except jinja2.TemplateError as error:
        raise ModelLoadError(
            f"{where}: its chat template does not render ({error}); fix chat_template.jinja."
        ) from None


def check_tokenizer_fits(tokenizer, config: TinyGPTConfig, where: str | os.PathLike = "model") -> None:
    """Every id the tokenizer can give has a row of the embedding: its count, and its highest id (a vocabulary
    may skip ids)."""
    highest = max(tokenizer.get_vocab().values(), default=-1)
    if len(tokenizer) > config.vocab_size or highest >= config.vocab_size:
        raise ModelLoadError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens (ids up to {highest}) but the model's embedding has "
            f"only {config.vocab_size} rows; use the tokenizer the model was trained with, or resize_token_embeddings."
        )
