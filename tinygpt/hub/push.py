"""Push a saved model folder to the Hub in one commit: what goes up, and the checks before it does.

huggingface_hub does the work (`HfApi.create_repo(exist_ok=True)` + one `upload_folder` of a staging folder
holding exactly what goes up). The errors are tinygpt.hub.remote's one-line `HubError`s.

Design notes
- What goes up: the weights, config.json, generation_config.json, the tokenizer files, tinygpt's own code files
  for the modules `auto_map` names (so `trust_remote_code=True` works where tinygpt is not installed) and a
  README.md model card, generated when the folder has none. The code files come from the installed package,
  never from the folder or from a path a config names: an `auto_map` naming any other module is refused, so a
  push cannot carry a server's file. Nothing else in the folder (checkpoints, logs, scripts) is uploaded, and
  the folder itself is never written to: the card is written into the staging folder, and goes up in the same
  commit as the files.
- `push_eval_results` (tinygpt eval --push) commits only README.md: the repo's own card with the results merged
  into its model-index, on top of the commit it was read from (a push in between fails rather than being lost).
- A LoRA adapter's folder (tinygpt.hub.adapter) goes up alone: adapter_config.json, adapter_model.safetensors, the
  tokenizer (with its code file), generation_config.json and a card naming the base, whose repo id it must name.
- `space_id` (push --space): the same commit also holds the model as plain GPT-2 in `gpt2/` (tinygpt.hub.export_hf),
  and a Gradio Space running that folder at this commit is created after it (tinygpt.hub.space).
"""

import json
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import jinja2
from huggingface_hub import EvalResult, HfApi, ModelCard
from huggingface_hub.errors import EntryNotFoundError

from tinygpt.configuration_tinygpt import TinyGPTConfig
from tinygpt.hub.adapter import ADAPTER_CONFIG, ADAPTER_FILES, adapter_settings, is_adapter_folder
from tinygpt.hub.card import adapter_card_settings, merge_eval_results, model_card
from tinygpt.hub.checks import ModelLoadError, check_weights, load_config
from tinygpt.hub.export import ExportError, export_to_temp, load_for_export
from tinygpt.hub.remote import CODE_MODULES, MODEL_FILES, HubError, hub_errors, public_url, validate_repo_id
from tinygpt.hub.space import push_space, space_url

# tinygpt's own code files, uploaded from the installed package for the modules a saved auto_map names.
PACKAGE_DIR = Path(__file__).resolve().parent.parent
PLAIN_FOLDER = "gpt2"  # push --space: the model as plain GPT-2, which the Space runs


def push_model(
    model_dir,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    endpoint: str | None = None,
    space_id: str | None = None,
) -> str:
    """Upload a saved model folder to `repo_id` (created if needed) in one commit; returns the repo URL.

    With `space_id`, the commit also holds the model as plain GPT-2 in `gpt2/` (tinygpt.hub.export), and a Gradio
    Space chatting with it at that commit is created after (tinygpt.hub.space)."""
    repo_id = validate_repo_id(repo_id)
    model_dir = Path(model_dir)
    config = _check_model_dir(model_dir)
    api = HfApi(endpoint=endpoint, token=token)
    if space_id is not None:
        validate_repo_id(space_id)
    staging = Path(tempfile.mkdtemp(prefix="tinygpt-push-"))  # exactly what goes up; the folder stays as it is
    try:
        for name in [*MODEL_FILES, *ADAPTER_FILES]:
            if (model_dir / name).is_file():
                _check_own_file(model_dir, model_dir / name)
                _link_or_copy(model_dir / name, staging / name)
        for module in _code_modules(model_dir, config):
            shutil.copyfile(PACKAGE_DIR / f"{module}.py", staging / f"{module}.py")
        if not (model_dir / "README.md").is_file() or _card_is_tinygpts(model_dir / "README.md"):
            (staging / "README.md").unlink(missing_ok=True)  # a link to the folder's own card: never write through it
            (staging / "README.md").write_bytes(_model_card(repo_id, model_dir, config, space_id, api.endpoint))
        if space_id is not None:
            plain_dir = _plain_export(model_dir, repo_id, space_id, api.endpoint)
            shutil.move(plain_dir, staging / PLAIN_FOLDER)
        with hub_errors(repo_id, api.endpoint, token, action="push to"):
            repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id, folder_path=staging, commit_message=commit_message or "Upload TinyGPT model"
            )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if space_id is not None:
        with hub_errors(space_id, api.endpoint, token, action="push to"):
            push_space(api, space_id, repo_id, commit.oid, private=private)
    return public_url(str(repo_url))


