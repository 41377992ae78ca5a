"""The README's "On a GPU" recipe, end to end, on a tiny random checkpoint folder of the same form (on the CPU here).

The command is read from the README (the ``onmanifold sample`` line of that section), so the test runs
what the README says: the same flags, with only the checkpoint and image folders, the sample count,
the number of steps and the device replaced. The checkpoint folder has the form of
google/ddpm-celebahq-256: a DDPMPipeline folder whose UNet (with attention blocks) is a ``.bin`` with
the attention names of diffusers < 0.15, and a DDPMScheduler config (linear betas, T = 1000, clip,
fixed_small). The images are a few generated RGB PNGs of the UNet's size.
"""

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onmanifold.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"
SIZE = 32


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one CPU thread is many times faster than two on a machine shared with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def recipe_command() -> list[str]:
    """The ``onmanifold sample ...`` command of the README's "On a GPU" section, as arguments (continuations joined)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## On a GPU", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    line = next(ln for ln in block.splitlines() if "onmanifold sample" in ln)
    return shlex.split(line[line.index("onmanifold sample"):])[2:]


def celebahq_like_folder(folder: Path) -> Path:
    """A tiny random checkpoint of google/ddpm-celebahq-256's form (see the module docstring)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=SIZE, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=True,
                          variance_type="fixed_small")
    DDPMPipeline(unet, sched).save_pretrained(folder, safe_serialization=False)
    legacy = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    state = {}
    for k, v in unet.state_dict().items():
        if ".attentions." in k:
            for new, old in legacy.items():
                k = k.replace(new, old)
        state[k] = v
    torch.save(state, folder / "unet" / "diffusion_pytorch_model.bin")
    return folder


def face_folder(folder: Path, n: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for i in range(n):
        r = ((xx - SIZE / 2) ** 2 + (yy - SIZE / 2) ** 2) < (SIZE / (3 + i)) ** 2  # a disc on a smooth background
        img = np.stack([(xx * 7 + 40 * i) % 256, (yy * 5) % 256, np.full_like(xx, 90 + 30 * i)], -1).astype(np.uint8)
        img[r] = rng.integers(0, 256, 3)
        Image.fromarray(img).save(folder / f"face-{i}.png")
    return folder


def test_readme_recipe_runs_end_to_end(tmp_path, capsys):
    args = recipe_command()
    assert "--images" in args and "--method" in args and "--device" in args
    ckpt = celebahq_like_folder(tmp_path / "ddpm-celebahq-256")
    faces = face_folder(tmp_path / "faces", 2)
    replace = {"ckpt/ddpm-celebahq-256": str(ckpt), "faces/": str(faces), "--num-samples": "2", "--steps": "4", "--device": "cpu"}
    written = {}
    for method in ("dsg", "dps"):
        run, i = [], 0
        while i < len(args):
            a = args[i].replace("$method", method)
            if a in ("--num-samples", "--steps", "--device"):
                run += [a, replace[a]]
                i += 2
                continue
            if a == "--out":
                run += [a, str(tmp_path / f"out-{method}")]
                i += 2
                continue
            run.append(replace.get(a, a))
            i += 1
        assert main(["sample", *run]) == 0, capsys.readouterr().err
        out = tmp_path / f"out-{method}"
        x = torch.load(out / "samples.pt", weights_only=True)
        assert x.shape == (2, 3, SIZE, SIZE) and torch.isfinite(x).all()
        info = json.loads((out / "samples.json").read_text())
        assert info["method"] == method and {"psnr", "ssim"} <= set(info) and info["spacing"] == "leading"
        assert (out / "comparison.png").is_file() and (out / "grid.png").is_file() and (out / "sample-00001.png").is_file()
        written[method] = x
    assert not torch.equal(written["dsg"], written["dps"])
    assert "PSNR" in capsys.readouterr().out


def test_recipe_checkpoint_form_samples_like_diffusers(tmp_path):
    """The folder form of the recipe, loaded by the library and by diffusers' DDPMPipeline, gives the same DDPM trajectory."""
    from diffusers import DDPMPipeline

    from onmanifold.model import load_diffusion_model

    ckpt = celebahq_like_folder(tmp_path / "ckpt")
    loaded = load_diffusion_model(ckpt)
    pipe = DDPMPipeline.from_pretrained(ckpt, local_files_only=True)
    pipe.scheduler.set_timesteps(1000)
    x_T = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x_T, torch.tensor([500])), pipe.unet(x_T, 500).sample)
    assert loaded.sampler(1000, 1.0).timesteps == pipe.scheduler.timesteps.tolist()


def _set_scheduler_key(ckpt: Path, key: str, value) -> None:
    path = ckpt / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))


def _drop_weights(ckpt: Path) -> None:
    (ckpt / "unet" / "diffusion_pytorch_model.bin").unlink()


@pytest.mark.parametrize("argv,mutate,message", [
    (["--device", "cuda:7"], None, "--device"),
    (["--images", "no-such-folder/"], None, "--images"),
    ([], lambda c: _set_scheduler_key(c, "timestep_spacing", "karras"), "timestep_spacing"),
    ([], lambda c: _set_scheduler_key(c, "_class_name", "FlowMatchEulerDiscreteScheduler"), "_class_name"),
    (["--eta", "1"], lambda c: _set_scheduler_key(c, "variance_type", "fixed_large"), "variance_type"),
    ([], _drop_weights, "missing weights file diffusion_pytorch_model.safetensors"),
])
def test_recipe_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, mutate, message):
    """A device that does not exist, missing images, a scheduler setting with no equivalent, an unknown scheduler, a
    checkpoint without weights: one line on stderr naming it, exit code 2, nothing written."""
    ckpt = celebahq_like_folder(tmp_path / "ckpt")
    if mutate is not None:
        mutate(ckpt)
    faces = face_folder(tmp_path / "faces", 1)
    base = ["sample", str(ckpt), "--images", str(faces), "--operator", "sr:4", "--method", "dsg", "-n", "1", "--steps", "2",
            "--eta", "1", "--out", str(tmp_path / "out")]
    for k in range(0, len(argv), 2):
        i = base.index(argv[k]) if argv[k] in base else None
        if i is None:
            base += argv[k : k + 2]
        else:
            base[i + 1] = argv[k + 1]
    assert main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()
