"""`train.py --init_from owner/name`: the repo comes through the one loader (tinygpt.hub.loader), so through
pull_model's checks, like every other command's model; here against the fake Hub (tests/fake_hub.py).

train.py runs in a subprocess (HF_ENDPOINT is read at import), online against the fake Hub, each case with its own
HF_HOME so that what a run wrote to the cache can be seen.
"""

from pathlib import Path

import pytest
from huggingface_hub import HfApi

from tests.fake_hub import TOKEN, commit_raw
from tests.train_cli import TINY_SCHEDULE, describe, run_train, write_corpus
from tinygpt import TinyGPTCharTokenizer, TinyGPTConfig, TinyGPTForCausalLM
from tinygpt.hub.push import push_model

GOOD_REPO, DOTDOT_REPO = "alice/tiny-init", "alice/dotdot-init"


@pytest.fixture(scope="module")
def pushed(hub, tmp_path_factory):
    """(work folder, corpus, model folder): a random two-layer model over the corpus's characters, pushed to the
    fake Hub as GOOD_REPO, and the same files plus one named `../escaped.py` committed as DOTDOT_REPO."""
    work = tmp_path_factory.mktemp("init-from-hub")
    corpus = write_corpus(work / "corpus.txt")
    tokenizer = TinyGPTCharTokenizer.from_corpus(corpus.read_text(encoding="utf-8"))
    config = TinyGPTConfig.for_tokenizer(tokenizer, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    folder = work / "model"
    TinyGPTForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    push_model(folder, GOOD_REPO, token=TOKEN, endpoint=hub)
    HfApi(endpoint=hub, token=TOKEN).create_repo(DOTDOT_REPO)
    files = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    commit_raw(hub, DOTDOT_REPO, {**files, "../escaped.py": b"print('written outside')\n"})
    return work, corpus, folder


def train_from_hub(hub: str, work: Path, corpus: Path, repo_id: str, name: str):
    """train.py --init_from repo_id for 2 steps, online against the fake Hub; (result, output dir, its HF_HOME)."""
    output, hf_home = work / f"{name}-run", work / f"{name}-home"
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub, "HF_HOME": str(hf_home), "HF_TOKEN": TOKEN}
    result = run_train(
        *TINY_SCHEDULE, "--max_steps", "2", "--text_file", corpus, "--init_from", repo_id, "--output_dir", output,
        "--disable_tqdm", "true", cwd=work, env=env,
    )  # fmt: skip
    return result, output, hf_home


def cached_files(hf_home: Path) -> list[str]:
    """The names of the files in the HF cache's model snapshots."""
    return sorted(path.name for path in hf_home.glob("hub/models--*/snapshots/*/*"))


def test_init_from_a_repo_listing_a_file_outside_it_is_one_line_and_writes_nothing(hub, pushed):
    """pull_model's check, which transformers' from_pretrained (the old --init_from path) never made: the repo is
    refused from its file list, before any file is downloaded and before the output folder exists."""
    work, corpus, _ = pushed
    result, output, hf_home = train_from_hub(hub, work, corpus, DOTDOT_REPO, "dotdot")
    assert result.returncode == 1, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    lines = [line for line in result.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(lines) == 1, describe(result)
    assert f"{DOTDOT_REPO} lists a file named '../escaped.py'" in lines[0] and "nothing was written" in lines[0]
    assert not output.exists()
    assert cached_files(hf_home) == []
    assert not list(work.rglob("escaped.py"))


@pytest.mark.slow
def test_init_from_a_pushed_model_pulls_it_and_fine_tunes_it(hub, pushed):
    """The repo is pulled whole into the cache (pull_model's snapshot: the code files and the card too, which
    from_pretrained never fetches), and the run starts from its weights and keeps its tokenizer."""
    work, corpus, folder = pushed
    result, output, hf_home = train_from_hub(hub, work, corpus, GOOD_REPO, "good")
    assert result.returncode == 0, describe(result)
    assert {"modeling_tinygpt.py", "README.md", "model.safetensors"} <= set(cached_files(hf_home))
    assert (output / "vocab.json").read_text() == (folder / "vocab.json").read_text()
    assert (output / "config.json").is_file() and (output / "checkpoint-2").is_dir()
    assert f"fine-tuned from | {GOOD_REPO}" in (output / "README.md").read_text()
