"""DPS and DSG: the exact properties docs/methods/dsg.md#T1 to docs/methods/dsg.md#T9, on the analytic Gaussian-mixture model."""

import math

import pytest
import torch

from onmanifold.guidance import DiffusionPosteriorSampling, SphereDeviationRecorder, SphericalGaussianGuidance, dsg_update
from onmanifold.losses import ClassifierLoss, DecodedLoss, MeasurementLoss
from onmanifold.model import GaussianMixtureModel
from onmanifold.operators import Downsample, GaussianBlur, Inpainting, box_masks, make_measurements, random_masks
from onmanifold.sampler import DDIMSampler
from onmanifold.schedule import NoiseSchedule

SCHED = NoiseSchedule.linear(1000)
SHAPE = (1, 4, 4)


@pytest.fixture(scope="module")
def gmm():
    g = torch.Generator().manual_seed(0)
    means = torch.rand(3, *SHAPE, generator=g, dtype=torch.float64) * 1.6 - 0.8
    return GaussianMixtureModel(means, 0.1, SCHED)


@pytest.fixture(scope="module")
def problem(gmm):
    n = 8
    x_true = gmm.sample_data(n, torch.Generator().manual_seed(1)).double()
    op = Inpainting(box_masks(n, SHAPE, box=2, seed=0))
    y = make_measurements(op, x_true, 0.05, seed=0)
    return x_true, op, y


def x_T(n, seed=5):
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run(gmm, plugins, n=8, steps=20, eta=1.0, seed=5, **kw):
    s = DDIMSampler(SCHED, steps, eta=eta, **kw)
    return s.sample(gmm, x_T(n, seed), plugins=plugins, seed=0)


# ---------------------------------------------------------------- docs/methods/dsg.md#T1 to #T3 and #T9
def test_dsg_lands_exactly_on_the_sphere(gmm, problem):
    _, op, y = problem
    rec = SphereDeviationRecorder()
    run(gmm, [SphericalGaussianGuidance(MeasurementLoss(op, y), 0.2), rec])
    rho = rec.all_ratios()
    assert rho.numel() == 8 * 19  # every step but the last (sigma = 0)
    assert float((rho - 1).abs().max()) <= 1e-9


def test_guidance_rate_one_is_the_closed_form(gmm, problem):
    _, op, y = problem
    loss = MeasurementLoss(op, y)
    seen = []

    def cb(st):
        if st.sigma > 0:
            g = st.loss_gradient(loss)[0]  # the step's shared gradient (cached)
            seen.append((st.mu.detach().clone(), g.clone(), st.sigma, st.x_prev.clone()))

    s = DDIMSampler(SCHED, 10, eta=1.0)
    s.sample(gmm, x_T(8), plugins=[SphericalGaussianGuidance(loss, 1.0)], seed=0, callback=cb)
    assert len(seen) == 9
    for mu, g, sigma, xp in seen:
        r = math.sqrt(16) * sigma
        expect = mu - r * g / g.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
        torch.testing.assert_close(xp, expect, rtol=1e-12, atol=1e-12)


def test_guidance_rate_zero_is_the_rescaled_plain_step():
    mu, z, g = torch.randn(4, 1, 4, 4, dtype=torch.float64), torch.randn(4, 1, 4, 4, dtype=torch.float64), torch.randn(4, 1, 4, 4, dtype=torch.float64)
    out = dsg_update(mu, 0.3, z, g, 0.0)
    unit = z / z.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(out, mu + 4 * 0.3 * unit)


def test_official_formula_parity_single_sample():
    g_r, sigma = 0.3, 0.7
    mu, z, g = (torch.randn(1, 3, 5, 5, dtype=torch.float64) for _ in range(3))
    r = math.sqrt(75) * sigma

    def unit(v):
        return v / v.norm()

    expect = mu + r * unit((1 - g_r) * sigma * z + g_r * r * unit(-g))
    torch.testing.assert_close(dsg_update(mu, sigma, z, g, g_r), expect)


