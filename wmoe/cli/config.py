"""Config files for every wmoe command: ``--config FILE`` and ``--print-config`` (the LightningCLI convention).

A config file holds a command's options by name, as ``--print-config`` writes them::

    wmoe train data/ --tiny --epochs 5 --print-config > run.yaml   # every option, resolved
    wmoe train --config run.yaml --lr 1e-3                          # the file, and what the command line changes

Keys are the option names with ``_`` or ``-`` (``batch_size``, ``batch-size``; ``class`` or ``class_name`` for
``--class``) and the positional arguments (``data``). A value goes through the same check as on the command line,
so a bad one is one line naming the file and the key. The command line wins over the file, the file over the
defaults; ``--config`` goes after the command. Paths in the file are relative to the current folder, as on the
command line. ``.yaml``/``.yml`` need PyYAML (part of ``wmoe[model]``); ``.json`` needs
nothing. ``wmoe train`` keeps the resolved config of each run in ``OUT/config.yaml``.

Standard library only: the torch-free ``wmoe-camera`` has the same options.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..errors import MissingDependencyError, UsageError

#: options that say how to run the command, not what it does: never in a config
NOT_CONFIG = {"debug", "config", "print_config", "_command", "func"}


def add_config_options(p: argparse.ArgumentParser) -> None:
    """``--config FILE`` and ``--print-config`` on a command (``cli_run.finish`` adds them to every command)."""
    if "--config" in p._option_string_actions:
        return
    p.add_argument("--config", default=None, metavar="FILE",
                   help="read options from this YAML or JSON file (as --print-config writes it); options given on "
                        "the command line win")
    p.add_argument("--print-config", action="store_true",
                   help="print every option of this command, resolved (defaults, --config, command line), as YAML "
                        "and exit without running")


def _config_path(argv: Sequence[str]) -> "tuple[Optional[str], int]":
    """(the FILE of ``--config FILE``, its position in argv); (None, -1) without one."""
    for i, tok in enumerate(argv):
        if tok == "--config" and i + 1 < len(argv):
            return argv[i + 1], i
        if tok.startswith("--config="):
            return tok.split("=", 1)[1], i
    return None, -1


def read_config(path: str) -> Dict[str, Any]:
    """The mapping in a YAML or JSON file (UsageError naming the file when it is not one)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--config {path}: no such file")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ModuleNotFoundError:
            raise MissingDependencyError("yaml", "model", "YAML config files (or use a .json config)") from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise UsageError(f"--config {path}: not valid YAML{where} ({getattr(e, 'problem', None) or e})") from None
    elif p.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"--config {path}: not valid JSON at line {e.lineno} ({e.msg})") from None
    else:
        raise UsageError(f"--config {path}: a config is a .yaml, .yml or .json file")
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise UsageError(f"--config {path}: expected a mapping of option names to values, got {type(doc).__name__}")
    return doc


def _configurable(p: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    return {a.dest: a for a in p._actions if a.dest not in NOT_CONFIG and a.help != argparse.SUPPRESS
            and isinstance(a, (argparse._StoreAction, argparse._StoreTrueAction, argparse._StoreFalseAction,
                               argparse._AppendAction))}


def _value(act: argparse.Action, v: Any) -> Any:
    """``v`` from a config file, checked and converted as the command line would (ArgumentTypeError if bad)."""
    if isinstance(act, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(v, bool):
            raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")
        return v
    if v is None:
        return None
    conv = act.type if callable(act.type) else str
    many = act.nargs in ("+", "*") or isinstance(act, argparse._AppendAction)
    if isinstance(v, (list, tuple)) and not many:
        v = ",".join(str(x) for x in v)  # comma-separated options (--classes a,b) may be written as lists
    items = [str(x) if not isinstance(x, bool) else str(x).lower() for x in (v if isinstance(v, list) else [v])]
    out = []
    for s in items:
        try:
            val = conv(s)
        except (TypeError, ValueError) as e:  # argparse's own types (int, float) raise these
            raise argparse.ArgumentTypeError(f"invalid value {s!r} ({e})") from None
        if act.choices is not None and val not in act.choices:
            raise argparse.ArgumentTypeError(f"{val!r} is not one of {', '.join(map(str, act.choices))}")
        out.append(val)
    return out if many else out[0]


def apply_config(root: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """When ``argv`` has ``--config FILE``: its values become the defaults of the command ``argv`` chooses (a
    positional given there is no longer required on the command line). A misplaced ``--config``, a bad file, key
    or value exits 2 with one line (``error``)."""
    path, at = _config_path(argv)
    if path is None:
        return
    p, last = chosen_command(root, argv)
    if at < last or "--config" not in p._option_string_actions:
        root.error(f"--config FILE goes after the command: {root.prog} COMMAND --config FILE")
    from .types import suggest

    try:
        doc = read_config(path)
    except UsageError as e:
        p.error(str(e))
    acts = _configurable(p)
    names = {s.lstrip("-").replace("-", "_"): d for d, a in acts.items() for s in a.option_strings}
    values: Dict[str, Any] = {}
    for key, v in doc.items():
        dest = str(key).replace("-", "_")
        dest = dest if dest in acts else names.get(dest, dest)  # an option's name works too (class: for class_name)
        if dest not in acts:
            p.error(f"--config {path}: unknown option {key!r}{suggest(dest, list(acts))}; "
                    f"known: {', '.join(acts)}")
        try:
            values[dest] = _value(acts[dest], v)
        except argparse.ArgumentTypeError as e:
            p.error(f"--config {path}: {key}: {e}")
    p.set_defaults(**values)
    for dest in values:
        acts[dest].required = False  # given by the file (a positional or --source); the command line still wins


def resolved(p: argparse.ArgumentParser, a: argparse.Namespace) -> Dict[str, Any]:
    """Every configurable option of command ``p`` as ``a`` holds it (JSON types)."""
    out = {}
    for dest in _configurable(p):
        v = getattr(a, dest, None)
        out[dest] = list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v
    return out


def dump(command: str, values: Dict[str, Any]) -> str:
    """``values`` as YAML that :func:`read_config` reads back (each value in JSON form: JSON is YAML)."""
    lines = [f"# {command}: every option, resolved; run it again with: {command} --config FILE"]
    lines += [f"{k}: {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def chosen_command(parser: argparse.ArgumentParser, argv: Sequence[str]) -> "tuple[argparse.ArgumentParser, int]":
    """The (sub)command parser that ``argv`` selects (the subcommand names in it, in order), and the position of
    its name in ``argv`` (-1: the program itself)."""
    p, last = parser, -1
    for i, tok in enumerate(argv):
        sub = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None:
            break
        if tok in sub.choices:
            p, last = sub.choices[tok], i
    return p, last


__all__: List[str] = ["add_config_options", "apply_config", "read_config", "resolved", "dump", "chosen_command"]
