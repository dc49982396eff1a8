"""Advisory file locks between ragapp processes.

Always on a lock file of their own, never on a file SQLite holds: closing *any* descriptor of a file
drops every POSIX lock the process has on it, SQLite's included, and the next connection to close
then takes itself for the last user and deletes the WAL under the others.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive_lock(path: str | Path, wait: bool = True) -> Iterator[None]:
    """An exclusive `flock` on `path` (created if missing); the kernel drops it if the process dies.

    Without `wait`, raises BlockingIOError when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def held(path: str | Path) -> bool:
    """Whether another process holds the lock on `path` now (False when the file does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# Loading models imports torch, transformers, sentence-transformers and their extras. Two threads doing
# that at once (a fresh server's first search and first query) break those packages' lazy and circular
# imports: "cannot import name 'AutoModelForCausalLM' from 'transformers'", a 500. Loads take turns.
MODEL_LOADING = threading.RLock()
