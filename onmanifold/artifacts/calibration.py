"""Calibrating ASCED's detection window on a model: flag rates inside and outside the ground truth, step by step.

The paper chooses its window from the flag-rate histogram of its own models (Figs. 7-8: the Mutation phase and
T_c near 0.48 N). A model of another size or data can put its abnormal changes elsewhere, so the window is
measured per model before detection is judged (docs/methods/asced.md#C1). On uncorrected runs with a ground-truth
mask ``G`` (a bed with an exact fit), from the per-step flag maps ``flag_n`` (steps 1-5 of the detector, before
union and filters; :class:`~onmanifold.artifacts.FlagFractionMonitor` with ``keep_flag_maps=True``):

    r_in(n)   = |flag_n & G| / |G|                   flag rate inside the ground truth
    r_out(n)  = |flag_n & ~G| / |~G|                 flag rate outside it
    U(a, b)   = OR_{a < n < b} flag_n                the detector's union over the window (n_d, n_c) = (a, b)
    J(a, b)   = |U & G| / |G| - |U & ~G| / |~G|      Youden's J of the union's pixels against G

The chosen window maximises ``J`` over ``0 <= a``, ``a + 2 <= b <= N - 1`` (at least one step pair inside; ties:
the shortest, then the earliest window). ``J`` scores the union before the component filters (the filters keep a
subset of it); the phases of the mean flag curve (:func:`~onmanifold.artifacts.phase_boundaries`) are reported beside.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .phases import phase_boundaries

__all__ = ["WindowCalibration", "calibrate_window"]


@dataclass
class WindowCalibration:
    """Result of :func:`calibrate_window` (curves indexed ``n = 1 .. N-1``)."""

    num_steps: int
    flag_rate_inside: list[float]  # r_in(n)
    flag_rate_outside: list[float] | None  # r_out(n); None when G covers every pixel
    flag_rate_positive_images: list[float]  # f_n over images with a ground-truth artifact
    flag_rate_negative_images: list[float] | None  # f_n over clean images; None when every image has an artifact
    n_d: int
    n_c: int
    youden: float  # J(n_d, n_c)
    tpr: float  # |U & G| / |G| of the chosen window
    fpr: float  # |U & ~G| / |~G|
    phases: dict  # phase_boundaries of the mean flag curve over all images

    @property
    def fractions(self) -> tuple[float, float]:
        """``(td_frac, tc_frac)`` = ``(n_d / N, n_c / N)`` for :class:`~onmanifold.artifacts.DetectorConfig`
        (``round(frac * N)`` gives back ``n_d`` and ``n_c``)."""
        return self.n_d / self.num_steps, self.n_c / self.num_steps

    def to_dict(self) -> dict:
        return {**asdict(self), "td_frac": self.fractions[0], "tc_frac": self.fractions[1]}


def _rates(hits: torch.Tensor, total: int) -> list[float] | None:
    return (hits.double() / total).tolist() if total else None


def calibrate_window(flag_maps: torch.Tensor, gt_masks: torch.Tensor) -> WindowCalibration:
    """Flag-rate curves inside / outside the ground truth and the window ``(n_d, n_c)`` maximising Youden's J.

    Args:
        flag_maps: ``(B, N-1, H, W)`` bool, the per-step flags of ``B`` uncorrected samples (``N`` steps).
        gt_masks: ``(B, H, W)`` bool, their ground-truth artifact masks; at least one pixel must be set.
    """
    if not isinstance(flag_maps, torch.Tensor) or flag_maps.dim() != 4 or flag_maps.dtype != torch.bool:
        raise ValueError(f"flag_maps: expected a bool tensor (B, N-1, H, W), got "
                         f"{tuple(flag_maps.shape) if isinstance(flag_maps, torch.Tensor) else type(flag_maps).__name__}")
    b, pairs, h, w = flag_maps.shape
    if pairs < 2:
        raise ValueError(f"flag_maps: expected at least 2 step pairs (N >= 3 steps), got {pairs}")
    if not isinstance(gt_masks, torch.Tensor) or gt_masks.dtype != torch.bool or tuple(gt_masks.shape) != (b, h, w):
        raise ValueError(f"gt_masks: expected a bool tensor of shape {(b, h, w)}, got "
                         f"{tuple(gt_masks.shape) if isinstance(gt_masks, torch.Tensor) else type(gt_masks).__name__}")
    g = gt_masks.to(flag_maps.device)
    inside = int(g.sum())
    if inside == 0:
        raise ValueError("gt_masks: no ground-truth artifact pixel in the calibration samples; a calibration needs samples "
                         "with artifacts (draw more samples, or a model that makes some)")
    outside = g.numel() - inside
    gi = g[:, None]
    r_in = _rates((flag_maps & gi).sum(dim=(0, 2, 3)), inside)
    r_out = _rates((flag_maps & ~gi).sum(dim=(0, 2, 3)), outside)
    has = g.flatten(1).any(1)
    per_image = flag_maps.flatten(2).double().mean(2)  # (B, N-1)
    pos = per_image[has].mean(0).tolist()
    neg = per_image[~has].mean(0).tolist() if (~has).any() else None
    num_steps = pairs + 1
    best = None
    for a in range(0, num_steps - 1):
        union = torch.zeros_like(flag_maps[:, 0])
        for bnd in range(a + 2, num_steps):  # pairs a < n < bnd: the pair n = bnd - 1 joins the union
            union |= flag_maps[:, bnd - 2]
            tp = int((union & g).sum())
            fp = int((union & ~g).sum())
            tpr, fpr = tp / inside, (fp / outside if outside else 0.0)
            key = (tpr - fpr, -(bnd - a), -a)
            if best is None or key > best[0]:
                best = (key, a, bnd, tpr, fpr)
    _, n_d, n_c, tpr, fpr = best
    curve = per_image.mean(0).tolist()
    return WindowCalibration(num_steps, r_in, r_out, pos, neg, n_d, n_c, tpr - fpr, tpr, fpr, phase_boundaries(curve, num_steps))
