"""The registry of test beds: everything that is true of a bed, in one place.

A :class:`TestBed` holds a bed's per-sample shape, its training schedule, its label attributes,
its named data splits with their seeds, its inverse-problem tasks, its bundled model names and,
where the bed has them, its ground-truth artifact masks. Nothing else in the library or the
experiments re-derives a split, a seed or a task: they ask ``get_testbed(name)``.

>>> bed = get_testbed("shapes")
>>> bed.sample_shape, bed.attributes
((1, 32, 32), ('type', 'size'))
>>> x, labels = bed.images("val", 8)        # the validation shapes, seed 555

Splits (``bed.split_seeds``; digits splits are fixed index sets of scikit-learn's 1797 digits):

=====================  ===================================================================
split                  used for
=====================  ===================================================================
``train``              the training stream (procedural beds: drawn from the training seed)
``val``                choosing knobs (DPS zeta, DSG g_r, TAG omega0, ...)
``test``               the images every inverse-problem table measures
``reference``          what sample quality (FD, precision/recall, W1) is scored against
``floor``              the training-data floor of the same scores
``classifier-test``    held-out accuracy of classifiers and time predictors
``attribute-pool``     the pool per (type, size) pair of the two-attribute guidance tables
``ground-truth-check`` real images on which the ground-truth artifact rate is checked
``reference-0..4``     gmm2d: the exact draw each of the toy table's five test seeds is scored against
``tls-check``          gmm2d: the forward samples on which the learned time-linked score is compared to the exact one
=====================  ===================================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch

from .schedule import NoiseSchedule

__all__ = ["TestBed", "get_testbed", "TESTBEDS", "bed_of_model"]


@dataclass(frozen=True)
class TestBed:
    """One test bed. See the module docstring for the splits."""

    name: str
    sample_shape: tuple[int, ...]
    schedule_config: dict
    attributes: tuple[str, ...] = ()
    attribute_classes: dict = field(default_factory=dict)
    split_seeds: dict = field(default_factory=dict)
    split_sizes: dict = field(default_factory=dict)
    tasks: tuple[str, ...] = ()
    model: str = ""
    guidance_classifier: str | None = None
    eval_classifier: str | None = None
    time_predictor: str | None = None
    image_shape: tuple[int, ...] | None = None  # latent beds: the decoded images' shape (None: the samples are the images)
    prompt_slots: tuple[tuple[str, ...], ...] = ()  # latent beds: the words of each prompt slot, in attribute order

    __test__ = False  # not a pytest class

    @property
    def data_shape(self) -> tuple[int, ...]:
        """The shape of one image of the bed (splits, tasks, metrics): ``image_shape`` for a latent bed, else ``sample_shape``."""
        return self.image_shape if self.image_shape is not None else self.sample_shape

    def prompts(self, labels: torch.Tensor) -> list[str]:
        """``(N, len(attributes))`` labels -> the prompts naming them (latent beds with a prompt table), e.g. ``"circle small"``."""
        if not self.prompt_slots:
            raise ValueError(f"bed: {self.name!r} has no prompts (only latent beds with a prompt table have)")
        labels = torch.as_tensor(labels)
        if labels.dim() != 2 or labels.shape[1] != len(self.prompt_slots):
            raise ValueError(f"labels: expected (N, {len(self.prompt_slots)}) attribute labels, got {tuple(labels.shape)}")
        return [" ".join(self.prompt_slots[k][int(v)] for k, v in enumerate(row) if int(v) >= 0) for row in labels]

    def schedule(self) -> NoiseSchedule:
        """The bed's training schedule (what its bundled diffusion model was trained with)."""
        return NoiseSchedule.from_config(self.schedule_config)

    def generator(self, split: str) -> torch.Generator:
        """A fresh CPU generator seeded with the split's seed (procedural beds)."""
        if split not in self.split_seeds:
            raise ValueError(f"split: expected one of {sorted(self.split_seeds)} for bed {self.name!r}, got {split!r}")
        return torch.Generator().manual_seed(int(self.split_seeds[split]))

    def images(self, split: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x, labels)`` of ``split``: the first ``n`` items (default: the split's size).

        ``labels`` is ``(N, len(attributes))`` (digit; type, size) or None (gmm2d).
        """
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ValueError(f"n: expected a positive integer or None, got {n!r}")
        return _LOADERS[self.name](self, split, n)

    def reference_set(self, which: str = "reference") -> torch.Tensor:
        """The images (or points) samples are scored against: ``'reference'`` or the ``'floor'``."""
        if which not in ("reference", "floor"):
            raise ValueError(f"which: expected 'reference' or 'floor', got {which!r}")
        return self.images(which)[0]

    def make_task(self, task: str, n: int, seed: int):
        """The measurement operator of ``task`` for ``n`` samples (masks drawn per ``(seed, sample)``)."""
        if task not in self.tasks:
            raise ValueError(f"task: expected one of {list(self.tasks)} for bed {self.name!r}, got {task!r}")
        return _TASKS[self.name](self, task, n, seed)

    def artifact_masks(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel ground-truth artifact masks ``(N, H, W)`` (boolean) of samples ``x``; beds with an exact fit only."""
        if self.name == "mosaic":
            from .artifacts.ground_truth import deviation_artifact_mask
            from .data.mosaic import fit_mosaic

            return deviation_artifact_mask(fit_mosaic(x).deviation[:, 0])[0]
        if self.name != "shapes":
            raise ValueError(f"bed: {self.name!r} has no ground-truth artifact masks (only 'shapes' and 'mosaic' have)")
        from .artifacts.ground_truth import gt_artifact_mask

        return gt_artifact_mask(x)[0]


def _digits(bed: TestBed, split: str, n: int | None):
    from .data.digits import load_digits_split

    name = {"reference": "heldout", "test": "heldout", "classifier-test": "heldout", "floor": "train"}.get(split, split)
    if name not in ("train", "val", "heldout"):
        raise ValueError(f"split: expected one of {sorted(bed.split_sizes)} for bed 'digits', got {split!r}")
    x, y = load_digits_split(name)
    return (x, y[:, None]) if n is None else (x[:n], y[:n, None])


def _shapes(bed: TestBed, split: str, n: int | None):
    from .data.shapes import sample_shapes

    gen = bed.generator(split)
    x, p = sample_shapes(bed.split_sizes.get(split, 0) if n is None else n, gen)
    return x, torch.stack([p.type, p.size], dim=1)


def _gmm2d(bed: TestBed, split: str, n: int | None):
    from .data.gmm2d import sample_gmm2d

    gen = bed.generator(split)
    return sample_gmm2d(bed.split_sizes.get(split, 0) if n is None else n, gen), None


def _mosaic(bed: TestBed, split: str, n: int | None):
    from .data.mosaic import sample_mosaic

    gen = bed.generator(split)
    return sample_mosaic(bed.split_sizes.get(split, 0) if n is None else n, gen)[0], None


_LOADERS: dict[str, Callable] = {"digits": _digits, "shapes": _shapes, "shapes-latent": _shapes, "gmm2d": _gmm2d, "mosaic": _mosaic}


def _digits_task(bed: TestBed, task: str, n: int, seed: int):
    from .operators import Downsample, GaussianBlur, Inpainting, box_masks, random_masks

    if task == "box":
        return Inpainting(box_masks(n, bed.sample_shape, 4, 0, seed))
    if task == "random":
        return Inpainting(random_masks(n, bed.sample_shape, (0.3, 0.7), seed))
    if task == "sr":
        return Downsample(2)
    return GaussianBlur(0.8, 5)


def _shapes_task(bed: TestBed, task: str, n: int, seed: int):
    from .operators import Downsample, GaussianBlur, Inpainting, box_masks, random_masks

    if task == "box":
        return Inpainting(box_masks(n, bed.data_shape, 16, 2, seed))
    if task == "random":
        return Inpainting(random_masks(n, bed.data_shape, (0.3, 0.7), seed))
    if task == "sr":
        return Downsample(4)
    return GaussianBlur(1.5, 9)


def _mosaic_task(bed: TestBed, task: str, n: int, seed: int):
    from .operators import Downsample, GaussianBlur, Inpainting, box_masks, random_masks

    if task == "box":  # a 24x24 hole: at least one whole 16x16 tile is missing
        return Inpainting(box_masks(n, bed.sample_shape, 24, 4, seed))
    if task == "random":
        return Inpainting(random_masks(n, bed.sample_shape, (0.3, 0.7), seed))
    if task == "sr":
        return Downsample(4)
    return GaussianBlur(1.5, 9)


_TASKS: dict[str, Callable] = {"digits": _digits_task, "shapes": _shapes_task, "shapes-latent": _shapes_task, "mosaic": _mosaic_task}

_PIXEL_SCHEDULE = {"kind": "linear", "num_train_steps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
# Stable Diffusion's scaled-linear betas (linear in sqrt(beta), 0.00085 .. 0.012, T = 1000), as the latent model's scheduler/
# (its set_alpha_to_one false and steps_offset 1 are sampling settings, read from the folder by LoadedModel.sampler)
_SD_SCHEDULE = {"kind": "custom", "betas": [float(v) for v in (torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2)]}
_SHAPES_SPLITS = {"val": 555, "test": 777, "reference": 777, "floor": 778, "classifier-test": 12345,
                  "attribute-pool": 4242, "ground-truth-check": 778}
_SHAPES_SIZES = {"reference": 2000, "floor": 2000, "classifier-test": 1000, "attribute-pool": 6000, "ground-truth-check": 1000}

_SHAPES = TestBed(
    name="shapes",
    sample_shape=(1, 32, 32),
    schedule_config=_PIXEL_SCHEDULE,
    attributes=("type", "size"),
    attribute_classes={"type": 3, "size": 3},
    split_seeds=dict(_SHAPES_SPLITS),
    split_sizes=dict(_SHAPES_SIZES),
    tasks=("box", "random", "sr", "blur"),
    model="shapes-unet",
    guidance_classifier="shapes-classifier",
    eval_classifier="shapes-eval-classifier",
    time_predictor="shapes-time",
)

TESTBEDS: dict[str, TestBed] = {
    "gmm2d": TestBed(
        name="gmm2d",
        sample_shape=(2,),
        schedule_config={"kind": "linear", "num_train_steps": 100, "beta_start": 1e-3, "beta_end": 0.2},
        # reference-s: the fresh exact draw that the toy table scores test seed s against (reference-0 = reference)
        split_seeds={"reference": 777, "floor": 778, "classifier-test": 777, "val": 776, "tls-check": 9,
                     **{f"reference-{s}": 777 + s for s in range(5)}},
        split_sizes={"reference": 2000, "floor": 2000, "classifier-test": 2000},
        model="gmm2d-mlp",
        time_predictor="gmm2d-time",
    ),
    "digits": TestBed(
        name="digits",
        sample_shape=(1, 8, 8),
        schedule_config=_PIXEL_SCHEDULE,
        attributes=("digit",),
        attribute_classes={"digit": 10},
        split_sizes={"train": 1197, "val": 200, "test": 400, "reference": 400, "floor": 1197, "classifier-test": 400},
        tasks=("box", "random", "sr", "blur"),
        model="digits-unet",
        guidance_classifier="digits-classifier",
        eval_classifier="digits-eval-classifier",
        time_predictor="digits-time",
    ),
    "shapes": _SHAPES,
    # the shapes bed through the bundled latent model (Stable Diffusion layout: VAE 32x32 -> 4x8x8, a UNet2DConditionModel on
    # a two-token prompt table "TYPE SIZE", condition dropout for classifier-free guidance): the same images, splits, seeds,
    # attributes, tasks and classifiers as "shapes" (tasks and classifiers act on the decoded 32x32 images)
    "shapes-latent": dataclasses.replace(
        _SHAPES,
        name="shapes-latent",
        sample_shape=(4, 8, 8),
        image_shape=(1, 32, 32),
        schedule_config=_SD_SCHEDULE,
        model="shapes-latent",
        time_predictor="shapes-latent-time",
        prompt_slots=(("circle", "square", "triangle"), ("small", "medium", "large")),
    ),
    # 64x64 frame-filling mosaics (onmanifold.data.mosaic): 4x4 tiles, one shape on a gradient each;
    # the train stream is drawn from the training seed (train_diffusion's ``seed``, 0)
    "mosaic": TestBed(
        name="mosaic",
        sample_shape=(1, 64, 64),
        schedule_config=_PIXEL_SCHEDULE,
        split_seeds={"val": 1555, "test": 1777, "reference": 1777, "floor": 1778, "ground-truth-check": 1779, "classifier-test": 1780},
        split_sizes={"val": 256, "test": 256, "reference": 1000, "floor": 1000, "ground-truth-check": 1000, "classifier-test": 125},
        tasks=("box", "random", "sr", "blur"),
        model="mosaic-unet",
        eval_classifier="mosaic-eval-classifier",  # tile-level (16x16): FD over the tiles (onmanifold.evaluate.eval_classifier)
    ),
}


def get_testbed(name: str) -> TestBed:
    """The registered test bed ``name`` ('gmm2d', 'digits', 'shapes', 'shapes-latent', 'mosaic')."""
    if name not in TESTBEDS:
        raise ValueError(f"bed: expected one of {sorted(TESTBEDS)}, got {name!r}")
    return TESTBEDS[name]


def bed_of_model(name: str, sample_shape: tuple[int, ...] | None = None) -> str | None:
    """The test bed of a bundled model name, or guessed from a sample shape; None if unknown."""
    for bed in TESTBEDS.values():
        if name == bed.model:
            return bed.name
    for bed in TESTBEDS.values():
        if sample_shape is not None and tuple(sample_shape) == bed.sample_shape:
            return bed.name
    return None
