"""Both ends of the transformers range: a model saved under one end loads under the other through remote code
alone (no tinygpt installed there), and gives the same greedy text with a dynamic and a static cache.

`.ci/run` makes a second virtualenv pinned to the floors pyproject.toml declares, and runs this file from each
side with TINYGPT_OTHER_PYTHON naming the other side's python.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OTHER_PYTHON = os.environ.get("TINYGPT_OTHER_PYTHON")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not OTHER_PYTHON,
        reason="needs TINYGPT_OTHER_PYTHON, a python with the other end of the transformers range (.ci/run sets it)",
    ),
]

PROMPT = "First Citizen:\nBefore we"

# Run with the repo on sys.path: save a tiny random model (its remote code beside it) into argv[1].
SAVE = """
import sys
from tests.tiny_models import save_tiny_model
from tinygpt import TinyGPTCharTokenizer

tokenizer = TinyGPTCharTokenizer.from_corpus("First Citizen:\\nBefore we proceed any further, hear me speak.")
save_tiny_model(sys.argv[1], tokenizer, n_positions=96)
"""

# Load argv[1] through remote code alone and print its greedy continuations (dynamic and static cache) as JSON.
LOAD_AND_GENERATE = """
import json, sys
sys.modules["tinygpt"] = None  # `import tinygpt` fails: only the folder's own code can run
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

folder, prompt = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
ids = tokenizer(prompt, return_tensors="pt").input_ids
texts = {}
for cache in ("dynamic", "static"):
    out = model.generate(
        ids, max_new_tokens=40, min_new_tokens=40, do_sample=False, pad_token_id=0, cache_implementation=cache
    )
    texts[cache] = tokenizer.decode(out[0, ids.shape[1]:])
print(json.dumps({"transformers": transformers.__version__, "module": type(model).__module__, **texts}))
"""


def run(python: str, script: str, *args: str, cwd: Path) -> str:
    result = subprocess.run(
        [python, "-c", script, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=os.environ
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def load_and_generate(python: str, folder: Path, tmp_path: Path) -> dict:
    # cwd outside the repo: the checkout's tinygpt/ folder is not importable from there either.
    return json.loads(run(python, LOAD_AND_GENERATE, str(folder), PROMPT, cwd=tmp_path).splitlines()[-1])


@pytest.mark.parametrize("saved_by, loaded_by", [("this", "other"), ("other", "this")])
def test_a_model_saved_at_one_end_loads_at_the_other_through_remote_code(saved_by, loaded_by, tmp_path):
    pythons = {"this": sys.executable, "other": OTHER_PYTHON}
    folder = tmp_path / "model"
    run(pythons[saved_by], f"import sys; sys.path.insert(0, {str(REPO)!r})\n" + SAVE, str(folder), cwd=tmp_path)
    assert (folder / "modeling_tinygpt.py").is_file()

    at_saver = load_and_generate(pythons[saved_by], folder, tmp_path)
    at_loader = load_and_generate(pythons[loaded_by], folder, tmp_path)

    assert at_saver["transformers"] != at_loader["transformers"], "both sides run the same transformers"
    assert at_loader["module"].startswith("transformers_modules.")  # the folder's code, not an installed tinygpt
    assert len(set(at_saver["dynamic"])) > 5  # the random model's text depends on its context
    assert at_loader["dynamic"] == at_loader["static"] == at_saver["dynamic"] == at_saver["static"]
