"""Load a saved TinyGPT model and its tokenizer, turning every way a folder can be broken into one clear line.

`from_pretrained` already does the loading; this module only checks first what it would otherwise report as
a traceback from deep inside safetensors or a size-mismatch table: a wrong `model_type`, missing, truncated or
corrupt weights, weights that do not fit config.json, a tokenizer larger than the embedding. It always uses
the installed TinyGPT classes, so a pulled model never runs remote code.
"""

import os

from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoTokenizer
from transformers.utils import cached_file

from .configuration_tinygpt import TinyGPTConfig
from .modeling_tinygpt import TinyGPTForCausalLM


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
    try:
        config = AutoConfig.from_pretrained(name_or_path, revision=revision, trust_remote_code=False)
    except ValueError as error:  # includes unknown model types; check the raw field for a friendlier line
        raise ModelLoadError(
            f"{name_or_path}: config.json is not a tinygpt config ({str(error).splitlines()[0]})"
        ) from error
    except StrictDataclassError as error:  # a field of the wrong type, e.g. "n_layer": "2"; the last line names it
        raise ModelLoadError(
            f"{name_or_path}: config.json has a bad field ({str(error).splitlines()[-1].strip()})"
        ) from error
    except OSError as error:
        raise ModelLoadError(f"{name_or_path}: no config.json found ({str(error).splitlines()[0]})") from error
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
        raise ModelLoadError(f"{name_or_path}: no model.safetensors ({str(error).splitlines()[0]})") from error
    try:
        with safe_open(weights_file, framework="pt") as weights:
            wte_rows, wte_width = weights.get_slice("transformer.wte.weight").get_shape()
    except SafetensorError as error:
        raise ModelLoadError(f"{weights_file} is truncated or corrupt ({error}); save or download it again.") from error
    except Exception as error:  # a readable file without our embedding
        raise ModelLoadError(f"{weights_file} holds no TinyGPT weights ({error}).") from error
    if (wte_rows, wte_width) != (config.vocab_size, config.n_embd):
        raise ModelLoadError(
            f"{weights_file}: token embedding is {wte_rows}x{wte_width} but config.json says "
            f"vocab_size={config.vocab_size}, n_embd={config.n_embd}; the weights belong to another config."
        )


def load_model_and_tokenizer(name_or_path: str | os.PathLike, revision: str | None = None, **model_kwargs):
    """(model, tokenizer) from a local folder or a Hub repo id, in eval mode; raises ModelLoadError."""
    config = load_config(name_or_path, revision)
    check_weights(name_or_path, config, revision)
    model = TinyGPTForCausalLM.from_pretrained(name_or_path, revision=revision, **model_kwargs).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{name_or_path}: no usable tokenizer ({str(error).splitlines()[0]})") from error
    check_tokenizer_fits(tokenizer, config, name_or_path)
    return model, tokenizer


def check_tokenizer_fits(tokenizer, config: TinyGPTConfig, where: str | os.PathLike = "model") -> None:
    if len(tokenizer) > config.vocab_size:
        raise ModelLoadError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's embedding has only "
            f"{config.vocab_size} rows; use the tokenizer the model was trained with, or resize_token_embeddings."
        )
