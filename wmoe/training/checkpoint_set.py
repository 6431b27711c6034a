"""A training run's checkpoint as one all-or-nothing set: weights, sidecar and optimizer state.

A run directory holds ``last.safetensors`` (trainable weights), ``last.json`` (their header as JSON) and
``last.optim.safetensors`` (Adam state, progress, RNG). Replacing three files cannot be one atomic rename, so a save
is a small write-ahead protocol:

1. every file is written in full (and fsynced) to ``.NAME.SAVE_ID.pending`` beside its final name;
2. ``last.commit.json`` naming ``SAVE_ID`` and the step is written atomically: **this is the commit point**;
3. the pending files are renamed onto their final names.

A kill before step 2 leaves the previous set untouched (the pending files are stale and removed at the next start);
a kill during step 3 is finished at the next start by :func:`recover` (roll forward). Every file also carries
``SAVE_ID`` in its header, so :func:`verify` refuses a mixed set (files restored or copied by hand), naming them.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..atomic import atomic_write_text, current_umask
from ..model.checkpoint import CheckpointError
from ..errors import output_error
from ..kill_points import KillPoints

WEIGHTS = "last.safetensors"
SIDECAR = "last.json"
OPTIMIZER = "last.optim.safetensors"
FILES = (WEIGHTS, SIDECAR, OPTIMIZER)
MANIFEST = "last.commit.json"
FORMAT = "wmoe-run-state"

#: The stages of a save ("begin", "written:NAME", "committed", "renamed:NAME", "done"), where the crash tests kill
fault_hook = KillPoints("checkpoint save")


@dataclass
class SetState:
    """What :func:`verify` found: the step and save id every file of the set agrees on."""

    step: int
    save_id: Optional[str]


def _pending(out_dir: Path, name: str, save_id: str) -> Path:
    return out_dir / f".{name}.{save_id}.pending"


def _fsync_dir(path: Path) -> None:
    # the renames themselves must reach the disk before the next stage counts on them
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def new_save_id(step: int) -> str:
    return f"{step:08d}-{secrets.token_hex(6)}"


def save(out_dir: Path, step: int, writers: Dict[str, Callable[[Path, str], None]]) -> str:
    """Write one set all-or-nothing. ``writers[name](path, save_id)`` writes file ``name`` in full to ``path``.

    Returns the save id. On an exception before the commit the previous set is untouched and the pending files
    are removed; a crash (nothing runs) leaves them for :func:`recover`.
    """
    if set(writers) != set(FILES):
        raise ValueError(f"writers must cover exactly {FILES}, got {sorted(writers)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_id = new_save_id(step)
    pending = {name: _pending(out_dir, name, save_id) for name in FILES}
    fault_hook("begin")
    name = FILES[0]
    try:
        for name in FILES:
            writers[name](pending[name], save_id)
            os.chmod(pending[name], 0o666 & ~current_umask())  # safetensors creates 0600; outputs honour the umask
            _fsync_file(pending[name])
            fault_hook(f"written:{name}")
    except BaseException as e:
        for p in pending.values():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        err = output_error(e, out_dir / name, _kept(out_dir))  # a full disk: one line, what survives
        if err is not None:
            raise err from None
        raise
    atomic_write_text(out_dir / MANIFEST, json.dumps(
        {"format": FORMAT, "save_id": save_id, "step": step, "files": list(FILES)}, indent=2) + "\n")
    _fsync_dir(out_dir)
    fault_hook("committed")
    for name in FILES:
        os.replace(pending[name], out_dir / name)
        fault_hook(f"renamed:{name}")
    _fsync_dir(out_dir)
    fault_hook("done")
    return save_id


def _kept(out_dir: Path) -> str:
    """What a failed save leaves, in words (for the one-line error)."""
    try:
        doc = _read_manifest(out_dir)
    except CheckpointError:
        doc = None
    if doc is not None:
        return f"the checkpoint of step {doc.get('step')} in {out_dir} is kept (resume from it with --resume)"
    return f"no checkpoint was saved in {out_dir}"


def _read_manifest(out_dir: Path) -> Optional[dict]:
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT or not isinstance(doc.get("save_id"), str):
            raise ValueError("not a wmoe run-state manifest")
        return doc
    except (OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path} is damaged ({e}); the run in {out_dir} cannot be resumed safely: "
                              f"restore it or start again with --overwrite") from e


def _is_temporary(name: str) -> bool:
    """Our own leftovers: pending set files and atomic_path temporaries of the set's files."""
    if not name.startswith("."):
        return False
    for final in FILES + (MANIFEST,):
        if name.startswith(f".{final}.") and (name.endswith(".pending") or ".tmp" in name[len(final) + 2:]):
            return True
    return False


