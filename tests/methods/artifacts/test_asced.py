"""ASCED (Cao et al., CVPR 2025): exact tests of the streaming detector, TTC and its baselines
(the properties docs/methods/asced.md#T1 to docs/methods/asced.md#T7).

Most tests drive the real sampler with a *planted* eps-model: its clean-image prediction is a known function of t
(a smooth global ramp, plus, for chosen samples, a 4x4 blob that switches on abruptly between two steps), so
the DDIM trajectory's x0_hat is known exactly and the detector's answer can be checked pixel for pixel.
"""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from onmanifold.artifacts import (
    AbnormalScoreCorrection,
    CorrectionConfig,
    DetectorConfig,
    FlagFractionMonitor,
    GroundTruthMasks,
    ScoreClipping,
    StateReplacement,
    StreamingArtifactDetector,
    TrajectoryAwareCorrection,
    correction_noise,
    dilate_mask,
    frame_of,
    gt_artifact_mask,
    monitored_phases,
    phase_boundaries,
    phase_of_steps,
    ttc_renoise,
)
from onmanifold.sampler import DDIMSampler, SamplerPlugin
from onmanifold.schedule import NoiseSchedule

SCHED = NoiseSchedule.linear(1000)
N = 25
H = 32
BLOB = (slice(10, 14), slice(18, 22))  # the planted 4x4 region
SAMPLER = DDIMSampler(SCHED, N, eta=0.0, spacing="linspace")  # t_n = round(n * 999 / 24) descending
T_SWITCH = 650  # between t_8 = 666 and t_9 = 624: the blob appears in the step pair (8, 9), inside [n_d, n_c) = [6, 12)


class PlantedModel:
    """eps-model whose x0 prediction is ``-0.5 + 6 (1 - t/1000) ramp`` plus ``0.8`` on BLOB for planted samples when ``t < T_SWITCH``."""

    def __init__(self, planted, switch=T_SWITCH):
        self.planted = torch.tensor(planted, dtype=torch.bool)
        self.switch = switch
        self.ramp = torch.linspace(0.05, 0.15, H)[None, None, :, None].expand(1, 1, H, H) + torch.linspace(0, 0.01, H)[None, None, None, :]

    def target(self, t, rows):
        s = 6.0 * (1.0 - t.double() / 1000.0)
        x0 = -0.5 + s.reshape(-1, 1, 1, 1) * self.ramp.double()
        blob = torch.zeros(1, 1, H, H, dtype=torch.float64)
        blob[..., BLOB[0], BLOB[1]] = 0.8
        on = (self.planted[rows] & (t < self.switch)).double().reshape(-1, 1, 1, 1)
        return x0 + on * blob

    def __call__(self, x, t, cond=None):
        rows = torch.arange(x.shape[0]) if cond is None else cond
        a = SCHED.abar(t, torch.float64).reshape(-1, 1, 1, 1)
        return ((x.double() - a.sqrt() * self.target(t, rows)) / (1 - a).sqrt()).to(x.dtype)


def planted_mask():
    m = torch.zeros(H, H, dtype=torch.bool)
    m[BLOB] = True
    return m


class Spy(SamplerPlugin):
    """Records x_t at every step's model call (after the other before_model plugins) and x0_hat / eps_hat / x_prev."""

    def __init__(self):
        self.x_t, self.x0, self.eps_hat, self.x_prev, self.sigma = {}, {}, {}, {}, {}

    def after_model(self, state):
        self.x_t[state.position] = state.x_t.clone()
        self.sigma[state.position] = state.sigma

    def after_step(self, state):
        self.x0[state.position] = state.x0_hat.clone()
        self.eps_hat[state.position] = state.eps_hat.clone()
        self.x_prev[state.position] = state.x_prev.clone()


def run(plugins, planted=(True, False), seed=3, sampler=SAMPLER, model=None):
    model = model or PlantedModel(list(planted))
    n = len(planted)
    cond = torch.arange(n)
    return sampler.sample(model, shape=(1, H, H), num_samples=n, seed=seed, plugins=plugins, cond=cond)


CFG = DetectorConfig.for_resolution(H)  # the detector's settings at 32x32 (window n_d, n_c = 6, 12)
CCFG = CorrectionConfig.for_resolution(H)  # the correction's (r = 1, n_c = 12)


def asced(detector=CFG, correction=CCFG, **kw):
    return AbnormalScoreCorrection(detector, correction, **kw)


