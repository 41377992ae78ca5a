"""One home for every file the project writes: atomic writes, output sets, checked output folders, safe tensor loading.

An atomic write puts the new content into a temporary file in the destination's own folder (created
with the user's umask, like any other file), flushes and ``fsync``s it, renames it over the
destination with ``os.replace`` (atomic on POSIX) and ``fsync``s the folder. A process killed, or a
disk filling up, in the middle of a write leaves the previous file as it was, never a truncated one;
the temporary file is removed when the write fails.

:class:`OutputSet` writes several files that belong together (``samples.pt`` + ``grid.png`` +
``samples.json``; the files of a checkpoint): every file is staged first, and only when all of them
are on disk are they renamed into place, the manifest last. A failure while staging leaves the
folder exactly as it was.

:func:`check_output_dir` tests an output folder (creatable, writable, room for the outputs) before
any work is done; :func:`load_tensors` reads a ``.pt`` file with ``weights_only=True`` (never unpickles
code) and says which argument was wrong when it cannot.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

__all__ = [
    "write_atomic",
    "write_bytes_atomic",
    "write_text_atomic",
    "write_json_atomic",
    "save_tensors_atomic",
    "tensor_bytes",
    "load_tensors",
    "check_output_dir",
    "output_dir",
    "OutputSet",
    "read_manifest",
]

Writer = Callable[[BinaryIO], Any]


def _temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _stage(path: Path, write: Writer) -> Path:
    """Write ``path``'s new content into a fresh temporary file beside it (fsync'ed); return the temporary path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, like open(path, "w")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _remove_quietly(tmp)
        raise
    return tmp


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: str | os.PathLike, write: Writer) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a binary file object, which then replaces ``path``.

    The previous content of ``path`` stays intact until the new one is completely on disk.
    """
    path = Path(path)
    tmp = _stage(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_folder(path.parent)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`write_atomic`)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def json_text(obj: Any) -> str:
    """``obj`` as strict JSON (no NaN or Infinity), indented by 2: the form of every JSON file the project writes."""
    return json.dumps(obj, indent=2, allow_nan=False)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as strict JSON to ``path`` atomically (see :func:`json_text`, :func:`write_atomic`)."""
    return write_text_atomic(path, json_text(obj))


def save_tensors_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (tensors, and dicts/lists of tensors and numbers)."""
    return write_bytes_atomic(path, tensor_bytes(obj))


def tensor_bytes(obj: Any) -> bytes:
    """``torch.save(obj)`` serialised in memory (so a failing disk write reports its OS error, e.g. ENOSPC)."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_tensors(path: str | os.PathLike, name: str = "path") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and containers of them, never pickled code.

    Raises ``ValueError`` naming ``name`` (the argument that gave ``path``) when the file is missing,
    is not a torch file, or holds anything else than tensors, numbers, strings and containers of them.
    """
    import pickle

    import torch

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{name}: no such file {str(p)!r}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError) as e:
        text = str(e)
        m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        detail = (m.group(1) if m else (text.strip().splitlines() or [type(e).__name__])[0]).strip()[:160]
        raise ValueError(f"{name}: {str(p)!r} is not a file of tensors; the safe loader (torch.load with weights_only=True, "
                         f"which never unpickles code) refused it: {detail}") from e


def check_output_dir(path: str | os.PathLike, option: str = "out", need_bytes: int = 0) -> Path:
    """Check an output folder before the work that fills it: it can be created, written to, and holds ``need_bytes``.

    Creates the folder (and its parents) if needed. Raises ``ValueError`` naming ``option`` otherwise.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{option}: {str(p)!r} exists and is not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{option}: cannot create the folder {str(p)!r} ({e.strerror or e})") from e
    try:
        tmp = _stage(p / "write-test", lambda f: f.write(b"x"))
        _remove_quietly(tmp)
    except OSError as e:
        raise ValueError(f"{option}: cannot write into {str(p)!r} ({e.strerror or e})") from e
    if need_bytes > 0:
        free = shutil.disk_usage(p).free
        if free < need_bytes:
            raise ValueError(f"{option}: {str(p)!r} has {free / 1e6:.1f} MB free, the outputs need about {need_bytes / 1e6:.1f} MB")
    return p


@contextmanager
def output_dir(path: str | os.PathLike, option: str = "out", need_bytes: int = 0) -> Iterator[Path]:
    """:func:`check_output_dir` before the work in the ``with`` block; if the block fails and the folder
    was created here and is still empty, it is removed again (a refused run leaves no trace)."""
    p = Path(path)
    existed = p.exists()
    check_output_dir(p, option, need_bytes)
    try:
        yield p
    except BaseException:
        if not existed and p.is_dir() and not any(p.iterdir()):
            p.rmdir()
        raise