# ---------------------------------------------------------------- docs/methods/dsg.md#T4 to #T7
def test_dsg_is_invariant_to_positive_rescaling_of_the_loss(gmm, problem):
    _, op, y = problem
    base = MeasurementLoss(op, y)
    a = run(gmm, [SphericalGaussianGuidance(base, 0.3)])
    scales = torch.arange(1, 9, dtype=torch.float64) * 3.5
    b = run(gmm, [SphericalGaussianGuidance(lambda x0: scales * base(x0), 0.3)])  # per-sample c_b > 0
    c = run(gmm, [SphericalGaussianGuidance(lambda x0: base(x0) ** 2, 0.3)])  # increasing reparameterisation
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-9)


def test_per_sample_independence(gmm, problem):
    _, op, y = problem
    y2 = y.clone()
    y2[3] += 0.7
    a = run(gmm, [SphericalGaussianGuidance(MeasurementLoss(op, y), 0.5)])
    b = run(gmm, [SphericalGaussianGuidance(MeasurementLoss(op, y2), 0.5)])
    others = [i for i in range(8) if i != 3]
    assert torch.equal(a[others], b[others]) and not torch.equal(a[3], b[3])


@pytest.mark.parametrize("k", [1, 3, 5])
def test_interval_schedules_guided_steps_and_unguided_steps_build_no_graph(gmm, problem, k):
    _, op, y = problem
    base = MeasurementLoss(op, y)
    calls = []

    def loss(x0):
        calls.append(1)
        return base(x0)

    graphs = []
    s = DDIMSampler(SCHED, 20, eta=1.0)
    dsg = SphericalGaussianGuidance(loss, 0.2, interval=k)
    s.sample(gmm, x_T(8), plugins=[dsg], seed=0, callback=lambda st: graphs.append((st.index, st.eps.requires_grad, st.x_prev.grad_fn)))
    expect = sum(1 for p in range(20) if (19 - p) % k == 0 and s.coefficients(p).sigma > 0)
    assert len(calls) == expect
    assert all(gf is None for _, _, gf in graphs)
    assert [i for i, rg, _ in graphs if rg] == [i for i in range(19, 0, -1) if i % k == 0]


def test_zero_gradient_falls_back_to_the_plain_step(gmm):
    plain = run(gmm, [])
    const = run(gmm, [SphericalGaussianGuidance(lambda x0: (x0 * 0).flatten(1).sum(1) + 1.0, 0.5)])
    assert torch.isfinite(const).all()
    torch.testing.assert_close(const, plain, rtol=0, atol=0)


def test_dsg_refuses_a_deterministic_sampler_and_bad_arguments(gmm, problem):
    _, op, y = problem
    with pytest.raises(ValueError, match="DSG needs a stochastic sampler"):
        run(gmm, [SphericalGaussianGuidance(MeasurementLoss(op, y), 0.2)], eta=0.0)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="guidance_rate"):
            SphericalGaussianGuidance(MeasurementLoss(op, y), bad)
    with pytest.raises(ValueError, match="interval"):
        SphericalGaussianGuidance(MeasurementLoss(op, y), 0.2, interval=0)
    with pytest.raises(ValueError, match="zeta"):
        DiffusionPosteriorSampling(MeasurementLoss(op, y), -1.0)


def test_nan_loss_raises(gmm):
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        run(gmm, [SphericalGaussianGuidance(lambda x0: x0.flatten(1).sum(1) * float("nan"), 0.2)])


def test_measurement_with_nan_is_refused(problem):
    _, op, y = problem
    bad = y.clone()
    bad[2, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"y: the measurement contains NaN or Inf \(samples \[2\]\)"):
        MeasurementLoss(op, bad)


