"""Device and dtype follow the model (issue 13, item 3).

The loop with DSG, DPS, TAG (and its baselines and recorders) and ASCED (and its baselines) runs on a
stand-in device that rejects every stray CPU tensor: ``StandIn`` tensors hold CPU data but report the
``meta`` device, and the ``StandInDevice`` dispatch mode raises :class:`StrayTensorError` when an op mixes
a CPU tensor (other than a 0-dim scalar) with them; explicit transfers (``.to(device)``, ``.cpu()``) are
allowed. The ops run on the same CPU kernels, so the stand-in samples equal the CPU samples bit for bit.
The same runs on CUDA when a GPU is present. Then: half and double precision diffusers UNets sample
with ``shape=`` in their own dtype, bad devices and dtypes are refused naming the argument, and
``torchrun``'s local rank maps to its GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from onmanifold.artifacts import AbnormalScoreCorrection, DetectorConfig, FlagFractionMonitor, GroundTruthMasks, ScoreClipping, TrajectoryAwareCorrection
from onmanifold.device import check_device, check_dtype, device_for_local_rank, local_rank_of, model_placement, run_placement
from onmanifold.guidance import DiffusionPosteriorSampling, SphericalGaussianGuidance
from onmanifold.guidance.recorders import SphereDeviationRecorder
from onmanifold.losses import ClassifierLoss, MeasurementLoss
from onmanifold.model import GaussianMixtureModel
from onmanifold.operators import GaussianBlur, Inpainting, box_masks, make_measurements
from onmanifold.sampler import DDIMSampler, SamplerPlugin
from onmanifold.schedule import NoiseSchedule
from onmanifold.temporal import (
    EpsilonScaling,
    LangevinCorrector,
    NoiseInjection,
    TemporalAlignmentGuidance,
    TimeCorrectionSampler,
    TimeGapRecorder,
    TimePredictor,
    TimeShiftSampler,
)

from standin import STAND_IN, StandIn, StandInDevice, StrayTensorError
from standin import plain as _plain

# ------------------------------------------------------------------ one problem, every method
SCHEDULE_T = 20
SHAPE = (1, 8, 8)


def _problem():
    """A fresh Gaussian-mixture model, a linear time predictor, an inpainting loss and a classifier loss (CPU)."""
    schedule = NoiseSchedule.linear(SCHEDULE_T, 1e-3, 0.2)
    g = torch.Generator().manual_seed(3)
    means = torch.randn(2, *SHAPE, generator=g, dtype=torch.float64).clamp(-1, 1)
    gmm = GaussianMixtureModel(means, 0.3, schedule)
    truth = gmm.sample_data(2, torch.Generator().manual_seed(4))
    op = Inpainting(box_masks(2, SHAPE, 3, seed=0))
    y = make_measurements(op, truth, 0.05, seed=0)
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    predictor = TimePredictor(nn.Sequential(nn.Flatten(), nn.Linear(64, SCHEDULE_T)), schedule)
    return gmm, predictor, MeasurementLoss(op, y), ClassifierLoss(classifier, torch.tensor([0, 2])), truth


def _blur_loss(truth):
    op = GaussianBlur(0.8, 3)
    return MeasurementLoss(op, make_measurements(op, truth, 0.05, seed=1))


RUNS = {
    "asced+tag+dsg": lambda p: [AbnormalScoreCorrection(DetectorConfig.for_resolution(8, area_min=0, a_min=0.0)),
                                TemporalAlignmentGuidance(p["posterior"], 0.5), SphericalGaussianGuidance(p["loss"], 0.2),
                                SphereDeviationRecorder(), TimeGapRecorder(p["posterior"]), FlagFractionMonitor()],
    "dps+tag-inline": lambda p: [DiffusionPosteriorSampling(p["loss"], 0.3), TemporalAlignmentGuidance(p["posterior"], 0.5, placement="inline")],
    "tag-post+classifier-dsg": lambda p: [TemporalAlignmentGuidance(p["posterior"], 0.5, placement="post"),
                                          SphericalGaussianGuidance(p["classifier_loss"], 0.2)],
    "temporal-baselines": lambda p: [NoiseInjection(0.01), EpsilonScaling(1.01), TimeShiftSampler(0.1, window=5, cutoff=2),
                                     LangevinCorrector(0.16), TimeCorrectionSampler(p["posterior"]), DiffusionPosteriorSampling(p["blur_loss"], 0.1)],
    "asced-baselines": lambda p: [AbnormalScoreCorrection(DetectorConfig.for_resolution(8), method="state_replacement",
                                                          mask_transform=lambda res, idx: torch.ones_like(res.mask)), ScoreClipping()],
    "dsg-window-time-travel": lambda p: [SphericalGaussianGuidance(p["loss"], 0.2, guidance_window=(0, 12), time_travel=2)],
    "dps-window-time-travel": lambda p: [DiffusionPosteriorSampling(p["classifier_loss"], 0.1, guidance_window=(0, 12), time_travel=2)],
    "oracle-ttc": lambda p: [TrajectoryAwareCorrection(GroundTruthMasks(torch.ones(2, 8, 8, dtype=torch.bool)))],
}


def _sample(run: str, device: torch.device | None):
    """The run's samples and plugins with the model (and classifier) on ``device`` (None: the CPU, nothing moved)."""
    gmm, posterior, loss, classifier_loss, truth = _problem()
    if device is not None:
        for network in (gmm, posterior, classifier_loss.classifier):
            network.to(device)
    p = {"posterior": posterior, "loss": loss, "classifier_loss": classifier_loss, "blur_loss": _blur_loss(truth)}
    plugins = RUNS[run](p)
    x = DDIMSampler(gmm.schedule, 8, eta=1.0).sample(gmm, shape=SHAPE, num_samples=2, seed=0, plugins=plugins)
    return x, plugins


