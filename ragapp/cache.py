"""Where ragapp keeps files it can rebuild (converted models, exported ONNX graphs, logs)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$RAGAPP_CACHE_DIR`, else `$XDG_CACHE_HOME/ragapp`, else `~/.cache/ragapp` (not created here)."""
    if os.environ.get("RAGAPP_CACHE_DIR"):
        return Path(os.environ["RAGAPP_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "ragapp"
    return Path.home() / ".cache" / "ragapp"
