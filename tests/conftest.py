from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Debian's Chromium, headless; without the background-networking flags it keeps trying the closed network.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's RAGAPP_* settings must not leak into tests (the model cache dir may)."""
    for name in list(os.environ):
        if name.startswith("RAGAPP_") and name != "RAGAPP_CACHE_DIR":
            monkeypatch.delenv(name)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A copy of ragapp's own documentation: real Markdown written for people."""
    if not any(DOCS.glob("*.md")):
        pytest.skip(f"no documentation in {DOCS}")
    folder = tmp_path / "corpus"
    shutil.copytree(DOCS, folder)
    return folder


def default_sigint() -> None:
    """`preexec_fn` for children that a test interrupts with SIGINT. A shell starting a job in the
    background (`make test &`) leaves SIGINT ignored, children inherit that, and Python then never
    raises KeyboardInterrupt; restoring the default lets the child see Ctrl-C as a user's terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
