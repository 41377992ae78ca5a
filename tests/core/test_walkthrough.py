"""The README's walkthrough (section "Your own model and images"), run line by line on a tiny random model.

The ``<!-- walkthrough -->`` block is read from README.md and each ``onmanifold`` command runs through
``onmanifold.cli.main`` in a folder holding ``my-model/`` (a random 16 x 16 RGB ``UNet2DModel`` with its
scheduler), ``my-photos/`` (a few generated PNGs) and ``mask.png``. Only the amounts shrink for the test
(``--steps``, ``-n``, ``--save-every``); every option and path is the README's.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import torch

from onmanifold.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMALLER = {"--steps": "4", "-n": "2", "--save-every": "2"}


def _walkthrough_commands() -> list[list[str]]:
    block = re.search(r"<!-- walkthrough -->\s*```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md has no walkthrough block"
    commands = []
    for line in block.group(1).replace("\\\n", " ").splitlines():
        argv = shlex.split(line)
        assert argv[0] == "onmanifold", line
        argv = argv[1:]
        for i, a in enumerate(argv[:-1]):
            if a in SMALLER:
                argv[i + 1] = SMALLER[a]
        commands.append(argv)
    return commands


def _tiny_world(folder: Path) -> None:
    from diffusers import DDPMScheduler, UNet2DModel

    from onmanifold.userdata import write_image_folder

    torch.manual_seed(0)
    UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D")).save_pretrained(folder / "my-model" / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "my-model" / "scheduler")
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    photos = torch.stack([torch.stack([xx * (i % 3 - 1), yy * (i % 2), xx * yy]) for i in range(10)]).clamp(-1, 1)  # 10: one held out
    write_image_folder(photos, folder / "my-photos")
    mask = torch.ones(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 0
    write_image_folder(mask * 2 - 1, folder, prefix="mask")
    (folder / "mask00000.png").rename(folder / "mask.png")


def test_the_readme_walkthrough_runs(tmp_path, monkeypatch, capsys):
    _tiny_world(tmp_path)
    monkeypatch.chdir(tmp_path)
    commands = _walkthrough_commands()
    assert [c[0] for c in commands] == ["train", "sample", "report"]
    for argv in commands:
        assert main(argv + (["--no-progress"] if argv[0] in ("train", "sample") else [])) == 0, argv
    out = capsys.readouterr().out
    assert "held-out: exact step" in out and "PSNR" in out and "ASCED flagged" in out
    info = json.loads((tmp_path / "inpainted" / "samples.json").read_text())
    assert info["plugins"] == ["AbnormalScoreCorrection", "TemporalAlignmentGuidance", "SphericalGaussianGuidance"]
    assert info["operator"] == "inpaint" and len(info["per_sample"]) == 2 and "psnr" in info["per_sample"][0]
    predictor = json.loads((tmp_path / "my-model-time" / "onmanifold.json").read_text())
    assert predictor["binding"]["model"] == "my-model" and "top1" in predictor["heldout"]
    report = (tmp_path / "inpainted" / "report.md").read_text()
    for name in ("grid.png", "comparison.png", "sample-00000.png", "asced-mask-00000.png"):
        assert name in report
    assert "saved without a caption" not in report  # every figure says what it shows
    assert (tmp_path / "inpainted" / "report.html").stat().st_size > 1000
