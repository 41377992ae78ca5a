"""Sample-quality metrics: Fréchet distance, improved precision/recall, PSNR/SSIM, exact W1, accuracy.

Every function validates its inputs and raises :class:`ValueError` naming the offending argument.
Distribution metrics (:func:`frechet_distance`, :func:`precision_recall`,
:func:`wasserstein1_exact`) are computed in float64 and accept torch tensors or numpy arrays of
shape ``(n, d)``. Image metrics (:func:`psnr`, :func:`ssim`) take ``(B, C, H, W)`` tensors on the
model scale (``data_range``, ``[-1, 1]`` by default) and return one value per sample.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import ot
import scipy.linalg
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = [
    "frechet_distance",
    "FrechetReference",
    "classifier_features",
    "fd_in_features",
    "precision_recall",
    "psnr",
    "ssim",
    "wasserstein1_exact",
    "accuracy",
]

ArrayLike = Any  # torch.Tensor | np.ndarray (anything np.asarray accepts)

_FD_EPS = 1e-6  # pytorch-fid's default offset when sqrtm is not finite
_CDIST_CHUNK = 1024  # rows per torch.cdist call in precision_recall


# --------------------------------------------------------------------------- helpers


def _to_numpy64(name: str, x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a numeric array or tensor: {e}") from e
    return arr


def _points(name: str, x: ArrayLike, min_rows: int) -> np.ndarray:
    """``x`` as a finite float64 ``(n, d)`` array with ``n >= min_rows`` and ``d >= 1``."""
    arr = _to_numpy64(name, x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {tuple(arr.shape)}")
    if arr.shape[1] < 1:
        raise ValueError(f"{name} must have at least one feature column, got shape {tuple(arr.shape)}")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
    return arr


def _same_dim(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{name_a} and {name_b} have different feature dims: {a.shape[1]} vs {b.shape[1]}"
        )


def _images_unit(name_x: str, x: torch.Tensor, name_y: str, y: torch.Tensor, data_range: tuple[float, float]):
    """Validate two ``(B, C, H, W)`` image tensors; clamp to ``data_range`` and map to ``[0, 1]`` (float64 numpy)."""
    for name, t in ((name_x, x), (name_y, y)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(t.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"{name_x} and {name_y} must have equal shapes, got {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.shape[0] < 1:
        raise ValueError(f"{name_x} is empty (batch size 0)")
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError) as e:
        raise ValueError(f"data_range must be a pair (low, high), got {data_range!r}") from e
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"data_range must be finite with high > low, got {data_range!r}")
    out = []
    for name, t in ((name_x, x), (name_y, y)):
        a = t.detach().cpu().to(torch.float64)
        if torch.isnan(a).any():
            raise ValueError(f"{name} contains nan values")
        a = (a.clamp(lo, hi) - lo) / (hi - lo)
        out.append(a.numpy())
    return out[0], out[1]


# --------------------------------------------------------------------------- Fréchet distance


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets.

    .. math::
        \\mathrm{FD} = \\lVert m_a - m_b \\rVert^2 + \\operatorname{tr}\\big(S_a + S_b - 2 (S_a S_b)^{1/2}\\big)

    with ``m`` the sample means and ``S`` the unbiased sample covariances (``np.cov``, ``ddof=1``),
    all in float64. This is the Fréchet (2-Wasserstein) distance between ``N(m_a, S_a)`` and
    ``N(m_b, S_b)`` (Dowson & Landau 1982), the formula behind FID (Heusel et al., "GANs Trained by
    a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", NeurIPS 2017).

    The matrix square root is ``scipy.linalg.sqrtm``, following the pytorch-fid reference
    (``calculate_frechet_distance``): if the result is not finite, ``eps * I`` (``eps = 1e-6``) is
    added to both covariances and the root recomputed; imaginary parts caused by numerical error
    are dropped, and a ``ValueError`` is raised if the imaginary part of the diagonal exceeds 1e-3
    (as in the reference).

    Args:
        feats_a: ``(n_a, d)`` features, torch tensor or numpy array, ``n_a >= 2``.
        feats_b: ``(n_b, d)`` features with the same ``d``, ``n_b >= 2``.

    Returns:
        The distance as a Python float (may be a tiny negative number, ~1e-12, for identical sets).

    Raises:
        ValueError: if an input is not 2-D, has fewer than 2 rows, contains non-finite values, or
            the feature dims differ.
    """
    a = _points("feats_a", feats_a, min_rows=2)
    b = _points("feats_b", feats_b, min_rows=2)
    _same_dim("feats_a", a, "feats_b", b)

    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    sigma_a = np.atleast_2d(np.cov(a, rowvar=False))
    sigma_b = np.atleast_2d(np.cov(b, rowvar=False))
    diff = mu_a - mu_b

    with warnings.catch_warnings():
        # pytorch-fid calls sqrtm(..., disp=False), which silences this; `disp` is deprecated in new scipy.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma_a.shape[0]) * _FD_EPS
            covmean = scipy.linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    if not np.isfinite(covmean).all():
        raise ValueError("frechet_distance: sqrtm of the covariance product is not finite even after adding eps*I")
    if np.iscomplexobj(covmean):
        max_imag = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if max_imag > 1e-3:
            raise ValueError(f"frechet_distance: sqrtm has a significant imaginary component ({max_imag:.3g})")
        covmean = covmean.real

    fd = float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean))
    return fd