def push_eval_results(
    repo_id: str,
    results: list[EvalResult],
    *,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str = "Evaluation results (tinygpt eval)",
) -> str:
    """Merge `results` into the model-index of `repo_id`'s card (README.md; a new card where it has none) and commit
    the card alone; nothing else in it changes. Returns the commit's URL."""
    repo_id = validate_repo_id(repo_id)
    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(repo_id, api.endpoint, token, action="push to"):
        revision = api.model_info(repo_id).sha
        try:
            card = ModelCard.load(api.hf_hub_download(repo_id, "README.md", revision=revision))
        except EntryNotFoundError:
            card = ModelCard("")
        except ValueError as error:  # a model-index the library cannot parse: merging would drop it
            raise HubError(
                f"the card (README.md) of {repo_id} has metadata that cannot be read ({error}); fix it first."
            ) from None
        merge_eval_results(card, results, model_name=repo_id)
        commit = api.upload_file(
            path_or_fileobj=str(card).encode(),
            path_in_repo="README.md",
            repo_id=repo_id,
            commit_message=commit_message,
            parent_commit=revision,
        )
    return public_url(commit.commit_url)


def _check_own_file(model_dir: Path, path: Path) -> None:
    """Refuse a file that is a link to somewhere outside the folder: a push sends the folder's own files only. The
    one exception is a snapshot in the Hub's cache, whose files link to its repo's blobs/ (snapshots/REV/x ->
    ../../blobs/HASH)."""
    real, root = path.resolve(), model_dir.resolve()
    in_the_cache = root.parent.name == "snapshots" and real.parent == root.parent.parent / "blobs"
    if not (real.is_relative_to(root) or in_the_cache):
        raise HubError(
            f"{path} links to {real}, outside {model_dir}: push sends only the folder's own files; copy the file "
            "in if it belongs to the model."
        )


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the filesystem allows one (no copy of the weights), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _plain_export(model_dir: Path, repo_id: str, space_id: str, endpoint: str) -> Path:
    """The model as plain GPT-2 in a temporary folder, its card linking the Space."""
    try:
        model, tokenizer = load_for_export(model_dir)
        return export_to_temp(
            model, tokenizer, repo_id=repo_id, space_id=space_id, subfolder=PLAIN_FOLDER, endpoint=endpoint
        )
    except ExportError as error:
        raise HubError(f"cannot publish a Space for {model_dir}: {error}") from None


def _check_model_dir(model_dir: Path) -> TinyGPTConfig | None:
    """The folder's config, checked with its weights; None for a LoRA adapter's folder, checked as one."""
    if not model_dir.is_dir():
        raise HubError(f"{model_dir} is not a folder: pass the folder the model was saved to (save_pretrained).")
    if is_adapter_folder(model_dir):
        _check_adapter_dir(model_dir)
        return None
    if not (model_dir / "model.safetensors").is_file():
        raise HubError(
            f"{model_dir} holds no model.safetensors: save the model there first "
            "(model.save_pretrained(dir), or train.py's output folder)."
        )
    if not (model_dir / "tokenizer_config.json").is_file():
        raise HubError(f"{model_dir} holds no tokenizer: save it next to the model (tokenizer.save_pretrained(dir)).")
    try:
        config = load_config(model_dir)
        check_weights(model_dir, config)
    except ModelLoadError as error:
        raise HubError(str(error)) from None
    return config


