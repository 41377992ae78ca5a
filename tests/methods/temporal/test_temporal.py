"""Temporal Alignment Guidance and its baselines: exact checks on the analytic Gaussian mixture
(docs/methods/tag.md#T1 to docs/methods/tag.md#T7)."""

import math

import pytest
import torch

from onmanifold.guidance import DiffusionPosteriorSampling
from onmanifold.model import GaussianMixtureModel
from onmanifold.nets.networks import TimeCNN, TimeMLP
from onmanifold.sampler import DDIMSampler, SamplerPlugin
from onmanifold.schedule import NoiseSchedule
from onmanifold.temporal import (
    EpsilonScaling,
    ExactTimePosterior,
    LangevinCorrector,
    LinearDrift,
    NoiseInjection,
    TemporalAlignmentGuidance,
    TimeCorrectionSampler,
    TimeGapRecorder,
    TimePredictor,
    TimeShiftSampler,
    load_time_predictor,
    time_linked_score,
    time_linked_score_closed_form,
)

TOY = NoiseSchedule.linear(100, 1e-3, 0.2)
MEANS = torch.tensor([[10.0, 10.0], [-10.0, -10.0]], dtype=torch.float64)


@pytest.fixture(scope="module")
def toy():
    return GaussianMixtureModel(MEANS, 1.0, TOY)


def x_T(n, d=2, seed=5):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run(model, plugins, n=16, steps=20, eta=0.0, seed=5, schedule=TOY, clamp=False):
    s = DDIMSampler(schedule, steps, eta=eta, clamp_x0=clamp)
    return s.sample(model, x_T(n, seed=seed), plugins=plugins, seed=0)


# ---------------------------------------------------------------- the time-linked score (docs/methods/tag.md#T1)
def test_tls_of_the_exact_posterior_is_theorem_3_3(toy):
    """Autograd through the oracle logits log p_k(x) equals s_i - sum_k gamma_k s_k (float64, rel. err <= 1e-8)."""
    oracle = ExactTimePosterior(toy)
    g = torch.Generator().manual_seed(0)
    for t in (5, 30, 60, 95):
        x0 = toy.sample_data(64, g).double()
        xt = TOY.add_noise(x0, torch.full((64,), t), torch.randn(64, 2, generator=g, dtype=torch.float64))
        xt = xt * 1.3  # off-manifold states too
        auto = time_linked_score(oracle, xt, t)
        closed = time_linked_score_closed_form(toy, xt, t)
        rel = (auto - closed).norm() / closed.norm()
        assert float(rel) <= 1e-8, (t, float(rel))


def test_tls_of_a_trained_predictor_matches_finite_differences():
    phi = load_time_predictor("gmm2d-time").double()
    x = x_T(8, seed=1) * 3
    t = 40
    g = time_linked_score(phi, x, t)

    def logp(z):
        return phi(z).log_softmax(-1)[:, t]

    h = 1e-6
    fd = torch.zeros_like(x)
    for j in range(2):
        e = torch.zeros_like(x)
        e[:, j] = h
        fd[:, j] = (logp(x + e) - logp(x - e)) / (2 * h)
    assert torch.allclose(g, fd, rtol=1e-5, atol=1e-7)


def test_tls_ascends_log_p_t_given_x(toy):
    oracle = ExactTimePosterior(toy)
    x = x_T(32, seed=2) * 0.5  # looks like a late (noisy) time
    t = 20
    before = oracle(x).log_softmax(-1)[:, t]
    after = oracle(x + 1e-3 * time_linked_score(oracle, x, t)).log_softmax(-1)[:, t]
    assert bool((after > before).all())


# ---------------------------------------------------------------- fail early (docs/methods/tag.md#D10)
def test_oracle_over_a_subset_of_times_is_refused_by_the_sampler(toy):
    oracle = ExactTimePosterior(toy, times=list(range(0, 100, 2)))
    with pytest.raises(ValueError, match="training steps"):
        run(toy, [TemporalAlignmentGuidance(oracle, 1.0)])


def test_float32_predictor_in_a_float64_sampler(toy):
    phi = load_time_predictor("gmm2d-time")  # float32 weights
    out = run(toy, [TimeGapRecorder(phi), TemporalAlignmentGuidance(phi, 1.0)])
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


