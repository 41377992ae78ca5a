"""Loss guidance: DPS (Chung et al., ICLR 2023) and DSG (Yang et al., ICML 2024), plus the sphere-deviation recorder.

Both are :class:`~onmanifold.sampler.SamplerPlugin` s acting at the ``update`` point and share one
loss-gradient computation per step (:meth:`~onmanifold.sampler.StepState.loss_gradient`).
"""

from .dps import DiffusionPosteriorSampling
from .dsg import SphericalGaussianGuidance, dsg_update
from .recorders import SphereDeviationRecorder

__all__ = ["DiffusionPosteriorSampling", "SphericalGaussianGuidance", "dsg_update", "SphereDeviationRecorder"]
