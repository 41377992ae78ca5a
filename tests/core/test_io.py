"""Atomic outputs (onmanifold.io): a fault in the middle of a write leaves the previous file intact.

The faults are real: a child process runs with ``RLIMIT_FSIZE`` (writes past the limit fail with
EFBIG, as on a full disk), so the write breaks off mid-file whatever the writer's implementation. The
same scenario with the atomic primitive replaced by a plain ``open(path, "wb")`` write corrupts the
file: the tests exercise the window in which a non-atomic writer loses data.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from onmanifold.io import (OutputSet, check_output_dir, load_tensors, read_manifest, save_tensors_atomic, write_json_atomic,
                           write_text_atomic)

_CHILD_PRELUDE = """
import json, resource, signal, sys
from pathlib import Path
import onmanifold.io as oio

def plain_stage(path, write):  # what a non-atomic writer does: write the destination in place
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        write(f)
    return path

def limit_file_size(nbytes):  # a full disk: writes past nbytes fail with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
"""


def _child(code: str, tmp_path: Path) -> dict:
    script = tmp_path / "child.py"
    script.write_text(_CHILD_PRELUDE + textwrap.dedent(code))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _loads(path: Path):
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001 - a corrupt file is the outcome under test
        return None


@pytest.mark.parametrize("writer", ["atomic", "plain"])
def test_a_tensor_write_cut_off_midway_keeps_the_previous_file(tmp_path, writer):
    """EFBIG in the middle of writing a 400 kB tensor: the atomic writer keeps the 4 kB file it replaces, a plain write truncates it."""
    target = tmp_path / "x.pt"
    old = torch.arange(1000, dtype=torch.float32)
    save_tensors_atomic(target, old)
    out = _child(f"""
        import torch
        if {writer!r} == "plain":
            oio._stage = plain_stage
        limit_file_size(64_000)
        try:
            oio.save_tensors_atomic({str(target)!r}, torch.ones(100_000))
            print(json.dumps({{"error": None}}))
        except OSError as e:
            print(json.dumps({{"error": e.errno}}))
    """, tmp_path)
    assert out["error"] == errno.EFBIG  # the fault did land in the middle of the write
    if writer == "atomic":
        assert torch.equal(_loads(target), old)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["child.py", "x.pt"]  # no temporary file left behind
    else:  # the control: the same fault destroys the file when it is written in place
        assert _loads(target) is None


@pytest.mark.parametrize("writer", ["atomic", "plain"])
def test_sample_on_a_full_disk_keeps_the_previous_set(tmp_path, writer):
    """`onmanifold sample` whose samples.pt write breaks off: exit 2, one line naming --out; the earlier set is
    intact and consistent with its manifest (with a plain writer the same run leaves a truncated samples.pt)."""
    from onmanifold.cli import main

    out = tmp_path / "out"
    assert main(["sample", "gmm2d-mlp", "-n", "100", "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = _child(f"""
        import io, contextlib
        from onmanifold.cli import main
        if {writer!r} == "plain":
            oio._stage = plain_stage
        limit_file_size(20_000)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["sample", "gmm2d-mlp", "-n", "4000", "--steps", "2", "--seed", "1", "--out", {str(out)!r}, "--no-progress"])
        print(json.dumps({{"rc": rc, "err": err.getvalue()}}))
    """, tmp_path)
    assert res["rc"] == 2 and res["err"].count("\n") == 1 and "--out" in res["err"] and "File too large" in res["err"]
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    if writer == "atomic":
        assert after == before
        assert read_manifest(out, "samples.json")["num_samples"] == 100
    else:
        assert after["samples.pt"] != before["samples.pt"] and _loads(out / "samples.pt") is None


def test_a_failing_fsync_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    write_json_atomic(target, {"v": 1})

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        write_text_atomic(target, "x" * 100_000)
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_an_output_set_is_renamed_only_when_every_file_is_staged(tmp_path):
    first = OutputSet(tmp_path, manifest="m.json", owned=["c.txt"])
    first.add_text("a.txt", "a1")
    first.add_text("c.txt", "c1")
    first.commit({"run": 1})
    assert read_manifest(tmp_path, "m.json")["run"] == 1

    second = OutputSet(tmp_path, manifest="m.json")
    second.add_text("a.txt", "a2")

    def broken(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        second.add("b.txt", broken)
    assert (tmp_path / "a.txt").read_text() == "a1"  # nothing of the failed set was renamed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "c.txt", "m.json"]  # its staged files are gone

    third = OutputSet(tmp_path, manifest="m.json")
    third.add_text("a.txt", "a3")
    third.commit({"run": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "m.json"]  # c.txt of the earlier set is not left beside it
    (tmp_path / "a.txt").write_text("tampered")
    with pytest.raises(ValueError, match="differs"):
        read_manifest(tmp_path, "m.json")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_are_written_with_the_users_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        a = write_text_atomic(tmp_path / "a.txt", "x")
        outputs = OutputSet(tmp_path, manifest="m.json")
        outputs.add_text("b.txt", "y")
        outputs.commit({})
    finally:
        os.umask(old)
    for p in (a, tmp_path / "b.txt", tmp_path / "m.json"):
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask


def test_check_output_dir_names_the_option(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--out: .* exists and is not a folder"):
        check_output_dir(tmp_path / "file", "--out")
    with pytest.raises(ValueError, match="--out: cannot create"):
        check_output_dir(tmp_path / "file" / "sub", "--out")
    with pytest.raises(ValueError, match="--run-dir: .* MB free"):
        check_output_dir(tmp_path / "ok", "--run-dir", need_bytes=1 << 62)
    assert check_output_dir(tmp_path / "new" / "deep", "--out").is_dir()


def test_load_tensors_never_unpickles_code(tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(Payload(), f)
    with pytest.raises(ValueError, match="--images: .* is not a file of tensors"):
        load_tensors(tmp_path / "evil.pt", "--images")
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="--images: .* is not a file of tensors"):
        load_tensors(tmp_path / "junk.pt", "--images")
    with pytest.raises(ValueError, match="--images: no such file"):
        load_tensors(tmp_path / "missing.pt", "--images")
