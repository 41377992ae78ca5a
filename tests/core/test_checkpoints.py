"""Checkpoints: round trip, bundled models present and small, clear errors on missing or corrupt files."""

import shutil
from pathlib import Path

import pytest
import torch

from onmanifold.model import load_diffusion_model
from onmanifold.nets import CheckpointError, ConvClassifier, list_bundled, load_network, save_network
from onmanifold.nets.checkpoint import BUNDLED_DIR

EXPECTED = {"gmm2d-mlp", "digits-unet", "shapes-unet", "digits-classifier", "digits-eval-classifier", "shapes-classifier", "shapes-eval-classifier"}


def test_round_trip(tmp_path):
    m = ConvClassifier(image_size=8, num_classes=[10])
    save_network(m, tmp_path / "c", meta={"x": 1})
    m2 = load_network(tmp_path / "c")
    x = torch.randn(3, 1, 8, 8)
    m.eval()
    torch.testing.assert_close(m(x), m2(x))


TIME_PREDICTORS = {"gmm2d-time", "digits-time", "shapes-time", "shapes-time-size", "shapes-time-type-size"}


def _size(names):
    return sum(p.stat().st_size for n in names for p in (BUNDLED_DIR / n).rglob("*") if p.is_file() and "snapshots" not in p.parts)


def test_bundled_models_present_and_under_15_mb():
    """The foundation's seven models stay under 15 MiB; with the time predictors (float16) the package stays under 20 MiB."""
    assert EXPECTED <= set(list_bundled())
    assert _size(EXPECTED) < 15 * 2**20
    assert _size(list_bundled()) < 20 * 2**20


def test_missing_checkpoint_error():
    with pytest.raises(CheckpointError, match="neither a folder nor a bundled model"):
        load_network("no-such-model")


@pytest.mark.parametrize("what", ["truncate", "garble", "config"])
def test_corrupt_checkpoint_error(tmp_path, what):
    src = BUNDLED_DIR / "digits-unet"
    dst = tmp_path / "bad"
    shutil.copytree(src, dst)
    w = dst / "unet" / "diffusion_pytorch_model.safetensors"
    if what == "truncate":
        w.write_bytes(w.read_bytes()[: 1000])
        match = "corrupt"
    elif what == "garble":
        data = bytearray(w.read_bytes())
        data[:8] = b"\xff" * 8
        w.write_bytes(bytes(data))
        match = "corrupt"
    else:
        (dst / "unet" / "config.json").write_text("{not json")
        match = "not valid JSON"
    with pytest.raises(CheckpointError, match=match):
        load_diffusion_model(dst)


def test_diffusers_folder_loads_with_schedule():
    m = load_diffusion_model(BUNDLED_DIR / "digits-unet")
    assert m.sample_shape == (1, 8, 8) and m.schedule.T == 1000
    from diffusers import DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(str(BUNDLED_DIR / "digits-unet"), local_files_only=True)
    assert pipe.unet.config.sample_size == 8
