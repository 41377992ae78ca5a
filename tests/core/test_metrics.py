"""Known-answer tests for onmanifold.metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from onmanifold import metrics
from onmanifold.metrics import (
    accuracy,
    classifier_features,
    fd_in_features,
    frechet_distance,
    precision_recall,
    psnr,
    ssim,
    wasserstein1_exact,
)


# --------------------------------------------------------------------------- helpers


def _with_exact_moments(rng: np.random.Generator, n: int, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """n points whose sample mean is exactly `mean` and whose np.cov (ddof=1) is exactly `cov`."""
    d = mean.shape[0]
    z = rng.standard_normal((n, d))
    z -= z.mean(axis=0)
    lz = np.linalg.cholesky(np.atleast_2d(np.cov(z, rowvar=False)))
    w = np.linalg.solve(lz, z.T).T  # whitened: cov(w) = I
    return w @ np.linalg.cholesky(cov).T + mean


def _fd_closed_form_diag(m1, m2, s1, s2) -> float:
    m1, m2, s1, s2 = map(np.asarray, (m1, m2, s1, s2))
    return float(np.sum((m1 - m2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2)))


def _random_rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


# --------------------------------------------------------------------------- Fréchet distance


def test_fd_large_gaussian_samples_match_closed_form():
    rng = np.random.default_rng(0)
    n = 20000
    m1, s1 = np.array([0.0, 0.0, 0.0]), np.array([1.0, 2.0, 0.5])
    m2, s2 = np.array([1.0, -0.5, 2.0]), np.array([4.0, 1.0, 0.5])
    a = m1 + rng.standard_normal((n, 3)) * np.sqrt(s1)
    b = m2 + rng.standard_normal((n, 3)) * np.sqrt(s2)
    expected = _fd_closed_form_diag(m1, m2, s1, s2)  # 5.25 + 1 + (3 - 2*sqrt(2)) + 0
    assert expected == pytest.approx(6.4216, abs=1e-4)
    assert frechet_distance(a, b) == pytest.approx(expected, abs=0.1)


def test_fd_exact_moments_diagonal_matches_closed_form():
    rng = np.random.default_rng(1)
    m1, s1 = np.array([0.3, -1.0, 2.0]), np.array([1.0, 0.25, 3.0])
    m2, s2 = np.array([-0.7, 0.5, 2.0]), np.array([2.0, 0.25, 0.1])
    a = _with_exact_moments(rng, 50, m1, np.diag(s1))
    b = _with_exact_moments(rng, 80, m2, np.diag(s2))
    np.testing.assert_allclose(np.cov(a, rowvar=False), np.diag(s1), atol=1e-12)
    assert frechet_distance(a, b) == pytest.approx(_fd_closed_form_diag(m1, m2, s1, s2), abs=1e-6)


def test_fd_exact_moments_rotated_commuting_covariances():
    # S1 = R diag(s1) R^T, S2 = R diag(s2) R^T commute, so the closed form is the diagonal one.
    rng = np.random.default_rng(2)
    d = 4
    rot = _random_rotation(rng, d)
    m1, s1 = rng.standard_normal(d), np.array([1.0, 2.0, 0.5, 3.0])
    m2, s2 = rng.standard_normal(d), np.array([0.2, 2.0, 4.0, 1.0])
    a = _with_exact_moments(rng, 30, m1, rot @ np.diag(s1) @ rot.T)
    b = _with_exact_moments(rng, 40, m2, rot @ np.diag(s2) @ rot.T)
    assert frechet_distance(a, b) == pytest.approx(_fd_closed_form_diag(m1, m2, s1, s2), abs=1e-6)


def test_fd_exact_moments_general_covariances():
    # Non-commuting covariances: tr (S1 S2)^{1/2} = sum sqrt(eigenvalues of S1 S2) (real, >= 0).
    rng = np.random.default_rng(3)
    d = 3
    g1, g2 = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    c1, c2 = g1 @ g1.T + 0.5 * np.eye(d), g2 @ g2.T + 0.5 * np.eye(d)
    m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
    a = _with_exact_moments(rng, 25, m1, c1)
    b = _with_exact_moments(rng, 25, m2, c2)
    tr_sqrt = np.sum(np.sqrt(np.linalg.eigvals(c1 @ c2).real))
    expected = np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * tr_sqrt
    assert frechet_distance(a, b) == pytest.approx(expected, abs=1e-6)


def test_fd_one_dimensional():
    rng = np.random.default_rng(4)
    a = _with_exact_moments(rng, 10, np.array([1.0]), np.array([[4.0]]))
    b = _with_exact_moments(rng, 12, np.array([-2.0]), np.array([[1.0]]))
    # (1 - (-2))^2 + (2 - 1)^2
    assert frechet_distance(a, b) == pytest.approx(10.0, abs=1e-9)


def test_fd_identity_and_symmetry():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((500, 8)) @ rng.standard_normal((8, 8))
    y = rng.standard_normal((300, 8)) * 2 + 1
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    fab, fba = frechet_distance(x, y), frechet_distance(y, x)
    assert fab > 1.0
    assert fab == pytest.approx(fba, rel=1e-9)


def test_fd_accepts_torch_and_numpy_alike():
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((100, 5)), rng.standard_normal((120, 5)) + 0.5
    ref = frechet_distance(a, b)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(ref, rel=1e-12)
    got32 = frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float().requires_grad_())
    assert got32 == pytest.approx(ref, rel=1e-5)
    assert isinstance(ref, float)


def test_fd_eps_fallback_when_sqrtm_not_finite(monkeypatch):
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((40, 3)), rng.standard_normal((40, 3)) * 2
    real_sqrtm = scipy.linalg.sqrtm
    calls = []

    def fake_sqrtm(m, *args, **kwargs):
        calls.append(m.copy())
        if len(calls) == 1:
            return np.full_like(m, np.nan)
        return real_sqrtm(m, *args, **kwargs)

    monkeypatch.setattr(scipy.linalg, "sqrtm", fake_sqrtm)
    got = frechet_distance(a, b)
    assert len(calls) == 2
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eps = 1e-6 * np.eye(3)
    np.testing.assert_allclose(calls[1], (sa + eps) @ (sb + eps), rtol=1e-12)
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa + sb) - 2 * np.trace(real_sqrtm((sa + eps) @ (sb + eps)).real)
    assert got == pytest.approx(expected, rel=1e-10)


# --------------------------------------------------------------------------- classifier features


class _FlattenFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.seen_batches: list[int] = []
        self.grad_enabled: list[bool] = []

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self.seen_batches.append(x.shape[0])
        self.grad_enabled.append(torch.is_grad_enabled())
        return x.flatten(1) + self.dummy


def test_classifier_features_batches_under_no_grad():
    clf = _FlattenFeatures()
    x = torch.randn(10, 1, 2, 2)
    f = classifier_features(clf, x, batch_size=3)
    assert clf.seen_batches == [3, 3, 3, 1]
    assert clf.grad_enabled == [False] * 4
    assert not f.requires_grad
    torch.testing.assert_close(f, x.flatten(1))


def test_classifier_features_batchnorm_classifier_is_batch_invariant_and_mode_restored():
    from onmanifold.nets.networks import ResidualClassifier

    torch.manual_seed(0)
    clf = ResidualClassifier(in_channels=1, image_size=8, num_classes=[10], width=8)
    clf.train()
    x = torch.randn(12, 1, 8, 8)
    bn_before = clf.stem[1].running_mean.clone()
    f_small = classifier_features(clf, x, batch_size=5)
    f_full = classifier_features(clf, x, batch_size=512)
    assert f_full.shape == (12, clf.feature_dim)
    torch.testing.assert_close(f_small, f_full, rtol=1e-5, atol=1e-6)
    assert clf.training  # restored
    torch.testing.assert_close(clf.stem[1].running_mean, bn_before)  # eval mode: running stats untouched


def test_fd_in_features_translation_gives_squared_shift():
    # Features = flattened pixels; shifting every image by c changes only the mean: FD = ||c||^2.
    torch.manual_seed(1)
    x_a = torch.randn(64, 1, 2, 2, dtype=torch.float64)
    shift = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64).view(1, 1, 2, 2)
    x_b = x_a + shift
    clf = _FlattenFeatures().double()
    assert fd_in_features(clf, x_a, x_b, batch_size=10) == pytest.approx(0.25 + 1.0 + 4.0, abs=1e-6)


# --------------------------------------------------------------------------- precision / recall


def test_pr_identical_sets():
    x = np.random.default_rng(0).standard_normal((300, 4))
    assert precision_recall(x, x.copy(), k=3) == (1.0, 1.0)


def test_pr_far_away_fake_set():
    rng = np.random.default_rng(1)
    real = rng.standard_normal((300, 4))
    fake = rng.standard_normal((300, 4)) + 1000.0
    assert precision_recall(real, fake, k=3) == (0.0, 0.0)


def test_pr_fake_covers_one_of_two_clusters():
    rng = np.random.default_rng(2)
    c1 = rng.standard_normal((200, 2))
    c2 = rng.standard_normal((200, 2)) + np.array([100.0, 0.0])
    real = np.concatenate([c1, c2])
    # Fake = exactly the first cluster's points: precision 1, recall exactly 1/2.
    assert precision_recall(real, c1.copy(), k=3) == (1.0, 0.5)
    # Fake = a fresh sample of the first cluster: precision ~1, recall ~1/2 (never above).
    p, r = precision_recall(real, rng.standard_normal((200, 2)), k=3)
    assert p >= 0.9
    assert 0.4 <= r <= 0.5


def test_pr_hand_computed_1d():
    # real = 0,1,2,3 with k=1 -> every real radius is 1.
    # fake sorted = -0.9, 0.5, 3.9, 5, 10 with k=1 -> radii 1.4, 1.4, 1.1, 1.1, 5.
    # precision: 0.5, -0.9, 3.9 inside; 5 (dist 2 > 1), 10 outside -> 3/5.
    # recall: 0 (0.5 from 0.5), 1, 3 (0.9 from 3.9) covered; 2 (1.5 > 1.4, 1.9 > 1.1) not -> 3/4.
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[0.5], [5.0], [-0.9], [3.9], [10.0]])
    p, r = precision_recall(real, fake, k=1)
    assert p == pytest.approx(0.6)
    assert r == pytest.approx(0.75)


def test_pr_chunking_matches_brute_force(monkeypatch):
    rng = np.random.default_rng(3)
    real = rng.standard_normal((60, 3))
    fake = rng.standard_normal((45, 3)) * 1.3 + 0.4
    k = 3

    def brute(centers, queries):
        dcc = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
        radii = np.sort(dcc, axis=1)[:, k]
        dqc = np.linalg.norm(queries[:, None] - centers[None], axis=-1)
        return float(np.mean((dqc <= radii[None]).any(axis=1)))

    expected = (brute(real, fake), brute(fake, real))
    assert 0.0 < expected[0] < 1.0 and 0.0 < expected[1] < 1.0
    monkeypatch.setattr(metrics, "_CDIST_CHUNK", 7)
    assert precision_recall(real, fake, k=k) == pytest.approx(expected)
    monkeypatch.setattr(metrics, "_CDIST_CHUNK", 1024)
    assert precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=k) == pytest.approx(expected)


# --------------------------------------------------------------------------- PSNR / SSIM


def test_psnr_constant_offset_is_20db():
    torch.manual_seed(0)
    x = torch.rand(5, 3, 8, 8, dtype=torch.float64) * 1.8 - 1.0  # in [-1, 0.8]
    y = x + 0.2  # 0.1 on [0, 1] -> MSE 0.01 -> 20 dB
    out = psnr(x, y)
    assert out.shape == (5,)
    torch.testing.assert_close(out, torch.full((5,), 20.0, dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(psnr(y, x), out, rtol=0, atol=1e-9)


def test_psnr_custom_data_range_and_clamping():
    x = torch.full((2, 1, 4, 4), 0.3)
    assert psnr(x, x + 0.1, data_range=(0.0, 1.0)).tolist() == pytest.approx([20.0, 20.0], abs=1e-5)
    # y clamps from 3 to 1: difference 2 on [-1, 1] = 1 on [0, 1] -> MSE 1 -> 0 dB.
    lo, hi = torch.full((1, 1, 4, 4), -1.0), torch.full((1, 1, 4, 4), 3.0)
    assert psnr(lo, hi).item() == pytest.approx(0.0, abs=1e-12)


def test_psnr_identical_is_inf():
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert torch.isinf(psnr(x, x)).all()


def test_ssim_identical_is_one_and_noisy_less():
    torch.manual_seed(1)
    for c in (1, 3):
        x = torch.rand(4, c, 8, 8) * 2 - 1
        s = ssim(x, x)
        assert s.shape == (4,)
        torch.testing.assert_close(s, torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-12)
        noisy = ssim(x, x + 0.3 * torch.randn_like(x))
        assert (noisy < 0.99).all()
        assert (noisy > -1).all()


def test_ssim_constant_images_closed_form():
    # Zero variance: SSIM = (2 a b + C1) / (a^2 + b^2 + C1), C1 = 0.01^2, on the [0, 1] scale.
    a, b = 0.25, 0.75  # -0.5 and 0.5 on [-1, 1]
    x, y = torch.full((1, 1, 8, 8), -0.5), torch.full((1, 1, 8, 8), 0.5)
    c1 = 0.01**2
    assert ssim(x, y).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)


def test_ssim_matches_skimage_on_mapped_images_and_window_size():
    from skimage.metrics import structural_similarity

    torch.manual_seed(2)
    for hw, win in ((8, 7), (5, 5), (4, 3)):
        x = torch.rand(2, 3, hw, hw, dtype=torch.float64) * 2 - 1
        y = (x + 0.2 * torch.randn_like(x)).clamp(-1, 1)
        xs, ys = ((x + 1) / 2).numpy(), ((y + 1) / 2).numpy()
        expected = [structural_similarity(xs[i], ys[i], win_size=win, data_range=1.0, channel_axis=0) for i in range(2)]
        assert ssim(x, y).tolist() == pytest.approx(expected, rel=1e-12)
        # Same images on the [0, 1] scale give the same score.
        assert ssim(torch.from_numpy(xs), torch.from_numpy(ys), data_range=(0.0, 1.0)).tolist() == pytest.approx(expected)


# --------------------------------------------------------------------------- exact W1


def test_w1_shift_equals_norm_of_shift():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 3))
    v = np.array([1.0, -2.0, 0.5])
    assert wasserstein1_exact(a, a + v) == pytest.approx(np.linalg.norm(v), abs=1e-9)
    assert wasserstein1_exact(torch.from_numpy(a), torch.from_numpy(a + v)) == pytest.approx(math.sqrt(5.25), abs=1e-9)


def test_w1_single_points():
    assert wasserstein1_exact(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]])) == pytest.approx(5.0, abs=1e-12)


def test_w1_hand_computed_two_vs_two():
    # a = (0,0),(1,0); b = (0,1),(5,0).
    # Matching (0,0)-(0,1), (1,0)-(5,0): (1 + 4)/2 = 2.5; the other: (5 + sqrt 2)/2 ~ 3.21.
    a = np.array([[0.0, 0.0], [1.0, 0.0]])
    b = np.array([[0.0, 1.0], [5.0, 0.0]])
    assert wasserstein1_exact(a, b) == pytest.approx(2.5, abs=1e-12)
    assert wasserstein1_exact(b, a) == pytest.approx(2.5, abs=1e-12)


def test_w1_unequal_sizes():
    # One point against two: all mass moves from the single point -> mean distance (1 + 3)/2.
    a = np.array([[0.0]])
    b = np.array([[1.0], [-3.0]])
    assert wasserstein1_exact(a, b) == pytest.approx(2.0, abs=1e-12)


def test_w1_1d_matches_sorted_matching():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(50), rng.standard_normal(50) * 2 + 1
    expected = np.mean(np.abs(np.sort(a) - np.sort(b)))
    assert wasserstein1_exact(a[:, None], b[:, None]) == pytest.approx(expected, abs=1e-9)


# --------------------------------------------------------------------------- accuracy


def test_accuracy_logits_and_preds():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    assert accuracy(logits, labels) == pytest.approx(0.5)
    assert accuracy(torch.tensor([0, 1, 1, 2]), labels) == 1.0
    assert accuracy(np.array([0, 0, 0, 0]), np.array([0, 1, 1, 2])) == pytest.approx(0.25)


# --------------------------------------------------------------------------- bad input


_GOOD = np.random.default_rng(0).standard_normal((20, 3))
_IMG = torch.zeros(2, 1, 8, 8)


@pytest.mark.parametrize(
    "fn, name",
    [
        (lambda: frechet_distance(_GOOD[:1], _GOOD), "^feats_a"),
        (lambda: frechet_distance(_GOOD, _GOOD[:1]), "^feats_b"),
        (lambda: frechet_distance(_GOOD[:, 0], _GOOD), "^feats_a"),
        (lambda: frechet_distance(_GOOD, _GOOD[None]), "^feats_b"),
        (lambda: frechet_distance(_GOOD, _GOOD[:, :2]), "^feats_a and feats_b"),
        (lambda: frechet_distance(np.where(np.arange(3) == 1, np.nan, _GOOD), _GOOD), "^feats_a"),
        (lambda: frechet_distance(_GOOD, np.where(np.arange(3) == 1, np.inf, _GOOD)), "^feats_b"),
        (lambda: precision_recall(_GOOD[:3], _GOOD, k=3), "^real_feats"),
        (lambda: precision_recall(_GOOD, _GOOD[:3], k=3), "^fake_feats"),
        (lambda: precision_recall(_GOOD, _GOOD[:, :2]), "^real_feats and fake_feats"),
        (lambda: precision_recall(_GOOD[:, 0], _GOOD), "^real_feats"),
        (lambda: precision_recall(_GOOD, np.full((20, 3), np.nan)), "^fake_feats"),
        (lambda: precision_recall(_GOOD, _GOOD, k=0), "^k must"),
        (lambda: psnr(_IMG, _IMG[:1]), "^x and y"),
        (lambda: psnr(_IMG[0], _IMG[0]), "^x must"),
        (lambda: psnr(_IMG, _IMG, data_range=(1.0, -1.0)), "^data_range"),
        (lambda: ssim(_IMG, torch.zeros(2, 1, 8, 7)), "^x and y"),
        (lambda: ssim(_IMG, _IMG.numpy()), "^y must"),
        (lambda: ssim(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)), "^x must"),
        (lambda: wasserstein1_exact(np.zeros((0, 2)), np.zeros((3, 2))), "^a needs"),
        (lambda: wasserstein1_exact(np.zeros((3, 2)), np.zeros((3, 3))), "^a and b"),
        (lambda: wasserstein1_exact(np.zeros((3, 2)), np.full((3, 2), np.nan)), "^b contains"),
        (lambda: accuracy(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long)), "^logits_or_preds and labels"),
        (lambda: accuracy(torch.tensor([0.5, 1.0]), torch.tensor([0, 1])), "^logits_or_preds"),
        (lambda: accuracy(torch.zeros(2), torch.zeros(2, 1)), "^labels"),
        (lambda: classifier_features(_FlattenFeatures(), _IMG, batch_size=0), "^batch_size"),
        (lambda: classifier_features(nn.Linear(2, 2), _IMG), "^classifier"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(fn, name):
    # `name` is a regex anchored at the message start: the message must begin with the argument name(s).
    with pytest.raises(ValueError, match=name):
        fn()


def test_frechet_reference_equals_frechet_distance():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(300, 12, generator=gen, dtype=torch.float64) @ torch.randn(12, 12, generator=gen, dtype=torch.float64)
    fast = metrics.FrechetReference(ref)
    for feats in (ref[:40], ref[100:160] + 0.3, torch.randn(80, 12, generator=gen, dtype=torch.float64)):
        assert fast(feats) == pytest.approx(metrics.frechet_distance(feats, ref), rel=1e-8, abs=1e-10)
    with pytest.raises(ValueError, match="feats: expected 12 features"):
        fast(torch.zeros(5, 11))
    with pytest.raises(ValueError, match="reference"):
        metrics.FrechetReference(torch.zeros(1, 12))
