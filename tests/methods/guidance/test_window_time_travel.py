"""DSG and DPS: sigma per sample (docs/methods/dsg.md#D21), the guidance time window (docs/methods/dsg.md#D19) and
time travel (docs/methods/dsg.md#D20), exact, in float64 on the analytic Gaussian-mixture model (docs/methods/dsg.md#T10 to #T13)."""

import math

import pytest
import torch

from onmanifold.guidance import DiffusionPosteriorSampling, SphereDeviationRecorder, SphericalGaussianGuidance, dsg_update
from onmanifold.losses import MeasurementLoss, call_loss
from onmanifold.model import GaussianMixtureModel
from onmanifold.operators import Inpainting, box_masks, make_measurements
from onmanifold.random import PerSampleGenerators
from onmanifold.sampler import DDIMSampler
from onmanifold.schedule import NoiseSchedule
from onmanifold.temporal import EpsilonScaling

SCHED = NoiseSchedule.linear(1000)
SHAPE = (1, 4, 4)
N = 6


@pytest.fixture(scope="module")
def gmm():
    g = torch.Generator().manual_seed(0)
    means = torch.rand(3, *SHAPE, generator=g, dtype=torch.float64) * 1.6 - 0.8
    return GaussianMixtureModel(means, 0.1, SCHED)


@pytest.fixture(scope="module")
def loss(gmm):
    x_true = gmm.sample_data(N, torch.Generator().manual_seed(1)).double()
    op = Inpainting(box_masks(N, SHAPE, box=2, seed=0))
    return MeasurementLoss(op, make_measurements(op, x_true, 0.05, seed=0))


def x_T(n=N, seed=5):
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def trace(gmm, plugins, steps=20, loss=None):
    """Run DDIM(eta=1) and record, per step, (t, x_t, x_prev, built a graph)."""
    s = DDIMSampler(SCHED, steps, eta=1.0)
    seen = []
    s.sample(gmm, x_T(), plugins=plugins, seed=0,
             callback=lambda st: seen.append((st.t, st.x_t.clone(), st.x_prev.clone(), st.x_t_graph is not None)))
    return s, seen


# ---------------------------------------------------------------- docs/methods/dsg.md#T10: sigma per sample
def test_sigma_per_sample_with_batch_equal_to_width():
    b = w = 8  # B = W: a (B,) sigma broadcast over the width would pass silently with wrong radii
    g = torch.Generator().manual_seed(0)
    mu, z, grad = (torch.randn(b, 2, 3, w, generator=g, dtype=torch.float64) for _ in range(3))
    sigma = torch.linspace(0.1, 0.8, b, dtype=torch.float64)
    one_by_one = torch.cat([dsg_update(mu[i:i + 1], float(sigma[i]), z[i:i + 1], grad[i:i + 1], 0.3) for i in range(b)])
    for form in (sigma, sigma.reshape(b, 1, 1, 1), sigma.reshape(b, 1, 1, 1).expand(b, 2, 3, w)):
        out = dsg_update(mu, form, z, grad, 0.3)
        torch.testing.assert_close(out, one_by_one, rtol=1e-12, atol=1e-12)
    radius = (dsg_update(mu, sigma, z, grad, 0.3) - mu).flatten(1).norm(dim=1)
    torch.testing.assert_close(radius, math.sqrt(2 * 3 * w) * sigma, rtol=1e-12, atol=0)


def test_sigma_of_the_wrong_shape_is_refused():
    mu = torch.zeros(8, 1, 4, 8)
    for bad in (torch.ones(4), torch.ones(8, 4, 8), torch.ones(8, 2, 1, 1)):
        with pytest.raises(ValueError, match="sigma"):
            dsg_update(mu, bad, mu, mu + 1, 0.2)


