"""Finding the files to ingest under the given paths, and the filesystem checks.

Folders are walked recursively in sorted order, so the result does not depend on the
order the operating system lists entries in.  Symbolic links are followed only when they
stay inside the audited root (or ``IngestConfig.follow_external_symlinks`` is set): a
link to ``/etc`` or another cohort must not silently widen an audit.  Everything that
cannot be read becomes a :class:`Candidate` with a ``reason`` instead of being dropped.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ..config import IngestConfig
from . import errors


@dataclass(frozen=True)
class Candidate:
    """One file found under the inputs.

    ``path``: absolute path as found (symlinks not resolved); ``rel``: POSIX path relative to
    the root (the base of its ``image_id``); ``reason``: set when the file is quarantined
    before any reading.
    """

    path: Path
    rel: str
    reason: str | None = None


def default_root(paths: Sequence[Path]) -> Path:
    """The folder ids are relative to: a single folder itself, else the common parent of the
    folders given and of the parent folders of the files given."""
    bases = [Path(os.path.abspath(p)) for p in paths]
    if len(bases) == 1 and bases[0].is_dir():
        return bases[0]
    parents = [b if b.is_dir() else b.parent for b in bases]
    return Path(os.path.commonpath([str(p) for p in parents]))


def _relative(path: Path, root: Path) -> str | None:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return None


def _inside(real: Path, real_root: Path) -> bool:
    return real == real_root or real_root in real.parents


def _link_reason(path: Path, real_root: Path, config: IngestConfig) -> str | None:
    """Why a symlink must not be followed, or None."""
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        return errors.BROKEN_SYMLINK
    except RuntimeError:
        return errors.SYMLINK_LOOP
    except OSError as exc:
        return errors.UNREADABLE.format(error=exc.strerror or type(exc).__name__)
    if not config.follow_external_symlinks and not _inside(real, real_root):
        return errors.EXTERNAL_SYMLINK
    return None


def _file_reason(path: Path, config: IngestConfig) -> str | None:
    """Filesystem-level reasons to quarantine a regular (or linked) file, or None."""
    try:
        st = path.stat()
    except PermissionError:
        return errors.PERMISSION_DENIED
    except FileNotFoundError:
        return errors.MISSING
    except OSError as exc:
        return errors.UNREADABLE.format(error=exc.strerror or type(exc).__name__)
    if not stat.S_ISREG(st.st_mode):
        return errors.NOT_REGULAR
    if st.st_size == 0:
        return errors.EMPTY_FILE
    if st.st_size > config.max_file_bytes:
        return errors.TOO_LARGE_BYTES.format(size=st.st_size, limit=config.max_file_bytes)
    return None


def _walk(path: Path, root: Path, real_root: Path, config: IngestConfig,
          seen_dirs: set[Path]) -> Iterator[Candidate]:
    rel = _relative(path, root)
    if rel is None:
        yield Candidate(path, path.as_posix(), errors.OUTSIDE_ROOT)
        return
    if path.is_symlink():
        reason = _link_reason(path, real_root, config)
        if reason is not None:
            yield Candidate(path, rel, reason)
            return
    if path.is_dir():
        real = path.resolve()
        if real in seen_dirs:
            return  # a link back into a folder already walked: nothing new below it
        seen_dirs.add(real)
        try:
            children = sorted(os.listdir(path))
        except OSError as exc:
            yield Candidate(path, rel, errors.UNREADABLE.format(error=exc.strerror or type(exc).__name__))
            return
        for name in children:
            yield from _walk(path / name, root, real_root, config, seen_dirs)
        return
    yield Candidate(path, rel, _file_reason(path, config))


def discover(paths: Sequence[Path], root: Path, config: IngestConfig) -> list[Candidate]:
    """All files under ``paths`` (recursively), sorted by ``rel``, each listed once."""
    root = Path(os.path.abspath(root))
    real_root = root.resolve()
    seen_dirs: set[Path] = set()
    found: dict[str, Candidate] = {}
    for p in paths:
        p = Path(os.path.abspath(p))
        if not p.exists() and not p.is_symlink():
            found.setdefault(p.as_posix(), Candidate(p, _relative(p, root) or p.as_posix(), errors.MISSING))
            continue
        for cand in _walk(p, root, real_root, config, seen_dirs):
            found.setdefault(cand.rel, cand)
    return [found[k] for k in sorted(found)]
