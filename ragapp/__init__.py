"""ragapp: retrieval-augmented generation over your documents, offline, with citations.

Importing ragapp changes nothing in the host process: ragapp loads its own models from local files
(`local_files_only`), never from a hub, without setting HF_HUB_OFFLINE for everyone."""

from __future__ import annotations

from ragapp.answer import Answer, Citation
from ragapp.app import App
from ragapp.errors import RagappError

__all__ = ["Answer", "App", "Citation", "RagappError"]
__version__ = "0.1.0"
