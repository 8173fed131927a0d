"""`tinygpt eval`: bits per byte as lm-eval's rolling loglikelihood gives it, lm-eval tasks run through the command,
the report, the card's model-index on the fake Hub, and one line for each bad input with nothing pushed.

lm-eval runs in-process on local task YAMLs over local JSONL data (never the Hub's datasets). Its own task index
takes a few seconds to build, so the tests that run it are slow.
"""

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard, constants

from tests.fake_hub import TOKEN
from tests.tiny_models import save_tiny_model
from tinygpt import TinyGPTCharTokenizer
from tinygpt.cli import main
from tinygpt.evaluation.rolling import windows
from tinygpt.hub.push import push_model

TINYGPT = Path(sys.executable).with_name("tinygpt")
ASCII_TEXT = "the quick brown fox jumps over the lazy dog.\n" * 12
# Accents, CJK, a euro sign, curly quotes and a dash: characters of 2, 3 and 4 UTF-8 bytes.
NON_ASCII_TEXT = "Où est la bibliothèque ? Ça coûte 5 €. 日本語のテキスト — “naïve” café, Ærøskøbing 🙂.\n" * 12
TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
"""


def write_task(folder: Path, name: str, text: str) -> Path:
    """A local lm-eval task scoring `text` as one document with loglikelihood_rolling; returns its folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.jsonl").write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    (folder / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=folder / f"{name}.jsonl"), encoding="utf-8")
    return folder


def char_model(folder: Path, text: str) -> Path:
    save_tiny_model(folder, TinyGPTCharTokenizer.from_corpus(text), n_positions=32)
    return folder


def evaluate(model: Path, *args) -> dict:
    """`tinygpt eval MODEL ARGS --output R.json` in this process (R.json beside the model folder); the report."""
    output = model.parent / "report.json"
    assert main(["eval", str(model), *map(str, args), "--output", str(output)]) == 0
    return json.loads(output.read_text())


# -- windows -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_tokens", [1, 5, 31, 32, 33, 64, 65, 100])
def test_rolling_windows_are_lm_evals_and_score_every_token_once(num_tokens):
    """The windows equal lm-eval's own (get_rolling_token_windows + make_disjoint_window, as HFLM feeds them)."""
    utils = pytest.importorskip("lm_eval.utils")
    window, prefix = 32, -1
    tokens = list(range(num_tokens))
    seq = [prefix, *tokens]
    ours = [(seq[w.start : w.end - 1], seq[w.first_scored : w.end]) for w in windows(num_tokens, window)]
    theirs = []
    for context, continuation in map(
        utils.make_disjoint_window, utils.get_rolling_token_windows(tokens, prefix, window, context_len=1)
    ):
        theirs.append(((context + continuation)[-(window + 1) :][:-1], continuation))
    assert ours == theirs
    assert [token for _, scored in ours for token in scored] == tokens


def test_sliding_windows_give_every_later_token_window_minus_stride_of_context():
    window, stride, num_tokens = 32, 8, 150
    planned = windows(num_tokens, window, stride)
    scored = [t for w in planned for t in range(w.first_scored, w.end)]
    assert scored == list(range(1, num_tokens + 1))  # seq indices: each stream token once
    for w in planned[1:]:
        assert w.end - w.start == window + 1 and w.end - w.first_scored <= stride
        assert w.first_scored - 1 - w.start >= window - stride  # context before the first scored target
    assert windows(num_tokens, window, window) == windows(num_tokens, window)


# -- bits per byte -----------------------------------------------------------------------------------------------


def test_a_char_model_on_ascii_text_gives_nats_per_token_over_ln2(tmp_path, capsys):
    text = tmp_path / "ascii.txt"
    text.write_text(ASCII_TEXT, encoding="utf-8")
    report = evaluate(char_model(tmp_path / "char", ASCII_TEXT), "--text_file", text, "--batch_size", "3")
    assert report["tokens"] == report["bytes"] == len(ASCII_TEXT)
    assert report["bits_per_byte"] == pytest.approx(report["nats_per_token"] / math.log(2), rel=1e-9)
    assert report["perplexity"] == pytest.approx(math.exp(report["nats_per_token"]))
    assert report["scoring"] == "rolling" and report["window"] == report["stride"] == 32
    out = capsys.readouterr().out
    assert "rolling: disjoint windows of 32 tokens" in out and f"bits per byte {report['bits_per_byte']:.4f}" in out
    assert f"{len(ASCII_TEXT):,} tokens" in out and "nats per token" in out and "perplexity" in out and " s (" in out


