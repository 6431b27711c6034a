"""Parse-time validation of command-line options, shared by ``wmoe``, ``wmoe-export`` and ``wmoe-bench``.

Each function here is an argparse ``type=``: it returns the parsed value or raises
:class:`argparse.ArgumentTypeError`, which argparse turns into one line naming the option and exit status 2,
before any work starts. Use them for every new option::

    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--format", type=one_of(list_formats()), required=True)

Torch is imported only by :func:`device` (and only when that option is given).
"""
from __future__ import annotations

import argparse
import difflib
import math
import os
import re
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

Bad = argparse.ArgumentTypeError


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise Bad(f"expected an integer, got {s!r}") from None


def _float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise Bad(f"expected a number, got {s!r}") from None
    if not math.isfinite(v):
        raise Bad(f"expected a finite number, got {s!r}")
    return v


def _at_least(parse: Callable[[str], float], low: float, strict: bool, what: str) -> Callable[[str], float]:
    def check(s: str):
        v = parse(s)
        if v < low or (strict and v == low):
            raise Bad(f"must be {what}, got {s.strip()}")
        return v

    return check


positive_int = _at_least(_int, 0, True, "a positive integer")
non_negative_int = _at_least(_int, 0, False, "0 or more")
finite_float = _float
positive_float = _at_least(_float, 0.0, True, "a positive number")
non_negative_float = _at_least(_float, 0.0, False, "0 or more")
for _f, _n in ((positive_int, "positive_int"), (non_negative_int, "non_negative_int"),
               (positive_float, "positive_float"), (non_negative_float, "non_negative_float")):
    _f.__name__ = _n  # argparse names the type in some messages


def unit_float(s: str) -> float:
    """A number in [0, 1] (a weight or a share)."""
    v = _float(s)
    if not 0.0 <= v <= 1.0:
        raise Bad(f"expected a number between 0 and 1, got {s!r}")
    return v


def int_list(s: str) -> List[int]:
    """Comma-separated positive integers, e.g. ``1,8,32``."""
    vals = [positive_int(v.strip()) for v in s.split(",") if v.strip()]
    if not vals:
        raise Bad(f"expected comma-separated positive integers, got {s!r}")
    return vals


def frame_size(s: str) -> Tuple[int, int]:
    """``HxW`` in pixels, e.g. ``1080x1920``."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", s)
    if not m or int(m.group(1)) <= 0 or int(m.group(2)) <= 0:
        raise Bad(f"expected HxW with positive integers (e.g. 1080x1920), got {s!r}")
    return int(m.group(1)), int(m.group(2))


def suggest(value: str, choices: Iterable[str]) -> str:
    """" (did you mean 'x'?)" for the closest choice, or ""."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def one_of(choices: Union[Sequence[str], Callable[[], Sequence[str]]], what: str = "choice"
           ) -> Callable[[str], str]:
    """A name from ``choices``, with a "did you mean" for a near miss (argparse's ``choices`` has none).

    ``choices`` may be a function returning them, called only when the option is parsed (keeps --help light)."""

    def parse(s: str) -> str:
        allowed = list(choices() if callable(choices) else choices)
        if s not in allowed:
            raise Bad(f"unknown {what} {s!r}{suggest(s, allowed)}; choose from {', '.join(allowed)}")
        return s

    parse.__name__ = what  # argparse shows it in "invalid <name> value" messages
    return parse


def list_of(choices: Union[Sequence[str], Callable[[], Sequence[str]]], what: str = "name",
            extra: Sequence[str] = ()) -> Callable[[str], List[str]]:
    """Comma-separated names from ``choices`` (each checked like :func:`one_of`); ``extra`` words stand alone."""
    one = one_of(choices, what)

    def parse(s: str) -> List[str]:
        if s in extra:
            return [s]
        vals = [one(v.strip()) for v in s.split(",") if v.strip()]
        if not vals:
            raise Bad(f"expected a comma-separated list of {what}s, got {s!r}")
        return vals

    parse.__name__ = what
    return parse


def checked(parse: Callable[[str], object], what: str = "value", keep_text: bool = False) -> Callable[[str], object]:
    """Turn a parser that raises ValueError (the one the library itself uses) into an option type; with
    ``keep_text`` the option keeps the text (the library parses it again), so the syntax is defined once."""

    def run(s: str) -> object:
        try:
            v = parse(s)
        except ValueError as e:
            raise Bad(str(e)) from None
        return s if keep_text else v

    run.__name__ = what
    return run


def device(s: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N``: parsed by torch and checked to exist on this machine."""
    import torch

    try:
        d = torch.device(s)
    except (RuntimeError, ValueError):
        raise Bad(f"{s!r} is not a device (use cpu, cuda or cuda:N)") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise Bad(f"{s!r}: CUDA is not available on this machine (use --device cpu)")
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            raise Bad(f"{s!r}: this machine has {n} CUDA device(s) (cuda:0 to cuda:{n - 1})")
    elif d.type != "cpu":
        raise Bad(f"{s!r}: only cpu and cuda devices are supported")
    return s


def _nearest_existing(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_creatable(p: Path, s: str, kind: str) -> None:
    base = _nearest_existing(p)
    if not base.is_dir():
        raise Bad(f"{s}: {base} is a file, so the {kind} cannot be created")
    if not os.access(base, os.W_OK | os.X_OK):
        raise Bad(f"{s}: {base} is not writable (permission denied)")


def output_dir(s: str) -> str:
    """A folder to write into: not an existing file, and creatable/writable (nothing is created while parsing)."""
    p = Path(s)
    if p.exists() and not p.is_dir():
        raise Bad(f"{s} is an existing file, not a folder")
    _check_creatable(p, s, "folder")
    return s


def output_file(s: str) -> str:
    """A file to write: not an existing folder, and its folder creatable/writable."""
    p = Path(s)
    if p.is_dir():
        raise Bad(f"{s} is an existing folder; give a file name")
    if p.exists() and not os.access(p, os.W_OK):
        raise Bad(f"{s} exists and is not writable (permission denied)")
    _check_creatable(p.parent, s, "file")
    return s


def existing_file(s: str) -> str:
    """An input file that exists and can be read."""
    p = Path(s)
    if not p.exists():
        raise Bad(f"{s}: no such file")
    if p.is_dir():
        raise Bad(f"{s} is a folder, not a file")
    if not os.access(p, os.R_OK):
        raise Bad(f"{s} cannot be read (permission denied)")
    return s


def patch_size_of(backbone: str) -> Optional[int]:
    """The patch size in an open_clip ViT name (``ViT-L-14-336`` -> 14), or None when the name does not say."""
    m = re.match(r"(?i)vit-[a-z]+-(\d+)(?:[-/@]|$)", backbone)
    return int(m.group(1)) if m else None