@pytest.mark.parametrize("run", sorted(RUNS))
def test_every_method_keeps_its_tensors_on_the_run_device(run):
    """No op of the run mixes a CPU tensor with the device's; the samples equal the CPU run's bit for bit."""
    expected, cpu_plugins = _sample(run, None)
    with StandInDevice():
        x, plugins = _sample(run, STAND_IN)
        assert x.device == STAND_IN
        x = _plain(x)
        if run == "asced+tag+dsg":
            asced = plugins[0]
            flagged, corrected = _plain(asced.detector.results().mask), _plain(asced.corrector.corrected)
    assert torch.equal(x, expected)
    if run == "asced+tag+dsg":
        assert torch.equal(flagged, cpu_plugins[0].detector.results().mask)
        assert torch.equal(corrected, cpu_plugins[0].corrector.corrected)
        assert bool(corrected.any()), "the test must exercise the correction"


class _StrayPlugin(SamplerPlugin):
    """A plugin that adds a tensor made on the CPU (no device=) to the state: the guard must catch it."""

    def after_step(self, state):
        state.x_prev = state.x_prev + 0.0 * torch.ones(state.x_prev.shape)


def test_the_stand_in_device_rejects_a_stray_cpu_tensor():
    gmm, *_ = _problem()
    with StandInDevice():
        gmm.to(STAND_IN)
        sampler = DDIMSampler(gmm.schedule, 5, eta=1.0)
        sampler.sample(gmm, shape=SHAPE, num_samples=2, seed=0)  # the plain loop passes
        with pytest.raises(StrayTensorError, match="meets tensors of the run's device"):
            sampler.sample(gmm, shape=SHAPE, num_samples=2, seed=0, plugins=[_StrayPlugin()])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("run", sorted(RUNS))