def test_a_stride_slides_the_windows_and_says_so(tmp_path, capsys):
    text = tmp_path / "ascii.txt"
    text.write_text(ASCII_TEXT, encoding="utf-8")
    model = char_model(tmp_path / "char", ASCII_TEXT)
    rolling = evaluate(model, "--text_file", text)["nats_per_token"]
    sliding = evaluate(model, "--text_file", text, "--stride", "8")
    assert sliding["scoring"] == "sliding" and sliding["stride"] == 8 and sliding["tokens"] == len(ASCII_TEXT)
    assert sliding["nats_per_token"] != pytest.approx(rolling, rel=1e-6)  # more context: another figure
    assert "sliding: windows of 32 tokens, stride 8" in capsys.readouterr().out


def lm_eval_bits_per_byte(model_dir: Path, tasks_dir: Path, task: str) -> float:
    """lm-eval's own figure: simple_evaluate with HFLM on the model and tokenizer the one loader gives."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from tinygpt.hub.loader import load

    model, tokenizer = load(model_dir)
    output = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4),
        tasks=[task],
        task_manager=TaskManager(include_path=str(tasks_dir)),
        bootstrap_iters=0,
    )
    return output["results"][task]["bits_per_byte,none"]


@pytest.mark.slow  # lm-eval's task index
@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_bits_per_byte_agrees_with_lm_evals_rolling_loglikelihood(tokenizer, tmp_path, request):
    pytest.importorskip("lm_eval")
    if tokenizer == "gpt2":
        from tinygpt.tokenization_tinygpt import load_gpt2_chat_tokenizer

        gpt2 = load_gpt2_chat_tokenizer(request.getfixturevalue("shared_data") / "gpt2")
        model_dir = tmp_path / "gpt2"
        save_tiny_model(model_dir, gpt2, n_positions=32)
    else:
        model_dir = char_model(tmp_path / "char", NON_ASCII_TEXT)
    text = tmp_path / "text.txt"
    text.write_text(NON_ASCII_TEXT, encoding="utf-8")
    report = evaluate(model_dir, "--text_file", text)
    assert report["bytes"] == len(NON_ASCII_TEXT.encode()) > len(NON_ASCII_TEXT)  # non-ASCII indeed
    assert report["tokens"] > 3 * 32  # several windows
    expected = lm_eval_bits_per_byte(model_dir, write_task(tmp_path / "tasks", "doc", NON_ASCII_TEXT), "doc")
    assert report["bits_per_byte"] == pytest.approx(expected, rel=5e-3)


# -- lm-eval tasks through the command, and the card on the Hub ---------------------------------------------------


def cli(args: list, hub: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(TINYGPT), *map(str, args)],
        env={**os.environ, "HF_ENDPOINT": hub, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0", **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def read_card(hub: str, repo_id: str) -> ModelCard:
    """ModelCard.load(repo_id) from the fake Hub (its URL template is built from HF_ENDPOINT at import)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "ENDPOINT", hub)
        patch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub + "/{repo_id}/resolve/{revision}/{filename}")
        return ModelCard.load(repo_id)


@pytest.fixture(scope="module")
def evaluated_repo(hub, tmp_path_factory):
    """A pushed char model whose card already holds a result of its own, and a local task over some text."""
    workdir = tmp_path_factory.mktemp("eval-push")
    folder = char_model(workdir / "model", NON_ASCII_TEXT + ASCII_TEXT)
    push_model(folder, "dora/evaluated", token=TOKEN, endpoint=hub)
    api = HfApi(endpoint=hub, token=TOKEN)
    card = ModelCard.load(api.hf_hub_download("dora/evaluated", "README.md"))
    from tinygpt.hub.card import validation_result

    card.data.eval_results = [validation_result("an earlier run", 3.25)]
    api.upload_file(path_or_fileobj=str(card).encode(), path_in_repo="README.md", repo_id="dora/evaluated")
    (workdir / "text.txt").write_text(NON_ASCII_TEXT, encoding="utf-8")
    write_task(workdir / "tasks", "shortdoc", ASCII_TEXT)
    return "dora/evaluated", workdir, str(card)