class OutputSet:
    """Files written as one set: all staged first, then renamed into place, the manifest last.

    Usage::

        outputs = OutputSet(folder, manifest="samples.json", owned=["grid.png", "comparison.png"])
        outputs.add("samples.pt", lambda f: torch.save(x, f))
        outputs.add_text("notes.md", text)
        outputs.commit({"steps": 50})   # manifest = this dict + {"files": {name: sha256}}

    :meth:`commit` renames the staged files, removes the files of an earlier set (listed in the old
    manifest, or named in ``owned``) that this set does not write, and writes the manifest last, so a
    reader who trusts the manifest never sees a mixed set (:func:`read_manifest` checks it). A failure
    while staging (a full disk, an interrupt) removes the staged files and leaves the folder as it was;
    :meth:`discard` does the same explicitly.
    """

    def __init__(self, folder: str | os.PathLike, manifest: str | None = None, owned: Iterable[str] = ()) -> None:
        self.folder = Path(folder)
        self.manifest = manifest
        self.owned = set(owned)
        self._staged: dict[str, Path] = {}
        self._digests: dict[str, str] = {}

    def add(self, name: str, write: Writer) -> Path:
        """Stage ``folder/name`` (``write(f)`` fills it); returns its final path."""
        if name == self.manifest or name in self._staged:
            raise ValueError(f"name: {name!r} is the manifest or already part of this set")
        try:
            self._staged[name] = _stage(self.folder / name, write)
            self._digests[name] = _sha256(self._staged[name])
        except BaseException:
            self.discard()
            raise
        return self.folder / name

    def add_bytes(self, name: str, data: bytes) -> Path:
        return self.add(name, lambda f: f.write(data))

    def add_text(self, name: str, text: str) -> Path:
        return self.add_bytes(name, text.encode("utf-8"))

    def add_json(self, name: str, obj: Any) -> Path:
        return self.add_text(name, json_text(obj))

    def add_tensors(self, name: str, obj: Any) -> Path:
        return self.add_bytes(name, tensor_bytes(obj))

    def discard(self) -> None:
        """Remove every staged file (the folder keeps its earlier set)."""
        for tmp in self._staged.values():
            _remove_quietly(tmp)
        self._staged.clear()
        self._digests.clear()

    def commit(self, manifest: dict | None = None) -> list[Path]:
        """Rename the staged files into place, drop stale files of the earlier set, write the manifest last."""
        if self.manifest is None and manifest is not None:
            raise ValueError("manifest: this OutputSet has no manifest file name")
        try:
            if self.manifest is not None:
                body = {**(manifest or {}), "files": dict(self._digests)}
                self._staged[self.manifest] = _stage(self.folder / self.manifest, lambda f: f.write(json_text(body).encode("utf-8")))
        except BaseException:
            self.discard()
            raise
        earlier = set(self.owned)
        if self.manifest is not None:
            try:
                old = json.loads((self.folder / self.manifest).read_text(encoding="utf-8"))
                if isinstance(old, dict) and isinstance(old.get("files"), dict):
                    earlier |= {str(n) for n in old["files"]}
            except (OSError, ValueError):
                pass
        done = []
        try:
            for name in [n for n in self._staged if n != self.manifest]:
                os.replace(self._staged.pop(name), self.folder / name)
                done.append(self.folder / name)
            for stale in sorted(earlier - set(self._digests) - {self.manifest}):
                if Path(stale).name == stale and stale not in (".", ".."):  # plain names inside the folder only
                    _remove_quietly(self.folder / stale)
            if self.manifest is not None:
                os.replace(self._staged.pop(self.manifest), self.folder / self.manifest)
                done.append(self.folder / self.manifest)
        except BaseException:
            self.discard()
            raise
        for folder in dict.fromkeys(p.parent for p in done):
            _fsync_folder(folder)
        self._digests.clear()
        return done


def read_manifest(folder: str | os.PathLike, manifest: str) -> dict:
    """The manifest of an :class:`OutputSet`, after checking every listed file against its SHA-256.

    Raises ``ValueError`` when a listed file is missing or differs (a mixed or tampered set).
    """
    folder = Path(folder)
    body = json.loads((folder / manifest).read_text(encoding="utf-8"))
    if not isinstance(body, dict) or not isinstance(body.get("files"), dict):
        raise ValueError(f"manifest: {str(folder / manifest)!r} lists no files")
    for name, sha in body["files"].items():
        p = folder / name
        if not p.is_file() or _sha256(p) != sha:
            raise ValueError(f"manifest: {str(p)!r} is missing or differs from the set {manifest} describes")
    return body