def test_class_count_must_match_the_schedule():
    with pytest.raises(ValueError, match="T = 100"):
        TimePredictor(TimeMLP(num_timesteps=50), TOY)
    phi = TimePredictor(TimeMLP(num_timesteps=100), TOY)
    tag = TemporalAlignmentGuidance(phi, 1.0)
    with pytest.raises(ValueError, match="T = 1000"):
        DDIMSampler(NoiseSchedule.linear(1000), 10).sample(lambda x, t, c: x, shape=(2,), num_samples=2, plugins=[tag])


def test_abar_must_match_the_schedule():
    phi = TimePredictor(TimeMLP(num_timesteps=100), NoiseSchedule.linear(100, 1e-4, 0.02))
    with pytest.raises(ValueError, match="abar"):
        DDIMSampler(TOY, 10).sample(lambda x, t, c: x, shape=(2,), num_samples=2, plugins=[TemporalAlignmentGuidance(phi, 1.0)])


@pytest.mark.parametrize("kw, match", [
    (dict(omega0=-1.0), "omega0"), (dict(omega0=float("nan")), "omega0"), (dict(omega0=1.0, placement="middle"), "placement"),
    (dict(omega0=1.0, shift="sequential"), "shift"), (dict(omega0=1.0, placement="inline", shift="losses"), "shift_losses"),
])
def test_bad_arguments_are_named(kw, match):
    phi = TimePredictor(TimeMLP(num_timesteps=100), TOY)
    with pytest.raises(ValueError, match=match):
        TemporalAlignmentGuidance(phi, **kw)


def test_conditional_predictor_needs_its_condition():
    phi = TimePredictor(TimeCNN(image_size=8, num_timesteps=100, cond_classes=[3]), TOY, conditions=["type"])
    with pytest.raises(ValueError, match="condition"):
        TemporalAlignmentGuidance(phi, 1.0)
    with pytest.raises(ValueError, match="cond"):
        phi(torch.zeros(2, 1, 8, 8), torch.tensor([[5], [0]]))


# ---------------------------------------------------------------- placements (docs/methods/tag.md#T2, #T3, #T5)
def test_omega_zero_is_a_bit_for_bit_no_op(toy):
    oracle = ExactTimePosterior(toy)
    base = run(toy, [LinearDrift(0.01)])
    for placement in ("pre", "post", "inline"):
        out = run(toy, [LinearDrift(0.01), TemporalAlignmentGuidance(oracle, 0.0, placement=placement)])
        assert torch.equal(out, base)
    assert not torch.equal(run(toy, [LinearDrift(0.01), TemporalAlignmentGuidance(oracle, 1.0)]), base)


class _SkipFirst(TemporalAlignmentGuidance):
    def before_model(self, state):
        if state.position > 0:
            super().before_model(state)


def test_post_equals_pre_without_its_first_correction(toy):
    oracle = ExactTimePosterior(toy)
    post = run(toy, [TemporalAlignmentGuidance(oracle, 2.0, placement="post")], eta=1.0)
    pre_skip = run(toy, [_SkipFirst(oracle, 2.0, placement="pre")], eta=1.0)
    pre = run(toy, [TemporalAlignmentGuidance(oracle, 2.0, placement="pre")], eta=1.0)
    assert torch.equal(post, pre_skip)
    assert not torch.equal(post, pre)


def test_pre_repairs_an_injection_before_the_network_call(toy):
    """With injected noise, the network under `pre` sees a state moved toward time t (higher log p(t|x) than the
    injected state it started from); under `post` it sees the injected state itself."""
    oracle = ExactTimePosterior(toy)
    seen = {}

    class Spy(SamplerPlugin):
        def __init__(self, key):
            self.key = key

        def after_model(self, state):
            if state.position == 3:
                entering = state.x_entering
                logp = lambda z: oracle(z).log_softmax(-1)[:, state.t]  # noqa: E731
                seen[self.key] = (logp(entering), logp(state.x_t))

    for placement in ("pre", "post"):
        run(toy, [NoiseInjection(0.5), TemporalAlignmentGuidance(oracle, 3.0, placement=placement), Spy(placement)], eta=0.0)
    before, after = seen["pre"]
    # pre moved the injected state toward the manifold of t before the call (a finite step may overshoot a few samples)
    assert float(after.median()) > float(before.median()) and float((after >= before).double().mean()) >= 0.75
    before, after = seen["post"]
    assert torch.equal(before, after)  # post: the network sees the injected state unrepaired