@pytest.mark.slow  # a subprocess that imports lm-eval and builds its task index
def test_eval_push_puts_the_task_and_the_bits_per_byte_into_the_repos_card(hub, evaluated_repo):
    pytest.importorskip("lm_eval")
    repo_id, workdir, card_before = evaluated_repo
    result = cli(
        ["eval", repo_id, "--text_file", "text.txt", "--tasks", "shortdoc", "--include_path", "tasks", "--limit", "1",
         "--output", "report.json", "--push"],
        hub, workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((workdir / "report.json").read_text())
    assert set(report["tasks"]) == {"shortdoc"} and report["tasks"]["shortdoc"]["bits_per_byte"] > 0
    assert "|shortdoc|" in result.stdout and f"pushed the results to the card of {repo_id}" in result.stdout
    card = read_card(hub, repo_id)
    found = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert found == {
        ("an earlier run", "bits_per_byte"): 3.25,  # what the card held stays
        ("text.txt", "bits_per_byte"): round(report["bits_per_byte"], 6),
        ("shortdoc", "bits_per_byte"): round(report["tasks"]["shortdoc"]["bits_per_byte"], 6),
    }
    before = ModelCard(card_before)
    assert card.text == before.text  # the card's text is untouched
    assert {k: v for k, v in card.data.to_dict().items() if k != "model-index"} == {
        k: v for k, v in before.data.to_dict().items() if k != "model-index"
    }
    commits = HfApi(endpoint=hub).list_repo_commits(repo_id)
    assert commits[0].title == "Evaluation results (tinygpt eval)"
    assert HfApi(endpoint=hub).list_repo_files(repo_id) == HfApi(endpoint=hub).list_repo_files(
        repo_id, revision=commits[1].commit_id
    )


@pytest.mark.slow  # subprocesses of the real command
def test_bad_input_is_one_line_and_nothing_is_pushed(hub, evaluated_repo, tmp_path):
    repo_id, workdir, _ = evaluated_repo
    (workdir / "empty.txt").write_text("")
    folder = workdir / "model"
    pushed = ["--text_file", "text.txt", "--push"]
    cases = {
        "missing model": (["eval", "dora/no-such-model", *pushed], {}, "dora/no-such-model was not found"),
        "missing folder": (["eval", "./no-such-folder", "--text_file", "text.txt"], {}, "neither a model folder"),
        "empty text": (["eval", repo_id, "--text_file", "empty.txt", "--push"], {}, "empty.txt is empty"),
        "unknown task": (["eval", repo_id, "--tasks", "no_such_task", "--push"], {}, "lm-eval has no task 'no_such_task'"),
        "no lm_eval": (["eval", repo_id, "--tasks", "shortdoc", "--include_path", "tasks", "--push"], {}, "pip install 'tinygpt[eval]'"),
        "local folder": (["eval", str(folder), *pushed], {}, "--push writes the results into a Hub repo's card"),
    }  # fmt: skip
    commits_before = len(HfApi(endpoint=hub).list_repo_commits(repo_id))

    def run(name):
        args, env, _ = cases[name]
        if name == "no lm_eval":  # lm_eval made unimportable, as where the extra is not installed
            code = (
                "import sys; sys.modules['lm_eval'] = None; from tinygpt.cli import main; sys.exit(main(sys.argv[1:]))"
            )
            return subprocess.run(
                [sys.executable, "-c", code, *args],
                env={**os.environ, "HF_ENDPOINT": hub, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0"},
                cwd=workdir, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
        return cli(args, hub, workdir, env)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(cases, pool.map(run, cases), strict=True))
    for name, result in results.items():
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, f"{name}: {result.stderr[-2000:]}"
        assert lines[0].startswith("tinygpt eval: error: ") and cases[name][2] in lines[0], f"{name}: {lines[0]}"
    assert len(HfApi(endpoint=hub).list_repo_commits(repo_id)) == commits_before


# -- the app -----------------------------------------------------------------------------------------------------


def test_the_apps_model_info_shows_the_cards_evaluation_results(tmp_path):
    pytest.importorskip("gradio")
    from huggingface_hub import EvalResult

    from tinygpt.app.models import describe_model
    from tinygpt.hub.card import merge_eval_results, validation_result

    folder = char_model(tmp_path / "model", ASCII_TEXT)
    assert "evaluation" not in describe_model(str(folder))[0]  # no card: nothing to show
    task = EvalResult(
        task_type="text-generation", dataset_type="arc_easy", dataset_name="arc_easy", metric_type="acc",
        metric_value=0.3125, metric_config="5-shot",
    )  # fmt: skip
    card = merge_eval_results(ModelCard(""), [validation_result("text: a.txt", 2.5), task], model_name="m")
    card.save(folder / "README.md")
    info, _ = describe_model(str(folder))
    assert "- evaluation: validation bits per byte 2.5000 on text: a.txt (validation)" in info
    assert "- evaluation: acc 0.3125 on arc_easy (5-shot)" in info
