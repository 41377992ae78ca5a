"""The sampling core: schedule, respacing, DDIM(eta) step, plugin points, seeding, diffusers parity."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from onmanifold.model import DiffusersUNetEpsModel, GaussianMixtureModel, as_eps_model
from onmanifold.nets.networks import unet_config
from onmanifold.sampler import DDIMSampler, SamplerPlugin, sample
from onmanifold.schedule import NoiseSchedule


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    net = UNet2DModel(**unet_config("digits")).eval()
    # push weights away from the zero-initialised output so eps is not trivially ~0
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net


# ---------------------------------------------------------------- schedule
def test_linear_schedule_matches_diffusers():
    ds = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    s = NoiseSchedule.from_diffusers(ds)
    np.testing.assert_allclose(s.alphas_cumprod, ds.alphas_cumprod.double().numpy(), rtol=1e-6)
    assert s.T == 1000 and s.kind == "linear"


def test_cosine_schedule_matches_diffusers():
    ds = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    s = NoiseSchedule.cosine(1000)
    np.testing.assert_allclose(s.betas, ds.betas.double().numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n,spacing", [(50, "leading"), (20, "trailing"), (7, "linspace"), (1000, "leading"), (1, "leading")])
def test_respacing_matches_diffusers(n, spacing):
    s = NoiseSchedule.linear(1000)
    if spacing == "linspace":
        expect = np.linspace(0, 999, n).round()[::-1].astype(int).tolist()
    else:
        ds = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
        ds.set_timesteps(n)
        expect = ds.timesteps.tolist()
    assert s.timesteps(n, spacing) == expect


def test_eta1_full_grid_is_ddpm_fixed_small_variance():
    s = NoiseSchedule.linear(1000)
    for t in (999, 500, 1):
        c = s.step_coefficients(t, t - 1, 1.0)
        beta_tilde = (1 - s.alphas_cumprod[t - 1]) / (1 - s.alphas_cumprod[t]) * s.betas[t]
        assert c.sigma == pytest.approx(math.sqrt(beta_tilde), rel=1e-12)
    assert s.step_coefficients(0, -1, 1.0).sigma == 0.0


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="num_steps"):
        NoiseSchedule.linear(1000).timesteps(0)
    with pytest.raises(ValueError, match="num_steps"):
        NoiseSchedule.linear(100).timesteps(101)
    with pytest.raises(ValueError, match="betas"):
        NoiseSchedule([0.1, 1.5])
    with pytest.raises(ValueError, match="spacing"):
        NoiseSchedule.linear(10).timesteps(5, "odd")
    with pytest.raises(ValueError, match="eta"):
        DDIMSampler(NoiseSchedule.linear(10), 5, eta=-1)


# ---------------------------------------------------------------- diffusers parity
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_loop_reproduces_diffusers_ddim(unet, eta):
    sched = NoiseSchedule.linear(1000)
    model = DiffusersUNetEpsModel(unet, sched)
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ds = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    ds.set_timesteps(25)
    g = torch.Generator().manual_seed(7)
    x = x_T.clone()
    with torch.no_grad():
        for t in ds.timesteps:
            x = ds.step(unet(x, t).sample, t, x, eta=eta, use_clipped_model_output=True, generator=g).prev_sample
    ours = DDIMSampler(sched, 25, eta=eta).sample(model, x_T, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_loop_reproduces_diffusers_ddpm_1000(unet):
    sched = NoiseSchedule.linear(1000)
    model = DiffusersUNetEpsModel(unet, sched)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    ds = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True, variance_type="fixed_small")
    ds.set_timesteps(1000)
    g = torch.Generator().manual_seed(11)
    x = x_T.clone()
    with torch.no_grad():
        for t in ds.timesteps:
            x = ds.step(unet(x, t).sample, t, x, generator=g).prev_sample
    ours = DDIMSampler(sched, 1000, eta=1.0).sample(model, x_T, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_prediction_type_conversion(prediction_type):
    sched = NoiseSchedule.linear(1000)
    x0 = torch.randn(4, 1, 8, 8)
    eps = torch.randn(4, 1, 8, 8)
    t = torch.tensor([10, 200, 500, 990])
    x_t = sched.add_noise(x0, t, eps)
    a = sched.abar(t).reshape(-1, 1, 1, 1)
    target = a.sqrt() * eps - (1 - a).sqrt() * x0 if prediction_type == "v_prediction" else x0

    class Fake(torch.nn.Module):
        def forward(self, x, tt, class_labels=None):
            return type("O", (), {"sample": target})()

    m = DiffusersUNetEpsModel(Fake(), sched, prediction_type)
    torch.testing.assert_close(m(x_t, t), eps, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- analytic model
def test_gaussian_mixture_score_is_exact():
    sched = NoiseSchedule.linear(100, 1e-3, 0.2)
    gmm = GaussianMixtureModel(torch.tensor([[10.0, 10.0], [-10.0, -10.0]]), 1.0, sched)
    x = torch.randn(16, 2, dtype=torch.float64) * 5
    t = torch.full((16,), 30)
    xg = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(gmm.log_prob(xg, t).sum(), xg)
    torch.testing.assert_close(gmm.score(x, t), auto, rtol=1e-10, atol=1e-10)
    # single Gaussian: eps* = (x - sqrt(a) mu) * sqrt(1 - a) / v
    g1 = GaussianMixtureModel(torch.zeros(1, 3), 0.5, sched)
    a = float(sched.alphas_cumprod[50])
    xx = torch.randn(5, 3, dtype=torch.float64)
    v = a * 0.25 + 1 - a
    torch.testing.assert_close(g1(xx, torch.full((5,), 50)), xx * math.sqrt(1 - a) / v)


def test_exact_model_samples_match_data_law():
    """DDPM with the exact eps of N(mu, s^2) returns the data law: mean and std checked on 4000 samples."""
    sched = NoiseSchedule.linear(100, 1e-3, 0.2)
    g = GaussianMixtureModel(torch.tensor([[3.0, -2.0]]), 0.5, sched)
    x = DDIMSampler(sched, 100, eta=1.0, clamp_x0=False).sample(g, shape=(2,), num_samples=4000, seed=0)
    assert torch.allclose(x.mean(0), torch.tensor([3.0, -2.0]), atol=0.05)
    assert torch.allclose(x.std(0), torch.tensor([0.5, 0.5]), atol=0.03)


# ---------------------------------------------------------------- seeding and plugins
def test_per_sample_seeding_independent_of_batch_size():
    sched = NoiseSchedule.linear(100, 1e-3, 0.2)
    g = GaussianMixtureModel(torch.tensor([[10.0, 10.0], [-10.0, -10.0]]), 1.0, sched)
    s = DDIMSampler(sched, 20, eta=1.0, clamp_x0=False)
    full = s.sample(g, shape=(2,), num_samples=10, seed=3)
    chunked = s.sample(g, shape=(2,), num_samples=10, seed=3, batch_size=3)
    one = s.sample(g, shape=(2,), num_samples=1, seed=3, first_index=7)
    assert torch.equal(full, chunked)
    assert torch.equal(full[7:8], one)
    assert not torch.equal(full, s.sample(g, shape=(2,), num_samples=10, seed=4))


class _Recorder(SamplerPlugin):
    update_mode = None  # observes x_prev at the update point, never moves it

    def __init__(self):
        self.calls = []

    def before_model(self, st):
        self.calls.append(("before", st.position, st.index, st.t))

    def after_model(self, st):
        assert st.eps is not None and st.x0_hat is not None and st.mu is not None
        self.calls.append(("after_model", st.position))

    def update(self, st):
        assert st.x_prev is not None
        self.calls.append(("update", st.position))

    def after_step(self, st):
        self.calls.append(("after_step", st.position))


def test_plugin_points_called_in_order_without_grad():
    sched = NoiseSchedule.linear(100, 1e-3, 0.2)
    g = GaussianMixtureModel(torch.zeros(1, 2), 1.0, sched)
    rec = _Recorder()
    grads = []

    class NoGrad(SamplerPlugin):
        def after_model(self, st):
            grads.append(torch.is_grad_enabled() or st.eps.requires_grad)

    s = DDIMSampler(sched, 5, eta=0.0, clamp_x0=False)
    s.sample(g, shape=(2,), num_samples=2, plugins=[rec, NoGrad()])
    assert [c[0] for c in rec.calls[:4]] == ["before", "after_model", "update", "after_step"]
    assert [c[2] for c in rec.calls if c[0] == "before"] == [4, 3, 2, 1, 0]
    assert [c[3] for c in rec.calls if c[0] == "before"] == s.timesteps
    assert not any(grads)


def test_loss_gradient_is_shared_and_through_the_network():
    sched = NoiseSchedule.linear(100, 1e-3, 0.2)
    g = GaussianMixtureModel(torch.zeros(1, 2), 1.0, sched)
    calls = {"loss": 0}
    seen = []

    def loss(x0):
        calls["loss"] += 1
        return (x0 - 1.0).pow(2).sum(1)

    class Asker(SamplerPlugin):
        update_mode = None

        def needs_grad(self, st):
            return True

        def update(self, st):
            gr, _ = st.loss_gradient(loss)
            seen.append((st, gr))

    s = DDIMSampler(sched, 4, eta=0.0, clamp_x0=False)
    s.sample(g, shape=(2,), num_samples=3, plugins=[Asker(), Asker()])
    assert calls["loss"] == 4  # once per step although two plugins asked
    # closed form for N(0, I) data: x0_hat = sqrt(a) x (v = 1), so grad = 2 (x0_hat - 1) sqrt(a)
    st, gr = seen[0]
    a = st.coeffs.abar_t
    x0 = math.sqrt(a) * st.x_t
    torch.testing.assert_close(gr, 2 * (x0 - 1) * math.sqrt(a), rtol=1e-5, atol=1e-5)


def test_nan_model_stops_and_names_the_step():
    sched = NoiseSchedule.linear(100, 1e-3, 0.2)

    def bad(x, t, cond=None):
        return torch.full_like(x, float("nan")) if int(t[0]) < 50 else torch.zeros_like(x)

    with pytest.raises(FloatingPointError, match=r"step \d+ of 10 \(t=4\d\)"):
        DDIMSampler(sched, 10, clamp_x0=False).sample(bad, shape=(2,), num_samples=2)


def test_functional_sample_and_bad_arguments():
    sched = NoiseSchedule.linear(100, 1e-3, 0.2)
    g = GaussianMixtureModel(torch.zeros(1, 2), 1.0, sched)
    x = sample(g, sched, num_steps=5, shape=(2,), num_samples=4, seed=0, clamp_x0=False)
    assert x.shape == (4, 2)
    with pytest.raises(ValueError, match="x_T"):
        sample(g, sched, num_steps=5)
    with pytest.raises(ValueError, match="x_T"):
        sample(g, sched, torch.full((2, 2), float("nan")), num_steps=5)
    with pytest.raises(TypeError, match="plugins"):
        sample(g, sched, torch.zeros(2, 2), plugins=[object()], num_steps=5)
    with pytest.raises(ValueError, match="seed, generator"):
        sample(g, sched, torch.zeros(2, 2), num_steps=5, seed=1, generator=torch.Generator())
    with pytest.raises(TypeError, match="model"):
        as_eps_model(3)


def test_micro_batch_makes_unet_samples_bit_identical_across_batch_sizes(unet):
    sched = NoiseSchedule.linear(1000)
    model = DiffusersUNetEpsModel(unet, sched)
    s = DDIMSampler(sched, 5, eta=1.0, micro_batch=8)
    a = s.sample(model, shape=(1, 8, 8), num_samples=12, seed=0)
    b = s.sample(model, shape=(1, 8, 8), num_samples=12, seed=0, batch_size=1)
    c = s.sample(model, shape=(1, 8, 8), num_samples=12, seed=0, batch_size=5)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(a, s.sample(model, shape=(1, 8, 8), num_samples=12, seed=0))  # same command twice


def test_update_plugins_must_declare_their_mode():
    sched = NoiseSchedule.linear(100, 1e-3, 0.2)
    g = GaussianMixtureModel(torch.zeros(1, 2), 1.0, sched)

    class Undeclared(SamplerPlugin):
        def update(self, st):
            st.x_prev = st.x_prev + 1

    class Wrong(SamplerPlugin):
        update_mode = "add"

    s = DDIMSampler(sched, 3, clamp_x0=False)
    with pytest.raises(TypeError, match="Undeclared: overrides update"):
        s.sample(g, shape=(2,), num_samples=2, plugins=[Undeclared()])
    with pytest.raises(ValueError, match="Wrong.update_mode"):
        s.sample(g, shape=(2,), num_samples=2, plugins=[Wrong()])


# ---------------------------------------------------------------- one seeding module
def test_generator_for_is_the_one_seeding_rule():
    import zlib

    import numpy as np

    from onmanifold.random import generator_for, seed_for

    def ss(*w):
        return int(np.random.SeedSequence(list(w)).generate_state(1, dtype=np.uint64)[0])

    for seed, i in ((0, 0), (3, 7), (123, 1000)):
        assert seed_for(seed, i) == ss(seed, i)  # the sampler's per-sample generators
        assert seed_for(seed, i, "measurement-mask") == ss(seed, i, 1001)
        assert seed_for(seed, i, "measurement-noise") == ss(seed, i, 1002)
        assert seed_for(seed, i, "asced-correction") == ss(seed, i, zlib.crc32(b"asced-correction"))
        assert seed_for(seed, i, "asced-moved-mask") == seed * 1_000_003 + i
        assert seed_for(seed, i, 5) == ss(seed, i, 5)
    a = torch.randn(4, generator=generator_for(2, 9, "measurement-noise"))
    assert torch.equal(a, torch.randn(4, generator=torch.Generator().manual_seed(ss(2, 9, 1002))))
    with pytest.raises(ValueError, match="stream"):
        generator_for(0, 0, "trajectroy")
    with pytest.raises(ValueError, match="seed"):
        generator_for(-1, 0)
    with pytest.raises(ValueError, match="index"):
        seed_for(0, True)