def test_inline_guided_shift_is_x_minus_zeta_g_for_dps(toy):
    """Under DPS the default condition-shifted point x' = x_t + (guided - unguided step) is x_t - zeta * g exactly."""
    oracle = ExactTimePosterior(toy)
    target = torch.tensor([[8.0, 9.0]], dtype=torch.float64)

    def loss(x0):
        return (x0 - target).pow(2).sum(1).sqrt()

    zeta = 0.3
    a = run(toy, [DiffusionPosteriorSampling(loss, zeta), TemporalAlignmentGuidance(oracle, 1.5, placement="inline")], eta=1.0)
    b = run(toy, [DiffusionPosteriorSampling(loss, zeta),
                  TemporalAlignmentGuidance(oracle, 1.5, placement="inline", shift="losses", shift_losses=[(loss, zeta)])], eta=1.0)
    assert torch.allclose(a, b, rtol=0, atol=1e-10)
    c = run(toy, [DiffusionPosteriorSampling(loss, zeta)], eta=1.0)
    assert not torch.allclose(a, c)


def test_inline_must_follow_the_guidance_it_shifts_by(toy):
    oracle = ExactTimePosterior(toy)
    with pytest.raises(ValueError, match="after"):
        run(toy, [TemporalAlignmentGuidance(oracle, 1.0, placement="inline"), DiffusionPosteriorSampling(lambda x0: x0.pow(2).sum(1), 0.1)])


def test_sequential_shift_costs_one_extra_call_per_extra_condition(toy):
    oracle = ExactTimePosterior(toy)
    l1 = lambda x0: (x0 - 5).pow(2).sum(1)  # noqa: E731
    l2 = lambda x0: (x0 + 5).pow(2).sum(1)  # noqa: E731
    tag = TemporalAlignmentGuidance(oracle, 1.0, placement="inline", shift="sequential", shift_losses=[(l1, 0.01), (l2, 0.01)])
    run(toy, [DiffusionPosteriorSampling(l1, 0.01), tag], steps=10, eta=1.0)
    assert tag.extra_model_calls == 10
    assert tag.predictor_calls == 10


# ---------------------------------------------------------------- TAG is not marginal-preserving (docs/methods/tag.md#T4)
def _one_tag_step(d, t, scale=1.0, n=None, omega0=0.5):
    sched = NoiseSchedule.linear(1000, 1e-4, 0.02)
    gauss = GaussianMixtureModel(torch.zeros(1, d, dtype=torch.float64), 0.5, sched)
    oracle = ExactTimePosterior(gauss)
    n = n or (4000 if d == 1 else 48)
    g = torch.Generator().manual_seed(d + t)
    v_t = 0.25 * float(sched.alphas_cumprod[t]) + 1 - float(sched.alphas_cumprod[t])
    x = scale * math.sqrt(v_t) * torch.randn(n, d, generator=g, dtype=torch.float64)
    w = omega0 * (1 - float(sched.alphas_cumprod[t]))
    y = x + w * time_linked_score(oracle, x, t)
    ratio = lambda z: float(z.pow(2).sum(1).mean() / (d * v_t))  # noqa: E731
    gap = lambda z: float((oracle(z).argmax(1) - t).abs().float().mean())  # noqa: E731
    return ratio(x), ratio(y), gap(x), gap(y)


def test_one_tag_step_distorts_exact_draws_in_one_dimension():
    _, r100, _, _ = _one_tag_step(1, 100)
    _, r800, _, _ = _one_tag_step(1, 800)
    assert -0.22 < r100 - 1 < -0.10  # docs/methods/tag.md#T4: about -16 %
    assert 0.18 < r800 - 1 < 0.32  # about +25 %


def test_one_tag_step_barely_moves_exact_draws_in_high_dimension():
    for t in (100, 400, 800):
        r0, r1, _, _ = _one_tag_step(3072, t)
        assert abs(r1 / r0 - 1) < 0.01, t


def test_mis_scaled_state_is_pulled_back_and_saturated_one_is_not():
    r0, r1, g0, g1 = _one_tag_step(3072, 400, scale=0.85)
    assert abs(r0 - 0.7225) < 0.01 and abs(r1 - 1.007) < 0.01  # docs/methods/tag.md#T4: 0.72 -> 1.007
    assert g0 > 100 and g1 < 15  # time gap about 146 -> 5
    r0, r1, _, _ = _one_tag_step(3072, 800, scale=1.15)
    assert abs(r1 - r0) < 1e-3  # saturates at t = T - 1: no move


