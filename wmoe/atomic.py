"""Atomic file output: write to a temporary file in the target folder, then rename.

A crash or a bad input half-way through never leaves a truncated file where a good one (or none) was.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (changing it races with other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ensure_output_dir(path: PathLike, option: str = "--out") -> Path:
    """Create ``path`` if needed and prove it is a writable folder, before any work starts.

    Raises :class:`~wmoe.errors.WMoEError` naming ``option`` when it is a file or cannot be written.
    """
    from .errors import WMoEError

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise WMoEError(f"{option} {p} is an existing file, not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".wmoe-write-test.", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise WMoEError(f"{option} {p} is not a writable folder ({e.strerror or e})") from None
    return p


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The caller writes the whole file to the yielded path (with any library that takes a file name).
    On an exception the temporary file is removed and ``path`` is left as it was; a full disk (ENOSPC, EFBIG) or a
    folder that cannot be written becomes one :class:`~wmoe.errors.OutputError` naming ``path`` and what was kept.
    The file gets the permissions of any new file (0666 less the umask), not mkstemp's private 0600.
    """
    from .errors import output_error

    path = Path(path)
    kept = f"the previous {path.name} is kept" if path.exists() else "nothing was written there"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    except OSError as e:
        raise (output_error(e, path, kept) or e) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        err = output_error(e, path, kept)  # a full disk or a read-only folder: one line naming the path
        if err is not None:
            raise err from None
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    return atomic_write_bytes(path, text.encode(encoding))