def noise_of(seed, indices, like):
    """The correction noise (xi, eps) TTC draws for ``indices`` under base ``seed``."""
    return correction_noise(seed, indices, like.shape[1:], like.dtype)


# ---------------------------------------------------------------- arguments
def test_bad_arguments_name_the_argument():
    with pytest.raises(TypeError, match="config"):
        StreamingArtifactDetector({"k": 3})
    with pytest.raises(TypeError, match="config"):
        FlagFractionMonitor(CCFG)
    with pytest.raises(TypeError, match="masks.*AbnormalScoreCorrection"):  # TTC never takes the detector itself
        TrajectoryAwareCorrection(StreamingArtifactDetector(CFG))
    with pytest.raises(TypeError, match="config"):
        TrajectoryAwareCorrection(GroundTruthMasks(torch.zeros(2, H, H)), CFG)
    with pytest.raises(TypeError, match="config"):
        ScoreClipping(CCFG)
    with pytest.raises(ValueError, match="method"):
        AbnormalScoreCorrection(method="older")
    with pytest.raises(TypeError, match="mask_transform"):
        AbnormalScoreCorrection(mask_transform="moved")
    with pytest.raises(ValueError, match="replace_from"):
        run([StateReplacement(GroundTruthMasks(torch.zeros(2, H, H)), CCFG, replace_from=12)])
    with pytest.raises(ValueError, match="x0_source"):
        run([StateReplacement(GroundTruthMasks(torch.zeros(2, H, H)), CCFG.with_(x0_source="current"))])
    with pytest.raises(ValueError, match="tc_frac"):  # the correction must happen where the detector's window closes
        run([asced(correction=CCFG.with_(tc_frac=0.4))])
    with pytest.raises(ValueError, match="masks"):
        GroundTruthMasks(torch.zeros(4, 32))
    with pytest.raises(ValueError, match="mask_source"):  # wrong mask shape from an oracle
        run([TrajectoryAwareCorrection(lambda idx: torch.zeros(len(idx), 8, 8, dtype=torch.bool), CCFG)])
    with pytest.raises(ValueError, match="n: frames must arrive in order"):
        d = StreamingArtifactDetector(CFG)
        d.begin(25)
        d.observe(torch.zeros(1, 1, 8, 8), 1)
    with pytest.raises(RuntimeError, match="begin"):
        StreamingArtifactDetector().observe(torch.zeros(1, 1, 8, 8), 0)
    with pytest.raises(ValueError, match="abar_t"):
        ttc_renoise(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.ones(1, 2, 2, dtype=torch.bool), 0.0, torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="block"):
        gt_artifact_mask(torch.zeros(1, 1, 32, 32), block=0)


# ---------------------------------------------------------------- detector
def test_planted_abrupt_change_is_detected_where_planted():
    det = StreamingArtifactDetector(CFG.with_(sigma=0.0))  # no blur: the mask is exactly the planted block
    run([det], planted=(True, False, True))
    res = det.results()
    assert res.flagged.tolist() == [True, False, True]
    for b in (0, 2):
        assert torch.equal(res.mask[b], planted_mask())
        assert torch.equal(res.dilated(1)[b], dilate_mask(planted_mask()[None], 1)[0])
    assert not res.mask[1].any() and not res.union[1].any()
    # with the default blur (sigma = 0.5 px) the mask holds the block and stays within its 1-px ring
    det = StreamingArtifactDetector(CFG)
    run([det], planted=(True, False))
    m = det.results().mask[0]
    ring = dilate_mask(planted_mask()[None], 1)[0]
    assert (m >= planted_mask()).all() and (m <= ring).all() and not det.results().mask[1].any()
    # the z-map ranks every planted pixel above every pixel outside the ring
    z = det.results().z_map[0]
    assert float(z[planted_mask()].min()) > float(z[~ring].max())


def test_smooth_trajectory_gives_an_empty_mask_even_without_the_floor():
    det, monitor = StreamingArtifactDetector(CFG.with_(a_min=0.0)), FlagFractionMonitor(CFG.with_(a_min=0.0))
    run([det, monitor], planted=(False, False))
    res = det.results()
    assert not res.union.any() and not res.mask.any() and not res.flagged.any()
    # the global change is large (several grey levels per step): the robust per-image test, not the floor, keeps it quiet
    assert float(monitor.flag_fraction.max()) == 0.0


