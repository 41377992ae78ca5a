"""The normalised detector, beyond the paper (docs/methods/asced.md#V1), and the detector's bad-input errors
(docs/methods/asced.md#D5, docs/methods/asced.md#D7).

The detector is fed hand-built clean-estimate trajectories (``begin`` / ``observe``): a *normal* trajectory changes by
``g(i, j)`` grey levels per step, with an object forming (``g = 8`` on an 8x8 block) on a background that changes by
1 to 1.75; reference trajectories change by ``(1 + delta) g`` with ``delta`` in {-0.5, -0.25, 0, 0.25, 0.5}, so their
median change is ``g`` and their MAD ``g / 4``. Every decision below is far from its threshold, so the sets compared
are exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onmanifold.artifacts import (
    AbnormalScoreCorrection,
    DetectorConfig,
    FlagFractionMonitor,
    ReferenceChangeStatistics,
    StreamingArtifactDetector,
    dilate_mask,
)
from onmanifold.artifacts.change import change_map, frame_of, normal_change_statistics
from onmanifold.artifacts.image_ops import gaussian_blur_reflect, robust_median_mad
from onmanifold.artifacts.reference import REFERENCE_STREAM
from onmanifold.random import generator_for
from onmanifold.sampler import DDIMSampler
from onmanifold.schedule import NoiseSchedule

H = 32
N = 25
CFG = DetectorConfig.for_resolution(H)  # window (n_d, n_c) = (6, 12): pairs 7 .. 11
REF = CFG.with_(normalization="reference")
OBJECT = (slice(12, 20), slice(12, 20))  # where the normal object forms
BLOCK = (slice(2, 6), slice(2, 6))  # the planted artifact, in the background
PLANT_PAIR = 9
DELTAS = (-0.5, -0.25, 0.0, 0.25, 0.5)


def normal_rate() -> torch.Tensor:
    """``g(i, j)``: 8 grey levels per step on the object, 1 + 0.25 ((i + j) mod 4) on the background."""
    i, j = torch.meshgrid(torch.arange(H), torch.arange(H), indexing="ij")
    g = 1.0 + 0.25 * ((i + j) % 4).double()
    g[OBJECT] = 8.0
    return g


def trajectory(scale: float = 1.0, plant: float = 0.0) -> list[torch.Tensor]:
    """``x0_hat_n`` (1, 1, H, H) for n = 0 .. N-1 with frames ``F_n = 16 + n scale g`` (+ ``plant`` on BLOCK from PLANT_PAIR on)."""
    g = normal_rate()
    out = []
    for n in range(N):
        f = 16.0 + n * scale * g
        if n >= PLANT_PAIR:
            f[BLOCK] += plant
        out.append((f / 127.5 - 1.0)[None, None].float())
    return out


def detect(config: DetectorConfig, frames: list[torch.Tensor], reference: ReferenceChangeStatistics | None = None):
    det = StreamingArtifactDetector(config, reference)
    det.begin(len(frames), range(frames[0].shape[0]))
    for n, x0 in enumerate(frames):
        det.observe(x0, n)
    return det.finalize()


def references(pool_pixels: bool = False) -> ReferenceChangeStatistics:
    frames = [torch.cat(per_n) for per_n in zip(*[trajectory(1.0 + d) for d in DELTAS])]  # frame n: (5, 1, H, H)
    return ReferenceChangeStatistics.from_trajectories(frames, REF.with_(pool_pixels=pool_pixels))


# ---------------------------------------------------------------- the variant is the paper's test with the image's own statistics
@pytest.mark.parametrize("config", [CFG, CFG.with_(quantize=True, a_min=0.0), DetectorConfig.code_faithful(area_min=4, area_max=400, min_width=2)])
def test_with_the_images_own_median_and_mad_the_variant_is_the_faithful_detector_bit_for_bit(config):
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, H, H, generator=g) * 0.5 - 0.5
    steps = torch.rand(N, 1, 3, H, H, generator=g) * 0.04
    steps[8, :, :, 20:25, 3:9] += 0.6  # an abrupt local change in the pair (8, 9), inside the window
    frames = [base + steps[: n + 1].sum(0) for n in range(N)]
    pairs = list(range(7, 12))
    med, mad = [], []
    for n in pairs:
        d = change_map(frame_of(frames[n - 1], config), frame_of(frames[n], config), config)
        m, s = robust_median_mad(d)  # the image's own statistics, over all C H W values
        med.append(m.expand(H, H))
        mad.append(s.expand(H, H))
    stats = ReferenceChangeStatistics(torch.stack(med), torch.stack(mad), pairs, N, config.with_(normalization="reference"))
    faithful = detect(config, frames)
    variant = detect(config.with_(normalization="reference"), frames, stats)
    assert faithful.union.any() and faithful.mask.any()  # not vacuous
    assert torch.equal(variant.union, faithful.union) and torch.equal(variant.mask, faithful.mask)
    assert torch.equal(variant.z_map, faithful.z_map)


# ---------------------------------------------------------------- what the normalisation changes
def test_the_variant_finds_a_planted_block_where_the_faithful_detector_flags_the_forming_object():
    stats = references()
    mu, s = stats.of_pair(8)
    g = gaussian_blur_reflect(normal_rate()[None, None], CFG.sigma)[0, 0]  # the blurred normal change
    assert torch.allclose(mu, g, atol=1e-3) and torch.allclose(s, g / 4, atol=1e-3)  # median g, MAD g / 4
    assert stats.num_references == 5 and stats.pairs == (7, 8, 9, 10, 11) and stats.median.shape == (5, H, H)
    block = torch.zeros(H, H, dtype=torch.bool)
    block[BLOCK] = True
    obj = torch.zeros(H, H, dtype=torch.bool)
    obj[OBJECT] = True
    # a normal trajectory: the faithful detector flags the forming object (the image's largest change), the variant nothing
    normal_f, normal_v = detect(CFG, trajectory()), detect(REF, trajectory(), stats)
    assert torch.equal(normal_f.mask[0], obj) and not normal_v.union.any()
    # the planted block: the variant's mask is exactly the block; the faithful mask is the block and the object
    planted_f, planted_v = detect(CFG, trajectory(plant=4.0)), detect(REF, trajectory(plant=4.0), stats)
    assert torch.equal(planted_v.mask[0], block) and torch.equal(planted_v.union[0], block)
    assert torch.equal(planted_f.mask[0], obj | block)
    z = planted_v.z_map[0]
    assert float(z[block].min()) > 4.0 > float(z[~dilate_mask(block[None], 1)[0]].max())


def test_a_change_three_times_larger_everywhere_is_invisible_to_the_per_image_test_and_not_to_the_variant():
    stats = references()
    normal_f, triple_f = detect(CFG, trajectory()), detect(CFG, trajectory(scale=3.0))
    assert torch.equal(triple_f.union, normal_f.union) and torch.equal(triple_f.mask, normal_f.mask) and normal_f.mask.any()
    assert torch.allclose(triple_f.z_map, normal_f.z_map, rtol=0, atol=1e-3)  # the z-map too, up to float rounding
    triple_v = detect(REF, trajectory(scale=3.0), stats)
    assert triple_v.union.all()  # every pixel changed by 3 g > g + 3 * 1.4826 g / 4
    assert not triple_v.mask.any()  # ... one component of the whole image, above area_max: the filters keep nothing


def test_batch_normalisation_equals_the_reference_built_from_the_batch_and_the_statistics_are_medians():
    batch = [torch.cat(per_n) for per_n in zip(*[trajectory(1.0 + d) for d in DELTAS[:4]] + [trajectory(plant=4.0)])]  # (5, 1, H, H)
    for pool in (False, True):
        by_batch = detect(CFG.with_(normalization="batch", pool_pixels=pool), batch)
        stats = ReferenceChangeStatistics.from_trajectories(batch, REF.with_(pool_pixels=pool))
        for b in range(5):
            one = detect(REF.with_(pool_pixels=pool), [f[b : b + 1] for f in batch], stats)
            assert torch.equal(one.union[0], by_batch.union[b]) and torch.equal(one.z_map[0], by_batch.z_map[b])
    assert by_batch.flagged.tolist() == [False] * 4 + [True] or by_batch.union[4].any()
    per_pixel = detect(CFG.with_(normalization="batch"), batch)
    assert torch.equal(per_pixel.mask[4][BLOCK], torch.ones(4, 4, dtype=torch.bool))
    # the statistics: numpy's median and MAD per pixel, and pooled over the pixels
    x = torch.rand(7, 5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mu, s = normal_change_statistics(x)
    ref_mu = np.median(x.numpy(), axis=0)
    np.testing.assert_allclose(mu.numpy(), ref_mu, rtol=0, atol=1e-15)
    np.testing.assert_allclose(s.numpy(), np.median(np.abs(x.numpy() - ref_mu), axis=0), rtol=0, atol=1e-15)
    mu, s = normal_change_statistics(x, pool_pixels=True)
    m = np.median(x.numpy())
    assert mu.shape == (5, 6) and float(mu[0, 0]) == pytest.approx(m, abs=1e-15) and (mu == mu[0, 0]).all()
    assert float(s[3, 4]) == pytest.approx(np.median(np.abs(x.numpy() - m)), abs=1e-15)


# ---------------------------------------------------------------- from real data
def _tiny_unet():
    from diffusers import UNet2DModel

    from onmanifold.model import DiffusersUNetEpsModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    return DiffusersUNetEpsModel(unet, NoiseSchedule.linear(100)).eval()


def test_from_real_data_is_the_median_of_noised_real_images_and_a_run_uses_it():
    torch.set_num_threads(1)
    model = _tiny_unet()
    sampler = DDIMSampler(model.schedule, 10, eta=0.0)
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    cfg = DetectorConfig.for_resolution(8, normalization="reference")
    stats = ReferenceChangeStatistics.from_real_data(model, sampler, images, seed=7, config=cfg, batch_size=3)
    assert stats.pairs == (3, 4) and stats.median.shape == (2, 8, 8) and stats.median.dtype == torch.float64
    assert stats.timesteps == tuple(sampler.timesteps) and stats.num_references == 4 and stats.num_steps == 10
    # by hand: x_t = sqrt(a) x0 + sqrt(1 - a) e with e of generator_for(7, k, REFERENCE_STREAM), x0_hat clamped, F, blur
    e = torch.stack([torch.randn(1, 8, 8, generator=generator_for(7, k, REFERENCE_STREAM)) for k in range(4)])
    frames = {}
    with torch.no_grad():
        for n in (2, 3, 4):
            t = sampler.timesteps[n]
            a = float(model.schedule.alphas_cumprod[t])
            x_t = a ** 0.5 * images + (1 - a) ** 0.5 * e
            eps = model(x_t, torch.full((4,), t), None)
            frames[n] = 127.5 * (((x_t - (1 - a) ** 0.5 * eps) / a ** 0.5).clamp(-1, 1) + 1)
    for row, n in enumerate((3, 4)):
        d = gaussian_blur_reflect((frames[n] - frames[n - 1]).abs().double(), cfg.sigma).amax(1).numpy()
        med = np.median(d, axis=0)
        np.testing.assert_allclose(stats.median[row].numpy(), med, rtol=0, atol=1e-3)
        np.testing.assert_allclose(stats.mad[row].numpy(), np.median(np.abs(d - med), axis=0), rtol=0, atol=1e-3)
    # a run with the statistics ("auto" resolves to the reference normalisation), and through ASCED
    det = StreamingArtifactDetector(reference=stats)
    sampler.sample(model, shape=(1, 8, 8), num_samples=3, seed=0, plugins=[det])
    assert det.config == cfg and det.results().union.shape == (3, 8, 8)
    asced = AbnormalScoreCorrection(cfg, reference=stats)
    sampler.sample(model, shape=(1, 8, 8), num_samples=3, seed=0, plugins=[asced])
    assert torch.equal(asced.detector.results().union, det.results().union)


def test_reference_statistics_live_on_the_run_device():
    from standin import STAND_IN, StandInDevice, plain

    from onmanifold.model import GaussianMixtureModel

    schedule = NoiseSchedule.linear(20, 1e-3, 0.2)

    def run(device):
        means = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64).clamp(-1, 1)
        gmm = GaussianMixtureModel(means, 0.3, schedule)
        images = gmm.sample_data(4, torch.Generator().manual_seed(4)).float()
        if device is not None:
            gmm.to(device)
        sampler = DDIMSampler(schedule, 8, eta=1.0)
        cfg = DetectorConfig.for_resolution(8, normalization="reference", area_min=0, a_min=0.0)
        stats = ReferenceChangeStatistics.from_real_data(gmm, sampler, images, seed=1, config=cfg, pairs="all")
        det = StreamingArtifactDetector(cfg, stats)
        sampler.sample(gmm, shape=(1, 8, 8), num_samples=3, seed=0, plugins=[det])
        return stats, det

    cpu_stats, cpu_det = run(None)
    with StandInDevice():
        stats, det = run(STAND_IN)
        assert stats.device == STAND_IN and det.reference.device == STAND_IN
        median, union, z = plain(stats.median), plain(det.results().union), plain(det.results().z_map)
    assert stats.pairs == tuple(range(1, 8))
    assert torch.equal(median, cpu_stats.median) and torch.equal(union, cpu_det.results().union)
    assert torch.equal(z, cpu_det.results().z_map) and bool(union.any())


# ---------------------------------------------------------------- bad input: one clear error each
def _vector_model(x, t, cond=None):
    return torch.zeros_like(x)


def _run(plugins, shape=(1, 8, 8), steps=10, n=3):
    DDIMSampler(NoiseSchedule.linear(100), steps, eta=0.0).sample(_vector_model, shape=shape, num_samples=n, seed=0, plugins=plugins)


def test_images_too_small_for_the_detector_are_refused_naming_the_setting():
    with pytest.raises(ValueError, match="^height:.*sigma"):
        DetectorConfig.for_resolution(2)  # the blur reaches 2 px
    with pytest.raises(ValueError, match="^height:.*area_min"):
        DetectorConfig.for_resolution(4, area_min=16, area_max=40)
    assert DetectorConfig.for_resolution(3).area_max == 3  # the smallest square images that hold a component of 2 pixels
    with pytest.raises(ValueError, match="^config.sigma"):
        _run([StreamingArtifactDetector(DetectorConfig())])  # the 256x256 defaults on 8x8 images
    with pytest.raises(ValueError, match="^config.area_min"):
        _run([StreamingArtifactDetector(DetectorConfig(sigma=0.5))])
    with pytest.raises(ValueError, match="^config.min_width"):
        _run([StreamingArtifactDetector(DetectorConfig(sigma=0.5, area_min=1, area_max=200, min_width=9))])
    with pytest.raises(ValueError, match="^config.area_min"):  # by hand: checked on the batch's first frame
        det = StreamingArtifactDetector(DetectorConfig(sigma=0.5))
        det.begin(10)
        det.observe(torch.zeros(1, 1, 8, 8), 0)
    with pytest.raises(ValueError, match="^min_width"):
        DetectorConfig(area_min=1, min_width=5, area_max=20)  # a 5x5 block has 25 pixels: no component could be kept
    with pytest.raises(ValueError, match="^sample_shape"):
        _run([StreamingArtifactDetector(CFG)], shape=(4,))


def test_a_window_outside_the_trajectory_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match="^tc_frac.*n_c = 10"):
        _run([StreamingArtifactDetector(DetectorConfig.for_resolution(8, tc_frac=1.0))])
    with pytest.raises(ValueError, match="^td_frac.*no step pair"):
        _run([StreamingArtifactDetector(DetectorConfig.for_resolution(8, td_frac=0.4, tc_frac=0.45))])  # n_d = n_c = 4
    with pytest.raises(ValueError, match="^td_frac.*no step pair"):
        StreamingArtifactDetector(CFG.with_(td_frac=0.4, tc_frac=0.45)).begin(10)
    with pytest.raises(ValueError, match="^tc_frac"):
        StreamingArtifactDetector(CFG.with_(tc_frac=0.99)).begin(25)  # n_c = round(24.75) = 25
    det = StreamingArtifactDetector(CFG)
    det.begin(4)  # the default fractions on a 4-step trajectory keep their empty window (n_d = 1, n_c = 2)
    assert (det.n_d, det.n_c) == (1, 2)


def test_bad_normalisation_inputs_are_refused_naming_the_argument():
    stats = references()
    with pytest.raises(ValueError, match="^normalization"):
        DetectorConfig(normalization="global")
    with pytest.raises(ValueError, match="^pool_pixels"):
        DetectorConfig(pool_pixels=True)
    with pytest.raises(ValueError, match="^reference"):
        StreamingArtifactDetector(REF)
    with pytest.raises(ValueError, match="^reference"):
        StreamingArtifactDetector(CFG, stats)
    with pytest.raises(TypeError, match="^reference"):
        StreamingArtifactDetector(REF, {"median": 0})
    with pytest.raises(ValueError, match="^reference.*sigma"):
        detect(REF.with_(sigma=1.0), trajectory(), stats)
    with pytest.raises(ValueError, match="^reference.*pool_pixels"):
        detect(REF.with_(pool_pixels=True), trajectory(), stats)
    with pytest.raises(ValueError, match="^reference.*N = 25"):
        detect(REF, trajectory()[:20], stats)
    with pytest.raises(ValueError, match="^reference.*32x32"):
        detect(REF, [f[..., :16, :16] for f in trajectory()], stats)
    with pytest.raises(ValueError, match=r"^reference.*\[6\]"):
        detect(REF.with_(td_frac=0.2), trajectory(), stats)  # n_d = 5: the pair 6 is not in the statistics
    with pytest.raises(ValueError, match="^reference.*timesteps"):
        small = ReferenceChangeStatistics(torch.zeros(2, 8, 8), torch.zeros(2, 8, 8), (3, 4), 10,
                                          DetectorConfig.for_resolution(8, normalization="reference"), timesteps=range(99, -1, -11))
        _run([StreamingArtifactDetector(small.config, small)])
    with pytest.raises(ValueError, match="^config.normalization.*at least 3"):
        _run([StreamingArtifactDetector(DetectorConfig.for_resolution(8, normalization="batch"))], n=2)
    with pytest.raises(ValueError, match="^normal"):  # the phase recorder has no reference
        _run([FlagFractionMonitor(DetectorConfig.for_resolution(8, normalization="reference"))])
    with pytest.raises(ValueError, match="^mad"):
        ReferenceChangeStatistics(torch.zeros(1, 4, 4), -torch.ones(1, 4, 4), (3,), 10, REF)
    with pytest.raises(ValueError, match="^median"):
        ReferenceChangeStatistics(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4), (3,), 10, REF)
    with pytest.raises(ValueError, match="^pairs"):
        ReferenceChangeStatistics(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), (10,), 10, REF)
    with pytest.raises(ValueError, match="^n:"):
        stats.of_pair(3)
    model = lambda x, t, c=None: torch.zeros_like(x)  # noqa: E731
    sampler = DDIMSampler(NoiseSchedule.linear(100), 10)
    with pytest.raises(ValueError, match="^images"):
        ReferenceChangeStatistics.from_real_data(model, sampler, torch.zeros(4, 8, 8), seed=0)
    with pytest.raises(ValueError, match="^images.*at least 3"):
        ReferenceChangeStatistics.from_real_data(model, sampler, torch.zeros(2, 1, 8, 8), seed=0)
    with pytest.raises(ValueError, match="^seed"):
        ReferenceChangeStatistics.from_real_data(model, sampler, torch.zeros(3, 1, 8, 8), seed=-1)
    with pytest.raises(ValueError, match="^pairs"):
        ReferenceChangeStatistics.from_real_data(model, sampler, torch.zeros(3, 1, 8, 8), seed=0, pairs=[4, 3])
    with pytest.raises(TypeError, match="^sampler"):
        ReferenceChangeStatistics.from_real_data(model, "ddim", torch.zeros(3, 1, 8, 8), seed=0)
    with pytest.raises(ValueError, match="^changes.*at least 3"):
        normal_change_statistics(torch.zeros(2, 4, 4))
