"""The user's own data and models: reading images and tensors, masks, composing methods on the command line,
training on ``--data`` (diffusion, classifier, time predictor bound to a model, pixel or latent), and the
bed's own numbers through the user-data path.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from onmanifold.cli import main
from onmanifold.commands import parse_methods
from onmanifold.userdata import load_labels, load_mask, load_user_images, write_image_folder


# ------------------------------------------------------------------------------------------------ reading
def test_an_image_folder_round_trips_on_the_8_bit_grid(tmp_path):
    x = (torch.randint(0, 256, (3, 3, 8, 8)).float() / 127.5 - 1)
    write_image_folder(x, tmp_path)
    read = load_user_images(tmp_path)
    assert read.source == "images" and read.scale == "8-bit" and read.names == ["00000.png", "00001.png", "00002.png"]
    assert torch.equal(read.images, x)


def test_grey_images_give_one_channel_and_colour_makes_the_set_rgb(tmp_path):
    grey = torch.rand(2, 1, 8, 8) * 2 - 1
    write_image_folder(grey, tmp_path / "g")
    assert load_user_images(tmp_path / "g").images.shape == (2, 1, 8, 8)
    write_image_folder(torch.rand(1, 3, 8, 8) * 2 - 1, tmp_path / "g", prefix="c")
    assert load_user_images(tmp_path / "g").images.shape == (3, 3, 8, 8)


def test_mixed_sizes_need_resize_or_crop(tmp_path):
    write_image_folder(torch.zeros(1, 1, 8, 8), tmp_path, prefix="a")
    write_image_folder(torch.zeros(1, 1, 12, 16), tmp_path, prefix="b")
    with pytest.raises(ValueError, match=r"^--data: the images have 2 different sizes.*--resize"):
        load_user_images(tmp_path)
    assert load_user_images(tmp_path, resize=8, crop=8).images.shape == (2, 1, 8, 8)
    assert load_user_images(tmp_path, crop=8).images.shape == (2, 1, 8, 8)


def test_class_subfolders_give_labels(tmp_path):
    for k, name in enumerate(["cat", "dog"]):
        write_image_folder(torch.full((2 + k, 1, 8, 8), 0.5 * k), tmp_path / name)
    read = load_user_images(tmp_path)
    assert read.classes == ["cat", "dog"] and read.labels.tolist() == [0, 0, 1, 1, 1]


@pytest.mark.parametrize("array, scale", [
    (np.full((2, 3, 4, 4), -0.5, np.float32), "[-1, 1]"),
    (np.full((2, 1, 4, 4), 255, np.uint8), "[0, 255]"),
    (np.full((2, 1, 4, 4), 127.5, np.float64), "[0, 255]"),
])
def test_tensor_files_say_which_scale_they_were_read_on(tmp_path, array, scale):
    np.save(tmp_path / "x.npy", array)
    torch.save(torch.from_numpy(array), tmp_path / "x.pt")
    for name in ("x.npy", "x.pt"):
        read = load_user_images(tmp_path / name)
        assert read.scale == scale and read.images.dtype == torch.float32
        assert float(read.images.min()) >= -1 and float(read.images.max()) <= 1


@pytest.mark.parametrize("tensor, text", [
    (torch.zeros(2, 4, 4, 3), "channels-last"),
    (torch.full((2, 1, 4, 4), 0.5), "look like [0, 1]"),
    (torch.full((2, 1, 4, 4), 300.0), "expected [-1, 1] or [0, 255]"),
    (torch.zeros(4, 4), "N x C x H x W"),
])
def test_tensor_files_of_the_wrong_layout_or_range_name_the_option(tmp_path, tensor, text):
    torch.save(tensor, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"^--data: ") as e:
        load_user_images(tmp_path / "x.pt")
    assert text in str(e.value)


def test_masks_one_for_all_or_one_per_image(tmp_path):
    m = torch.ones(1, 1, 8, 8)
    m[..., 2:5, 2:5] = 0
    write_image_folder(m * 2 - 1, tmp_path / "one")
    assert torch.equal(load_mask(tmp_path / "one" / "00000.png", 3, (8, 8)), m.expand(3, -1, -1, -1))
    per = torch.randint(0, 2, (3, 8, 8)).float()
    per[:, 0, 0] = 1
    torch.save(per, tmp_path / "m.pt")
    assert torch.equal(load_mask(tmp_path / "m.pt", 3, (8, 8))[:, 0], per)
    with pytest.raises(ValueError, match=r"^--mask: masks of 8 x 8 pixels do not match the images' 16 x 16"):
        load_mask(tmp_path / "m.pt", 3, (16, 16))
    with pytest.raises(ValueError, match=r"^--mask: 3 masks for 2 images"):
        load_mask(tmp_path / "m.pt", 2, (8, 8))


def test_labels_from_a_text_file(tmp_path):
    (tmp_path / "l.txt").write_text("0\n1\n1\n")
    assert load_labels(tmp_path / "l.txt", 3).tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="--labels: 3 labels for 4 images"):
        load_labels(tmp_path / "l.txt", 4)


# ------------------------------------------------------------------------------------------------ methods
@pytest.mark.parametrize("text, built", [
    ("dsg,tag,asced", ("asced", "tag", "dsg")), ("asced,dps", ("asced", "dps")), ("tag", ("tag",)), ("none", ()), ("DSG, TAG", ("tag", "dsg")),
])
def test_methods_are_built_in_the_order_that_keeps_every_move(text, built):
    assert parse_methods(text) == built


@pytest.mark.parametrize("text, msg", [("dps,dsg", "choose one"), ("dsg,dsg", "twice"), ("none,tag", "cannot be combined"), ("dsg,foo", "unknown method 'foo'")])
def test_unknown_or_impossible_method_combinations_are_refused(text, msg):
    with pytest.raises(ValueError, match=r"^--method: .*" + msg):
        parse_methods(text)


def test_the_composed_cli_run_equals_the_library_run(tmp_path):
    """``--method tag,dsg,asced --task box`` on the bundled digits model: the samples are those of the plugin list
    [ASCED, TAG, DSG] built by hand, and the outputs hold one PNG per sample, ASCED's masks and per-sample metrics."""
    from onmanifold.artifacts import AbnormalScoreCorrection, CorrectionConfig, DetectorConfig
    from onmanifold.guidance import SphericalGaussianGuidance
    from onmanifold.losses import MeasurementLoss
    from onmanifold.model import load_diffusion_model
    from onmanifold.operators import make_measurements
    from onmanifold.sampler import DDIMSampler
    from onmanifold.temporal import TemporalAlignmentGuidance, load_time_predictor
    from onmanifold.testbeds import get_testbed

    assert main(["sample", "digits-unet", "--method", "tag,dsg,asced", "--task", "box", "--eta", "1", "--steps", "8", "-n", "3",
                 "--omega0", "2", "--out", str(tmp_path), "--no-progress"]) == 0
    info = json.loads((tmp_path / "samples.json").read_text())
    assert info["plugins"] == ["AbnormalScoreCorrection", "TemporalAlignmentGuidance", "SphericalGaussianGuidance"]
    assert [r["png"] for r in info["per_sample"]] == [f"sample-{i:05d}.png" for i in range(3)]
    assert all({"psnr", "ssim", "asced_flagged", "asced_mask"} <= set(r) for r in info["per_sample"])
    assert all((tmp_path / r["asced_mask"]).is_file() for r in info["per_sample"])
    bed, loaded = get_testbed("digits"), load_diffusion_model("digits-unet")
    truth = bed.images("test", 3)[0]
    op = bed.make_task("box", 3, seed=0)
    loss = MeasurementLoss(op, make_measurements(op, truth, 0.05, seed=0))
    plugins = [AbnormalScoreCorrection(DetectorConfig.for_resolution(8), CorrectionConfig.for_resolution(8, eta_c=None)),
               TemporalAlignmentGuidance(load_time_predictor("digits-time"), 2.0), SphericalGaussianGuidance(loss, 0.2, 1)]
    x = DDIMSampler(loaded.schedule, 8, eta=1.0).sample(loaded.model, shape=(1, 8, 8), num_samples=3, seed=0, batch_size=256, plugins=plugins)
    assert torch.equal(torch.load(tmp_path / "samples.pt", weights_only=True), x)


