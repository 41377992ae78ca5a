"""The command line: every sub-command has a --help explaining its options; README and CI agree."""

import re
import subprocess
import sys
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

    x = torch.load(tmp_path / "samples.pt")
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
    with pytest.raises(SystemExit):
        main(["sample", "gmm2d-mlp", "-n", "0", "--out", str(tmp_path)])


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
    """The same command twice gives bit-identical samples; --batch-size 1 and 64 too (fixed micro-batches)."""
    import torch

    base = ["sample", "digits-unet", "-n", "64", "--steps", "5", "--eta", "1", "--seed", "7", "--no-progress"]
    for name, bs in (("a", "64"), ("b", "64"), ("c", "1")):
        assert main(base + ["--batch-size", bs, "--out", str(tmp_path / name)]) == 0
    a, b, c = (torch.load(tmp_path / n / "samples.pt") for n in "abc")
    assert torch.equal(a, b) and torch.equal(a, c)
