"""ragapp: retrieval-augmented generation over your documents, offline, with citations."""

from __future__ import annotations

import os

# Models come from installed packages or local folders, never from a hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from ragapp.app import Answer, App, Citation  # noqa: E402
from ragapp.errors import RagappError  # noqa: E402

__all__ = ["Answer", "App", "Citation", "RagappError"]
__version__ = "0.1.0"
