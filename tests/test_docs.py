"""The documentation stays true to the code: every `tinygpt.…` name that README.md and docs/*.md mention resolves,
the README stays a guide (at most 300 lines, no commit ids, a two-line quick start), and .ci/run finds its test
command there. Each check is a function of the text, tried on a bad text too, so it is known to be able to fail.

Names count wherever they appear, prose and code alike (`python -m tinygpt.training`); file paths such as
`tinygpt/hub/loader.py` do not.
"""

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
MAX_README_LINES = 300
CI_TEST_COMMAND = "python -m pytest -q -p no:cacheprovider"

# A dotted name under tinygpt, not part of a path, a URL or a longer word: `tinygpt.decoding.engine.Engine`.
DOTTED_NAME = re.compile(r"(?<![\w./-])tinygpt(?:\.[A-Za-z_]\w*)+")
# A commit id: 7 to 40 lowercase hex characters with at least one digit and one letter, as a whole word.
COMMIT_ID = re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")
# .ci/run's own extraction: `sed -n 's/^    \(python -m pytest.*\)$/\1/p' README.md | head -n 1`
CI_LINE = re.compile(r"^    (python -m pytest.*)$", re.MULTILINE)


def dotted_names(text: str) -> list[str]:
    return sorted(set(DOTTED_NAME.findall(text)))


def resolve(name: str):
    """The object `name` names: the longest prefix that imports as a module, then attributes; raises if none."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        module_name = ".".join(parts[:end])
        try:
            found = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is None or not f"{module_name}.".startswith(f"{error.name}."):
                raise  # a module that exists but fails to import (a missing dependency): report it as it is
            continue  # this prefix is no module: the rest are attributes of a shorter one
        for attribute in parts[end:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(f"no module named {parts[0]!r}")


def unresolved(text: str, where: str) -> list[str]:
    problems = []
    for name in dotted_names(text):
        try:
            resolve(name)
        except (ImportError, AttributeError) as error:
            problems.append(f"{where}: {name} does not resolve ({type(error).__name__}: {error})")
    return problems


def too_long(text: str) -> bool:
    return len(text.splitlines()) > MAX_README_LINES


def commit_ids(text: str) -> list[str]:
    return COMMIT_ID.findall(text)


def quick_start_lines(text: str) -> list[str]:
    """The non-blank lines of the first ```bash block under the "## Quick start" heading."""
    section = re.search(r"^## Quick start\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert section, 'README.md has no "## Quick start" section'
    block = re.search(r"^```bash\n(.*?)^```", section.group(1), re.MULTILINE | re.DOTALL)
    assert block, "the quick start has no ```bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def ci_test_command(text: str) -> str | None:
    match = CI_LINE.search(text)
    return match.group(1) if match else None


# -- the documents --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda path: path.relative_to(REPO).as_posix())
def test_every_tinygpt_name_in_the_docs_resolves(path):
    text = path.read_text(encoding="utf-8")
    problems = unresolved(text, path.relative_to(REPO).as_posix())
    assert not problems, "\n".join(problems)


def test_docs_exist_and_name_the_package():
    assert {path.name for path in DOCS} >= {"architecture.md", "history.md", "performance.md"}
    assert dotted_names(README.read_text(encoding="utf-8")), "README.md names no tinygpt.… module: the regex is broken"


def test_readme_is_at_most_300_lines():
    text = README.read_text(encoding="utf-8")
    assert not too_long(text), f"README.md has {len(text.splitlines())} lines; move detail into docs/"


def test_readme_holds_no_commit_id():
    found = commit_ids(README.read_text(encoding="utf-8"))
    assert not found, f"README.md names commits {found}: figures with their commits belong in docs/performance.md"


def test_quick_start_is_two_lines():
    lines = quick_start_lines(README.read_text(encoding="utf-8"))
    assert len(lines) == 2, f"the quick start block has {len(lines)} lines, not 2: {lines}"


def test_ci_finds_the_test_command_in_the_readme():
    assert ci_test_command(README.read_text(encoding="utf-8")) == CI_TEST_COMMAND


# -- each check fails on a bad text ---------------------------------------------------------------------------


def test_a_name_that_does_not_resolve_is_reported_with_its_file():
    text = "Use `tinygpt.engine.Scheduler` or tinygpt.decoding.engine.FastDecoder; tinygpt.hub.loader.load is fine."
    problems = unresolved(text, "BAD.md")
    assert len(problems) == 2
    assert all(problem.startswith("BAD.md: ") for problem in problems)
    assert any("tinygpt.engine.Scheduler" in problem for problem in problems)
    assert any("tinygpt.decoding.engine.FastDecoder" in problem for problem in problems)


def test_names_are_found_in_prose_and_code_but_not_in_paths():
    text = "Run `python -m tinygpt.training`. See tinygpt/hub/loader.py, runs/tinygpt.x and tinygpt.cli."
    assert dotted_names(text) == ["tinygpt.cli", "tinygpt.training"]


def test_commit_ids_are_caught_and_words_and_numbers_spared():
    assert commit_ids("measured at c7ae3a6 and 0f63c17a0c94f7e73e372cd8dcc7ab12cd34ef56") == [
        "c7ae3a6",
        "0f63c17a0c94f7e73e372cd8dcc7ab12cd34ef56",
    ]
    spared = "deadbeef, facade, accede, 1500000, 2026-12-01, bf16, f32, 0x1e731d2, e.g. fp32, c7ae3a, c7ae3a6x"
    assert commit_ids(spared) == []


def test_a_quick_start_of_three_lines_is_caught():
    text = "# t\n\n## Quick start\n\n```bash\npip install .\ntinygpt train\nbash .ci/run\n```\n\n## Train\n"
    assert len(quick_start_lines(text)) == 3
    with pytest.raises(AssertionError):
        quick_start_lines("# t\n\n## Train\n\n```bash\ntinygpt train\n```\n")


def test_a_readme_over_300_lines_or_without_the_ci_command_is_caught():
    assert too_long("line\n" * (MAX_README_LINES + 1)) and not too_long("line\n" * MAX_README_LINES)
    assert ci_test_command("Run:\n\n  python -m pytest -q\n") is None  # two spaces: .ci/run would find nothing
    first = "    python -m pytest -x tests/test_model.py\n\n    python -m pytest -q -p no:cacheprovider\n"
    assert ci_test_command(first) != CI_TEST_COMMAND  # .ci/run takes the first such line
