"""Small networks of the test beds and checkpoint loading (safetensors + JSON config).

* diffusion models of ``digits`` and ``shapes``: diffusers ``UNet2DModel``, saved in diffusers'
  pipeline layout (``model_index.json``, ``unet/``, ``scheduler/``), so ``DDPMPipeline.from_pretrained``
  opens them too;
* the ``gmm2d`` eps-network :class:`EpsMLP`;
* classifiers :class:`ConvClassifier` (guidance) and :class:`ResidualClassifier` (independent
  evaluation network, other architecture and seed), with ``features(x)`` for Fréchet distances.
"""

from .checkpoint import CheckpointError, bundled_path, list_bundled, load_network, save_network
from .networks import ConvClassifier, EpsMLP, ResidualClassifier, unet_config

__all__ = [
    "CheckpointError",
    "bundled_path",
    "list_bundled",
    "load_network",
    "save_network",
    "ConvClassifier",
    "EpsMLP",
    "ResidualClassifier",
    "unet_config",
]