def test_every_method_runs_on_cuda_and_gives_the_cpu_samples(run):
    """On a GPU the same seeds give the CPU samples (the generators stay on the CPU), up to kernel rounding."""
    expected, _ = _sample(run, None)
    x, _ = _sample(run, torch.device("cuda"))
    assert x.device.type == "cuda"
    torch.testing.assert_close(x.cpu(), expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ precision
def _tiny_unet(dtype: torch.dtype):
    from diffusers import UNet2DModel

    from onmanifold.model import DiffusersUNetEpsModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    return DiffusersUNetEpsModel(unet, NoiseSchedule.linear(100)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_half_and_double_precision_unets_sample_with_shape_in_their_dtype(dtype):
    torch.set_num_threads(1)
    model = _tiny_unet(dtype)
    assert model_placement(model) == (torch.device("cpu"), dtype)
    sampler = DDIMSampler(model.schedule, 4, eta=1.0)
    plain = sampler.sample(model, shape=(1, 8, 8), num_samples=2, seed=0)
    assert plain.dtype == dtype and torch.isfinite(plain.float()).all()
    loss = MeasurementLoss(Inpainting(box_masks(2, (1, 8, 8), 3, seed=0)), torch.zeros(2, 1, 8, 8))
    guided = sampler.sample(model, shape=(1, 8, 8), num_samples=2, seed=0, plugins=[SphericalGaussianGuidance(loss, 0.2)])
    assert guided.dtype == dtype and torch.isfinite(guided.float()).all()
    assert not torch.equal(guided, plain)
    if dtype == torch.bfloat16:  # its CPU generators draw float32's numbers rounded: the float32 run's samples, to bfloat16's rounding
        ref = DDIMSampler(model.schedule, 4, eta=1.0).sample(_tiny_unet(torch.float32), shape=(1, 8, 8), num_samples=2, seed=0)
        torch.testing.assert_close(plain.float(), ref, rtol=0.1, atol=0.1)


def test_dsg_norms_of_a_half_precision_step_are_taken_in_float32():
    """The bfloat16 step is the float32 step rounded once: on the sphere of radius sqrt(n) sigma to bfloat16's precision."""
    from onmanifold.guidance import dsg_update

    g = torch.Generator().manual_seed(0)
    mu, z, grad = (torch.randn(2, 3, 16, 16, generator=g) for _ in range(3))
    ref = dsg_update(mu, 0.3, z, grad, 0.2)
    half = dsg_update(mu.bfloat16(), 0.3, z.bfloat16(), grad.bfloat16(), 0.2)
    assert half.dtype == torch.bfloat16
    expected = dsg_update(mu.bfloat16().float(), 0.3, z.bfloat16().float(), grad.bfloat16().float(), 0.2).bfloat16()
    assert torch.equal(half, expected)
    assert (half.float() - ref).abs().max() < 0.05


# ------------------------------------------------------------------ bad input
def test_a_device_this_machine_lacks_or_a_dtype_the_model_cannot_run_is_refused_naming_the_argument():
    model = _tiny_unet(torch.float32)
    sampler = DDIMSampler(model.schedule, 2)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^device: 'cuda' asked for, but torch sees no CUDA device"):
            sampler.sample(model, shape=(1, 8, 8), num_samples=1, device="cuda")
    with pytest.raises(ValueError, match=r"^device: 'cuda:7' "):
        sampler.sample(model, shape=(1, 8, 8), num_samples=1, device="cuda:7")
    with pytest.raises(ValueError, match=r"^device: 'gpu0' is not a device"):
        sampler.sample(model, shape=(1, 8, 8), num_samples=1, device="gpu0")
    with pytest.raises(ValueError, match=r"^dtype: the model's weights are torch.float32; it cannot run torch.bfloat16"):
        sampler.sample(model, shape=(1, 8, 8), num_samples=1, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"^dtype: expected a floating dtype"):
        sampler.sample(model, shape=(1, 8, 8), num_samples=1, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"^device: the model's weights are on cpu, not meta"):
        sampler.sample(model, shape=(1, 8, 8), num_samples=1, device="meta")
    assert check_dtype("bfloat16") == torch.bfloat16 and check_device("cpu") == torch.device("cpu")


def test_placement_defaults_follow_the_model_then_x_T():
    gmm, *_ = _problem()  # buffers only: no dtype of its own
    assert run_placement(gmm, None) == (torch.device("cpu"), torch.float32)
    assert run_placement(gmm, torch.zeros(1, 2, dtype=torch.float64)) == (torch.device("cpu"), torch.float64)
    assert run_placement(lambda x, t, c=None: x, None, dtype="float16") == (torch.device("cpu"), torch.float16)
    assert run_placement(nn.Linear(2, 2).double(), None) == (torch.device("cpu"), torch.float64)


def test_cli_device_that_does_not_exist_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    for device in ["cuda:7" if torch.cuda.is_available() else "cuda"]:
        if torch.cuda.device_count() > 7:
            continue
        r = subprocess.run([sys.executable, "-m", "onmanifold", "sample", "gmm2d-mlp", "--num-samples", "2", "--steps", "2",
                            "--out", str(tmp_path / "out"), "--device", device], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("onmanifold: --device: ") or "--device: " in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ torchrun
def test_torchrun_puts_local_rank_r_on_cuda_r():
    assert device_for_local_rank(0, 4) == torch.device("cuda", 0)
    assert device_for_local_rank(3, 4) == torch.device("cuda", 3)
    assert device_for_local_rank(2, 0) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^LOCAL_RANK: process 4 has no GPU of its own"):
        device_for_local_rank(4, 4)
    with pytest.raises(ValueError, match=r"^LOCAL_RANK: expected an integer >= 0"):
        device_for_local_rank(-1, 2)
    assert local_rank_of({"LOCAL_RANK": "2"}) == 2 and local_rank_of({}) == 0
    with pytest.raises(ValueError, match=r"^LOCAL_RANK: expected an integer, got 'x'"):
        local_rank_of({"LOCAL_RANK": "x"})


def test_the_runner_tells_each_cell_its_process_device(tmp_path):
    from onmanifold_bench.runner import Cell, Suite, cell_device, run_suite

    suite = Suite("device-toy", [Cell("m", {"i": 0}, shard=0, seeds=(0,))], lambda cell: {"device": str(cell_device())})
    assert run_suite(suite, tmp_path / "a", progress=False)[0]["metrics"]["device"] == "cpu"
    assert run_suite(suite, tmp_path / "b", progress=False, device=STAND_IN)[0]["metrics"]["device"] == "meta"
    assert cell_device() == torch.device("cpu")  # outside a run


def test_a_loaded_model_moved_to_a_device_and_dtype_samples_there():
    from onmanifold.model import load_diffusion_model

    loaded = load_diffusion_model("gmm2d-mlp").to(dtype="float64")
    x = loaded.sampler(5).sample(loaded.model, shape=loaded.sample_shape, num_samples=3, seed=0)
    assert x.dtype == torch.float64
    with pytest.raises(ValueError, match=r"^dtype: expected a floating dtype"):
        loaded.to(dtype="int8")
    with pytest.raises(ValueError, match=r"^device: 'cuda:7'"):
        loaded.to(device="cuda:7")


@pytest.mark.parametrize("method, task, steps", [("dsg,tag,asced", "label", 4), ("dps", "box", 2)])
def test_the_command_line_runs_every_network_on_the_run_device(method, task, steps, tmp_path, monkeypatch):
    """``onmanifold sample --device``: the model, TAG's time predictor, the guidance classifier and the measurement loss
    go to the run's device and the loop follows them (no stray CPU tensor); the outputs equal the CPU run's to float
    rounding (the UNet's ops dispatched through the stand-in's Python mode differ from the CPU run by ~2e-5)."""
    from onmanifold import commands
    from onmanifold.cli import main

    argv = ["sample", "digits-unet", "--method", method, "--task", task, "--eta", "1", "--steps", str(steps), "-n", "2", "--no-progress"]
    assert main(argv + ["--out", str(tmp_path / "cpu")]) == 0
    monkeypatch.setattr(commands, "_placement", lambda args: (STAND_IN, torch.float32))
    with StandInDevice():
        assert main(argv + ["--out", str(tmp_path / "device")]) == 0
    expected, got = (torch.load(tmp_path / d / "samples.pt", weights_only=True) for d in ("cpu", "device"))
    assert not isinstance(got, StandIn) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