# ---------------------------------------------------------------- DPS leaves the sphere (docs/methods/dsg.md#T8)
def test_dps_leaves_the_sphere_by_the_expected_amount(gmm, problem):
    _, op, y = problem
    n = 4000
    start = x_T(1).expand(n, -1, -1, -1).clone()
    yy = y[:1].expand(n, -1, -1, -1).clone()
    mask = op.masks[:1].expand(n, -1, -1, -1).clone()
    loss = MeasurementLoss(Inpainting(mask), yy)
    zeta = 10.0
    out = {}

    def cb(st):
        if st.position == 0:
            out["dev2"] = (st.x_prev - st.mu.detach()).flatten(1).pow(2).sum(1)
            out["g2"] = st.loss_gradient(loss)[0][0].pow(2).sum()
            out["r2"] = 16 * st.sigma**2

    s = DDIMSampler(SCHED, timesteps=[600, 500], eta=1.0)
    s.sample(gmm, start, plugins=[DiffusionPosteriorSampling(loss, zeta)], seed=0, callback=cb)
    expect = out["r2"] + zeta**2 * out["g2"]
    se = out["dev2"].std() / math.sqrt(n)
    assert abs(float(out["dev2"].mean() - expect)) < 4 * float(se)
    assert float(zeta**2 * out["g2"]) > 6 * float(se)  # the excess over r^2 is resolved by the Monte-Carlo estimate
    assert float(out["dev2"].mean()) > out["r2"] + 3 * float(se)


def test_dps_recorder_ratio_above_one(gmm, problem):
    _, op, y = problem
    rec = SphereDeviationRecorder()
    run(gmm, [DiffusionPosteriorSampling(MeasurementLoss(op, y), 1.0), rec], n=8)
    assert float(rec.all_ratios().mean()) > 1.0