def test_change_outside_the_window_is_ignored_but_monitored():
    det, monitor = StreamingArtifactDetector(CFG), FlagFractionMonitor(CFG, keep_flag_maps=True)
    run([det, monitor], model=PlantedModel([True], switch=300), planted=(True,))  # switches on at pair (17, 18): after n_c
    assert not det.results().flagged.any()
    f = monitor.flag_fraction[0]
    assert f.shape == (N - 1,) and float(f[17 - 1]) > 0 and float(f[:16].max()) == 0.0  # f_n index n-1
    maps = monitor.flag_maps
    assert maps.shape == (1, N - 1, H, H) and torch.equal(maps[0].flatten(1).float().mean(1), f)
    assert float(monitor.flag_fraction_filtered[0, 17 - 1]) > 0  # the 4x4 blob survives the component filters


def test_monitor_records_the_detectors_per_step_test_inside_the_window():
    det, monitor = StreamingArtifactDetector(CFG), FlagFractionMonitor(CFG, keep_flag_maps=True)
    run([det, monitor], planted=(True, False, True))
    maps = monitor.flag_maps  # (3, N-1, H, W); map n-1 is the pair (n-1, n)
    union = maps[:, 6:11].any(1)  # pairs n = 7 .. 11, the window n_d < n < n_c
    assert torch.equal(union, det.results().union)
    assert not maps[1].any() and maps[0, 8].any()  # the blob switches on in the pair (8, 9)
    b = monitored_phases(monitor)
    assert b == phase_boundaries(monitor.flag_fraction.double().mean(0).numpy(), N, CFG.tc_frac) and b["n_peak"] == 9


def test_frames_quantize_truncates_and_weighted_score_needs_eps():
    x0 = torch.tensor([-1.0, -0.999, 0.0, 0.5, 0.99, 1.0]).reshape(1, 1, 1, 6)
    assert frame_of(x0, CFG.with_(quantize=True)).flatten().tolist() == [0.0, 0.0, 127.0, 191.0, 253.0, 255.0]  # 127.5 * 1.99 = 253.7 -> 253
    assert frame_of(x0, CFG).flatten().tolist() == (127.5 * (x0 + 1)).flatten().tolist()
    ws = CFG.with_(quantity="weighted_score")
    eps = torch.ones_like(x0)
    assert torch.allclose(frame_of(x0, ws, eps, 0.2), torch.full_like(x0, -127.5 * 2.0))  # -sqrt(0.8 / 0.2) * 127.5
    with pytest.raises(ValueError, match="eps"):
        frame_of(x0, ws)


def offline_reference(frames, cfg, n_d, n_c):
    """Every frame stored, numpy/scipy only (independent of the torch code): (M, U) per sample."""
    out_m, out_u = [], []
    for b in range(frames[0].shape[0]):
        F_ = []
        for x0 in frames:
            f = 127.5 * (x0[b].numpy().astype(np.float32) + np.float32(1.0))
            if cfg.quantize:
                f = np.clip(f, 0, 255).astype(np.uint8).astype(np.float32)
            F_.append(f)
        U = np.zeros(frames[0].shape[-2:], dtype=bool)
        for n in range(n_d + 1, n_c):
            D = np.abs(F_[n] - F_[n - 1]).astype(np.float64)
            if cfg.sigma > 0:
                D = ndimage.gaussian_filter(D, (cfg.sigma if cfg.blur_channels else 0, cfg.sigma, cfg.sigma), mode="reflect", truncate=4.0)
            med = np.median(D)
            mad = np.median(np.abs(D - med))
            thr = max(med + cfg.k * 1.4826 * mad, cfg.a_min)
            U |= D.max(0) > thr
        lab, k = ndimage.label(U)
        M = np.zeros_like(U)
        for c in range(1, k + 1):
            comp = lab == c
            ok = cfg.area_min < comp.sum() < cfg.area_max
            if cfg.min_width > 1:
                ok = ok and ndimage.binary_erosion(comp, np.ones((cfg.min_width, cfg.min_width))).any()
            M |= comp if ok else False
        out_m.append(M)
        out_u.append(U)
    return np.stack(out_m), np.stack(out_u)


@pytest.fixture(scope="module")
def shapes_trajectories():
    from onmanifold.model import load_diffusion_model

    loaded = load_diffusion_model("shapes-unet")
    spy = Spy()
    x = SAMPLER.sample(loaded.model, shape=loaded.sample_shape, num_samples=6, seed=11, plugins=[spy])
    return loaded, [spy.x0[n] for n in range(N)], x


