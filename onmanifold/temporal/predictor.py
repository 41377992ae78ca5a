"""Time predictors ``phi(x[, c]) -> T logits`` and the time-linked score.

Temporal Alignment Guidance treats the diffusion time as a class: a network ``phi`` classifies a
noisy state over the ``T`` training steps, ``p_phi(t | x) = softmax(phi(x))_t``, and the
**time-linked score** (TLS, Def. 3.1)

    TLS(x, t) = grad_x log p_phi(t | x) = grad_x log_softmax(phi(x[, c]))_t

pulls ``x`` toward the manifold of time ``t`` (always *ascending* ``log p_phi(t | x)``).

* :class:`TimePredictor` wraps a network with the schedule it was trained on, so a sampler with a
  different ``T`` or a different ``abar`` is refused early (docs/methods/tag.md#D10).
* :class:`ExactTimePosterior` is the oracle for Gaussian-mixture data: logits ``log p_k(x)`` give the
  exact ``p(k | x)`` under a uniform prior, so tests check the TLS against Theorem 3.3 in closed form.
* :func:`predictor_accuracy` measures a predictor against ``t`` on forward-noised held-out data.

Reference: Y. Park, H. Jung, S. Bae, S.-Y. Yun, "Temporal Alignment Guidance: On-Manifold Sampling in
Diffusion Models", arXiv 2510.11057 (2025); the predictor follows Jung et al., "Conditional Synthesis
of 3D Molecules with Time Correction Sampler", NeurIPS 2024.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn as nn

from ..device import at_least_float32
from ..schedule import NoiseSchedule

__all__ = [
    "TimePredictor",
    "ExactTimePosterior",
    "time_linked_score",
    "time_linked_score_closed_form",
    "load_time_predictor",
    "predictor_accuracy",
    "heldout_time_accuracy",
]


class TimePredictor(nn.Module):
    """A time-classifier network bound to the schedule it was trained on.

    Args:
        net: a module ``(x, cond) -> (B, T)`` logits (``TimeCNN``, ``TimeMLP`` or any callable module).
        schedule: the training schedule of the diffusion model whose marginals ``net`` classifies.
        conditions: names of the label attributes ``net`` is conditioned on (empty: ``p(t | x)``).
    """

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, conditions: list[str] = ()) -> None:
        super().__init__()
        self.net = net
        self.schedule = schedule
        self.conditions = list(conditions)
        n = getattr(net, "num_timesteps", None)
        if n is not None and int(n) != schedule.T:
            raise ValueError(f"net: the predictor has {n} time classes but its schedule has T = {schedule.T}")

    @property
    def num_timesteps(self) -> int:
        return self.schedule.T

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        """The per-sample input shape the network was built for (from its config; None when unknown)."""
        c = getattr(self.net, "config", None)
        if not isinstance(c, dict):
            return None
        if "image_size" in c and "in_channels" in c:
            return (int(c["in_channels"]), int(c["image_size"]), int(c["image_size"]))
        if "dim" in c:
            return (int(c["dim"]),)
        return None

    def forward(self, x: torch.Tensor, cond: Any = None) -> torch.Tensor:
        expected = self.sample_shape
        if expected is not None and tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"time predictor: trained on samples of shape {expected}, got samples of shape {tuple(x.shape[1:])} "
                "(a predictor of another test bed?)"
            )
        return self.net(x, cond) if self.conditions else self.net(x)

    def check_schedule(self, schedule: NoiseSchedule, what: str = "sampler") -> None:
        """Raise ``ValueError`` unless ``schedule`` has this predictor's ``T`` and ``abar`` (rel. 1e-6)."""
        if schedule.T != self.schedule.T:
            raise ValueError(
                f"time predictor: it classifies {self.schedule.T} training steps but the {what}'s schedule has T = {schedule.T}"
            )
        a, b = schedule.alphas_cumprod, self.schedule.alphas_cumprod
        if not torch.allclose(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-6, atol=1e-12):
            raise ValueError(f"time predictor: its abar_t differs from the {what}'s (trained for another noise schedule)")


