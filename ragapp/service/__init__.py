"""ragapp's HTTP service (`ragapp serve`): OpenAI-compatible RAG chat, query, search, collections, widget."""

from ragapp.service.api import create_app

__all__ = ["create_app"]