@pytest.mark.parametrize("cfg", [CFG.with_(quantize=True, a_min=0.0), DetectorConfig.code_faithful(area_min=4, area_max=400, min_width=2),
                                 CFG])
def test_streaming_equals_the_offline_all_frames_reference(shapes_trajectories, cfg):
    loaded, frames, _ = shapes_trajectories
    det = StreamingArtifactDetector(cfg)
    det.begin(N, range(6))
    for n, x0 in enumerate(frames):
        det.observe(x0, n)
    res = det.finalize()
    m_ref, u_ref = offline_reference(frames, cfg, 6, 12)
    assert np.array_equal(res.union.numpy(), u_ref) and np.array_equal(res.mask.numpy(), m_ref)
    assert res.union.any()  # the comparison is not vacuous


def test_detector_memory_does_not_grow_with_the_number_of_steps():
    def stored(steps):
        det = StreamingArtifactDetector(CFG)
        run([det], sampler=DDIMSampler(SCHED, steps, eta=0.0, spacing="linspace"))
        return sum(v.numel() for v in vars(det).values() if torch.is_tensor(v))

    assert stored(10) == stored(50)


# ---------------------------------------------------------------- TTC
def test_outside_the_mask_the_state_is_bit_identical_at_the_correction_step():
    plain = Spy()
    run([plain])
    a, spy = asced(), Spy()
    run([a, spy])
    md = a.detector.results().dilated(CCFG.dilation)
    for n in range(12):
        assert torch.equal(spy.x_t[n], plain.x_t[n])
    inside = md[:, None]
    assert torch.equal(spy.x_t[12][~inside], plain.x_t[12][~inside])
    assert (spy.x_t[12][inside] != plain.x_t[12][inside]).all()
    assert inside[0, 0][planted_mask()].all() and not inside[1].any()
    assert a.corrector.corrected_area.tolist() == [int(md[0].sum()), 0]


def test_unflagged_samples_equal_plain_ddim_bit_for_bit():
    x_plain = run([], planted=(True, False, False, True))
    a = asced()
    x = run([a], planted=(True, False, False, True))
    assert a.corrector.corrected.tolist() == [True, False, False, True]
    assert torch.equal(x[1:3], x_plain[1:3])
    assert not torch.equal(x[0], x_plain[0]) and not torch.equal(x[3], x_plain[3])


def test_gamma_zero_ttc_regenerates_the_noise_component_inside_the_mask():
    plain = Spy()
    run([plain])
    a_, spy = asced(), Spy()
    run([a_, spy])  # seed 3: the correction noise is drawn under the run's seed
    a = SCHED.alphas_cumprod[SAMPLER.timesteps[12]]
    _, eps_new = noise_of(3, [0, 1], plain.x_t[12])
    md = a_.detector.results().dilated(1)[:, None].expand_as(plain.x_t[12])
    x0p, eps_old = plain.x0[11], plain.eps_hat[11]
    # exactly the re-noised previous estimate inside the mask
    expected = math.sqrt(a) * x0p + math.sqrt(1 - a) * eps_new
    assert torch.equal(spy.x_t[12][md], expected[md])
    # = the uncorrected state with its noise component eps_hat_{n_c - 1} swapped for fresh noise
    swapped = plain.x_t[12] + math.sqrt(1 - a) * (eps_new - eps_old)
    assert torch.allclose(spy.x_t[12][md], swapped[md], atol=1e-5, rtol=0)


def test_all_ones_mask_gamma_zero_and_the_models_noise_is_the_identity():
    plain = Spy()
    run([plain])

    class SameNoise(TrajectoryAwareCorrection):
        def correction_noise(self, state):
            return torch.zeros_like(state.x_t), plain.eps_hat[11]

    spy = Spy()
    oracle = SameNoise(GroundTruthMasks(torch.ones(2, H, H, dtype=torch.bool)), CCFG)
    run([oracle, spy])
    assert oracle.corrected.all()
    assert torch.equal(spy.x_t[12], plain.x_t[12])  # bit for bit
    # and the pure function: x_{n_c} = sqrt(a) x0_hat_{n_c-1} + sqrt(1 - a) eps_hat_{n_c-1}
    a = SCHED.alphas_cumprod[SAMPLER.timesteps[12]]
    same = ttc_renoise(plain.x_t[12], plain.x0[11], torch.ones(2, H, H, dtype=torch.bool), a, plain.eps_hat[11])
    assert torch.equal(same, plain.x_t[12])


