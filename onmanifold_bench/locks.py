"""Sharing one run directory between processes: a directory lock and per-cell claims.

* :func:`run_dir_lock` holds an exclusive ``flock`` on ``<run_dir>/.lock`` for a short critical
  section (claiming a cell, appending to ``commands.log``). The kernel drops the lock when its
  holder dies, so a killed process never leaves it held.
* :func:`claim_cell` marks a cell as being computed by this process: it creates
  ``<run_dir>/claims/<key>.json`` with ``O_CREAT | O_EXCL`` (under the lock), holding the pid, the
  host, the process start time and a random token. Another process that finds the claim of a live
  holder leaves the cell alone and waits for its record; a claim whose holder is dead (same host,
  pid gone or reused by another process) is stale and is taken over. A claim of another host
  cannot be checked and counts as live.

Without ``fcntl`` (not POSIX) the lock is a no-op and only the ``O_EXCL`` claim files protect the
cells (taking over a stale claim can then race).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["run_dir_lock", "claim_cell", "CellClaim", "claim_holder", "holder_alive"]


@contextmanager
def run_dir_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock of ``run_dir`` (created if needed) for the body of the ``with``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may itself hold spaces or parentheses
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def holder_alive(info: dict) -> bool:
    """Whether the process that wrote the claim ``info`` still runs (a claim of another host counts as alive)."""
    if info.get("host") != socket.gethostname():
        return True
    pid = info.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    started = info.get("process_start")
    return started is None or _process_start(pid) in (None, started)  # a reused pid has another start time


class CellClaim:
    """This process's claim on one cell; :meth:`release` removes it (only if it is still ours)."""

    def __init__(self, path: Path, token: str) -> None:
        self.path, self.token = path, token

    def release(self) -> None:
        info = claim_holder(self.path)
        if info is not None and info.get("token") == self.token:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


def claim_holder(path: str | os.PathLike) -> dict | None:
    """The content of the claim file at ``path``; None when absent. An unreadable claim reads as ``{}`` (stale)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        info = json.loads(text)
    except ValueError:
        return {}  # a claim file cut short by a kill between create and write
    return info if isinstance(info, dict) else {}


def claim_cell(run_dir: str | os.PathLike, key: str) -> CellClaim | None:
    """Claim the cell ``key`` of ``run_dir`` for this process; None when a live process holds it.

    A stale claim (its holder died) is taken over. The caller must re-check that the cell has no
    record yet after a successful claim (its holder may have finished just before releasing).
    """
    claims = Path(run_dir) / "claims"
    claims.mkdir(parents=True, exist_ok=True)
    path = claims / f"{key}.json"
    token = secrets.token_hex(8)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()), "token": token,
            "claimed_at": time.time()}
    with run_dir_lock(run_dir):
        held = claim_holder(path)
        if held is not None:
            # this process computes one cell at a time: a claim with its own pid is a leftover, hence stale
            ours = held.get("pid") == os.getpid() and held.get("host") == info["host"]
            if not ours and holder_alive(held):
                return None
            path.unlink(missing_ok=True)  # stale: its holder died
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(info, f)
    return CellClaim(path, token)