# ---------------------------------------------------------------- docs/methods/dsg.md#T11: the guidance window
@pytest.mark.parametrize("make", ["dsg", "dps"])
def test_window_guides_only_its_steps_and_the_others_are_the_plain_loop(gmm, loss, make):
    calls = []

    def counted(x0, rows=None):
        calls.append(1)
        return call_loss(loss, x0, rows)

    window = (300, 600)
    plugin = {"dsg": lambda **kw: SphericalGaussianGuidance(counted, 0.5, **kw),
              "dps": lambda **kw: DiffusionPosteriorSampling(counted, 0.5, **kw)}[make]
    s, plain = trace(gmm, [])
    _, windowed = trace(gmm, [plugin(guidance_window=window)])
    guided = [t for t, _, _, graph in windowed if graph]
    assert guided == [t for t in s.timesteps if 300 <= t <= 600] and len(calls) == len(guided)
    first = next(i for i, (t, *_) in enumerate(windowed) if t <= 600)
    for (t, xt, xp, _), (_, xt0, xp0, _) in zip(windowed[:first], plain[:first]):  # before the window: the plain loop, bit for bit
        assert torch.equal(xt, xt0) and torch.equal(xp, xp0)
    # after the window: plain steps from where the guidance left the state, bit for bit
    start = next(i for i, (t, *_) in enumerate(windowed) if t < 300)
    rng = PerSampleGenerators(0, range(N))
    for _ in range(start):
        rng.randn(SHAPE, dtype=torch.float64)  # the noise the earlier steps drew
    x = windowed[start][1]
    for pos in range(start, s.num_steps):
        c = s.coefficients(pos)
        _, _, mu = s.mean_from_eps(x, gmm(x, torch.full((N,), s.timesteps[pos]), None), c)
        x = mu + c.sigma * rng.randn(SHAPE, dtype=torch.float64) if c.sigma > 0 else mu
        assert torch.equal(x, windowed[pos][2])
    # a window over the whole chain is no window
    _, whole = trace(gmm, [plugin(guidance_window=(0, 999))])
    _, none = trace(gmm, [plugin()])
    assert all(torch.equal(a[2], b[2]) for a, b in zip(whole, none))


# ---------------------------------------------------------------- docs/methods/dsg.md#T12, #T13: time travel
@pytest.mark.parametrize("make", ["dsg", "dps"])
def test_time_travel_once_is_no_time_travel(gmm, loss, make):
    cls = {"dsg": lambda **kw: SphericalGaussianGuidance(loss, 0.3, **kw), "dps": lambda **kw: DiffusionPosteriorSampling(loss, 0.5, **kw)}[make]
    s = DDIMSampler(SCHED, 20, eta=1.0)
    a = s.sample(gmm, x_T(), plugins=[cls()], seed=0)
    b = s.sample(gmm, x_T(), plugins=[cls(time_travel=1, guidance_window=(0, 999))], seed=0)
    assert torch.equal(a, b)


def hand_written(gmm, loss, make, repeats, window, steps=12, rate=0.3, zeta=0.5):
    """The re-noise-and-repeat loop written out: per step, the network call, the plain step, the guided move;
    on a guided step ``repeats - 1`` times more: re-noise ``x_prev`` to ``t`` with the forward transition, repeat."""
    s = DDIMSampler(SCHED, steps, eta=1.0)
    rng = PerSampleGenerators(0, range(N))
    rows = torch.arange(N)
    x = x_T()
    for pos, t in enumerate(s.timesteps):
        c = s.coefficients(pos)
        guided = window[0] <= t <= window[1] and (c.sigma > 0 or make == "dps")

        def take(x_in):
            xg = x_in.detach().requires_grad_(True)
            with torch.enable_grad():
                x0, _, mu = s.mean_from_eps(xg, gmm(xg, torch.full((N,), t), None), c)
                grad = torch.autograd.grad(loss(x0, rows).sum(), xg)[0] if guided else None
            z = rng.randn(SHAPE, dtype=torch.float64) if c.sigma > 0 else None
            plain = mu.detach() + c.sigma * z if z is not None else mu.detach()
            if not guided:
                return plain
            if make == "dsg":
                return dsg_update(mu.detach(), c.sigma, z, grad, rate)
            return plain - zeta * grad

        x_prev = take(x)
        for _ in range(repeats - 1 if guided else 0):
            ratio = c.abar_t / c.abar_prev
            x_prev = take(math.sqrt(ratio) * x_prev + math.sqrt(1 - ratio) * rng.randn(SHAPE, dtype=torch.float64))
        x = x_prev
    return x


