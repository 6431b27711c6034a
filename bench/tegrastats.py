"""Jetson power sampling with ``tegrastats``: board input power during a timed run -> images per joule.

tegrastats prints one line per interval; power rails appear as ``NAME CUR_mW/AVG_mW``, e.g.
``VDD_IN 5123mW/4980mW VDD_CPU_GPU_CV 1502mW/1410mW VDD_SOC 1430mW/1420mW`` (Orin) or
``POM_5V_IN 3280/3280 POM_5V_GPU 1020/1020`` (older boards, no unit). The total board power is ``VDD_IN`` or
``POM_5V_IN`` when present, else the sum of the rails.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
from typing import Dict, List, Optional

_RAIL = re.compile(r"\b((?:VDD|POM|VIN|CV|GPU|CPU|SOC)[A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?")
_TOTAL = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0")


def parse_line(line: str) -> Dict[str, float]:
    """Rails in a tegrastats line -> {rail: current watts}; ``total`` is the board input power."""
    rails = {m.group(1): int(m.group(2)) / 1000.0 for m in _RAIL.finditer(line)}
    if not rails:
        return {}
    total = next((rails[k] for k in _TOTAL if k in rails), sum(rails.values()))
    return {**rails, "total": total}


class PowerSampler:
    """``with PowerSampler() as p: ...`` then ``p.mean_watts``; ``available`` is False without tegrastats."""

    def __init__(self, interval_ms: int = 100, exe: Optional[str] = None) -> None:
        self.exe = exe or shutil.which("tegrastats")
        self.interval_ms = interval_ms
        self.samples: List[float] = []
        self._proc = None
        self._thread = None

    @property
    def available(self) -> bool:
        return self.exe is not None

    def __enter__(self) -> "PowerSampler":
        if self.available:
            self._proc = subprocess.Popen([self.exe, "--interval", str(self.interval_ms)], stdout=subprocess.PIPE,
                                          text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            p = parse_line(line)
            if p:
                self.samples.append(p["total"])

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)

    @property
    def mean_watts(self) -> Optional[float]:
        return sum(self.samples) / len(self.samples) if self.samples else None
