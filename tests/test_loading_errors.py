"""Every bad input gives one clear line: bad configs, broken saved folders (through
`tinygpt.hub.loader.load_model_and_tokenizer`), empty prompts and too many positions, unseen characters."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from tests.tiny_models import tiny_model
from tinygpt import TinyGPTCharTokenizer, TinyGPTConfig
from tinygpt.hub.checks import ModelLoadError, load_model_and_tokenizer
from tinygpt.modeling_tinygpt import CACHE_FIELD

CORPUS = "To be, or not to be: that is the question.\n"
WINDOW = 16


def assert_one_line(error_info, *expected_parts):
    message = str(error_info.value)
    assert "\n" not in message, message
    for part in expected_parts:
        assert part in message, f"{part!r} not in {message!r}"


@pytest.fixture(scope="module")
def tokenizer():
    return TinyGPTCharTokenizer.from_corpus(CORPUS)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer, n_positions=WINDOW)  # 64 vocabulary rows


@pytest.fixture(scope="module")
def saved_folder(model, tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def broken_folder(saved_folder, tmp_path):
    """A fresh copy of the good folder for a test to break."""
    return shutil.copytree(saved_folder, tmp_path / "broken")


def edit_config(folder, **fields):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))


# ---------------------------------------------------------------------------------------------------------------
# Configs


@pytest.mark.parametrize("field", ["vocab_size", "n_positions", "n_embd", "n_layer", "n_head"])
@pytest.mark.parametrize("value", [0, -3])
def test_config_rejects_non_positive_sizes(field, value):
    with pytest.raises(ValueError, match=f"{field} must be a positive integer, got {value}") as error:
        TinyGPTConfig(**{field: value})
    assert_one_line(error)


def test_config_rejects_n_embd_not_divisible_by_n_head():
    with pytest.raises(ValueError) as error:
        TinyGPTConfig(n_embd=30, n_head=4)
    assert_one_line(error, "n_embd (30)", "n_head (4)")


def test_config_rejects_an_unknown_activation():
    with pytest.raises(ValueError) as error:
        TinyGPTConfig(activation_function="swish")
    assert_one_line(error, "activation_function", "gelu_new, gelu", "'swish'")


def test_config_rejects_dropout_of_one():
    with pytest.raises(ValueError) as error:
        TinyGPTConfig(dropout=1.0)
    assert_one_line(error, "dropout", "1.0")


# ---------------------------------------------------------------------------------------------------------------
# Saved folders


def test_the_good_folder_loads(saved_folder, model):
    loaded, tokenizer = load_model_and_tokenizer(saved_folder)
    assert not loaded.training and type(tokenizer) is TinyGPTCharTokenizer
    assert torch.equal(loaded.transformer.wte.weight, model.transformer.wte.weight)


def test_truncated_weights(broken_folder):
    weights = broken_folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError) as error:
        load_model_and_tokenizer(broken_folder)
    assert_one_line(error, str(weights), "truncated or corrupt")
    # from_pretrained itself fails too (with the library's own traceback), never loading half a model
    with pytest.raises((SafetensorError, OSError, ValueError)):
        AutoModelForCausalLM.from_pretrained(broken_folder)


@pytest.mark.slow
def test_nan_weights_are_refused_not_decoded(broken_folder, model, tokenizer):
    diverged = tiny_model(tokenizer, n_positions=WINDOW)
    with torch.no_grad():
        diverged.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    diverged.save_pretrained(broken_folder)
    with pytest.raises(ModelLoadError) as error:
        load_model_and_tokenizer(broken_folder)
    assert_one_line(error, str(broken_folder), "NaN or infinite")
    # Through the command line: one line, exit 1, no traceback and no text decoded from NaN logits.
    result = subprocess.run(
        [sys.executable, "-m", "tinygpt.cli", "generate", str(broken_folder), "--prompt", "Speak"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1].startswith("tinygpt generate: error:"), result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_weights(broken_folder):
    weights = broken_folder / "model.safetensors"
    weights.write_bytes(os.urandom(weights.stat().st_size))
    with pytest.raises(ModelLoadError) as error:
        load_model_and_tokenizer(broken_folder)
    assert_one_line(error, str(weights), "truncated or corrupt")


def test_folder_without_weights(broken_folder):
    (broken_folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError) as error:
        load_model_and_tokenizer(broken_folder)
    assert_one_line(error, str(broken_folder), "no model.safetensors")


def test_vocab_size_edited_in_config_json(broken_folder):
    edit_config(broken_folder, vocab_size=128)
    with pytest.raises(ModelLoadError) as error:
        load_model_and_tokenizer(broken_folder)
    assert_one_line(error, "model.safetensors", "64x32", "vocab_size=128")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"n_layer": 3}, ["lacks 12 tensor(s)", "n_layer=3", "transformer.h.2."]),  # 3 blocks over 2 of weights
        ({"n_positions": 4}, ["transformer.wpe.weight is 16x32", "needs 4x32"]),  # 4 positions over 16 rows
        ({"n_layer": 1}, ["holds 12 tensor(s)", "transformer.h.1."]),
    ],
)
def test_weights_that_do_not_fit_config_json(broken_folder, fields, expected):
    edit_config(broken_folder, **fields)
    with pytest.raises(ModelLoadError) as error:
        load_model_and_tokenizer(broken_folder)
    assert_one_line(error, "model.safetensors", *expected)


def test_a_window_of_one_position_is_refused(broken_folder):
    edit_config(broken_folder, n_positions=1)  # the engine would have no room for a next token
    with pytest.raises(ModelLoadError) as error:
        load_model_and_tokenizer(broken_folder)
    assert_one_line(error, str(broken_folder), "n_positions is 1", "2 positions or more")


def test_a_block_missing_from_the_weights(broken_folder):
    weights = broken_folder / "model.safetensors"
    tensors = {name: tensor for name, tensor in load_file(weights).items() if not name.startswith("transformer.h.1.")}
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError) as error:
        load_model_and_tokenizer(broken_folder)
    assert_one_line(error, "lacks 12 tensor(s)", "transformer.h.1.")


@pytest.mark.parametrize("content", ['{"model_type": "tinygpt",', "\xff\xfe not text", "[1, 2]"])
def test_config_json_that_is_not_json_is_named_so(broken_folder, content):
    (broken_folder / "config.json").write_bytes(content.encode("latin-1"))
    with pytest.raises(ModelLoadError) as error:
        load_model_and_tokenizer(broken_folder)
    assert_one_line(error, str(broken_folder / "config.json"), "JSON")
    assert "no config.json found" not in str(error.value)


def test_tokenizer_bigger_than_the_embedding(broken_folder):
    TinyGPTCharTokenizer.from_corpus([chr(0x4E00 + i) for i in range(100)]).save_pretrained(broken_folder)
    with pytest.raises(ModelLoadError) as error:
        load_model_and_tokenizer(broken_folder)
    assert_one_line(error, str(broken_folder), "106 tokens", "only 64 rows")


def test_a_tokenizer_id_past_the_embedding_is_refused_though_the_count_fits(broken_folder):
    vocab = json.loads((broken_folder / "vocab.json").read_text())
    vocab[max(vocab, key=vocab.get)] = 1000  # one id moved past the 64 rows: still few enough tokens
    (broken_folder / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ModelLoadError) as error:
        load_model_and_tokenizer(broken_folder)
    assert_one_line(error, str(broken_folder), "(ids up to 1000)", "only 64 rows")


def test_a_new_model_has_a_row_for_every_id_a_sparse_vocabulary_gives(broken_folder):
    vocab = json.loads((broken_folder / "vocab.json").read_text())
    vocab[max(vocab, key=vocab.get)] = 1000
    (broken_folder / "vocab.json").write_text(json.dumps(vocab))
    sparse = TinyGPTCharTokenizer.from_pretrained(broken_folder)
    assert TinyGPTConfig.for_tokenizer(sparse).vocab_size == 1024  # id 1000's row, rounded up to a multiple of 64


def test_a_chat_template_that_cannot_render_is_refused_at_load(broken_folder):
    (broken_folder / "chat_template.jinja").write_text("{% if %}")
    with pytest.raises(ModelLoadError) as error:
        load_model_and_tokenizer(broken_folder)
    assert_one_line(error, str(broken_folder), "its chat template does not render", "fix chat_template.jinja")


def test_config_of_another_model_type(broken_folder):
    edit_config(broken_folder, model_type="llama")
    with pytest.raises(ModelLoadError) as error:
        load_model_and_tokenizer(broken_folder)
    assert_one_line(error, "config.json", "'llama'", "not 'tinygpt'")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"n_head": 5}, "n_head (5)"),
        ({"n_layer": 0}, "n_layer must be a positive integer"),
        ({"n_layer": "2"}, "'n_layer' expected int"),
    ],
)
def test_bad_field_in_config_json(broken_folder, fields, expected):
    edit_config(broken_folder, **fields)
    with pytest.raises(ModelLoadError) as error:
        load_model_and_tokenizer(broken_folder)
    assert_one_line(error, "config.json", expected)


# ---------------------------------------------------------------------------------------------------------------
# Inputs to forward and generate


@pytest.mark.parametrize("max_new_tokens", [None, 3, 2 * WINDOW], ids=["forward", "generate", "generate-sliding"])
def test_empty_input_ids(model, tokenizer, max_new_tokens):
    empty = tokenizer("", return_tensors="pt")  # what an empty prompt encodes to: shape (1, 0)
    assert empty.input_ids.shape == (1, 0)
    with pytest.raises(ValueError) as error:
        model(**empty) if max_new_tokens is None else model.generate(**empty, max_new_tokens=max_new_tokens)
    assert_one_line(error, "input_ids is empty")


def test_forward_past_the_window_is_a_value_error(model):
    with pytest.raises(ValueError) as error:
        model(torch.zeros(1, WINDOW + 1, dtype=torch.long))
    assert_one_line(error, f"position {WINDOW}", f"n_positions={WINDOW}")


def test_cached_step_past_the_window_is_a_value_error(model):
    with torch.no_grad():
        cache = getattr(model(torch.zeros(1, WINDOW, dtype=torch.long), use_cache=True), CACHE_FIELD)
        with pytest.raises(ValueError) as error:
            model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
    assert_one_line(error, f"position {WINDOW}", "tinygpt.decoding.engine.Engine")


def test_unseen_characters_become_unk_and_generate_runs(model, tokenizer):
    inputs = tokenizer("be — or 不 be", return_tensors="pt")  # + 5 new tokens: inside the 16-token window
    assert (inputs.input_ids == tokenizer.unk_token_id).sum() == 2
    out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape == (1, inputs.input_ids.shape[1] + 5)


# ---------------------------------------------------------------------------------------------------------------
# The registered classes themselves (AutoModelForCausalLM after `import tinygpt`), without tinygpt's loader


@pytest.mark.parametrize(
    "break_it, expected",
    [
        (lambda folder: edit_config(folder, n_layer=3), "missing weight(s)"),  # a block the weights lack
        (lambda folder: edit_config(folder, n_layer=1), "unexpected weight(s)"),  # an extra block in the weights
        (lambda folder: edit_config(folder, n_positions=8), "mismatched weight(s)"),
    ],
    ids=["missing-block", "extra-block", "wrong-shape"],
)
def test_auto_classes_refuse_weights_that_do_not_fit_the_config(broken_folder, break_it, expected):
    from transformers import AutoModelForCausalLM

    break_it(broken_folder)
    with pytest.raises(ValueError) as error:
        AutoModelForCausalLM.from_pretrained(broken_folder)
    assert_one_line(error, "TinyGPTForCausalLM.from_pretrained", expected)


def test_auto_classes_refuse_nan_weights_and_load_a_good_folder(broken_folder, saved_folder, tokenizer):
    from transformers import AutoModel, AutoModelForCausalLM

    diverged = tiny_model(tokenizer, n_positions=WINDOW)
    with torch.no_grad():
        diverged.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    diverged.save_pretrained(broken_folder)
    for auto_class in (AutoModelForCausalLM, AutoModel):
        with pytest.raises(ValueError) as error:
            auto_class.from_pretrained(broken_folder)
        assert_one_line(error, "NaN or infinite")
    model, info = AutoModelForCausalLM.from_pretrained(saved_folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and model.config.n_layer == 2