@pytest.mark.parametrize("make", ["dsg", "dps"])
def test_time_travel_twice_is_the_hand_written_loop(gmm, loss, make):
    window = (200, 700)
    plugin = SphericalGaussianGuidance(loss, 0.3, guidance_window=window, time_travel=2) if make == "dsg" else \
        DiffusionPosteriorSampling(loss, 0.5, guidance_window=window, time_travel=2)
    got = DDIMSampler(SCHED, 12, eta=1.0).sample(gmm, x_T(), plugins=[plugin], seed=0)
    expect = hand_written(gmm, loss, make, 2, window)
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-12)
    once = DDIMSampler(SCHED, 12, eta=1.0).sample(gmm, x_T(), plugins=[type(plugin)(loss, 0.3 if make == "dsg" else 0.5,
                                                                                         guidance_window=window)], seed=0)
    torch.testing.assert_close(once, hand_written(gmm, loss, make, 1, window), rtol=0, atol=1e-12)
    assert not torch.allclose(got, once)


def test_time_travel_keeps_dsg_on_the_sphere_of_the_last_take(gmm, loss):
    rec = SphereDeviationRecorder()
    DDIMSampler(SCHED, 12, eta=1.0).sample(gmm, x_T(), plugins=[SphericalGaussianGuidance(loss, 0.3, time_travel=3), rec], seed=0)
    assert float((rec.all_ratios() - 1).abs().max()) <= 1e-9


# ---------------------------------------------------------------- bad input
def test_bad_windows_and_time_travel_counts_are_refused(gmm, loss):
    for bad in ((600, 300), (-1, 5), (1.5, 9), (3,), "1,5", (True, 5)):
        for cls, arg in ((SphericalGaussianGuidance, 0.2), (DiffusionPosteriorSampling, 0.5)):
            with pytest.raises(ValueError, match="guidance_window"):
                cls(loss, arg, guidance_window=bad)
    for bad in (0, -2, 1.5, True, "2"):
        for cls, arg in ((SphericalGaussianGuidance, 0.2), (DiffusionPosteriorSampling, 0.5)):
            with pytest.raises(ValueError, match="time_travel"):
                cls(loss, arg, time_travel=bad)
    s = DDIMSampler(SCHED, 10, eta=1.0)  # times 900, 800, ..., 0
    for plugin in (SphericalGaussianGuidance(loss, 0.2, guidance_window=(901, 950)), DiffusionPosteriorSampling(loss, 0.5, guidance_window=(801, 899)),
                   SphericalGaussianGuidance(loss, 0.2, guidance_window=(0, 0))):  # t = 0 is the unguided last step of DSG
        with pytest.raises(ValueError, match="guidance_window: .* guides no step"):
            s.sample(gmm, x_T(), plugins=[plugin], seed=0)


def test_time_travel_refuses_a_step_it_would_repeat_only_in_part(gmm, loss):
    s = DDIMSampler(SCHED, 10, eta=1.0)
    with pytest.raises(ValueError, match="time_travel: DiffusionPosteriorSampling"):
        s.sample(gmm, x_T(), plugins=[SphericalGaussianGuidance(loss, 0.2, time_travel=2), DiffusionPosteriorSampling(loss, 0.5)], seed=0)
    with pytest.raises(ValueError, match="time_travel: EpsilonScaling"):
        s.sample(gmm, x_T(), plugins=[EpsilonScaling(), DiffusionPosteriorSampling(loss, 0.5, time_travel=2)], seed=0)
