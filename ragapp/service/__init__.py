"""ragapp's HTTP service (`ragapp serve`): OpenAI-compatible RAG chat, query, search, collections, widget."""

from ragapp.service.api import create_app
from ragapp.service.service import Service

__all__ = ["Service", "create_app"]