def recover(out_dir: Path) -> List[str]:
    """Finish a committed save a crash interrupted, then delete stale temporaries. Returns what it did, as lines.

    Run once at the start of every training run (rank 0 only), before anything reads or writes the set.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    done: List[str] = []
    manifest = _read_manifest(out_dir)
    keep = set()
    if manifest is not None:
        sid = manifest["save_id"]
        rolled = []
        for name in FILES:
            p = _pending(out_dir, name, sid)
            if p.exists():
                os.replace(p, out_dir / name)
                rolled.append(name)
            keep.add(p.name)
        if rolled:
            _fsync_dir(out_dir)
            done.append(f"{out_dir}: finished the checkpoint save of step {manifest.get('step')} that was "
                        f"interrupted ({', '.join(rolled)} put in place)")
    stale = sorted(p for p in out_dir.iterdir() if _is_temporary(p.name) and p.name not in keep)
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    if stale:
        done.append(f"{out_dir}: removed {len(stale)} stale temporary file(s) of an interrupted save: "
                    f"{', '.join(p.name for p in stale[:4])}{' ...' if len(stale) > 4 else ''}")
    return done


def exists(out_dir: Path) -> bool:
    """True when ``out_dir`` holds (part of) a run's checkpoint set."""
    return any((Path(out_dir) / n).exists() for n in FILES + (MANIFEST,))


def _header_ids(out_dir: Path) -> Dict[str, "tuple[Optional[str], Optional[int]]"]:
    """(save_id, step) from each file of the set that exists, reading headers only (no tensor data)."""
    from safetensors import safe_open

    ids: Dict[str, "tuple[Optional[str], Optional[int]]"] = {}
    for name in (WEIGHTS, OPTIMIZER):
        p = out_dir / name
        if not p.exists():
            continue
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
            src = meta.get("extra") if name == WEIGHTS else meta.get("progress")
            step = json.loads(src).get("step") if src else None
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged files
            raise CheckpointError(f"{p} is unreadable or damaged ({type(e).__name__}: {e}); "
                                  f"the run in {out_dir} cannot be resumed") from e
        ids[name] = (meta.get("save_id"), step)
    p = out_dir / SIDECAR
    if p.exists():
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
            ids[SIDECAR] = (doc.get("save_id"), (doc.get("extra") or {}).get("step"))
        except (OSError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{p} is unreadable or damaged ({e}); the run in {out_dir} cannot be resumed") from e
    return ids


def verify(out_dir: Path) -> SetState:
    """Check that the set in ``out_dir`` is complete and from one save; raise :class:`CheckpointError` if not."""
    out_dir = Path(out_dir)
    manifest = _read_manifest(out_dir)
    ids = _header_ids(out_dir)
    missing = [n for n in (WEIGHTS, OPTIMIZER) if n not in ids]
    if missing:
        raise CheckpointError(f"cannot resume from {out_dir}: {' and '.join(missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} missing")
    want = manifest["save_id"] if manifest else ids[WEIGHTS][0]
    if want is None:  # a run written before save ids existed: the steps must agree
        steps = {n: s for n, (_, s) in ids.items()}
        if len(set(steps.values())) != 1:
            raise CheckpointError(f"cannot resume from {out_dir}: its files are from different steps "
                                  f"({', '.join(f'{n} step {s}' for n, s in steps.items())}): a mixed set")
        return SetState(int(ids[WEIGHTS][1] or 0), None)
    bad = {n: v for n, v in ids.items() if v[0] != want}
    if bad:
        detail = ", ".join(f"{n} is from save {v[0] or 'unknown'} (step {v[1]})" for n, v in bad.items())
        raise CheckpointError(f"cannot resume from {out_dir}: a mixed checkpoint set; the set is save {want} "
                              f"(step {ids[WEIGHTS][1] if ids[WEIGHTS][0] == want else manifest.get('step')}) "
                              f"but {detail}. Restore the matching files or start again with --overwrite")
    return SetState(int(ids[WEIGHTS][1] or 0), want)


def remove(out_dir: Path) -> None:
    """Delete a run's set (``--overwrite``): the manifest first, so a crash half-way leaves no committed set."""
    out_dir = Path(out_dir)
    for name in (MANIFEST,) + FILES:
        with contextlib.suppress(FileNotFoundError):
            (out_dir / name).unlink()
    recover(out_dir)