def test_correction_noise_is_per_sample_and_shared_by_the_variants():
    s1, s2, plain = Spy(), Spy(), Spy()
    run([plain])
    sr, ttc = asced(method="state_replacement"), asced()
    run([sr, s1])
    run([ttc, s2])
    a = SCHED.alphas_cumprod[SAMPLER.timesteps[12]]
    md = sr.detector.results().dilated(1)[:, None].expand_as(s1.x_t[12])
    assert torch.equal(sr.corrector.corrected, ttc.corrector.corrected) and sr.corrector.source_frame == 6
    eps_sr = (s1.x_t[12] - math.sqrt(a) * plain.x0[6]) / math.sqrt(1 - a)  # State Replacement re-noises x0_hat_{n_d}
    eps_ttc = (s2.x_t[12] - math.sqrt(a) * plain.x0[11]) / math.sqrt(1 - a)
    assert torch.allclose(eps_sr[md], eps_ttc[md], atol=1e-5)
    # State Replacement really goes back to the pre-artifact frame: the blob is absent from x0_hat_{n_d}
    assert float(plain.x0[6][0, 0][BLOB].mean()) < float(plain.x0[11][0, 0][BLOB].mean()) - 0.5
    # the correction noise of a sample does not depend on its batch, and differs between samples and seeds
    like = torch.zeros(2, 1, 4, 4)
    assert torch.equal(noise_of(5, [7], like)[1][0], noise_of(5, [3, 7], like)[1][1])
    assert not torch.equal(noise_of(5, [3], like)[1][0], noise_of(5, [7], like)[1][0])
    assert not torch.equal(noise_of(5, [3], like)[1][0], noise_of(6, [3], like)[1][0])
    # an explicit seed replaces the run's
    spy = Spy()
    run([asced(seed=5), spy])
    x_re = math.sqrt(a) * plain.x0[11] + math.sqrt(1 - a) * noise_of(5, [0, 1], plain.x_t[12])[1]
    assert torch.equal(spy.x_t[12][md], x_re[md])


def test_gamma_eta_c_and_current_source():
    plain = Spy()
    run([plain])
    ttc, spy = asced(correction=CCFG.with_(gamma=0.2, eta_c=1.0)), Spy()
    run([ttc, spy])
    a = SCHED.alphas_cumprod[SAMPLER.timesteps[12]]
    xi, eps = noise_of(3, [0, 1], plain.x_t[12])
    md = ttc.detector.results().dilated(1)[:, None].expand_as(plain.x_t[12])
    expected = math.sqrt(a) * (plain.x0[11] + 0.2 * xi) + math.sqrt(1 - a) * eps
    assert torch.allclose(spy.x_t[12][md], expected[md], atol=1e-6)
    assert spy.sigma[12] > 0 and all(spy.sigma[n] == 0 for n in range(N) if n != 12)
    # x0_source="current": one extra network call at n_c, x0' = x0_hat(x_{n_c})
    cur, spy = asced(correction=CCFG.with_(x0_source="current")), Spy()
    run([cur, spy])
    md = cur.detector.results().dilated(1)[:, None].expand_as(plain.x_t[12])
    x0_cur = PlantedModel([True, False]).target(torch.full((2,), 500), torch.arange(2)).float()
    assert torch.allclose(spy.x_t[12][md], (math.sqrt(a) * x0_cur + math.sqrt(1 - a) * eps)[md], atol=1e-5)


def test_mask_transform_hands_another_mask_to_the_correction():
    plain = Spy()
    run([plain])
    moved = lambda res, idx: torch.roll(res.mask, (5, 3), (1, 2))  # noqa: E731
    a, spy = asced(mask_transform=moved), Spy()
    run([a, spy])
    md = dilate_mask(torch.roll(a.detector.results().mask, (5, 3), (1, 2)), 1)
    assert torch.equal((spy.x_t[12] != plain.x_t[12])[:, 0], md)


