"""onmanifold.memory: guided sampling with gradient checkpointing / chunked VJPs gives the same gradients and
samples as without, and holds measurably less memory (CPU: the dispatch meter; CUDA: max_memory_allocated)."""

from __future__ import annotations

import pytest
import torch

from onmanifold.guidance import DiffusionPosteriorSampling, SphericalGaussianGuidance
from onmanifold.losses import MeasurementLoss
from onmanifold.memory import MemorySavingModel, TensorMemoryMeter, peak_tensor_bytes
from onmanifold.model import DiffusersUNetEpsModel
from onmanifold.operators import Downsample
from onmanifold.sampler import DDIMSampler
from onmanifold.schedule import NoiseSchedule

diffusers = pytest.importorskip("diffusers")

B = 4


def _unet(out_channels: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=out_channels, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
    ).eval()


@pytest.fixture(scope="module")
def model() -> DiffusersUNetEpsModel:
    return DiffusersUNetEpsModel(_unet(), NoiseSchedule.linear(1000))


def _eps_and_grad(model, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xg = x.clone().requires_grad_(True)
    eps = model(xg, t)
    (g,) = torch.autograd.grad((eps.square() * torch.arange(1.0, B + 1).view(-1, 1, 1, 1)).sum(), xg)
    return eps.detach(), g


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, 3, 16, 16, generator=g), torch.tensor([900, 500, 200, 20])


@pytest.mark.parametrize("options", [{"checkpoint": True}, {"vjp_chunk_size": B}, {"vjp_chunk_size": 8}])
def test_gradient_bit_identical(model, options):
    x, t = _inputs()
    e0, g0 = _eps_and_grad(model, x, t)
    e1, g1 = _eps_and_grad(MemorySavingModel(model, **options), x, t)
    assert torch.equal(e0, e1) and torch.equal(g0, g1)
    assert not model.unet.is_gradient_checkpointing  # the UNet's own setting is restored after each call


@pytest.mark.parametrize("options", [{"vjp_chunk_size": 1}, {"vjp_chunk_size": 3}, {"checkpoint": True, "vjp_chunk_size": 2}])
def test_gradient_chunked_equal_to_float_rounding(model, options):
    x, t = _inputs()
    e0, g0 = _eps_and_grad(model, x, t)
    e1, g1 = _eps_and_grad(MemorySavingModel(model, **options), x, t)
    assert torch.equal(e0, e1)  # the forward values are the whole batch's own
    torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-5 * g0.abs().max().item())


def _guided(model, method: str) -> torch.Tensor:
    sched = model.schedule
    truth = torch.rand(B, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    op = Downsample(4)
    loss = MeasurementLoss(op, op(truth))
    plugin = DiffusionPosteriorSampling(loss, 1.0) if method == "dps" else SphericalGaussianGuidance(loss, 0.2)
    return DDIMSampler(sched, 3, eta=1.0).sample(model, shape=(3, 16, 16), num_samples=B, seed=0, plugins=[plugin])


@pytest.mark.parametrize("method", ["dps", "dsg"])
def test_samples_equal(model, method):
    plain = _guided(model, method)
    assert torch.equal(_guided(MemorySavingModel(model, checkpoint=True), method), plain)
    assert torch.equal(_guided(MemorySavingModel(model, vjp_chunk_size=B), method), plain)
    torch.testing.assert_close(_guided(MemorySavingModel(model, vjp_chunk_size=1), method), plain, rtol=0, atol=1e-4)


def test_learned_variance_full_prediction_passes_through():
    """A learned-variance UNet (the sampler calls full_prediction): the wrapper keeps the attribute and the samples."""
    m = DiffusersUNetEpsModel(_unet(out_channels=6), NoiseSchedule.linear(1000))
    w = MemorySavingModel(m, vjp_chunk_size=2)
    assert w.learned_variance and hasattr(w, "full_prediction")
    truth = torch.zeros(B, 3, 16, 16)
    loss = MeasurementLoss(Downsample(4), Downsample(4)(truth))
    s = DDIMSampler(m.schedule, 3, eta=1.0, variance="learned_range")
    a = s.sample(m, shape=(3, 16, 16), num_samples=B, seed=0, plugins=[DiffusionPosteriorSampling(loss, 1.0)])
    b = s.sample(w, shape=(3, 16, 16), num_samples=B, seed=0, plugins=[DiffusionPosteriorSampling(loss, 1.0)])
    torch.testing.assert_close(b, a, rtol=0, atol=1e-4)


def _guided_step_peak(model) -> int:
    x, t = _inputs()
    _, peak, how = peak_tensor_bytes(lambda: _eps_and_grad(model, x, t))
    assert how.startswith("tensor storages")
    return peak


def test_peak_memory_lower_on_cpu(model):
    plain = _guided_step_peak(model)
    checkpointed = _guided_step_peak(MemorySavingModel(model, checkpoint=True))
    chunked = _guided_step_peak(MemorySavingModel(model, vjp_chunk_size=1))
    both = _guided_step_peak(MemorySavingModel(model, checkpoint=True, vjp_chunk_size=1))
    assert checkpointed < 0.85 * plain
    assert chunked < 0.5 * plain
    assert both < chunked


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine: the CUDA peak-memory check needs one")
def test_peak_memory_lower_on_cuda():
    m = DiffusersUNetEpsModel(_unet().cuda(), NoiseSchedule.linear(1000))
    x, t = (v.cuda() for v in _inputs())
    plain = peak_tensor_bytes(lambda: _eps_and_grad(m, x, t), "cuda")[1]
    chunked = peak_tensor_bytes(lambda: _eps_and_grad(MemorySavingModel(m, vjp_chunk_size=1), x, t), "cuda")[1]
    assert chunked < 0.6 * plain


def test_meter_counts_new_storages_once():
    with TensorMemoryMeter() as meter:
        a = torch.zeros(1000)  # 4000 bytes
        v = a.view(10, 100)  # a view: same storage
        a.add_(1)  # in place: same storage
        b = a * 2  # 4000 more
        del b
        c = torch.ones(500)  # 2000, after b was freed
        assert meter.live_bytes == 6000
    assert meter.peak_bytes == 8000
    del a, v, c


def test_bad_input(model):
    with pytest.raises(ValueError, match="checkpoint, vjp_chunk_size"):
        MemorySavingModel(model)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="vjp_chunk_size"):
            MemorySavingModel(model, vjp_chunk_size=bad)
    with pytest.raises(ValueError, match="checkpoint"):
        MemorySavingModel(lambda x, t, cond=None: x, checkpoint=True)
    with pytest.raises(ValueError, match="checkpoint"):
        MemorySavingModel(model, checkpoint=1)
