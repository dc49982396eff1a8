"""Finding documents on disk and reading them without surprises.

`discover` walks the roots and says why a file is skipped instead of silently dropping it;
`read_bytes` refuses FIFOs, devices and oversized files before reading; `parse` hands the bytes to
the parser registered for the suffix in `ragapp.connectors.formats` (in `ragapp.connectors.sandbox`'s worker process
for the formats that can unpack into bombs).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from ragapp.connectors.base import Document, FileProblem, ParseError, ParseLimits, human_size
from ragapp.connectors.formats import DEFAULT_LIMITS, LIMITED, PARSERS, parse_document, unsupported
from ragapp.connectors.sandbox import parse_isolated
from wcmatch import glob as wcglob

SUPPORTED_SUFFIXES: frozenset[str] = frozenset(PARSERS)

# '**' spans folders, '*' stays inside one; hidden names are handled by the walk, not the globs.
_GLOB_FLAGS = wcglob.GLOBSTAR | wcglob.DOTMATCH

# Always excluded, on top of the caller's patterns. Hidden files and directories (".git", ".venv",
# ".DS_Store"...) are skipped by a separate rule.
DEFAULT_EXCLUDE: tuple[str, ...] = (
    "**/node_modules/**",
    "**/__pycache__/**",
    "**/venv/**",
    "**/site-packages/**",
    "**/*.egg-info/**",
    "**/__MACOSX/**",
    "*~",
)


class _Globs:
    """Patterns with a '/' match the path relative to the root; others match the name at any depth."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.by_path: list[str] = []
        self.by_name: list[str] = []
        for pattern in (p.strip() for p in patterns):
            if pattern:  # a leading '/' anchors the pattern at the root, as in .gitignore
                group = self.by_path if "/" in pattern else self.by_name
                group.append(pattern.lstrip("/") + ("**" if pattern.endswith("/") else ""))

    def __bool__(self) -> bool:
        return bool(self.by_path or self.by_name)

    def match(self, rel: str, name: str) -> bool:
        return bool(
            (self.by_path and wcglob.globmatch(rel, self.by_path, flags=_GLOB_FLAGS))
            or (self.by_name and wcglob.globmatch(name, self.by_name, flags=_GLOB_FLAGS))
        )


def _os_reason(exc: OSError | RuntimeError) -> str:
    if isinstance(exc, RuntimeError) or exc.errno == errno.ELOOP:  # 3.11's Path.resolve raises RuntimeError
        return "symlink loop"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    return exc.strerror or str(exc)


def _target(path: Path) -> Path | FileProblem:
    """The real path of a file that passed the filters (links followed), or why it can't be used."""
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            return FileProblem(str(path), "not a regular file")
        return path.resolve(strict=True)
    except FileNotFoundError:
        return FileProblem(str(path), "broken symlink" if path.is_symlink() else "file not found")
    except (OSError, RuntimeError) as exc:  # ELOOP: a symlink loop fails the stat, never hangs
        return FileProblem(str(path), _os_reason(exc))


def _candidate(path: Path, real: Path, seen: set[Path]) -> Iterator[Path | FileProblem]:
    """A file under the name it was found by, once per real file; its suffix picks the parser."""
    if real in seen:
        return
    seen.add(real)
    suffix = path.suffix.lower()
    yield path if suffix in SUPPORTED_SUFFIXES else FileProblem(str(path), unsupported(suffix))


def outside_reason(target: Path) -> str:
    return (
        f"symlink to a file outside the folder ({target}): not followed; "
        "ingest that file by its own path if it belongs in the workspace"
    )


def _listing(directory: Path) -> list[os.DirEntry[str]] | FileProblem:
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda e: e.name)
    except PermissionError:
        return FileProblem(str(directory), "permission denied: cannot list directory")
    except OSError as exc:
        return FileProblem(str(directory), f"cannot list directory: {_os_reason(exc)}")