# ---------------------------------------------------------------- time gap (docs/methods/tag.md#T6)
class _Constant(torch.nn.Module):
    """Logits peaked at a fixed class ``k``."""

    def __init__(self, k, T=100):
        super().__init__()
        self.k, self.T, self.num_timesteps = k, T, T

    def forward(self, x, cond=None):
        out = torch.zeros(x.shape[0], self.T, dtype=x.dtype)
        out[:, self.k] = 10.0
        return out


def test_time_gap_of_a_constant_predictor_is_its_distance_to_each_step(toy):
    rec = TimeGapRecorder(_Constant(37))
    s = DDIMSampler(TOY, 10)
    s.sample(toy, x_T(6), plugins=[rec])
    curve = rec.curve()
    assert [r["t"] for r in curve] == s.timesteps
    for r in curve:
        assert r["mean"] == abs(37 - r["t"]) and r["sd"] == 0 and r["n"] == 6
    assert rec.mean() == pytest.approx(sum(abs(37 - t) for t in s.timesteps) / 10)


def test_time_gap_is_read_before_the_tag_move(toy):
    oracle = ExactTimePosterior(toy)
    a, b = TimeGapRecorder(oracle), TimeGapRecorder(oracle)
    # a recorder after TAG grades state.x_entering (after the injection, before TAG's move): same curve as one before TAG
    run(toy, [NoiseInjection(1.0), a, TemporalAlignmentGuidance(oracle, 5.0), b], n=8)
    assert a.curve() == b.curve()


# ---------------------------------------------------------------- baselines (docs/methods/tag.md#T7)
def test_epsilon_scaling_divides_eps_before_x0_hat(toy):
    assert torch.equal(run(toy, [EpsilonScaling(1.0)]), run(toy, []))
    seen = []

    class Spy(SamplerPlugin):
        def after_model(self, state):
            if state.position == 2:
                a = state.coeffs.abar_t
                raw = toy(state.x_t, state.t_tensor())
                seen.append(torch.allclose(state.x0_hat, (state.x_t - math.sqrt(1 - a) * raw / 1.02) / math.sqrt(a), atol=1e-10))

    run(toy, [EpsilonScaling(1.02), Spy()])
    assert seen == [True]
    with pytest.raises(ValueError, match="lambda"):
        run(toy, [EpsilonScaling(b=1.0, k=-1.0)])


class _Follow(SamplerPlugin):
    """Sets a constant predictor's class to the step's t_prev (+ offset) just before TCS reads it."""

    def __init__(self, phi, offset):
        self.phi, self.offset = phi, offset

    def after_step(self, state):
        self.phi.k = max(state.t_prev + self.offset, 0)


def test_tcs_is_the_identity_when_the_predicted_time_is_the_intended_one(toy):
    phi = _Constant(0)
    out = run(toy, [_Follow(phi, 0), TimeCorrectionSampler(phi)])
    assert torch.allclose(out, run(toy, []), atol=1e-9)
    calls = []

    def model(x, t, c=None):
        calls.append(t.clone())
        return toy(x, t)

    tcs = TimeCorrectionSampler(phi)
    out2 = run(model, [_Follow(phi, 7), tcs], steps=5)
    assert tcs.extra_model_calls == 4  # no correction after the last step
    assert any(int(c[0]) in {t + 7 for t in DDIMSampler(TOY, 5).timesteps} for c in calls)
    assert not torch.allclose(out2, run(toy, [], steps=5))


def test_time_shift_with_the_nominal_time_changes_nothing_and_a_window_moves_calls(toy):
    s = DDIMSampler(TOY, 10)
    base = s.sample(toy, x_T(8), seed=0)

    class Nominal(SamplerPlugin):
        def before_model(self, state):
            state.set_time_per_sample(state.t_tensor())

    assert torch.equal(s.sample(toy, x_T(8), plugins=[Nominal()], seed=0), base)
    calls = []

    def model(x, t, c=None):
        calls.append(t.clone())
        return toy(x, t)

    tss = TimeShiftSampler(data_var=100.0, window=9, cutoff=0)
    s.sample(model, x_T(8), plugins=[tss], seed=0)
    nominal = s.timesteps
    for pos, t in enumerate(calls):
        assert bool(((t - nominal[pos]).abs() <= 4).all())
    assert any(not bool((t == nominal[pos]).all()) for pos, t in enumerate(calls))
    with pytest.raises(ValueError, match="window"):
        TimeShiftSampler(1.0, window=-1)