def test_oracle_ttc_corrects_only_the_ground_truth_region():
    plain = Spy()
    run([plain])
    g = torch.zeros(2, H, H, dtype=torch.bool)
    g[1, 2:5, 2:5] = True  # oracle says: sample 1 has an artifact there, sample 0 none
    spy = Spy()
    ttc = TrajectoryAwareCorrection(GroundTruthMasks(g), CCFG)
    run([ttc, spy])
    assert ttc.corrected.tolist() == [False, True] and ttc.corrected_area.tolist() == [0, 25]
    diff = (spy.x_t[12] != plain.x_t[12])[:, 0]
    assert torch.equal(diff, dilate_mask(g, 1))


def test_score_clipping_bounds_each_change_and_starts_after_n_d():
    plain, spy = Spy(), Spy()
    run([plain])
    sc = ScoreClipping(CFG)
    run([sc, spy])
    for n in range(7):
        assert torch.equal(spy.x0[n], plain.x0[n])
    for n in range(7, 13):
        delta = 127.5 * (spy.x0[n] - spy.x0[n - 1]).abs().double()
        raw = 127.5 * (plain.x0[n] - spy.x0[n - 1]).abs().double() if n == 7 else None
        assert delta.flatten(1).max(1).values.max() < 127.5 * 0.8  # the planted +0.8 jump is never passed whole
        if raw is not None:
            med = raw.flatten(1).quantile(0.5, dim=1)
            mad = (raw.flatten(1) - med[:, None]).abs().quantile(0.5, dim=1)
            c = torch.clamp(med + 3 * 1.4826 * mad, min=1.0)
            assert (delta.flatten(1).max(1).values <= c + 1e-4).all()
    # the step mean uses the clipped estimate: x_{n+1} = sqrt(a') x0 + sqrt(1 - a') eps_hat, eps_hat from the clipped x0
    n = 9
    c = SAMPLER.coefficients(n)
    assert torch.allclose(spy.x_prev[n], math.sqrt(c.abar_prev) * spy.x0[n] + c.mean_eps_coeff * spy.eps_hat[n], atol=1e-6)
    assert torch.allclose(spy.eps_hat[n], (spy.x_t[n] - math.sqrt(c.abar_t) * spy.x0[n]) / math.sqrt(1 - c.abar_t), atol=1e-5)


# ---------------------------------------------------------------- phases, ground truth, diffusers
def test_phase_boundaries():
    f = [0.0, 0.001, 0.02, 0.1, 0.3, 0.5, 0.4, 0.2, 0.1, 0.05] + [0.01] * 14
    b = phase_boundaries(f, 25)
    assert (b["n_1"], b["n_c"], b["n_peak"], b["n_2"]) == (4, 12, 6, 8)  # f_4 = 0.1 is the first >= 0.1 * 0.5
    names = phase_of_steps(b, 25)  # names[n - 1] is pair n
    assert names[:3] == ["Profiling"] * 3 and names[3] == "Mutation" and names[10] == "Mutation" and names[11] == "Refinement"
    with pytest.raises(ValueError, match="f"):
        phase_boundaries([0.1] * 5, 25)


def test_ground_truth_masks_flag_no_real_shape_and_find_a_planted_blob():
    from onmanifold.data.shapes import sample_shapes

    x, _ = sample_shapes(64, torch.Generator().manual_seed(1))
    g, has = gt_artifact_mask(x)
    assert not has.any() and not g.any()
    y = x.clone()
    y[3, 0, 0:3, 0:3] = 0.9  # a 3x3 bright blob in the background corner
    y[5, 0, 30, 5:25] = 0.9  # a 1-px streak: removed by the 2x2 opening
    g, has = gt_artifact_mask(y)
    assert has.tolist() == [i == 3 for i in range(64)]
    assert g[3, 0:3, 0:3].all() and int(g[3].sum()) == 9


def test_works_with_a_diffusers_unet2dmodel():
    from diffusers import UNet2DModel

    from onmanifold.model import as_eps_model

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    model = as_eps_model(unet, SCHED)
    sampler = DDIMSampler(SCHED, 10, eta=0.0)
    asced, monitor = AbnormalScoreCorrection(), FlagFractionMonitor()
    x = sampler.sample(model, shape=(3, 16, 16), num_samples=3, seed=0, plugins=[asced, monitor])
    x_plain = sampler.sample(model, shape=(3, 16, 16), num_samples=3, seed=0)
    res = asced.detector.results()
    assert asced.detector.config == DetectorConfig.for_resolution(16) and (asced.detector.n_d, asced.detector.n_c) == (2, 5)
    assert asced.corrector.config == CorrectionConfig.for_resolution(16) and monitor.config == DetectorConfig.for_resolution(16)
    assert res.mask.shape == (3, 16, 16) and monitor.flag_fraction.shape == (3, 9)
    for b in range(3):
        assert torch.equal(x[b], x_plain[b]) == (not bool(asced.corrector.corrected[b]))


