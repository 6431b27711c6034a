"""A wheelhouse for an air-gapped line PC: wmoe's wheel and every wheel ``wmoe[runtime,camera,mqtt]`` needs, for
the line PC's platform and Python, collected on a machine that reaches a package index (stdlib only, no torch).

    make wheelhouse                                       # this machine's platform, Python 3.11: ./wheelhouse
    python -m wmoe.wheelhouse --out wh --platform manylinux_2_28_aarch64 --python-version 3.10   # an ARM box
    # on the line PC (no network):
    python3 -m venv wmoe && wmoe/bin/pip install --no-index --find-links wh "wmoe[runtime,camera,mqtt]"

It builds wmoe's wheel from a copy of the source tree (or takes ``--wheel``), then ``pip download
--only-binary=:all: --platform P --python-version V --implementation cp`` resolves the extras for that target:
binary wheels only (a line PC has no compilers), nothing of the torch stack. A ``manylinux_2_X`` platform also
accepts wheels for older glibc (:func:`platform_args` lists those tags for pip, which does not). The folder is written beside and renamed when complete, with ``INSTALL.txt`` (the
command above and what it holds).
"""
from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXTRAS = "runtime,camera,mqtt"


def host_platform() -> str:
    """A manylinux tag this machine runs: ``manylinux_2_28_<arch>`` (glibc 2.28: Debian 10, Ubuntu 20.04, RHEL 8
    and later; the floor of numpy's and onnxruntime's current wheels) or this glibc when older; pip's platform name
    elsewhere. (pip 23 finds nothing for a newer tag such as manylinux_2_36: it does not expand every tag.)"""
    libc, version = platform.libc_ver()
    if sys.platform.startswith("linux") and libc == "glibc" and version:
        major, minor = (int(v) for v in version.split(".")[:2])
        major, minor = min((major, minor), (2, 28))
        return f"manylinux_{major}_{minor}_{platform.machine()}"
    import sysconfig
    return sysconfig.get_platform().replace("-", "_").replace(".", "_")


# the legacy manylinux names and the glibc they stand for (PEP 600): a wheel tagged with one runs where that glibc does
LEGACY_MANYLINUX = {(2, 17): "manylinux2014", (2, 12): "manylinux2010", (2, 5): "manylinux1"}


def platform_args(platform_tag: str) -> List[str]:
    """pip's ``--platform`` options for a line PC of ``platform_tag``. pip expands ``manylinux2014_<arch>`` to the
    older tags a target accepts but takes ``manylinux_2_X_<arch>`` literally: ``--platform manylinux_2_28_aarch64``
    alone found no numpy for CPython 3.10 (its wheels are tagged manylinux_2_17). So a ``manylinux_2_X`` tag is
    given with every older glibc tag down to 2.17 (2.5 on x86_64/i686) and their legacy names, newest first."""
    import re
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform_tag)
    if m is None:
        return ["--platform", platform_tag]
    minor, arch = int(m.group(1)), m.group(2)
    floor = 5 if arch in ("x86_64", "i686") else 17
    tags: List[str] = []
    for y in range(minor, floor - 1, -1):
        tags.append(f"manylinux_2_{y}_{arch}")
        if (2, y) in LEGACY_MANYLINUX:
            tags.append(f"{LEGACY_MANYLINUX[(2, y)]}_{arch}")
    return [a for t in tags for a in ("--platform", t)]


def _run(cmd: List[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-15:]
        raise SystemExit(f"wheelhouse: {' '.join(cmd[:4])} ... failed:\n" + "\n".join(tail))


def build_wheel(src: Path, out: Path) -> Path:
    """wmoe's wheel, built from a copy of ``src`` (the tree gets no build/ or egg-info)."""
    with tempfile.TemporaryDirectory(prefix="wmoe-wheel-") as tmp:
        copy = Path(tmp) / "src"
        copy.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(src / name, copy / name)
        for d in ("wmoe", "kernels", "export", "bench"):
            shutil.copytree(src / d, copy / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out),
              str(copy)])
    return next(out.glob("wmoe-*.whl"))


def collect(out: Path, extras: str = DEFAULT_EXTRAS, platform_tag: Optional[str] = None,
            python_version: str = "3.11", wheel: Optional[Path] = None, src: Path = ROOT) -> Path:
    """Write the wheelhouse to ``out`` (beside, then renamed); returns ``out``."""
    platform_tag = platform_tag or host_platform()
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if wheel is None:
        wheel = build_wheel(src, partial)
    else:
        shutil.copy(wheel, partial / Path(wheel).name)
        wheel = partial / Path(wheel).name
    _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", *platform_args(platform_tag),
          "--python-version", python_version, "--implementation", "cp", "-d", str(partial),
          f"{wheel}[{extras}]"])
    wheels = sorted(p.name for p in partial.glob("*.whl"))
    (partial / "INSTALL.txt").write_text(
        f"wmoe wheelhouse for {platform_tag}, CPython {python_version}, extras [{extras}]\n\n"
        f"On the line PC (no network needed):\n"
        f"  python3 -m venv wmoe && wmoe/bin/pip install --no-index --find-links {out.name} \"wmoe[{extras}]\"\n\n"
        f"{len(wheels)} wheels:\n" + "".join(f"  {w}\n" for w in wheels))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wmoe.wheelhouse", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="wheelhouse", help="folder to write (default: %(default)s)")
    ap.add_argument("--extras", default=DEFAULT_EXTRAS, help="wmoe extras to collect (default: %(default)s)")
    ap.add_argument("--platform", default=None,
                    help="target platform tag, e.g. manylinux_2_28_x86_64, manylinux_2_28_aarch64, win_amd64 "
                         "(default: this machine's)")
    ap.add_argument("--python-version", default=f"{sys.version_info[0]}.{sys.version_info[1]}",
                    help="the line PC's Python (default: this one's, %(default)s)")
    ap.add_argument("--wheel", default=None, help="use this wmoe wheel instead of building one from the tree")
    a = ap.parse_args(argv)
    out = collect(Path(a.out), a.extras, a.platform, a.python_version, Path(a.wheel) if a.wheel else None)
    n = len(list(out.glob("*.whl")))
    print(f"wheelhouse: {n} wheels for {a.platform or host_platform()}, CPython {a.python_version} in {out} "
          f"(install: see {out / 'INSTALL.txt'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