# ------------------------------------------------------------------------------------------------ the bed's numbers through the user path
def test_the_bed_path_and_the_user_path_give_the_same_samples(tmp_path):
    """digits box inpainting with DSG: ``--task box`` (the bed's images and masks) equals ``--operator inpaint`` with the
    same masks as a PNG folder and the same images as a tensor file; and a PNG folder of the images equals the tensor
    of the same 8-bit pixels (the PNG path adds nothing but the 8-bit quantisation)."""
    from onmanifold.operators import box_masks
    from onmanifold.testbeds import get_testbed

    n = 4
    truth = get_testbed("digits").images("test", n)[0]
    torch.save(truth, tmp_path / "truth.pt")
    write_image_folder(box_masks(n, (1, 8, 8), 4, 0, seed=0) * 2 - 1, tmp_path / "masks")
    write_image_folder(truth, tmp_path / "pngs")
    torch.save(load_user_images(tmp_path / "pngs").images, tmp_path / "quantised.pt")
    common = ["sample", "digits-unet", "--method", "dsg", "--eta", "1", "--steps", "6", "-n", str(n), "--no-progress"]
    user = ["--operator", "inpaint", "--mask", str(tmp_path / "masks")]
    runs = {"bed": ["--task", "box"], "tensor": user + ["--images", str(tmp_path / "truth.pt")],
            "png": user + ["--images", str(tmp_path / "pngs")], "quantised": user + ["--images", str(tmp_path / "quantised.pt")]}
    out = {}
    for name, extra in runs.items():
        assert main(common + extra + ["--out", str(tmp_path / name)]) == 0
        out[name] = (torch.load(tmp_path / name / "samples.pt", weights_only=True), json.loads((tmp_path / name / "samples.json").read_text()))
    assert torch.equal(out["bed"][0], out["tensor"][0]) and out["bed"][1]["psnr"] == out["tensor"][1]["psnr"]
    assert torch.equal(out["png"][0], out["quantised"][0]) and out["png"][1]["ssim"] == out["quantised"][1]["ssim"]