class FrechetReference:
    """The Fréchet distance of many feature sets to one fixed reference set, fast (bootstraps, sweeps).

    The same distance as :func:`frechet_distance` ``(feats, reference)``, computed as

    .. math::
        \\operatorname{tr}\\,(S_a S_b)^{1/2} = \\sum_i \\sqrt{\\lambda_i\\big(S_b^{1/2} S_a S_b^{1/2}\\big)}

    (the eigenvalues of ``S_a S_b`` are those of the symmetric ``S_b^{1/2} S_a S_b^{1/2}``), with
    ``S_b^{1/2}`` computed once: one symmetric eigendecomposition per call instead of a general matrix
    square root. Eigenvalues below zero by rounding are taken as zero. Agrees with
    :func:`frechet_distance` to about 1e-9 relative (a test pins it).

    Args:
        reference: ``(n_b, d)`` reference features, ``n_b >= 2``.
    """

    def __init__(self, reference: ArrayLike) -> None:
        b = _points("reference", reference, min_rows=2)
        self.dim = b.shape[1]
        self.mean = b.mean(axis=0)
        cov = np.atleast_2d(np.cov(b, rowvar=False))
        self.trace = float(np.trace(cov))
        w, v = np.linalg.eigh(cov)
        self.cov_sqrt = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T

    def __call__(self, feats: ArrayLike) -> float:
        """``FD(feats, reference)``; ``feats``: ``(n_a, d)``, ``n_a >= 2``."""
        a = _points("feats", feats, min_rows=2)
        if a.shape[1] != self.dim:
            raise ValueError(f"feats: expected {self.dim} features per row (the reference's), got {a.shape[1]}")
        diff = a.mean(axis=0) - self.mean
        cov_a = np.atleast_2d(np.cov(a, rowvar=False))
        lam = np.linalg.eigvalsh(self.cov_sqrt @ cov_a @ self.cov_sqrt)
        return float(diff @ diff + np.trace(cov_a) + self.trace - 2.0 * np.sqrt(np.clip(lam, 0.0, None)).sum())


