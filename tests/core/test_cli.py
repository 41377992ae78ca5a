"""The command line: every sub-command has a --help explaining its options; README and CI agree."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onmanifold.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv", [[], ["train"], ["train", "diffusion"], ["train", "classifier"], ["sample"], ["bench"], ["demo"]])
def test_help_explains_every_option(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: onmanifold" in out
    # every option line carries a help text (argparse prints the option then its help)
    for line in out.splitlines():
        if re.match(r"^\s+--[a-z-]+(\s[A-Z_]+)?\s*$", line):
            idx = out.splitlines().index(line)
            assert out.splitlines()[idx + 1].strip(), f"option without help: {line}"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- test-command -->\s*```bash\n(.*?)\n```", readme, re.S)
    assert block and "pytest" in block.group(1)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in ci and "eval" in ci


def test_sample_command_writes_samples(tmp_path):
    rc = main(["sample", "gmm2d-mlp", "-n", "8", "--steps", "10", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    import torch

    x = torch.load(tmp_path / "samples.pt", weights_only=True)
    assert x.shape == (8, 2) and torch.isfinite(x).all()
    assert (tmp_path / "scatter.png").stat().st_size > 1000


def test_sample_rejects_bad_input(tmp_path, capsys):
    assert main(["sample", "nope", "--out", str(tmp_path)]) == 2
    assert "neither a folder nor a bundled model" in capsys.readouterr().err
    assert main(["sample", "gmm2d-mlp", "--steps", "500", "--out", str(tmp_path)]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["sample", "digits-unet", "--method", "dsg", "--task", "box", "--eta", "0", "-n", "2", "--out", str(tmp_path)]) == 2
    assert "DSG needs a stochastic sampler" in capsys.readouterr().err
    assert main(["sample", "digits-unet", "--method", "dps", "-n", "2", "--out", str(tmp_path)]) == 2
    assert "--task" in capsys.readouterr().err
    assert main(["sample", "gmm2d-mlp", "-n", "0", "--out", str(tmp_path)]) == 2
    assert "--num-samples" in capsys.readouterr().err


def test_sample_with_dsg_inpainting_writes_the_comparison(tmp_path):
    rc = main(["sample", "digits-unet", "--method", "dsg", "--task", "box", "--eta", "1", "--steps", "10", "-n", "4",
               "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    import json

    info = json.loads((tmp_path / "samples.json").read_text())
    assert info["method"] == "dsg" and info["psnr"] > 5
    assert (tmp_path / "comparison.png").stat().st_size > 1000


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "onmanifold", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "demo" in r.stdout


def test_sample_is_deterministic_and_independent_of_batch_size(tmp_path):
    """The same command twice gives bit-identical samples; --batch-size 1 and 64 too with --micro-batch (fixed micro-batches)."""
    import torch

    base = ["sample", "digits-unet", "-n", "8", "--steps", "5", "--eta", "1", "--seed", "7", "--micro-batch", "4", "--no-progress"]
    for name, bs in (("a", "8"), ("b", "8"), ("c", "1")):
        assert main(base + ["--batch-size", bs, "--out", str(tmp_path / name)]) == 0
    a, b, c = (torch.load(tmp_path / n / "samples.pt", weights_only=True) for n in "abc")
    assert torch.equal(a, b) and torch.equal(a, c)


def test_sample_checks_the_output_folder_before_sampling(tmp_path, monkeypatch, capsys):
    from onmanifold.sampler import DDIMSampler

    def never(*a, **k):
        raise AssertionError("sampled although --out cannot be written")

    monkeypatch.setattr(DDIMSampler, "sample", never)
    (tmp_path / "file").write_text("x")
    assert main(["sample", "gmm2d-mlp", "--out", str(tmp_path / "file" / "out")]) == 2
    assert "--out: cannot create" in capsys.readouterr().err


def test_sample_outputs_form_one_set(tmp_path):
    """A guided run leaves comparison.png; an unguided run into the same folder removes it (no stale file beside
    the new set), and samples.json lists every file of the set with its SHA-256."""
    from onmanifold.io import read_manifest

    assert main(["sample", "digits-unet", "--method", "dps", "--task", "box", "--eta", "1", "--steps", "3", "-n", "2", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    assert (tmp_path / "comparison.png").is_file()
    assert main(["sample", "digits-unet", "--steps", "3", "-n", "2", "--out", str(tmp_path), "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "sample-00000.png", "sample-00001.png", "samples.json", "samples.pt"]
    info = read_manifest(tmp_path, "samples.json")
    assert set(info["files"]) == {"grid.png", "samples.pt", "sample-00000.png", "sample-00001.png"} and info["method"] == "none"
    from onmanifold.images import read_caption

    assert "The first 2 of 2 samples" in read_caption(tmp_path / "grid.png")


@pytest.mark.parametrize("argv, kept", [
    (["sample", "gmm2d-mlp", "--out", "OUT"], "OUT holds the outputs it held before"),
    (["train", "diffusion", "--bed", "gmm2d", "--out", "OUT", "--save-every", "10"], "rerun the same command with --resume"),
    (["train", "classifier", "--bed", "digits", "--role", "eval", "--out", "OUT"], "rerun the same command with --resume"),
    (["bench", "dsg", "--run-dir", "OUT"], "every finished cell is kept in OUT/cells; rerun the same command to resume"),
    (["report", "OUT"], "report.html and report.md were not replaced"),
    (["demo", "--out", "OUT"], "rerun the command"),
])
def test_ctrl_c_says_what_was_kept_and_how_to_resume(argv, kept, tmp_path, monkeypatch, capsys):
    """Ctrl-C in any command: exit code 130, no traceback, one line on what is on disk and how to go on."""
    import onmanifold.commands
    import onmanifold.train
    import onmanifold_bench
    import onmanifold_bench.demo
    import onmanifold_bench.report

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    for module, name in ((onmanifold.commands, "run_sample"), (onmanifold.train, "train_diffusion"), (onmanifold.train, "train_classifier"),
                         (onmanifold_bench, "run_bench_cli"), (onmanifold_bench.report, "write_report"), (onmanifold_bench.demo, "run_demo")):
        monkeypatch.setattr(module, name, interrupt)
    out = tmp_path / "out"
    out.mkdir()
    (out / "training-state.pt").write_bytes(b"")  # a state written by an earlier --save-every step
    argv = [str(out) if a == "OUT" else a for a in argv]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("onmanifold: interrupted:")
    assert kept.replace("OUT", str(out)) in lines[0]


def test_a_real_ctrl_c_while_sampling(tmp_path):
    """SIGINT to a running `onmanifold sample`: exit code 130, the interrupted line, no traceback, --out untouched."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "onmanifold", "sample", "gmm2d-mlp", "-n", "200000", "--steps", "100", "--batch-size", "200000",
                             "--out", str(out)], stderr=subprocess.PIPE, text=True,
                            # as at a terminal: a shell that starts jobs in the background (`cmd &`) hands them SIGINT ignored,
                            # and Python then installs no KeyboardInterrupt handler at all
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    err = ""
    deadline = time.time() + 120
    while "sampling" not in err and time.time() < deadline:  # the progress bar: sampling has started
        err += os.read(proc.stderr.fileno(), 4096).decode()
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[1]
    err += rest
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "onmanifold: interrupted: nothing was written" in err
    assert not out.exists()  # the folder this run created is gone again, nothing half-written in it


def test_resume_without_a_training_state_says_so(tmp_path, capsys):
    """--resume with nothing to resume from is said on stderr (training starts at step 1), not silently ignored."""
    assert main(["train", "diffusion", "--bed", "gmm2d", "--out", str(tmp_path), "--steps", "2", "--batch-size", "4", "--resume",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "--resume: no " in err and "training starts at step 1" in err