def _walk(root: Path, include: _Globs, exclude: _Globs, seen: set[Path]) -> Iterator[Path | FileProblem]:
    """Pre-order walk with sorted names, so output order is stable; directory symlinks are not entered.

    Files come under the path they were found by, a symlink's too (not its target's): a link to a file
    inside the folder is ingested under its name unless its target is ingested under its own; a link
    out of the folder is refused, as directory links are not followed (see docs/ingesting.md).
    """
    stack: list[Iterator[os.DirEntry[str]]] = []
    links: list[tuple[Path, Path]] = []
    listing = _listing(root)
    if isinstance(listing, FileProblem):
        yield listing
        return
    stack.append(iter(listing))
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        rel = path.relative_to(root).as_posix()
        if exclude.match(rel, entry.name):
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
            linked_dir = not is_dir and entry.is_symlink() and entry.is_dir()
        except OSError:
            is_dir = linked_dir = False
        if is_dir:
            listing = _listing(path)
            if isinstance(listing, FileProblem):
                yield listing
            else:
                stack.append(iter(listing))
        elif not linked_dir and (not include or include.match(rel, entry.name)):
            real = _target(path)
            if isinstance(real, FileProblem):
                yield real
            elif not entry.is_symlink():
                yield from _candidate(path, real, seen)
            elif not real.is_relative_to(root):
                yield FileProblem(str(path), outside_reason(real))
            else:  # after the walk, so a target the walk reaches keeps its own name whatever the order
                links.append((path, real))
    for path, real in links:  # links to hidden or excluded files inside the folder: under the link's name
        yield from _candidate(path, real, seen)


def discover(
    roots: Sequence[Path], include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> Iterator[Path | FileProblem]:
    """Every candidate file under the roots, absolute, in sorted order; skipped files come as FileProblem.

    include/exclude are globs against the path relative to its root (patterns containing '/', e.g.
    "api/**") or against the file name at any depth (e.g. "*.md"); an empty include means every file.
    DEFAULT_EXCLUDE always applies. A root that is a file is taken as is: filters don't apply to it.
    """
    includes, excludes = _Globs(include), _Globs((*DEFAULT_EXCLUDE, *exclude))
    seen: set[Path] = set()
    for root in roots:
        given = Path(root).expanduser().absolute()
        try:
            resolved = given.resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            missing = isinstance(exc, FileNotFoundError)
            yield FileProblem(str(given), "no such file or directory" if missing else _os_reason(exc))
            continue
        if resolved.is_dir():
            yield from _walk(resolved, includes, excludes, seen)
        else:
            real = _target(resolved)
            yield from [real] if isinstance(real, FileProblem) else _candidate(resolved, real, seen)


def _too_large(size: int, limit: int) -> ParseError:
    shown, allowed = human_size(size), human_size(limit)
    if shown == allowed:  # e.g. 20.01 MB vs 20 MB: rounding would hide the difference
        shown, allowed = f"{size:,} bytes", f"{limit:,} bytes"
    return ParseError(f"file is {shown}, over the {allowed} limit")


def read_bytes(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, or ParseError with a short reason; never blocks on a FIFO or device."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ParseError("not a regular file")
        if info.st_size > max_bytes:
            raise _too_large(info.st_size, max_bytes)
        # O_NONBLOCK: if the path was swapped for a FIFO since the stat, open must not hang.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ParseError("not a regular file")
            data = handle.read(max_bytes + 1)
    except IsADirectoryError:
        raise ParseError("not a regular file") from None
    except OSError as exc:
        plain = isinstance(exc, (PermissionError, FileNotFoundError))
        raise ParseError(_os_reason(exc) if plain else f"cannot read file: {_os_reason(exc)}") from None
    if len(data) > max_bytes:  # grew since the stat
        raise ParseError(f"file is over the {human_size(max_bytes)} limit")
    return data


def parse(path: Path, data: bytes, limits: ParseLimits | None = None) -> Document:
    """Turn a file's bytes into a Document with the parser registered for its suffix.

    PDF, .docx and HTML are parsed in the sandbox's worker process under `limits` (memory, time,
    unpacked size, elements); the other formats grow linearly with the file and are parsed here.
    """
    limits = limits or DEFAULT_LIMITS
    suffix = path.suffix.lower()
    if suffix in LIMITED and data and suffix in PARSERS:
        return parse_isolated(str(path), data, limits)
    return parse_document(str(path), data, limits)
