"""What installing and importing ragapp does to the machine: one import package, no process-wide settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_holds_one_top_level_package(tmp_path: Path) -> None:
    """connectors/, indexes/ and evals/ are PyPI names of other projects: installed, they live under ragapp."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("ragapp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {
        "ragapp",
        f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info",
    }
    for module in ("connectors/sandbox.py", "indexes/faiss_index.py", "evals/runner.py", "service/widget/widget.js"):
        assert f"ragapp/{module}" in names, module
    assert "ragapp/evals.py" not in names


def test_the_checkout_imports_the_modules_the_wheel_has() -> None:
    import ragapp.connectors
    import ragapp.evals
    import ragapp.indexes

    assert Path(ragapp.connectors.__file__) == ROOT / "connectors" / "__init__.py"
    assert Path(ragapp.indexes.__file__) == ROOT / "indexes" / "__init__.py"
    assert Path(ragapp.evals.__file__) == ROOT / "evals" / "__init__.py"
    assert not {name.split(".")[0] for name in sys.modules} & {"connectors", "indexes", "evals"}


def test_importing_ragapp_leaves_the_environment_alone() -> None:
    """A chatbot that imports ragapp and also loads models from a hub must keep its own settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "TOKENIZERS_"))}
    script = (
        "import json, os; before = dict(os.environ)\n"
        "import ragapp, ragapp.cli, ragapp.service.api, ragapp.evals, ragapp.connectors, ragapp.indexes, ragapp.agent\n"
        "from ragapp.evals import evaluate\n"
        "print(json.dumps({k: v for k, v in os.environ.items() if before.get(k) != v}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    changed = json.loads(result.stdout.strip().splitlines()[-1])
    # joblib (under sentence-transformers) sets KMP_* for OpenMP on import; not ragapp's to undo.
    assert {k: v for k, v in changed.items() if not k.startswith("KMP_")} == {}
