"""The one model cache of the experiments: every suite and the demo load networks through here.

A network is loaded once per process and shared (the suites only read it: sampling, guidance and
measurements never change weights). The classifiers are cached by the library itself
(:func:`onmanifold.evaluate.guidance_classifier`, :func:`onmanifold.evaluate.eval_classifier`);
they are re-exported so that a suite finds every model in one place.
"""

from __future__ import annotations

from functools import lru_cache

from onmanifold.evaluate import eval_classifier, guidance_classifier

__all__ = ["diffusion_model", "time_predictor", "guidance_classifier", "eval_classifier", "clear"]


@lru_cache(maxsize=None)
def diffusion_model(name: str):
    """:func:`onmanifold.model.load_diffusion_model` of ``name`` (a bundled name or a folder), loaded once."""
    from onmanifold.model import load_diffusion_model

    return load_diffusion_model(name)


@lru_cache(maxsize=None)
def time_predictor(name: str):
    """:func:`onmanifold.temporal.load_time_predictor` of ``name`` (a bundled name or a folder), loaded once."""
    from onmanifold.temporal import load_time_predictor

    return load_time_predictor(name)


def clear() -> None:
    """Forget every cached network (e.g. after retraining one in the same process)."""
    diffusion_model.cache_clear()
    time_predictor.cache_clear()
