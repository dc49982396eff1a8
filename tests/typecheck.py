"""mypy over the package as it installs: `make test` runs this before pytest.

The mypy command line names each module after its path, which would make connectors/sql.py the
module `connectors.sql`; installed, it is `ragapp.connectors.sql` (pyproject's package-dir). This
hands mypy every file with its installed name, so imports resolve as they do in the wheel and the
errors point at the files in the checkout. Settings are pyproject's [tool.mypy]."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from mypy import build
from mypy.main import process_options
from mypy.modulefinder import BuildSource

ROOT = Path(__file__).resolve().parent.parent


def folder_of(package: str, package_dir: dict[str, str]) -> Path:
    """Where a package's files are: under the nearest mapped parent, as setuptools resolves it."""
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        mapped = package_dir.get(".".join(parts[:i]))
        if mapped is not None:
            return ROOT / mapped / Path(*parts[i:])
    return ROOT / Path(*parts)


def sources() -> list[BuildSource]:
    """Every module of the wheel, named as installed (pyproject's packages and package-dir)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = []
    for package in setuptools["packages"]:
        for path in sorted(folder_of(package, setuptools["package-dir"]).glob("*.py")):
            module = package if path.stem == "__init__" else f"{package}.{path.stem}"
            found.append(BuildSource(str(path.relative_to(ROOT)), module))
    return found


def main() -> int:
    files, options = process_options(["--config-file", str(ROOT / "pyproject.toml"), "-c", "pass", *sys.argv[1:]])
    del files
    result = build.build(sources(), options)
    for line in result.errors:
        print(line)
    errors = sum(": error:" in line for line in result.errors)
    print(
        f"mypy: {errors} errors in {len(sources())} modules"
        if errors
        else f"mypy: no errors in {len(sources())} modules"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
