"""A saved folder is a Hub-style custom-code model: it carries its own .py files and auto_map, so a machine
without tinygpt loads it with trust_remote_code=True and generates the same text."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tinygpt
from tests.tiny_models import save_tiny_model
from tinygpt import TinyGPTCharTokenizer

CORPUS = "O Romeo, Romeo! wherefore art thou Romeo?\nDeny thy father and refuse thy name.\n"
PROMPT = "O Romeo"
CODE_FILES = ["configuration_tinygpt.py", "modeling_tinygpt.py", "tokenization_tinygpt.py"]

# Runs in a fresh interpreter, from a folder where the checkout is not importable, with `import tinygpt` made to
# fail even though the package is installed: only the folder's own code can load the model.
LOAD_WITHOUT_TINYGPT = """
import json, sys
sys.modules["tinygpt"] = None
try:
    import tinygpt
except ImportError:
    pass
else:
    raise SystemExit("tinygpt is importable; the test would prove nothing")
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

folder, prompt = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
inputs = tokenizer(prompt, return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=40, min_new_tokens=40, do_sample=False)
print(json.dumps({
    "classes": [type(x).__module__ + "." + type(x).__name__ for x in (model, base, tokenizer)],
    "tied": model.lm_head.weight is model.transformer.wte.weight,
    "hidden_sum": base(**inputs).last_hidden_state.sum().item(),
    "text": tokenizer.decode(out[0]),
}))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(folder, model, tokenizer): a tiny random model and its char tokenizer saved side by side."""
    tokenizer = TinyGPTCharTokenizer.from_corpus(CORPUS)
    folder = tmp_path_factory.mktemp("remote") / "model"
    return folder, save_tiny_model(folder, tokenizer), tokenizer


def test_saved_folder_carries_weights_code_and_auto_maps(saved):
    folder, _, _ = saved
    assert (folder / "model.safetensors").is_file()
    assert json.loads((folder / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "configuration_tinygpt.TinyGPTConfig",
        "AutoModel": "modeling_tinygpt.TinyGPTModel",
        "AutoModelForCausalLM": "modeling_tinygpt.TinyGPTForCausalLM",
    }
    tokenizer_auto_map = json.loads((folder / "tokenizer_config.json").read_text())["auto_map"]
    assert tokenizer_auto_map["AutoTokenizer"][0] == "tokenization_tinygpt.TinyGPTCharTokenizer"
    package = Path(tinygpt.__file__).parent
    for name in CODE_FILES:  # the very code that saved the model, so remote loading runs the same thing
        assert (folder / name).read_bytes() == (package / name).read_bytes(), name


def test_loads_and_generates_the_same_text_without_tinygpt_installed(saved, tmp_path):
    folder, model, tokenizer = saved
    inputs = tokenizer(PROMPT, return_tensors="pt")
    expected_text = tokenizer.decode(model.generate(**inputs, max_new_tokens=40, min_new_tokens=40, do_sample=False)[0])
    with torch.no_grad():
        expected_hidden_sum = model.transformer(**inputs).last_hidden_state.sum().item()

    result = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_TINYGPT, str(folder), PROMPT],
        cwd=tmp_path,  # not the checkout, so its tinygpt/ folder is not on the path either
        capture_output=True,
        text=True,
        timeout=120,
        env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])

    assert all(name.startswith("transformers_modules.") for name in remote["classes"]), remote["classes"]
    assert [name.rsplit(".", 1)[1] for name in remote["classes"]] == [
        "TinyGPTForCausalLM",
        "TinyGPTModel",
        "TinyGPTCharTokenizer",
    ]
    assert remote["tied"]
    assert remote["hidden_sum"] == pytest.approx(expected_hidden_sum, rel=1e-5)
    assert remote["text"] == expected_text
    assert len(remote["text"]) > len(PROMPT)
