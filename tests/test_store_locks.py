"""Two processes on one SQLite workspace: opening it from a second process must leave the first one's
database intact (no descriptor on the database file is ever opened and closed beside SQLite's own)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ragapp.errors import WorkspaceError
from ragapp.locks import exclusive_lock, held
from ragapp.store import Store


def ragapp_cli(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "ragapp", "--workspace", str(workspace), *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("command", [["keys", "list"], ["status"]])
def test_cli_on_a_held_workspace_keeps_its_wal(tmp_path: Path, command: list[str]) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    database = workspace / "ragapp.db"
    store = Store(f"sqlite:///{database}")  # this process plays the server: it holds the database open
    try:
        store.set_meta("probe", "before")
        wal, shm = Path(f"{database}-wal"), Path(f"{database}-shm")
        assert wal.exists() and shm.exists()

        for _ in range(2):  # the damage showed when the second process closed its connection
            done = ragapp_cli(workspace, *command)
            assert done.returncode == 0, done.stderr

        assert wal.exists() and shm.exists(), "another process deleted the WAL under this one"
        store.set_meta("probe", "after")  # was: sqlite3.OperationalError: disk I/O error
        assert store.get_meta("probe") == "after"
        assert ragapp_cli(workspace, "keys", "list").returncode == 0
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    finally:
        store.close()


# -- ragapp.locks.exclusive_lock, the one helper every lock file goes through ----------------------------
# flock conflicts between two open descriptions of a file even within one process, so one process can
# play both holders.


def test_a_busy_lock_raises_the_callers_error_at_once(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with (
        exclusive_lock(path),
        pytest.raises(WorkspaceError, match="busy here"),
        exclusive_lock(path, busy=lambda: WorkspaceError("busy here")),
    ):
        pass
    with exclusive_lock(path, busy=lambda: WorkspaceError("busy here")):  # released: free again
        assert held(path)


def test_a_waiting_lock_says_so_and_is_taken_when_the_holder_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    said: list[str] = []
    holder = exclusive_lock(path)
    holder.__enter__()
    started = time.monotonic()
    release = threading.Timer(0.2, holder.__exit__, (None, None, None))
    release.start()
    with exclusive_lock(path, waiting=lambda: said.append("waiting")):
        # Taken no sooner than the holder let go (the timer's thread may still be returning from __exit__).
        assert said == ["waiting"] and time.monotonic() - started >= 0.2
    release.join()
    with exclusive_lock(path, waiting=lambda: said.append("again")):  # free: no waiting
        pass
    assert said == ["waiting"]
