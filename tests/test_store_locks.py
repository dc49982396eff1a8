"""Two processes on one SQLite workspace: opening it from a second process must leave the first one's
database intact (no descriptor on the database file is ever opened and closed beside SQLite's own)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragapp.store import Store


def ragapp_cli(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "ragapp", "--workspace", str(workspace), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


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
