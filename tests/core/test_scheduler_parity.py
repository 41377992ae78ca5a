"""LoadedModel.sampler reads the checkpoint's scheduler config: its trajectory equals diffusers' schedulers.

Every setting alone and the common combinations, from the same ``x_T`` and the same step noise:
``DDIMScheduler`` built from the config (eta = 0 and eta > 0, ``variance_noise=`` our draws; both
``use_clipped_model_output`` modes against ``clipped_model_output``), and ``DDPMScheduler`` at eta = 1
on the full grid (same generator). The network is a tiny deterministic stand-in (a fixed linear map
of x and t), so each case runs in milliseconds.
"""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from onmanifold.model import DiffusersUNetEpsModel, LoadedModel, load_diffusion_model
from onmanifold.sampler import DDIMSampler
from onmanifold.schedule import NoiseSchedule, rescale_zero_terminal_snr, scheduler_settings

SHAPE = (2, 4, 4)


class StandIn(torch.nn.Module):
    """A fixed linear function of x and t, shaped like a diffusers UNet (``.sample``, ``.config``)."""

    def __init__(self, channels: int = 2, out_channels: int | None = None, T: int = 1000) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        out = out_channels or channels
        self.W = torch.randn(out, channels, generator=g) * 0.5
        self.b = torch.randn(out, generator=g) * 0.3
        self.T = T
        self.config = type("Config", (), {"sample_size": SHAPE[1], "in_channels": channels, "out_channels": out})()

    def forward(self, x, t, class_labels=None):
        s = (torch.as_tensor(t).float() / self.T).reshape(-1, 1, 1, 1)
        y = torch.einsum("oc,bchw->bohw", self.W, x) * (1 + s) + self.b.reshape(1, -1, 1, 1) * torch.cos(3 * s)
        return type("Output", (), {"sample": y})()


def loaded_for(config, net=None) -> tuple[LoadedModel, StandIn]:
    schedule = NoiseSchedule.from_diffusers(config)
    net = net or StandIn(T=schedule.T)
    model = DiffusersUNetEpsModel(net, schedule, scheduler_settings(config).prediction_type)
    return LoadedModel(model, schedule, SHAPE, {}, (-1.0, 1.0), "stand-in", dict(config)), net


def x_start(n: int = 3) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(1))


def ours_and_noise(sampler: DDIMSampler, loaded: LoadedModel, x_T: torch.Tensor):
    noises = []
    x = sampler.sample(loaded.model, x_T, generator=torch.Generator().manual_seed(5), callback=lambda s: noises.append(s.noise))
    return x, noises


def diffusers_ddim(config, net, x_T, num_steps, eta, clipped, noises):
    ds = DDIMScheduler.from_config(config)
    ds.set_timesteps(num_steps)
    x = x_T.clone()
    for i, t in enumerate(ds.timesteps):
        noise = noises[i] if noises[i] is not None else torch.zeros_like(x)
        out = net(x, t.reshape(1).expand(x.shape[0])).sample
        x = ds.step(out, t, x, eta=eta, use_clipped_model_output=clipped, variance_noise=noise if eta > 0 else None).prev_sample
    return x, ds.timesteps.tolist()


def diffusers_ddpm(config, net, x_T, seed=5):
    ds = DDPMScheduler.from_config(config)
    ds.set_timesteps(ds.config.num_train_timesteps)
    g = torch.Generator().manual_seed(seed)
    x = x_T.clone()
    for t in ds.timesteps:
        x = ds.step(net(x, t.reshape(1).expand(x.shape[0])).sample, t, x, generator=g).prev_sample
    return x


def assert_same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert torch.isfinite(ours).all() and torch.isfinite(theirs).all()
    scale = max(1.0, float(theirs.abs().max()))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * scale)


SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, set_alpha_to_one=False,
          clip_sample=False, timestep_spacing="leading")
ZERO_SNR_V = dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing", prediction_type="v_prediction",
                  rescale_betas_zero_snr=True)

