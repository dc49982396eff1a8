"""Advisory file locks between ragapp processes.

Always on a lock file of their own, never on a file SQLite holds: closing *any* descriptor of a file
drops every POSIX lock the process has on it, SQLite's included, and the next connection to close
then takes itself for the last user and deletes the WAL under the others.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive_lock(
    path: str | Path, busy: Callable[[], Exception] | None = None, waiting: Callable[[], object] | None = None
) -> Iterator[None]:
    """An exclusive `flock` on `path` (created if missing) for the block; the kernel drops it if the process dies.

    When another process holds it: with `busy`, raises `busy()` at once (the caller's own words for who
    is busy); else waits its turn, calling `waiting()` first (to say why nothing happens)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if busy is not None:
                raise busy() from None
            if waiting is not None:
                waiting()
            fcntl.flock(fd, fcntl.LOCK_EX)
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
