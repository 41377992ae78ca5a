"""The three offline test beds: ``gmm2d`` (2-D Gaussian mixture), ``digits`` (scikit-learn 8x8) and ``shapes``."""

from .digits import load_digits_split
from .gmm2d import GMM2D_MEANS, GMM2D_STD, sample_gmm2d
from .shapes import ShapeParams, fit_shapes, render_shapes, sample_shapes

__all__ = [
    "load_digits_split",
    "GMM2D_MEANS",
    "GMM2D_STD",
    "sample_gmm2d",
    "ShapeParams",
    "fit_shapes",
    "render_shapes",
    "sample_shapes",
]