DDIM_CASES = {
    "defaults (linear, leading, clip)": {},
    "trailing": dict(timestep_spacing="trailing"),
    "linspace": dict(timestep_spacing="linspace"),
    "steps_offset": dict(steps_offset=1),
    "set_alpha_to_one false": dict(set_alpha_to_one=False),
    "clip_sample false": dict(clip_sample=False),
    "clip_sample_range 2": dict(clip_sample_range=2.0),
    "thresholding": dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=3.0),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "squaredcos_cap_v2": dict(beta_schedule="squaredcos_cap_v2"),
    "trained_betas": dict(trained_betas=np.linspace(2e-4, 0.03, 1000).tolist()),
    "v_prediction": dict(prediction_type="v_prediction"),
    "sample prediction": dict(prediction_type="sample"),
    "zero SNR + v": dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing"),
    "Stable Diffusion": SD,
    "cosine + trailing + v + zero SNR": ZERO_SNR_V,
}


@pytest.mark.parametrize("case", list(DDIM_CASES))
@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("clipped", [True, False])
def test_sampler_matches_ddim_scheduler(case, eta, clipped):
    config = DDIMScheduler(**DDIM_CASES[case]).config
    loaded, net = loaded_for(config)
    # linspace: diffusers' DDIMScheduler steps to t - T // N, not to the next timestep (diffusers issue #12633)
    rule = {"previous_timesteps": "stride"} if case == "linspace" else {}
    sampler = loaded.sampler(20, eta, clipped_model_output=clipped, **rule)
    x_T = x_start()
    ours, noises = ours_and_noise(sampler, loaded, x_T)
    theirs, timesteps = diffusers_ddim(config, net, x_T, 20, eta, clipped, noises)
    assert sampler.timesteps == timesteps
    assert_same(ours, theirs)


@pytest.mark.parametrize("spacing,num_steps", [("trailing", 30), ("linspace", 7)])
def test_stride_rule_reproduces_ddim_scheduler_where_it_skips(spacing, num_steps):
    """Where diffusers' t - T // N is not the next timestep, previous_timesteps="stride" still gives DDIMScheduler's trajectory."""
    config = DDIMScheduler(timestep_spacing=spacing).config
    loaded, net = loaded_for(config)
    sampler = loaded.sampler(num_steps, 0.5, previous_timesteps="stride")
    assert sampler.previous_timesteps != sampler.timesteps[1:] + [-1]
    x_T = x_start()
    ours, noises = ours_and_noise(sampler, loaded, x_T)
    assert_same(ours, diffusers_ddim(config, net, x_T, num_steps, 0.5, True, noises)[0])


def test_zero_snr_at_eta_one_stays_finite():
    """At eta = 1 the first step from abar = 0 has sigma^2 = 1 - abar_prev: diffusers' sqrt(1 - abar_prev - sigma^2) may go
    NaN by rounding; ours is clamped at 0 and x0_hat comes from the v prediction."""
    config = DDIMScheduler(**ZERO_SNR_V).config
    loaded, net = loaded_for(config)
    sampler = loaded.sampler(20, 1.0)
    assert sampler.timesteps[0] == 999 and sampler.schedule.alphas_cumprod[999] == 0.0
    x = sampler.sample(loaded.model, x_start(), seed=0)
    assert torch.isfinite(x).all()


def test_sampler_reads_each_setting():
    config = DDIMScheduler(**SD).config
    loaded, _ = loaded_for(config)
    s = loaded.sampler(50)
    assert s.timesteps[:2] == [981, 961] and s.timesteps[-1] == 1
    assert s.schedule.final_alpha_cumprod == pytest.approx(float(loaded.schedule.alphas_cumprod[0]))
    assert s.clamp_x0 is False and s.coefficients(49).abar_prev == s.schedule.final_alpha_cumprod
    t = loaded_for(DDIMScheduler(thresholding=True, sample_max_value=2.5).config)[0].sampler(10)
    assert t.clamp_x0 and t.dynamic_thresholding == (0.995, 2.5)
    r = loaded_for(DDIMScheduler(clip_sample_range=3.0).config)[0].sampler(10)
    assert r.clamp_x0 and r.data_range == (-3.0, 3.0)
    z = loaded_for(DDIMScheduler(**ZERO_SNR_V).config)[0]
    assert z.schedule.zero_terminal_snr and z.sampler(10).timesteps[0] == 999


