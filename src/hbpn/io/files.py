"""Files: atomic writes (a temporary file in the target's folder, then a rename) and input expansion."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched, so
    a reader never sees a half-written file and a failed write leaves nothing.
    The temporary name keeps the suffix so writers that pick a format from it work.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    """The process umask, read without changing it where the OS allows.

    ``os.umask`` can only be read by setting it, which would briefly change the
    mode of files other threads create, so /proc is asked first.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def expand_inputs(patterns: list[str]) -> tuple[list[Path], list[str]]:
    """Files named by ``patterns`` (files, folders, globs), sorted and without repeats.

    A file is taken whatever its suffix; folders (not recursively) and globs
    give only files with an image suffix whose names do not start with a dot
    (hidden files, and our own temporary files). Returns the files and the
    patterns that matched nothing.
    """
    import glob

    from hbpn.io.images import IMAGE_SUFFIXES  # (images imports this module for atomic writes)

    found: dict[Path, None] = {}
    unmatched: list[str] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            hits = [p for p in path.iterdir() if _is_listed_image(p, IMAGE_SUFFIXES)]
        elif path.is_file():
            hits = [path]
        elif glob.has_magic(pattern):
            hits = [p for p in map(Path, glob.glob(pattern)) if _is_listed_image(p, IMAGE_SUFFIXES)]
        else:
            hits = []
        if not hits:
            unmatched.append(pattern)
        for p in hits:
            found.setdefault(p, None)
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return sorted(unique.values(), key=str), unmatched


def _is_listed_image(path: Path, suffixes: frozenset[str]) -> bool:
    return not path.name.startswith(".") and path.suffix.lower() in suffixes and path.is_file()