def classifier_features(classifier: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Penultimate features ``classifier.features(x)`` computed in batches under ``torch.no_grad()``.

    The classifier is put in eval mode for the call (so BatchNorm uses its running statistics and
    does not update them) and restored to its previous mode afterwards. Each batch is moved to the
    device of the classifier's parameters; the result is concatenated on that device.

    Args:
        classifier: a module exposing ``features(x) -> (B, d)`` (the classifiers in
            :mod:`onmanifold.nets.networks` do).
        x: ``(N, ...)`` input tensor, ``N >= 1``.
        batch_size: rows per forward pass, ``>= 1``.

    Returns:
        ``(N, d)`` tensor of features.
    """
    if not hasattr(classifier, "features") or not callable(classifier.features):
        raise ValueError("classifier must expose a callable .features(x)")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x must have a non-empty batch dimension, got shape {tuple(x.shape)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")

    param = next(iter(classifier.parameters()), None) if isinstance(classifier, torch.nn.Module) else None
    was_training = getattr(classifier, "training", False)
    if isinstance(classifier, torch.nn.Module):
        classifier.eval()
    try:
        feats = []
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                xb = x[i : i + batch_size]
                if param is not None:
                    xb = xb.to(device=param.device, dtype=param.dtype)
                f = classifier.features(xb)
                if f.ndim != 2 or f.shape[0] != xb.shape[0]:
                    raise ValueError(
                        f"classifier.features returned shape {tuple(f.shape)} for a batch of {xb.shape[0]}; expected (B, d)"
                    )
                feats.append(f)
    finally:
        if isinstance(classifier, torch.nn.Module):
            classifier.train(was_training)
    return torch.cat(feats, dim=0)


def fd_in_features(classifier: torch.nn.Module, x_a: torch.Tensor, x_b: torch.Tensor, batch_size: int = 512) -> float:
    """Fréchet distance between two image sets in a classifier's feature space.

    ``frechet_distance(classifier_features(classifier, x_a), classifier_features(classifier, x_b))``,
    i.e. FID (Heusel et al., NeurIPS 2017) with the package's own evaluation classifier in place
    of Inception-v3. See :func:`frechet_distance` for the formula.
    """
    fa = classifier_features(classifier, x_a, batch_size=batch_size)
    fb = classifier_features(classifier, x_b, batch_size=batch_size)
    return frechet_distance(fa, fb)


# --------------------------------------------------------------------------- precision / recall


def _knn_radii(points: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest *other* row (self excluded)."""
    radii = []
    for i in range(0, points.shape[0], _CDIST_CHUNK):
        d = torch.cdist(points[i : i + _CDIST_CHUNK], points)
        # The (k+1)-th smallest distance counts the zero self-distance, so it is the k-th nearest other point
        # (also correct with duplicate rows: removing one zero from the multiset leaves the others).
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _coverage(centers: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor) -> float:
    """Share of ``queries`` inside at least one ball ``||q - c_j|| <= r_j``."""
    inside = 0
    for i in range(0, queries.shape[0], _CDIST_CHUNK):
        d = torch.cdist(queries[i : i + _CDIST_CHUNK], centers)
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / queries.shape[0]


def precision_recall(real_feats: ArrayLike, fake_feats: ArrayLike, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., "Improved Precision and Recall Metric for
    Assessing Generative Models", NeurIPS 2019).

    With ``r_i`` the distance from real point ``phi_i`` to its k-th nearest other real point,
    ``manifold(Phi_r) = union_i B(phi_i, r_i)`` and likewise for the fakes:

    .. math::
        \\mathrm{precision} = \\frac{1}{|\\Phi_g|} \\sum_{\\phi \\in \\Phi_g} \\mathbb{1}[\\phi \\in \\mathrm{manifold}(\\Phi_r)],
        \\qquad
        \\mathrm{recall} = \\frac{1}{|\\Phi_r|} \\sum_{\\phi \\in \\Phi_r} \\mathbb{1}[\\phi \\in \\mathrm{manifold}(\\Phi_g)]

    Balls are closed (``<=``), as in the reference implementation. Distances are Euclidean, computed
    in float64 with ``torch.cdist`` in chunks of rows, so memory is ``O(chunk * n)`` (5000 x 5000 is fine).

    Args:
        real_feats: ``(n_r, d)`` real features, ``n_r > k``.
        fake_feats: ``(n_g, d)`` generated features, ``n_g > k``.
        k: neighbourhood size (the paper uses 3).

    Returns:
        ``(precision, recall)``, each in ``[0, 1]``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    k = int(k)
    real = _points("real_feats", real_feats, min_rows=k + 1)
    fake = _points("fake_feats", fake_feats, min_rows=k + 1)
    _same_dim("real_feats", real, "fake_feats", fake)

    real_t = torch.from_numpy(real)
    fake_t = torch.from_numpy(fake)
    real_radii = _knn_radii(real_t, k)
    fake_radii = _knn_radii(fake_t, k)
    precision = _coverage(real_t, real_radii, fake_t)
    recall = _coverage(fake_t, fake_radii, real_t)
    return precision, recall


# --------------------------------------------------------------------------- PSNR / SSIM


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Peak signal-to-noise ratio per sample.

    Both images are clamped to ``data_range = (lo, hi)`` and mapped to ``[0, 1]`` by
    ``(v - lo) / (hi - lo)``; then, per sample,

    .. math::
        \\mathrm{PSNR} = 10 \\log_{10} \\frac{1}{\\mathrm{MSE}}, \\qquad \\mathrm{MSE} = \\operatorname{mean}\\big((x - y)^2\\big)

    via ``skimage.metrics.peak_signal_noise_ratio(x, y, data_range=1)`` (the standard definition,
    e.g. Wang et al., "Image Quality Assessment: From Error Visibility to Structural Similarity",
    IEEE TIP 2004, sec. I). Identical images give ``inf`` (MSE = 0); this is intended.

    Args:
        x, y: ``(B, C, H, W)`` tensors of equal shape.
        data_range: the value range of the inputs, ``(-1, 1)`` for the model scale.

    Returns:
        float64 tensor of shape ``(B,)`` in dB.
    """
    xs, ys = _images_unit("x", x, "y", y, data_range)
    out = np.empty(xs.shape[0], dtype=np.float64)
    with np.errstate(divide="ignore"):
        for i in range(xs.shape[0]):
            out[i] = peak_signal_noise_ratio(xs[i], ys[i], data_range=1.0)
    return torch.from_numpy(out)


def _ssim_win_size(h: int, w: int) -> int:
    m = min(h, w)
    odd = m if m % 2 == 1 else m - 1
    return min(7, odd)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Structural similarity per sample (Wang et al., "Image Quality Assessment: From Error
    Visibility to Structural Similarity", IEEE TIP 2004).

    Both images are clamped to ``data_range`` and mapped to ``[0, 1]`` as in :func:`psnr`; then

    .. math::
        \\mathrm{SSIM} = \\operatorname{mean}_{\\text{windows}}
        \\frac{(2 \\mu_x \\mu_y + C_1)(2 \\sigma_{xy} + C_2)}{(\\mu_x^2 + \\mu_y^2 + C_1)(\\sigma_x^2 + \\sigma_y^2 + C_2)},
        \\quad C_1 = (0.01)^2,\\ C_2 = (0.03)^2

    via ``skimage.metrics.structural_similarity`` with ``data_range=1`` (uniform window, skimage's
    default), ``channel_axis=0`` when ``C > 1`` (the mean over channels), and
    ``win_size = min(7, largest odd number <= min(H, W))`` so that 8x8 images work.

    Args:
        x, y: ``(B, C, H, W)`` tensors of equal shape with ``min(H, W) >= 3``.
        data_range: the value range of the inputs.

    Returns:
        float64 tensor of shape ``(B,)``; 1 for identical images.
    """
    xs, ys = _images_unit("x", x, "y", y, data_range)
    _, c, h, w = xs.shape
    if min(h, w) < 3:
        raise ValueError(f"x must have H, W >= 3 for SSIM, got shape {tuple(x.shape)}")
    win = _ssim_win_size(h, w)
    out = np.empty(xs.shape[0], dtype=np.float64)
    for i in range(xs.shape[0]):
        if c > 1:
            out[i] = structural_similarity(xs[i], ys[i], win_size=win, data_range=1.0, channel_axis=0)
        else:
            out[i] = structural_similarity(xs[i, 0], ys[i, 0], win_size=win, data_range=1.0)
    return torch.from_numpy(out)


# --------------------------------------------------------------------------- exact W1


def wasserstein1_exact(a: ArrayLike, b: ArrayLike) -> float:
    """Exact 1-Wasserstein distance between two empirical point clouds with uniform weights.

    .. math::
        W_1 = \\min_{P \\in U(\\mathbf{1}_n / n,\\ \\mathbf{1}_m / m)} \\sum_{ij} P_{ij} \\lVert a_i - b_j \\rVert_2

    solved as a linear program with the network simplex of ``ot.emd2`` (POT: Flamary et al.,
    "POT: Python Optimal Transport", JMLR 2021; Bonneel et al. 2011) in float64. The iteration cap
    scales with ``n * m`` (at least 1e7, enough for 2000 x 2000); if the solver stops before
    optimality a ``RuntimeError`` is raised rather than returning an upper bound.

    Args:
        a: ``(n, d)`` points, torch tensor or numpy array, ``n >= 1``.
        b: ``(m, d)`` points with the same ``d``, ``m >= 1``.

    Returns:
        ``W_1`` as a Python float.
    """
    pa = _points("a", a, min_rows=1)
    pb = _points("b", b, min_rows=1)
    _same_dim("a", pa, "b", pb)
    n, m = pa.shape[0], pb.shape[0]
    cost = ot.dist(pa, pb, metric="euclidean")
    wa = np.full(n, 1.0 / n, dtype=np.float64)
    wb = np.full(m, 1.0 / m, dtype=np.float64)
    num_iter_max = max(10_000_000, 50 * n * m)
    value, log = ot.emd2(wa, wb, cost, numItermax=num_iter_max, log=True)
    if log.get("result_code", 1) != 1:
        raise RuntimeError(f"wasserstein1_exact: ot.emd2 did not reach optimality: {log.get('warning')}")
    return float(value)


# --------------------------------------------------------------------------- accuracy


def accuracy(logits_or_preds: ArrayLike, labels: ArrayLike) -> float:
    """Classification accuracy ``mean_i [pred_i == label_i]``.

    Args:
        logits_or_preds: ``(N, K)`` logits (prediction = argmax over the last dim) or ``(N,)``
            predicted class indices (integer dtype, or float with integral values).
        labels: ``(N,)`` integer class labels.

    Returns:
        The fraction of correct predictions in ``[0, 1]``.
    """
    def as_tensor(name: str, v: ArrayLike) -> torch.Tensor:
        if isinstance(v, torch.Tensor):
            return v.detach().cpu()
        try:
            return torch.as_tensor(np.asarray(v))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must be a numeric array or tensor: {e}") from e

    def as_indices(name: str, t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            if not torch.isfinite(t).all() or not torch.equal(t, t.round()):
                raise ValueError(f"{name} must hold integer class indices")
        elif t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"{name} must hold integer class indices, got dtype {t.dtype}")
        return t.long()

    p = as_tensor("logits_or_preds", logits_or_preds)
    y = as_tensor("labels", labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {tuple(y.shape)}")
    if y.shape[0] == 0:
        raise ValueError("labels is empty")
    if p.ndim == 2:
        if p.shape[1] < 1:
            raise ValueError(f"logits_or_preds has no classes, got shape {tuple(p.shape)}")
        if p.is_floating_point() and torch.isnan(p).any():
            raise ValueError("logits_or_preds contains nan values")
        preds = p.argmax(dim=-1)
    elif p.ndim == 1:
        preds = as_indices("logits_or_preds", p)
    else:
        raise ValueError(f"logits_or_preds must be (N, K) logits or (N,) predictions, got shape {tuple(p.shape)}")
    if preds.shape[0] != y.shape[0]:
        raise ValueError(f"logits_or_preds and labels have different lengths: {preds.shape[0]} vs {y.shape[0]}")
    y = as_indices("labels", y)
    return float((preds == y).double().mean())