def test_linspace_default_steps_to_the_next_timestep():
    """By default t_prev is the next timestep of the list (DDPMScheduler's previous_timestep): at eta = 1 on a respaced
    linspace grid the trajectory is DDPMScheduler's."""
    config = DDPMScheduler(num_train_timesteps=100, timestep_spacing="linspace").config
    loaded, net = loaded_for(config, StandIn(T=100))
    sampler = loaded.sampler(7, 1.0)
    assert sampler.previous_timesteps == sampler.timesteps[1:] + [-1]
    x_T = x_start()
    ours = sampler.sample(loaded.model, x_T, generator=torch.Generator().manual_seed(5))
    ds = DDPMScheduler.from_config(config)
    ds.set_timesteps(7)
    g, x = torch.Generator().manual_seed(5), x_T.clone()
    for t in ds.timesteps:
        x = ds.step(net(x, t.reshape(1).expand(3)).sample, t, x, generator=g).prev_sample
    assert_same(ours, x)


DDPM_CASES = {
    "defaults (linear, clip)": ({}, 1),
    "no clip": (dict(clip_sample=False), 1),
    "sigmoid betas": (dict(beta_schedule="sigmoid"), 1),
    "scaled_linear": (dict(beta_schedule="scaled_linear", beta_start=0.0085, beta_end=0.12), 1),
    "thresholding": (dict(thresholding=True, sample_max_value=2.0), 1),
    "fixed_small_log": (dict(variance_type="fixed_small_log"), 1),
    "v + cosine + zero SNR": (dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", rescale_betas_zero_snr=True), 1),
    "sample prediction": (dict(prediction_type="sample"), 1),
    "learned_range (out_channels = 2C)": (dict(variance_type="learned_range"), 2),
}


@pytest.mark.parametrize("case", list(DDPM_CASES))
def test_eta_one_full_grid_matches_ddpm_scheduler(case):
    settings, mult = DDPM_CASES[case]
    config = DDPMScheduler(num_train_timesteps=100, **settings).config
    loaded, net = loaded_for(config, StandIn(out_channels=SHAPE[0] * mult, T=100))
    sampler = loaded.sampler(100, 1.0)
    assert sampler.variance == ("learned_range" if mult == 2 else "fixed_small")
    x_T = x_start()
    ours = sampler.sample(loaded.model, x_T, generator=torch.Generator().manual_seed(5))
    assert_same(ours, diffusers_ddpm(config, net, x_T))


def test_learned_range_std_is_the_direct_formula():
    """log sigma^2 = f log beta_t + (1 - f) log beta~_t, f = (v + 1) / 2, on a respaced step (guided-diffusion's learned_range)."""
    s = NoiseSchedule.linear(1000)
    sampler = DDIMSampler(s, 10, eta=1.0, variance="learned_range")
    c = sampler.coefficients(3)
    v = torch.tensor([-1.0, -0.3, 0.0, 0.7, 1.0], dtype=torch.float64)
    a_t, a_p = s.alphas_cumprod[c.t], s.alphas_cumprod[c.t_prev]
    beta = 1 - a_t / a_p
    beta_tilde = (1 - a_p) / (1 - a_t) * beta
    expect = [math.sqrt(math.exp(((u + 1) / 2) * math.log(beta) + (1 - (u + 1) / 2) * math.log(beta_tilde))) for u in v.tolist()]
    torch.testing.assert_close(sampler.learned_range_std(v, c), torch.tensor(expect, dtype=torch.float64), rtol=1e-12, atol=0)
    assert float(sampler.learned_range_std(torch.tensor(-1.0, dtype=torch.float64), c)) == pytest.approx(c.sigma, rel=1e-12)  # v = -1: fixed small


def test_learned_variance_drives_the_step_noise():
    """With variance="learned_range" x_prev = mu + exp(log sigma^2 / 2) z, elementwise; without it eps is the first C channels."""
    config = DDPMScheduler(num_train_timesteps=100, variance_type="learned_range").config
    loaded, net = loaded_for(config, StandIn(out_channels=4, T=100))
    assert loaded.model.learned_variance
    seen = []
    sampler = loaded.sampler(10, 1.0)
    sampler.sample(loaded.model, x_start(1), seed=0, callback=lambda st: seen.append((st.mu, st.noise, st.x_prev, st.variance_output, st.coeffs)))
    mu, z, x_prev, v, c = seen[2]
    x, t = x_start(1), torch.tensor([c.t])
    raw = net(x, t).sample
    torch.testing.assert_close(loaded.model(x, t), raw[:, :2])  # eps: the first C channels
    torch.testing.assert_close(loaded.model.full_prediction(x, t).variance, raw[:, 2:])  # the variance: the other C
    torch.testing.assert_close(x_prev, mu + sampler.learned_range_std(v, c) * z)
    assert not torch.allclose(x_prev, mu + c.sigma * z)
    fixed = loaded.sampler(10, 1.0, variance="fixed_small")
    assert fixed.variance == "fixed_small" and loaded.sampler(10, 0.0).variance == "fixed_small"


@pytest.mark.parametrize("clipped", [True, False])
def test_clipped_model_output_modes(clipped):
    """clipped_model_output=True (the historical default) derives eps_hat from the clipped x0_hat; False keeps eps."""
    s = NoiseSchedule.linear(1000)
    sampler = DDIMSampler(s, 10, clipped_model_output=clipped)
    x = torch.full((1, 1, 2, 2), 3.0)
    eps = torch.zeros_like(x)
    c = sampler.coefficients(0)
    x0, eps_hat, _ = sampler.mean_from_eps(x, eps, c)
    assert float(x0.max()) == 1.0
    assert torch.equal(eps_hat, eps) is (not clipped)


def test_bundled_model_sampler_is_the_historical_one():
    """digits-unet's DDPMScheduler config (leading, offset 0, clip to [-1, 1], no set_alpha_to_one) gives today's sampler: bit-identical."""
    loaded = load_diffusion_model("digits-unet")
    for eta in (0.0, 1.0):
        new, old = loaded.sampler(5, eta), DDIMSampler(loaded.schedule, 5, eta=eta)
        assert (new.timesteps, new.previous_timesteps, new.clamp_x0, new.data_range) == (old.timesteps, old.previous_timesteps, True, (-1.0, 1.0))
        a = new.sample(loaded.model, shape=loaded.sample_shape, num_samples=2, seed=3)
        b = old.sample(loaded.model, shape=loaded.sample_shape, num_samples=2, seed=3)
        assert torch.equal(a, b)


def test_zero_terminal_snr_rescaling_is_algorithm_one():
    betas = NoiseSchedule.linear(1000).betas
    out = rescale_zero_terminal_snr(betas)
    s = np.sqrt(np.cumprod(1 - out))
    s_old = np.sqrt(np.cumprod(1 - betas))
    assert out[-1] == 1.0 and s[-1] == 0.0 and s[0] == pytest.approx(s_old[0], rel=1e-12)
    np.testing.assert_allclose(s, (s_old - s_old[-1]) * s_old[0] / (s_old[0] - s_old[-1]), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- bad input: one error naming the key
@pytest.mark.parametrize("settings,key", [
    (dict(beta_schedule="laplace"), "beta_schedule"),
    (dict(timestep_spacing="karras"), "timestep_spacing"),
    (dict(prediction_type="flow_prediction"), "prediction_type"),
    (dict(steps_offset=-1), "steps_offset"),
    (dict(clip_sample="yes"), "clip_sample"),
    (dict(clip_sample_range=0), "clip_sample_range"),
    (dict(dynamic_thresholding_ratio=1.5), "dynamic_thresholding_ratio"),
    (dict(sample_max_value=0.5), "sample_max_value"),
    (dict(variance_type="fixed_medium"), "variance_type"),
    (dict(trained_betas=[0.1, 0.2]), "trained_betas"),
    (dict(_class_name="FlowMatchEulerDiscreteScheduler"), "_class_name"),
    (dict(use_flow_sigmas=True), "use_flow_sigmas"),
    (dict(timestep_type="continuous"), "timestep_type"),
    (dict(rescale_betas_zero_snr="true"), "rescale_betas_zero_snr"),
])
def test_unsupported_scheduler_setting_names_the_key(settings, key):
    config = {"num_train_timesteps": 1000, **settings}
    with pytest.raises(ValueError, match=f"^{key}: "):
        scheduler_settings(config)
        NoiseSchedule.from_diffusers(config)


def test_sampler_refusals_name_the_key_or_argument():
    loaded, _ = loaded_for(DDPMScheduler(variance_type="fixed_large").config)
    assert loaded.sampler(10, 0.0).variance == "fixed_small"  # DDIM below eta = 1 has its own variance, as DDIMScheduler
    with pytest.raises(ValueError, match="^variance_type: 'fixed_large'"):
        loaded.sampler(10, 1.0)
    loaded, _ = loaded_for(DDPMScheduler(variance_type="learned_range").config)  # the stand-in predicts no variance
    with pytest.raises(ValueError, match="^variance_type: .*predicts no variance"):
        loaded.sampler(1000, 1.0)
    eps_zero_snr, _ = loaded_for(DDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing").config)
    with pytest.raises(ValueError, match="^rescale_betas_zero_snr: "):
        eps_zero_snr.sampler(10)
    assert eps_zero_snr.sampler(10, spacing="leading").timesteps[0] == 900  # never visits abar = 0
    with pytest.raises(ValueError, match="^timesteps: step t = 999 has abar_t = 0"):  # the loop refuses it as well
        DDIMSampler(eps_zero_snr.schedule, 10, spacing="trailing").sample(eps_zero_snr.model, x_start())
    with pytest.raises(ValueError, match="^spacinng: not a sampler option"):
        eps_zero_snr.sampler(10, spacinng="leading")
    latent = LoadedModel(loaded.model, loaded.schedule, SHAPE, {}, None, "latent", {"clip_sample": True})
    with pytest.raises(ValueError, match="^clip_sample: .*latent model"):
        latent.sampler(10)
    assert latent.sampler(10, clamp_x0=False).clamp_x0 is False
    with pytest.raises(ValueError, match="^variance: 'learned_range' .* eta = 1"):
        DDIMSampler(loaded.schedule, 10, eta=0.5, variance="learned_range")
    with pytest.raises(ValueError, match="^variance: 'learned_range' needs a model"):
        DDIMSampler(loaded.schedule, 10, eta=1.0, variance="learned_range").sample(lambda x, t, c=None: x, x_start())
    with pytest.raises(ValueError, match="^dynamic_thresholding: "):
        DDIMSampler(loaded.schedule, 10, dynamic_thresholding=(0.995, 0.5))
    with pytest.raises(ValueError, match="^previous_timesteps: "):
        DDIMSampler(loaded.schedule, 3, previous_timesteps=[800, 400])


def test_cli_sampler_follows_the_config():
    """`onmanifold sample` builds its sampler through LoadedModel.sampler: clip_sample false is respected, --spacing and
    --no-clamp override the config."""
    from onmanifold.commands import sampler_for

    loaded, _ = loaded_for(DDIMScheduler(**SD).config)
    s = sampler_for(loaded, 10)
    assert s.clamp_x0 is False and s.timesteps[0] == 901 and s.schedule.final_alpha_cumprod < 1
    assert sampler_for(loaded, 10, spacing="trailing").timesteps[0] == 999
    clipping, _ = loaded_for(DDIMScheduler().config)
    assert sampler_for(clipping, 10).clamp_x0 is True and sampler_for(clipping, 10, clamp=False).clamp_x0 is False