class ExactTimePosterior(nn.Module):
    """Oracle time predictor of a :class:`~onmanifold.model.GaussianMixtureModel`: logits ``log p_k(x)``.

    Under a uniform prior over ``k``, ``softmax_k(log p_k(x)) = p(k | x)`` exactly (docs/methods/tag.md#R3).
    Computed in float64 over ``times`` (default all ``T`` steps).
    """

    def __init__(self, gmm, times: list[int] | None = None) -> None:
        super().__init__()
        self.gmm = gmm
        self.schedule = gmm.schedule
        self.conditions: list[str] = []
        self.times = list(range(gmm.schedule.T)) if times is None else [int(t) for t in times]

    @property
    def num_timesteps(self) -> int:
        return len(self.times)

    def check_schedule(self, schedule: NoiseSchedule, what: str = "sampler") -> None:
        if self.times != list(range(schedule.T)):
            raise ValueError(f"time predictor: classifies {len(self.times)} chosen times, not the {what}'s T = {schedule.T} training steps; "
                             "its class indices would not be training steps")
        TimePredictor.check_schedule(self, schedule, what)

    def forward(self, x: torch.Tensor, cond: Any = None) -> torch.Tensor:
        b = x.shape[0]
        cols = [self.gmm.log_prob(x, torch.full((b,), t, dtype=torch.long, device=x.device)) for t in self.times]
        return torch.stack(cols, dim=1)


def input_dtype(predictor: Any, x: torch.Tensor) -> torch.dtype:
    """The dtype to feed ``predictor``: its floating parameters' dtype, else ``x``'s (e.g. the float64 oracle)."""
    param = next(iter(predictor.parameters()), None) if isinstance(predictor, nn.Module) else None
    return param.dtype if param is not None and param.is_floating_point() else x.dtype


def time_linked_score(predictor: nn.Module, x: torch.Tensor, t: torch.Tensor | int, cond: Any = None) -> torch.Tensor:
    """``TLS(x, t) = grad_x log softmax(phi(x, cond))_t``: one forward and one backward of ``phi``.

    ``t`` is an integer or a ``LongTensor[B]`` of training steps. The gradient is taken at a detached
    copy of ``x`` in the predictor's dtype (stop-gradient: nothing flows into ``x``'s graph); returns a
    tensor shaped like ``x`` in ``x``'s dtype. Raises ``FloatingPointError`` if the predictor's output or the gradient is not finite.
    """
    b = x.shape[0]
    t = torch.as_tensor(t, dtype=torch.long, device=x.device)
    t = t.expand(b) if t.dim() == 0 else t
    if t.shape != (b,):
        raise ValueError(f"t: expected an integer or a LongTensor of shape ({b},), got shape {tuple(t.shape)}")
    with torch.enable_grad():
        xg = x.detach().to(input_dtype(predictor, x)).requires_grad_(True)
        logits = predictor(xg, cond)
        if logits.dim() != 2 or logits.shape[0] != b:
            raise ValueError(f"predictor: expected logits of shape ({b}, T), got {tuple(logits.shape)}")
        if (t < 0).any() or (t >= logits.shape[1]).any():
            raise ValueError(f"t: training steps must lie in [0, {logits.shape[1] - 1}]")
        if not torch.isfinite(logits).all():
            raise FloatingPointError("time predictor: non-finite logits")
        logp = at_least_float32(logits).log_softmax(dim=-1).gather(-1, t[:, None]).sum()  # half precision: in float32
        (g,) = torch.autograd.grad(logp, xg)
    if not torch.isfinite(g).all():
        raise FloatingPointError("time-linked score: non-finite gradient")
    return g.to(x.dtype)


def time_linked_score_closed_form(gmm, x: torch.Tensor, i: int, times: list[int] | None = None) -> torch.Tensor:
    """Theorem 3.3 of the paper: ``grad log p(t_i | x) = s_i - sum_k gamma_k s_k``, ``gamma_k = p(t_k | x)``.

    ``s_k = grad log p_{t_k}(x)`` are the exact marginal scores of ``gmm`` and ``gamma`` the exact
    posterior over ``times`` under a uniform prior (float64). ``i`` indexes ``times``.
    """
    times = list(range(gmm.schedule.T)) if times is None else list(times)
    b = x.shape[0]
    logp = torch.stack([gmm.log_prob(x, torch.full((b,), t, dtype=torch.long, device=x.device)) for t in times], dim=1)
    gamma = torch.softmax(logp, dim=1)  # (B, n)
    scores = torch.stack([gmm.score(x.double(), torch.full((b,), t, dtype=torch.long, device=x.device)).double() for t in times], dim=1)
    mixed = (gamma.reshape(b, -1, *([1] * (x.dim() - 1))) * scores).sum(1)
    return scores[:, i] - mixed