# ------------------------------------------------------------------------------------------------ training on --data
def _tiny_pixel_model(folder, seed=0, size=8, channels=1):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1, block_out_channels=(8, 16),
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    return folder


def test_train_diffusion_on_a_tensor_file_sizes_the_unet_from_the_data(tmp_path, capsys):
    from onmanifold.model import load_diffusion_model

    torch.save((torch.rand(12, 3, 8, 8) * 255).round(), tmp_path / "x.pt")
    assert main(["train", "diffusion", "--data", str(tmp_path / "x.pt"), "--out", str(tmp_path / "m"), "--steps", "2", "--batch-size", "4",
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "read as [0, 255] values" in captured.err and "held-out: denoising loss" in captured.out
    loaded = load_diffusion_model(tmp_path / "m")
    assert loaded.sample_shape == (3, 8, 8)
    meta = json.loads((tmp_path / "m" / "onmanifold.json").read_text())
    assert meta["data"]["train_images"] == 11 and meta["heldout"]["images"] == 1


def test_train_classifier_on_class_subfolders(tmp_path, capsys):
    for k in range(2):
        write_image_folder(torch.full((6, 1, 8, 8), 0.8 * k - 0.4), tmp_path / "data" / f"class{k}")
    assert main(["train", "classifier", "--data", str(tmp_path / "data"), "--role", "guidance", "--out", str(tmp_path / "c"), "--steps", "2",
                 "--batch-size", "4", "--no-progress"]) == 0
    meta = json.loads((tmp_path / "c" / "onmanifold.json").read_text())
    assert meta["classes"] == ["class0", "class1"] and meta["heldout_accuracy"]["images"] == 1
    assert "held-out: accuracy" in capsys.readouterr().out


def test_a_classifier_on_user_data_resumes_to_the_same_weights(tmp_path):
    from onmanifold.nets.checkpoint import load_network

    for k in range(2):
        write_image_folder(torch.full((6, 1, 8, 8), 0.8 * k - 0.4), tmp_path / "data" / f"class{k}")
    base = ["train", "classifier", "--data", str(tmp_path / "data"), "--role", "guidance", "--steps", "4", "--batch-size", "4", "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "a"), "--save-every", "2", "--seed", "5"]) == 0
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "training-state.pt").write_bytes((tmp_path / "a" / "training-state.pt").read_bytes())  # seed 5's state at step 2
    assert main(base + ["--out", str(tmp_path / "b"), "--resume"]) == 0  # default seed: only the state can make it equal a
    assert main(base + ["--out", str(tmp_path / "c")]) == 0
    a, b, c = (load_network(tmp_path / d).state_dict() for d in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)
    assert main(base + ["--out", str(tmp_path / "d"), "--save-every", "-1"]) == 2


def test_a_time_predictor_is_bound_to_its_model_and_resumes_to_the_same_weights(tmp_path, capsys):
    from onmanifold.temporal import load_time_predictor

    model, other = _tiny_pixel_model(tmp_path / "model"), _tiny_pixel_model(tmp_path / "other", seed=1)
    torch.save(torch.rand(10, 1, 8, 8) * 2 - 1, tmp_path / "x.pt")
    base = ["train", "time-predictor", "--model", str(model), "--data", str(tmp_path / "x.pt"), "--steps", "4", "--batch-size", "8",
            "--widths", "4", "4", "4", "4", "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "a"), "--save-every", "2"]) == 0
    assert "held-out: exact step" in capsys.readouterr().out
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "training-state.pt").write_bytes((tmp_path / "a" / "training-state.pt").read_bytes())  # the state at step 2
    assert main(base + ["--out", str(tmp_path / "b"), "--resume"]) == 0
    a, b = load_time_predictor(tmp_path / "a"), load_time_predictor(tmp_path / "b")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.binding["model"] == str(model) and a.binding["sample_shape"] == [1, 8, 8]
    sample = ["sample", "--method", "tag", "--time-predictor", str(tmp_path / "a"), "--steps", "2", "-n", "1", "--no-progress"]
    assert main(sample[:1] + [str(model)] + sample[1:] + ["--out", str(tmp_path / "ok")]) == 0
    capsys.readouterr()
    assert main(sample[:1] + [str(other)] + sample[1:] + ["--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "--time-predictor: this predictor was trained for the model" in err and "weights differ" in err
    assert not (tmp_path / "refused").exists()


def test_a_time_predictor_of_a_latent_model_trains_on_the_vae_latents(tmp_path):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DModel

    from onmanifold.temporal import load_time_predictor

    folder = tmp_path / "sd"
    torch.manual_seed(0)
    UNet2DModel(sample_size=4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D")).save_pretrained(folder / "unet")
    AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=8,
                  scaling_factor=0.5).save_pretrained(folder / "vae")
    DDIMScheduler(num_train_timesteps=1000, clip_sample=False).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DModel"],
                                                         "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDIMScheduler"]}))
    torch.save(torch.rand(10, 1, 8, 8) * 2 - 1, tmp_path / "x.pt")
    assert main(["train", "time-predictor", "--model", str(folder), "--data", str(tmp_path / "x.pt"), "--out", str(tmp_path / "p"),
                 "--steps", "2", "--batch-size", "4", "--widths", "4", "4", "4", "4", "--no-progress"]) == 0
    p = load_time_predictor(tmp_path / "p")
    assert p.sample_shape == (4, 4, 4) and p.binding["space"] == "latent"
    # the predictor in a latent run: DSG's loss on the decoded images, TAG on the latents
    assert main(["sample", str(folder), "--method", "dsg,tag", "--operator", "sr:2", "--images", str(tmp_path / "x.pt"), "--time-predictor",
                 str(tmp_path / "p"), "--eta", "1", "--steps", "3", "-n", "2", "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    info = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert torch.load(tmp_path / "s" / "samples.pt", weights_only=True).shape == (2, 4, 4, 4) and "psnr" in info["per_sample"][1]
    assert (tmp_path / "s" / "sample-00001.png").is_file()  # decoded images


def test_the_network_in_another_precision(tmp_path):
    """--dtype float64 runs the network and the loop in float64 (the noise drawn in float64, as diffusers' randn_tensor
    does): the samples equal the library's float64 run and are written as float32; DSG runs in float64 too."""
    from onmanifold.model import load_diffusion_model

    common = ["sample", "digits-unet", "-n", "2", "--steps", "3", "--eta", "1", "--no-progress", "--dtype", "float64"]
    assert main(common + ["--out", str(tmp_path / "a")]) == 0
    loaded = load_diffusion_model("digits-unet").to(dtype="float64")
    expected = loaded.sampler(3, 1.0).sample(loaded.model, shape=loaded.sample_shape, num_samples=2, seed=0)
    a = torch.load(tmp_path / "a" / "samples.pt", weights_only=True)
    assert expected.dtype == torch.float64 and a.dtype == torch.float32 and torch.equal(a, expected.float())
    assert main(common + ["--method", "dsg", "--task", "box", "--out", str(tmp_path / "b")]) == 0
    assert torch.isfinite(torch.load(tmp_path / "b" / "samples.pt", weights_only=True)).all()