def _check_adapter_dir(model_dir: Path) -> None:
    """An adapter goes up alone (its files, the tokenizer, the card), so its base must be on the Hub already."""
    try:
        base = adapter_settings(model_dir)["base_model_name_or_path"]
    except ModelLoadError as error:
        raise HubError(str(error)) from None
    try:
        validate_repo_id(base)
    except HubError:
        raise HubError(
            f"{model_dir} is a LoRA adapter of the folder {base}, which nobody pulling it could fetch: push the base "
            "first and train the adapter with --init_from owner/name, or merge it (tinygpt merge) and push the result."
        ) from None
    if not (model_dir / "tokenizer_config.json").is_file():
        raise HubError(f"{model_dir} holds no tokenizer: save it next to the adapter (tokenizer.save_pretrained(dir)).")


def _code_modules(model_dir: Path, config: TinyGPTConfig | None) -> list[str]:
    """tinygpt's modules that the auto_maps of config.json and tokenizer_config.json name; HubError for any other
    module (a path, another repo's code), which a push must never go looking for."""
    try:
        tokenizer_config = read_json(model_dir / "tokenizer_config.json")
    except (OSError, ValueError) as error:
        raise HubError(f"{model_dir / 'tokenizer_config.json'} is not valid JSON ({error}); save it again.") from None
    references = [
        *(getattr(config, "auto_map", None) or {}).values(),
        *((tokenizer_config.get("auto_map") if isinstance(tokenizer_config, dict) else None) or {}).values(),
    ]
    modules = set()
    for reference in references:  # "modeling_tinygpt.TinyGPTModel", or [slow, fast] for tokenizers
        for class_path in reference if isinstance(reference, list) else [reference]:
            if not class_path:
                continue
            module = str(class_path).rpartition(".")[0]
            if module not in CODE_MODULES:
                raise HubError(
                    f"{model_dir}: auto_map names {class_path!r}, which is not tinygpt's own code "
                    f"({', '.join(CODE_MODULES)}); a push uploads only those: re-save the model with tinygpt."
                )
            modules.add(module)
    return sorted(modules)


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _card_is_tinygpts(readme: Path) -> bool:
    """A card tinygpt wrote (train.py's, or an earlier push's): written again for the repo, since it names where
    the model was (a local folder) and the Space it had. A card of the user's own goes up as it is."""
    try:
        return "tinygpt" in (ModelCard.load(readme).data.tags or [])
    except (OSError, ValueError):
        return False


def _model_card(
    repo_id: str, model_dir: Path, config: TinyGPTConfig | None, space_id: str | None = None, endpoint: str = ""
) -> bytes:
    """The repo's card (tinygpt.hub.card): its shape, how to load it by its repo id, the Space's link, and for a
    train.py folder the run's figures from its metrics.json. An adapter's card names its base (config None: the
    shape comes from metrics.json, if any)."""
    tokenizer_config = read_json(model_dir / "tokenizer_config.json")
    adapter = adapter_card_settings(read_json(model_dir / ADAPTER_CONFIG)) if config is None else None
    settings = dict(
        title=repo_id,
        where=repo_id,
        tokenizer=tokenizer_config.get("tokenizer_class", "saved"),
        space_id=space_id,
        space_url=space_url(space_id, endpoint) if space_id else None,
        adapter=adapter,
    )
    try:
        run = SimpleNamespace(**read_json(model_dir / "metrics.json"))
        return str(model_card(config or run, run=run, **settings)).encode()
    except (OSError, ValueError, TypeError, AttributeError, jinja2.TemplateError):
        pass  # no metrics.json, or one another version wrote: the card without the run's figures
    return str(model_card(config, **settings)).encode()
