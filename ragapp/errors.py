"""Errors a user can act on. The CLI prints their message on one line and exits with `exit_code`."""

from __future__ import annotations


class RagappError(Exception):
    exit_code = 1


class ConfigError(RagappError):
    """A bad config value; the message names the key and where the value came from."""


class UsageError(RagappError):
    """Bad command-line input, such as a path that does not exist."""

    exit_code = 2


class EmptyWorkspace(RagappError):
    """Asking or searching before anything was ingested."""


class WorkspaceError(RagappError):
    """The workspace cannot be opened as it is (newer schema, locked, unwritable)."""


class DamagedDatabase(WorkspaceError):
    """The workspace's SQLite file is not a database any more (truncated, overwritten, emptied)."""


class GenerationError(RagappError):
    """The generator cannot answer: its server is down or refused the request, its engine is missing..."""


class ScoringUnsupported(GenerationError):
    """The backend cannot score a reference text (its server returns no prompt log-probabilities)."""


class NotFound(RagappError):
    """A named thing (collection, document, conversation, job) does not exist."""


class Conflict(RagappError):
    """The request clashes with the current state (the collection exists already, an ingest is running...)."""