def test_langevin_corrector_with_zero_snr_is_a_no_op_and_costs_one_call_per_step(toy):
    assert torch.equal(run(toy, [LangevinCorrector(snr=0.0)]), run(toy, []))
    lc = LangevinCorrector(snr=0.16)
    out = run(toy, [lc], steps=10)
    assert lc.extra_model_calls == 10 and torch.isfinite(out).all()


# ---------------------------------------------------------------- TAG repairs the toy's drift with the exact predictor
def test_tag_with_the_exact_predictor_undoes_most_of_the_drift(toy):
    """Sec. 2 toy: drift x <- 0.99 x at every step shrinks the modes; TAG (oracle phi) restores their spread."""
    n, steps = 400, 100
    clean = run(toy, [], n=n, steps=steps, eta=1.0)
    drift = run(toy, [LinearDrift(0.01)], n=n, steps=steps, eta=1.0)
    fixed = run(toy, [LinearDrift(0.01), TemporalAlignmentGuidance(ExactTimePosterior(toy), 2.0)], n=n, steps=steps, eta=1.0)
    r = lambda z: float(z.abs().mean())  # noqa: E731  (mean |coordinate|, ~10 for the clean modes)
    assert r(drift) < 0.8 * r(clean)
    assert abs(r(fixed) - r(clean)) < 0.5 * abs(r(drift) - r(clean))


def test_epsilon_scaling_under_dps_keeps_the_gradient_path(toy):
    """The loss gradient flows through the scaled eps (the loss sees x0_hat of eps / lambda)."""
    loss = lambda x0: (x0 - 0.5).pow(2).sum(1)  # noqa: E731
    a = run(toy, [EpsilonScaling(1.05), DiffusionPosteriorSampling(loss, 0.05)], eta=1.0)
    b = run(toy, [DiffusionPosteriorSampling(loss, 0.05)], eta=1.0)
    c = run(toy, [EpsilonScaling(1.05)], eta=1.0)
    assert torch.isfinite(a).all() and not torch.allclose(a, b) and not torch.allclose(a, c)


def test_omega_grid_and_choice_on_validation():
    from onmanifold.temporal import choose_omega, omega_grid

    g = omega_grid()
    assert g[0] == 0.0 and g[1] == 0.05 and g[-1] == 200.0 and g == sorted(g)
    best, table = choose_omega(lambda w: (w - 5.0) ** 2, g)
    assert best == 5.0 and len(table) == len(g)
    assert choose_omega(lambda w: 1.0, [2.0, 0.5])[0] == 0.5  # ties go to the weaker strength
    with pytest.raises(ValueError, match="omega0 = 1"):
        choose_omega(lambda w: float("nan") if w == 1 else w, [0.5, 1, 2])
    with pytest.raises(ValueError, match="low, high"):
        omega_grid(10, 1)


# ---------------------------------------------------------------- per-run results: reset in setup, never piled up
def test_results_are_per_run_and_reset_at_setup(toy):
    oracle = ExactTimePosterior(toy)
    rec, tag = TimeGapRecorder(oracle), TemporalAlignmentGuidance(oracle, 1.0, placement="inline", shift="sequential",
                                                                  shift_losses=[(lambda x0: x0.pow(2).sum(1), 0.1)] * 2)
    tss, lc = TimeShiftSampler(data_var=100.0, window=9, cutoff=0), LangevinCorrector(snr=0.16)
    tcs = TimeCorrectionSampler(_Constant(3))

    def once():
        run(toy, [NoiseInjection(0.3), rec, tss, lc, tag, tcs], n=4, steps=5)
        return (rec.curve(), rec.per_sample(), tag.predictor_calls, tag.extra_model_calls, list(tss.shifts),
                lc.extra_model_calls, tcs.extra_model_calls)

    first = once()
    assert first[2] == 5 and first[3] == 5 and first[5] == 5 and first[6] == 4 and all(r["n"] == 4 for r in first[0])
    assert once() == first  # a second sample() call reports its own run, not the sum of both
