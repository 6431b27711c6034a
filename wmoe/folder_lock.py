"""One writer per folder: an advisory lock (``fcntl.flock``) on ``FOLDER/.wmoe.lock``, held while a run or an export
writes there (standard library only: the export of model repositories uses it without torch).

The lock file holds the holder's pid, host, command and start time, so a refusal names who has the folder. The
kernel drops an ``flock`` when its process dies, however it dies (SIGKILL included): a lock file left by a dead
process is *stale* and taken over at once; the previous holder's details are reported. The file is emptied on
release, and deleted only together with the folder the lock created, when the command failed before writing anything
else there (no empty output folder is left behind). Unlinking a lock file races with the next process opening it, so
a taker checks after locking that the file it holds is still the folder's lock file, and takes the lock again if not.

Advisory: it keeps wmoe processes apart, not other programs. On network file systems without ``flock`` support the
lock may not hold across machines (the refusal names the host so a shared folder is recognised).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Union

from .errors import WMoEError, output_error

LOCK_NAME = ".wmoe.lock"


class FolderLockedError(WMoEError, RuntimeError):
    """Another process holds the folder's lock; the message names it (pid, host, command, since when)."""


def _holder_text(info: Dict[str, Any]) -> str:
    bits = [f"pid {info.get('pid', '?')} on {info.get('host', '?')}"]
    if info.get("command"):
        bits.append(f"running '{info['command']}'")
    if info.get("since"):
        bits.append(f"since {info['since']}")
    return ", ".join(bits)


def _read_info(fd: int) -> Dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        info = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return {}


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # someone else's process, or unknown: do not call it dead
    return True


class FolderLock:
    """``with FolderLock(path, "training run"):`` — refuse with :class:`FolderLockedError` while another process
    holds ``path``; ``stale`` says what was taken over from a dead holder (None if nothing)."""

    def __init__(self, folder: Union[str, "os.PathLike[str]"], what: str = "folder",
                 command: Optional[str] = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.command = command if command is not None else " ".join([Path(sys.argv[0]).name] + sys.argv[1:])[:200]
        self.fd: Optional[int] = None
        self.stale: Optional[str] = None
        self.created = False  # this lock made the folder (release(discard_if_empty=True) may remove it)

    def acquire(self) -> "FolderLock":
        try:
            import fcntl
        except ImportError:  # not POSIX: no advisory locks (documented)
            return self
        while True:
            fd = self._lock(fcntl)
            try:  # the file locked is still the folder's lock file (a failed holder may have removed the folder)
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = _read_info(fd)
        if old.get("pid") is not None:  # the kernel dropped the lock: its holder died without releasing it
            state = "no longer running" if not _pid_alive(old.get("pid")) or old.get("host") != socket.gethostname() \
                else "still running but no longer holding it"
            self.stale = f"a stale lock on {self.folder} ({_holder_text(old)}, {state}) was taken over"
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        except OSError:
            pass  # a full disk must not stop the lock itself; the refusal then lacks the holder's name
        self.fd = fd
        return self

    def _lock(self, fcntl: Any) -> int:
        """Open (creating the folder and the file as needed) and ``flock`` the lock file; its descriptor."""
        try:
            if not self.folder.exists():
                self.folder.mkdir(parents=True, exist_ok=True)
                self.created = True
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:  # a read-only or full folder: one line naming it
            raise output_error(e, self.path, "nothing was written") or WMoEError(
                f"cannot create the lock file {self.path} ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read_info(fd)
            os.close(fd)
            raise FolderLockedError(
                f"{self.folder} is in use by another wmoe process ({_holder_text(info)}); only one may write a "
                f"{self.what} at a time: wait for it to finish, or choose another folder. (If that process is "
                f"gone, the lock is stale and is taken over automatically: lock file {self.path})") from None
        except OSError as e:
            os.close(fd)
            raise WMoEError(f"cannot lock {self.path} ({e.strerror or e})") from None
        return fd

    def release(self, discard_if_empty: bool = False) -> None:
        """Let go of the folder. ``discard_if_empty`` (a command that failed): when this lock created the folder
        and nothing but the lock file is in it, remove both (still holding the lock: see the module doc)."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # empty: the next taker sees a clean release, not a stale lock
        except OSError:
            pass
        if discard_if_empty and self.created:
            try:
                if os.listdir(self.folder) == [LOCK_NAME]:
                    os.unlink(self.path)
                    os.rmdir(self.folder)
            except OSError:
                pass  # kept: the folder is in use or cannot be changed; an empty lock file is harmless
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.release(discard_if_empty=exc_type is not None)