def test_settings_are_resolved_per_run_from_the_sample_shape_and_results_are_per_run():
    a, monitor, sc = AbnormalScoreCorrection(), FlagFractionMonitor(), ScoreClipping()
    run([a, monitor, sc], planted=(True, False, True))
    assert a.detector.config == CFG and a.corrector.config == CCFG and (sc.n_d, sc.n_c) == (6, 12)
    first = a.detector.results()
    assert first.sample_indices == [0, 1, 2] and a.corrector.corrected.shape == (3,) and monitor.flag_fraction.shape == (3, N - 1)
    # a second run of the same plugins at another resolution and batch split: new settings, only the new run's results
    sampler = DDIMSampler(SCHED, 10, eta=0.0, spacing="linspace")
    sampler.sample(lambda x, t, c=None: torch.zeros_like(x), shape=(1, 8, 8), num_samples=5, seed=1, first_index=10, batch_size=2,
                   plugins=[a, monitor, sc])
    assert a.detector.config == DetectorConfig.for_resolution(8) and a.corrector.config == CorrectionConfig.for_resolution(8)
    res = a.detector.results()
    assert res.sample_indices == list(range(10, 15)) and res.mask.shape == (5, 8, 8)
    assert a.corrector.corrected.shape == (5,) and monitor.flag_fraction.shape == (5, 9) and (sc.n_d, sc.n_c) == (2, 5)
    # an explicit config is kept as given
    det = StreamingArtifactDetector(CFG.with_(k=4.0))
    run([det])
    assert det.config.k == 4.0 and det.config.min_width == 2


# ---------------------------------------------------------------- the bench suite and the demo row
def test_asced_suite_structure():
    from onmanifold_bench import SUITES
    from onmanifold_bench.asced import ABLATIONS, TC_SWEEP, asced_suite

    assert SUITES()["asced"] is asced_suite
    s = asced_suite(False, "unused")
    cells = s.cells
    for bed, methods in (("shapes", ("original", "asced", "state-replacement", "score-clipping", "oracle-ttc")), ("digits", ("original", "asced"))):
        for m in methods:
            main = [c for c in cells if c.method == m and c.setting.get("bed") == bed and c.setting.get("tc_frac") == 0.48 and "variant" not in c.setting]
            assert sum(c.setting["n"] for c in main) >= 1000 and len({c.shard for c in main}) == len(main)
    first_oracle = min(i for i, c in enumerate(cells) if c.method == "oracle-ttc")
    assert max(i for i, c in enumerate(cells) if c.method == "original" and c.setting["bed"] == "shapes") < first_oracle
    assert {c.setting["tc_frac"] for c in cells if c.method == "asced" and "variant" not in c.setting and c.setting["bed"] == "shapes"} == set(TC_SWEEP)
    assert {c.setting["variant"] for c in cells if "variant" in c.setting} == set(ABLATIONS)
    assert cells[-1].method == "summary" and cells[-2].method == "overhead" and cells[-2].setting["repeats"] == 5


def test_asced_quick_suite_runs_and_writes_the_report(tmp_path):
    from onmanifold.cli import main

    assert main(["bench", "asced", "--quick", "--run-dir", str(tmp_path), "--no-progress"]) == 0
    md = (tmp_path / "asced.md").read_text()
    for part in ("Generation quality", "Detection against ground truth", "T_c sweep", "Phases (shapes)", "Overhead", "claims at our scale"):
        assert part in md
    for fig in ("asced_grid_shapes.png", "asced_phases_shapes.png", "asced_phases_digits.png", "asced_tc_sweep.png"):
        assert (tmp_path / "figures" / fig).is_file()
    assert (tmp_path / "asced.json").is_file() and (tmp_path / "asced-cells.md").is_file()


def test_demo_rows():
    from onmanifold_bench.asced import asced_demo_rows

    rows = asced_demo_rows(4, 0)
    assert [r["method"] for r in rows] == ["DDIM-25", "DDIM-25 + ASCED"]
    assert all(0.0 <= r["GT artifact rate"] <= 1.0 for r in rows) and 0.0 <= rows[1]["flagged"] <= 1.0 and rows[1]["time ratio"] > 0
