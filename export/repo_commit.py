"""A model-repository version written like a database commit (``wmoe export triton``).

Triton serves ``REPO/<model>/<version>/`` with ``REPO/<model>/config.pbtxt``; a server polling the repository (or
asked to load the model) reads whatever is there at that moment. So a version is never written in place:

1. **stage**: every file of the new version goes into ``<model>/.wmoe-stage-<version>-<id>/`` and the new config
   into ``<model>/.wmoe-stage-<version>-<id>.config.pbtxt``. Triton ignores a version folder whose name is not a
   number (it logs "fails to convert to integral number" and goes on); a staging folder at the repository's top
   level would not be ignored: a polling server takes it for a model, and with ``--exit-on-error`` (its default)
   refuses to start. The caller then **verifies** the staged version (its ONNX loads, the engine's bytes match
   the sidecar, the config matches the contract) — nothing served has changed yet;
2. **commit**: ``<model>/.wmoe-commit.json`` (commit id, version, staged names) is written atomically;
3. **switch**: the staged folder takes the version's name by one rename — onto a new number, or, replacing an
   existing version (``--overwrite``), by Linux's ``renameat2(RENAME_EXCHANGE)``, which swaps the two folders in
   one step: the old version stays complete under its number until the new one is. Where that call does not exist
   (not Linux, or a file system without it) two renames are used and the version number is absent for the moment
   between them (said in docs/serving.md);
4. the staged config is renamed onto ``config.pbtxt``; the journal is removed, and then the old version.

A failure or a kill before step 2 leaves the repository exactly as it was (the staging leftovers are removed at the
next export). A kill after it is finished by :func:`recover` at the next export into the repository (roll forward).
Between steps 3 and 4 a polling server can see the new version with the old config for an instant (a kill there
leaves that state until the next export): the config changes only in its ``parameters`` (threshold, hashes) when the
frame size is unchanged; when the input shape changed, the backend refuses the mismatched load and Triton keeps
serving the loaded version. Each version folder holds ``wmoe-version.json``: the commit id, the source and the
SHA-256 of the checkpoint, the ONNX or engine, and of every file of the version.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from wmoe.atomic import atomic_write_text
from wmoe.errors import ExportError
from wmoe.kill_points import KillPoints

STAGE_PREFIX = ".wmoe-stage-"
JOURNAL = ".wmoe-commit.json"
RECORD = "wmoe-version.json"
CONFIG = "config.pbtxt"
FORMAT = "wmoe-repository-commit"

#: The stages of a commit ("staged", "verified", "committed", "switched", "configured", "done"), where the crash
#: tests kill
fault_hook = KillPoints("model repository commit")


@dataclass
class StagedVersion:
    """One version being written: its staging folder and staged config beside the model's served files."""

    model_dir: Path
    version: int
    commit_id: str

    @property
    def stage(self) -> Path:
        return self.model_dir / f"{STAGE_PREFIX}{self.version}-{self.commit_id}"

    @property
    def config(self) -> Path:
        return self.model_dir / f"{STAGE_PREFIX}{self.version}-{self.commit_id}.{CONFIG}"

    @property
    def target(self) -> Path:
        return self.model_dir / str(self.version)


def new_stage(model_dir: Path, version: int) -> StagedVersion:
    model_dir.mkdir(parents=True, exist_ok=True)
    s = StagedVersion(model_dir, version, secrets.token_hex(6))
    s.stage.mkdir()
    return s


def discard(s: StagedVersion) -> None:
    """Remove what a failed export staged (nothing served was touched)."""
    shutil.rmtree(s.stage, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        s.config.unlink()


def record_id(version_dir: Path) -> Optional[str]:
    """The commit id in a version folder's ``wmoe-version.json`` (None: none, or not readable)."""
    try:
        d = json.loads((version_dir / RECORD).read_text(encoding="utf-8"))
        return d.get("commit") if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> None:
    """Swap two folders in one step (``renameat2(RENAME_EXCHANGE)``); without it, three renames (the name ``b``
    is missing for a moment, ``a`` ends up holding the old ``b`` either way)."""
    libc_call = None
    with contextlib.suppress(OSError, AttributeError):
        libc_call = ctypes.CDLL(None, use_errno=True).renameat2
    if libc_call is not None:
        rc = libc_call(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(b))
    old = a.with_name(a.name + "-old")
    os.rename(b, old)
    os.rename(a, b)
    os.rename(old, a)


def commit(s: StagedVersion) -> None:
    """Steps 2-4: the staged version (already verified) becomes the served one."""
    atomic_write_text(s.model_dir / JOURNAL, json.dumps(
        {"format": FORMAT, "commit": s.commit_id, "version": s.version, "stage": s.stage.name,
         "config": s.config.name}, indent=2) + "\n")
    _fsync_dir(s.model_dir)
    fault_hook("committed")
    _finish(s.model_dir, s)


def _finish(model_dir: Path, s: StagedVersion) -> None:
    if record_id(s.target) != s.commit_id:  # not switched yet
        if not s.stage.is_dir():
            raise ExportError(f"{model_dir / JOURNAL}: commit {s.commit_id} names staging folder {s.stage.name}, "
                              f"which is gone and version {s.version} is not that commit; the repository was "
                              "changed by hand: check it, delete the journal and export again")
        if s.target.exists():
            exchange(s.stage, s.target)  # the stage now holds the old version
        else:
            os.rename(s.stage, s.target)
        _fsync_dir(model_dir)
    fault_hook("switched")
    if s.config.exists():
        os.replace(s.config, model_dir / CONFIG)
        _fsync_dir(model_dir)
    fault_hook("configured")
    with contextlib.suppress(FileNotFoundError):
        (model_dir / JOURNAL).unlink()
    for leftover in (s.stage, s.stage.with_name(s.stage.name + "-old")):
        shutil.rmtree(leftover, ignore_errors=True)
    _fsync_dir(model_dir)
    fault_hook("done")


def recover(model_dir: Path) -> List[str]:
    """Finish a committed switch an interrupted export left, then remove stale staging leftovers. Returns what it
    did, as lines. Run (under the repository's lock) before writing into ``model_dir``."""
    if not model_dir.is_dir():
        return []
    done: List[str] = []
    jpath = model_dir / JOURNAL
    if jpath.exists():
        try:
            j = json.loads(jpath.read_text(encoding="utf-8"))
            if j.get("format") != FORMAT:
                raise ValueError("not a wmoe repository journal")
            s = StagedVersion(model_dir, int(j["version"]), str(j["commit"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ExportError(f"{jpath} is damaged ({e}): an interrupted export of {model_dir.name} cannot be "
                              "finished safely; check the version folders and delete the journal") from None
        _finish(model_dir, s)
        done.append(f"{model_dir}: finished the switch to version {s.version} that an interrupted export left "
                    f"(commit {s.commit_id})")
    stale = sorted(p for p in model_dir.iterdir() if p.name.startswith(STAGE_PREFIX))
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    if stale:
        done.append(f"{model_dir}: removed {len(stale)} unfinished staging item(s) of an interrupted export "
                    "(the served version was not touched)")
    return done


def write_record(s: StagedVersion, info: Dict[str, object]) -> None:
    from wmoe import __version__
    from wmoe.contract import sha256_file

    files = {p.name: sha256_file(p) for p in sorted(s.stage.iterdir()) if p.is_file() and p.name != RECORD}
    atomic_write_text(s.stage / RECORD, json.dumps(
        {"format": "wmoe-triton-version", "commit": s.commit_id, "version": s.version, **info,
         "files": files, "wmoe": __version__}, indent=2, sort_keys=True) + "\n")
