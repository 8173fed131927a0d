"""Export a TinyGPT model as plain GPT-2 (transformers, vLLM, TGI, transformers.js) or as GGUF (llama.cpp, ollama).

A TinyGPT with its tied head IS GPT-2: same blocks, same names. Written out as one, it runs wherever GPT-2 runs,
with no tinygpt and no remote code.

Design notes
- hf: tinygpt.hub.export_hf; gguf: tinygpt.hub.export_gguf.
- Either format is written into a hidden folder beside the destination and renamed into place at the end: a
  failed export (a full disk, a file-size limit) leaves nothing half-written.
- An input that cannot be exported is an `ExportError` whose message is one line naming the problem and the fix.
"""

import contextlib
import shutil
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from transformers.utils import logging as transformers_logging

from tinygpt.hub.checks import ModelLoadError
from tinygpt.hub.export_gguf import GGUF_DTYPES, export_gguf
from tinygpt.hub.export_hf import DTYPES, ExportError, export_hf
from tinygpt.hub.loader import load
from tinygpt.hub.remote import HubError

FORMATS = ("hf", "gguf")


def export_model(model_dir, out, *, format: str = "hf", dtype: str = "f32") -> Path:
    """Export the saved TinyGPT model in `model_dir` to `out` (a new folder for hf, a .gguf file for gguf)."""
    if format not in FORMATS:
        raise ExportError(f"unknown format {format!r}: use one of {', '.join(FORMATS)}.")
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}.")
    if format == "gguf" and dtype not in GGUF_DTYPES:
        raise ExportError(f"GGUF export writes {' or '.join(GGUF_DTYPES)}, not {dtype}: pass --dtype f16 or f32.")
    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise ExportError(f"{out} already exists: export into a new path (or remove it first).")
    model, tokenizer = load_for_export(model_dir)
    if format == "gguf" and out.suffix != ".gguf":
        raise ExportError(f"{out}: a GGUF export is one file: name it with .gguf (e.g. {out.name}.gguf).")
    with written_into_place(out, ExportError) as written:
        if format == "hf":
            export_hf(model, tokenizer, written, dtype=dtype)
        else:
            export_gguf(model, tokenizer, written, dtype=dtype)
    return out


@contextlib.contextmanager
def written_into_place(out: Path, error_class: type[Exception]):
    """A path to write `out` at, in a new hidden folder beside it, renamed into place once the block is done: a
    failed write (a full disk, a file-size limit, a folder it may not write) leaves nothing behind and touches no
    other file, and is one `error_class` line. Export and merge both write this way."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as error:
        raise error_class(f"cannot write {out}: {error.strerror or error}.") from None
    try:
        written = staging / out.name
        yield written
        if out.is_dir():
            out.rmdir()  # the empty folder it was allowed to fill
        written.rename(out)
    except (OSError, SafetensorError) as error:
        raise error_class(f"cannot write {out}: {getattr(error, 'strerror', None) or error}.") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_for_export(model_dir):
    """(model, tokenizer) of a saved TinyGPT folder; ExportError if it is not one."""
    if not Path(model_dir).is_dir():
        raise ExportError(f"{model_dir} is not a folder: pass the folder a TinyGPT model was saved to.")
    transformers_logging.disable_progress_bar()
    try:
        return load(model_dir)
    except (ModelLoadError, HubError) as error:
        raise ExportError(str(error)) from None


def export_to_temp(model, tokenizer, **hf_kwargs) -> Path:
    """An hf export in a new temporary folder (the caller removes it with shutil.rmtree)."""
    folder = Path(tempfile.mkdtemp(prefix="tinygpt-export-"))
    try:
        export_hf(model, tokenizer, folder, **hf_kwargs)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


__all__ = [
    "DTYPES",
    "ExportError",
    "FORMATS",
    "export_model",
    "export_to_temp",
    "load_for_export",
    "written_into_place",
]
