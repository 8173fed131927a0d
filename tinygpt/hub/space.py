"""The Gradio Space that `tinygpt push --space` publishes next to a model: its three files and the upload.

Design notes
- The Space runs the model's plain GPT-2 export (the model repo's `gpt2/` folder) with transformers + gradio +
  torch: no tinygpt, no remote code. Its app.py is tinygpt/space_app.py with the model repo and the model push's
  commit written in, so the Space is pinned to the weights it was published with.
- requirements.txt pins the transformers and torch this push ran with (the versions the tests run the app
  with); Spaces install gradio themselves, from the README's `sdk_version`, also pinned to the running one.
- huggingface_hub does the upload: `create_repo(repo_type="space", space_sdk="gradio")` and one commit.
"""

import importlib.metadata
import re
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, SpaceCard, SpaceCardData

from tinygpt.hub.remote import public_url

APP_TEMPLATE = Path(__file__).with_name("space_app.py")
SPACE_REQUIREMENTS = ("transformers", "torch")

SPACE_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

A chat demo of [{{ repo_id }}]({{ model_url }}) at commit `{{ revision }}`, run as a plain GPT-2 (the repo's
`gpt2/` folder) with transformers: no tinygpt, no remote code.
"""


def space_url(space_id: str, endpoint: str) -> str:
    """The Space's page, without any credentials the endpoint carries."""
    return f"{public_url(endpoint).rstrip('/')}/spaces/{space_id}"


def space_app(repo_id: str, revision: str) -> str:
    """space_app.py with the model repo and revision written in."""
    source = APP_TEMPLATE.read_text(encoding="utf-8")
    for name, value in (("MODEL_REPO", repo_id), ("MODEL_REVISION", revision)):
        source, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, count=1, flags=re.MULTILINE)
        assert count == 1, f"space_app.py lost its {name} line"
    return source


def requirements() -> str:
    """The running transformers and torch, pinned (a local tag such as +cpu dropped)."""
    pins = [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in SPACE_REQUIREMENTS]
    return "\n".join(pins) + "\n"


def space_card(space_id: str, repo_id: str, revision: str, endpoint: str) -> str:
    card_data = SpaceCardData(
        title=space_id.split("/")[-1][:30],
        sdk="gradio",
        sdk_version=importlib.metadata.version("gradio"),
        app_file="app.py",
        models=[repo_id],
        pinned=False,
    )
    card = SpaceCard.from_template(
        card_data,
        template_str=SPACE_CARD_TEMPLATE,
        title=space_id,
        repo_id=repo_id,
        model_url=f"{public_url(endpoint).rstrip('/')}/{repo_id}",
        revision=revision,
    )
    return str(card)


def push_space(api: HfApi, space_id: str, repo_id: str, revision: str, *, private: bool = False) -> str:
    """Create (or update) the Space `space_id` chatting with `repo_id` at `revision`; returns its URL."""
    files = {
        "app.py": space_app(repo_id, revision),
        "README.md": space_card(space_id, repo_id, revision, api.endpoint),
        "requirements.txt": requirements(),
    }
    api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    api.create_commit(
        space_id,
        [CommitOperationAdd(path_in_repo=name, path_or_fileobj=text.encode()) for name, text in files.items()],
        repo_type="space",
        commit_message=f"Chat with {repo_id} at {revision[:10]}",
    )
    return space_url(space_id, api.endpoint)


__all__ = ["push_space", "space_app", "space_url"]