def load_time_predictor(name_or_path: str | os.PathLike) -> TimePredictor:
    """Load a bundled time predictor (e.g. ``digits-time``) or a saved folder, bound to its schedule."""
    from ..nets.checkpoint import CheckpointError, load_network, read_metadata

    meta = read_metadata(name_or_path)
    if meta.get("kind") != "time_predictor" or "schedule" not in meta:
        raise CheckpointError(f"checkpoint {str(name_or_path)!r}: not a time predictor (onmanifold.json kind = {meta.get('kind')!r})")
    net = load_network(name_or_path)
    predictor = TimePredictor(net, NoiseSchedule.from_config(meta["schedule"]), meta.get("conditions", []))
    predictor.binding = meta.get("binding")  # the diffusion model it was trained for (onmanifold.binding), None for bed predictors
    return predictor


def _heldout(bed: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    from ..testbeds import get_testbed

    return get_testbed(bed).images("classifier-test")


@torch.no_grad()
def predictor_accuracy(
    predictor: nn.Module,
    bed: str,
    schedule: NoiseSchedule,
    conditions: list[str] = (),
    num_times: int = 100,
    per_time: int = 200,
    seed: int = 0,
) -> dict:
    """Accuracy of a time predictor against ``t`` on forward-noised held-out data of ``bed``.

    For ``num_times`` evenly spaced training steps, ``per_time`` held-out examples are noised to ``t``
    and classified: top-1, within +-5 and +-20 steps, mean ``|argmax - t|`` and NLL per ``t``, and their
    means (``summary``, plus the values at 10 %, 40 % and 80 % of ``T``).
    """
    from ..testbeds import get_testbed

    x_all, labels = _heldout(bed)
    cols = [get_testbed(bed).attributes.index(c) for c in conditions]
    out = heldout_time_accuracy(predictor, x_all, schedule, labels[:, cols] if cols else None, num_times, per_time, seed)
    return {"bed": bed, "conditions": list(conditions), **out}


@torch.no_grad()
def heldout_time_accuracy(
    predictor: nn.Module,
    x_all: torch.Tensor,
    schedule: NoiseSchedule,
    cond: torch.Tensor | None = None,
    num_times: int = 100,
    per_time: int = 200,
    seed: int = 0,
) -> dict:
    """Accuracy of a time predictor against ``t`` on forward-noised held-out data ``x_all`` (any images or latents).

    For ``num_times`` evenly spaced training steps, ``per_time`` examples drawn from ``x_all`` (with their
    ``cond`` rows) are noised to ``t`` and classified: exact step (``top1``), within +-5 and +-20 steps, mean
    ``|argmax - t|`` and NLL per ``t``, and their means (``summary``, plus the values at 10 %, 40 % and 80 % of ``T``).
    """
    gen = torch.Generator().manual_seed(seed)
    T = schedule.T
    times = sorted({int(round(v)) for v in torch.linspace(0, T - 1, min(num_times, T)).tolist()})
    rows = []
    for t in times:
        idx = torch.randint(0, x_all.shape[0], (per_time,), generator=gen)
        x0 = x_all[idx]
        tt = torch.full((per_time,), t, dtype=torch.long)
        xt = schedule.add_noise(x0, tt, torch.randn(x0.shape, generator=gen))
        c = cond[idx] if cond is not None else None
        logits = predictor(xt, c) if c is not None else predictor(xt)
        err = (logits.argmax(1) - t).abs().float()
        nll = torch.nn.functional.cross_entropy(logits, tt)
        rows.append({
            "t": t,
            "top1": float((err == 0).float().mean()),
            "within5": float((err <= 5).float().mean()),
            "within20": float((err <= 20).float().mean()),
            "mean_abs_err": float(err.mean()),
            "nll": float(nll),
        })
    keys = ["top1", "within5", "within20", "mean_abs_err", "nll"]
    summary = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    for frac in (0.1, 0.4, 0.8):
        target = frac * T
        r = min(rows, key=lambda r: abs(r["t"] - target))
        summary[f"mean_abs_err_t{r['t']}"] = r["mean_abs_err"]
    return {"per_time": per_time, "rows": rows, "summary": summary, "chance_mean_abs_err": _chance_error(T)}


def _chance_error(T: int) -> float:
    """Mean ``|k - t|`` of a uniform guess over ``T`` classes, averaged over ``t`` (about ``T / 3``)."""
    return (T * T - 1) / (3 * T)
