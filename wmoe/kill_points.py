"""Kill points: the named stages of a crash-safe write, where the crash tests SIGKILL the process.

The run folder's checkpoint set (:mod:`wmoe.training.checkpoint_set`) and the Triton repository's version switch
(``wmoe.export.repo_commit``) call their :class:`KillPoints` at every stage ("committed", "renamed:last.json", ...).
In a normal run that is a no-op. A crash test first records the stages of one write (:meth:`KillPoints.record`),
then, in a fresh child process per stage, kills the process exactly there (:meth:`KillPoints.kill_at`) and checks
what the next start recovers — no timing, every stage once (tests/test_crash_safe_training.py,
tests/test_repository_commit.py). Standard library only (the repository export runs without torch).
"""
from __future__ import annotations

import os
import signal
import traceback
from typing import Callable, List, Optional, Tuple, Type


class KillPoints:
    """``points("committed")`` at each stage of a write; :attr:`hook` (a no-op) sees the stage name."""

    def __init__(self, what: str) -> None:
        self.what = what  # the write whose stages these are, for messages
        self.hook: Callable[[str], None] = lambda stage: None

    def __call__(self, stage: str) -> None:
        self.hook(stage)

    def record(self) -> List[str]:
        """From now on, append each stage reached to the list returned."""
        stages: List[str] = []
        self.hook = stages.append
        return stages

    def kill_at(self, k: int) -> None:
        """SIGKILL this process (no clean-up of any kind) when it reaches its ``k``-th stage (0-based)."""
        seen = [0]

        def hook(stage: str) -> None:
            if seen[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            seen[0] += 1

        self.hook = hook


def in_child(fn: Callable[[], object], expected: Tuple[Type[BaseException], ...] = (),
             on_expected: Optional[Callable[[BaseException], None]] = None) -> int:
    """Run ``fn`` in a forked child process and return its exit status: 0; 3 after an ``expected`` error (handed to
    ``on_expected`` first); 4 after any other (traceback on stderr); ``-SIGKILL`` when a kill point killed it."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except expected as e:
            if on_expected is not None:
                on_expected(e)
            code = 3
        except BaseException:
            traceback.print_exc()
            code = 4
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