# ---------------------------------------------------------------- both methods solve the inverse problem
@pytest.mark.parametrize("make_op", ["box", "random", "sr", "blur"])
def test_guidance_reduces_the_measurement_residual(gmm, make_op):
    n = 64
    shape = (1, 8, 8)
    gen = torch.Generator().manual_seed(3)
    means = torch.rand(4, *shape, generator=gen, dtype=torch.float64) * 1.6 - 0.8
    model = GaussianMixtureModel(means, 0.15, SCHED)
    x_true = model.sample_data(n, torch.Generator().manual_seed(4)).double()
    op = {
        "box": lambda: Inpainting(box_masks(n, shape, 4, seed=1)),
        "random": lambda: Inpainting(random_masks(n, shape, seed=1)),
        "sr": lambda: Downsample(2),
        "blur": lambda: GaussianBlur(0.8, 5),
    }[make_op]()
    y = make_measurements(op, x_true, 0.05, seed=1)
    loss = MeasurementLoss(op, y)
    s = DDIMSampler(SCHED, 50, eta=1.0)
    start = torch.randn(n, *shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    res = {}
    for name, plugins in {
        "plain": [],
        "dps": [DiffusionPosteriorSampling(loss, 0.5)],
        "dsg": [SphericalGaussianGuidance(loss, 0.2)],
    }.items():
        x = s.sample(model, start, plugins=plugins, seed=0)
        res[name] = float(loss(x, torch.arange(n)).mean())
    assert res["dps"] < 0.8 * res["plain"]
    assert res["dsg"] < 0.8 * res["plain"]


def test_label_guidance_loss_and_decoder_loss_shapes():
    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x0 = torch.randn(5, 1, 4, 4)
    assert ClassifierLoss(clf, 2)(x0).shape == (5,)
    dec = DecodedLoss(ClassifierLoss(clf, torch.tensor([0, 1, 2, 0, 1])), lambda z: z.repeat(1, 1, 2, 2)[:, :, :4, :4])
    assert dec(torch.randn(5, 1, 2, 2), torch.arange(5)).shape == (5,)
    with pytest.raises(ValueError, match="target"):
        ClassifierLoss(clf, 7)(x0)


# ---------------------------------------------------------------- latent diffusion through a decoder
def test_dsg_and_dps_guide_a_latent_model_through_a_vae_decoder():
    from diffusers import AutoencoderKL, UNet2DModel

    from onmanifold.model import DiffusersUNetEpsModel

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=8).eval().requires_grad_(False)
    unet = UNet2DModel(sample_size=4, in_channels=2, out_channels=2, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval().requires_grad_(False)
    model = DiffusersUNetEpsModel(unet, SCHED)
    n = 3
    x_true = torch.rand(n, 1, 8, 8) * 2 - 1
    op = Inpainting(box_masks(n, (1, 8, 8), 4, seed=0))
    y = make_measurements(op, x_true, 0.05)
    loss = DecodedLoss(MeasurementLoss(op, y), lambda z: vae.decode(z).sample)
    s = DDIMSampler(SCHED, 8, eta=1.0, clamp_x0=False)
    start = torch.randn(n, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    rec = SphereDeviationRecorder()
    plain = s.sample(model, start, seed=0)
    dsg = s.sample(model, start, plugins=[SphericalGaussianGuidance(loss, 0.5), rec], seed=0)
    dps = s.sample(model, start, plugins=[DiffusionPosteriorSampling(loss, 0.5)], seed=0)
    assert float((rec.all_ratios() - 1).abs().max()) < 1e-4  # on the latent sphere (float32), n = 2*4*4
    assert not torch.allclose(dsg, plain) and not torch.allclose(dps, plain)
    assert torch.isfinite(dsg).all() and torch.isfinite(dps).all()


def test_sum_of_losses_passes_rows_and_refuses_mixed_clamping():
    from onmanifold.losses import SumOfLosses

    clf = torch.nn.Linear(16, 3)
    net = lambda x, head=None: clf(x.flatten(1))  # noqa: E731
    a = ClassifierLoss(net, torch.tensor([0, 1, 2, 0]))
    b = ClassifierLoss(net, torch.tensor([2, 2, 1, 1]))
    x0 = torch.randn(2, 1, 4, 4)
    rows = torch.tensor([1, 3])
    s = SumOfLosses([a, b], [1.0, 0.5])
    assert torch.allclose(s(x0, rows), a(x0, rows) + 0.5 * b(x0, rows)) and s.clamp_x0 is False
    with pytest.raises(ValueError, match="mixes"):
        SumOfLosses([a, lambda x0: x0.sum(1)])


# ---------------------------------------------------------------- update modes: the loop composes moves, never drops one
def test_replace_after_displace_is_refused_with_the_order_that_works(gmm, problem):
    _, op, y = problem
    loss = MeasurementLoss(op, y)
    dps, dsg = DiffusionPosteriorSampling(loss, 0.3), SphericalGaussianGuidance(loss, 0.2)
    assert (dps.update_mode, dsg.update_mode) == ("displace", "replace")
    with pytest.raises(ValueError, match=r"\[SphericalGaussianGuidance, DiffusionPosteriorSampling\]"):
        run(gmm, [dps, dsg])
    rec = SphereDeviationRecorder()
    with pytest.raises(ValueError, match=r"\[SphereDeviationRecorder, SphericalGaussianGuidance, DiffusionPosteriorSampling\]"):
        run(gmm, [rec, dps, dsg])
    with pytest.raises(ValueError, match="at most one replacing plugin"):
        run(gmm, [dsg, SphericalGaussianGuidance(loss, 0.5)])


def test_dsg_then_dps_keeps_both_moves(gmm, problem):
    _, op, y = problem
    loss = MeasurementLoss(op, y)
    zeta, rate = 0.3, 0.2
    seen = []

    def cb(st):
        if st.sigma > 0:
            g, _ = st.loss_gradient(loss)  # the step's shared gradient (cached)
            seen.append((dsg_update(st.mu.detach(), st.sigma, st.noise, g, rate) - zeta * g, st.x_prev.clone()))

    s = DDIMSampler(SCHED, 10, eta=1.0)
    s.sample(gmm, x_T(8), plugins=[SphericalGaussianGuidance(loss, rate), DiffusionPosteriorSampling(loss, zeta)], seed=0, callback=cb)
    assert len(seen) == 9
    for expect, got in seen:
        torch.testing.assert_close(got, expect, rtol=0, atol=0)


def test_sphere_deviation_recorder_reports_the_last_run_only(gmm, problem):
    _, op, y = problem
    rec = SphereDeviationRecorder()
    run(gmm, [DiffusionPosteriorSampling(MeasurementLoss(op, y), 0.3), rec])
    first = rec.curve()
    assert all(r["count"] == 8 for r in first)
    run(gmm, [DiffusionPosteriorSampling(MeasurementLoss(op, y), 0.3), rec])
    assert rec.curve() == first
