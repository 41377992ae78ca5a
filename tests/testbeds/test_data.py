"""Test beds: the fixed digits split, the gmm2d law, the shapes generator and its nearest-valid-shape fit."""

import numpy as np
import pytest
import torch

from onmanifold.data.digits import SPLIT_SIZES, load_digits_split, split_indices
from onmanifold.data.gmm2d import sample_gmm2d
from onmanifold.data.shapes import HALF_EXTENTS, ShapeParams, fit_shapes, render_shapes, sample_shapes


def test_digits_split_is_fixed_disjoint_and_complete():
    parts = {k: split_indices(k) for k in ("train", "val", "heldout")}
    assert {k: len(v) for k, v in parts.items()} == SPLIT_SIZES
    allidx = np.concatenate(list(parts.values()))
    assert len(set(allidx.tolist())) == 1797
    # the split is written down: its first indices never change
    assert parts["heldout"][:5].tolist() == split_indices("heldout")[:5].tolist()
    x, y = load_digits_split("heldout")
    assert x.shape == (400, 1, 8, 8) and x.min() >= -1 and x.max() <= 1 and y.shape == (400,)
    with pytest.raises(ValueError, match="split"):
        split_indices("test")


def test_gmm2d_moments():
    x = sample_gmm2d(20000, torch.Generator().manual_seed(0))
    assert abs(float((x[:, 0] > 0).float().mean()) - 0.5) < 0.02
    pos = x[x[:, 0] > 0]
    assert torch.allclose(pos.mean(0), torch.tensor([10.0, 10.0]), atol=0.05)
    assert torch.allclose(pos.std(0), torch.tensor([1.0, 1.0]), atol=0.05)


@pytest.fixture(scope="module")
def clean():
    return sample_shapes(300, torch.Generator().manual_seed(3))


def test_fit_recovers_clean_shapes_with_empty_mask(clean):
    x, p = clean
    f = fit_shapes(x)
    assert torch.equal(f.params.type, p.type) and torch.equal(f.params.size, p.size)
    assert torch.equal(f.params.cy, p.cy) and torch.equal(f.params.cx, p.cx)
    assert torch.allclose(f.params.amplitude, p.amplitude, atol=1e-4)
    assert not f.mask.any() and not f.has_artifact.any()
    assert float(f.rmse.max()) < 1e-4


def test_fit_tolerates_small_noise(clean):
    x, p = clean
    noisy = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    f = fit_shapes(noisy)
    assert (f.params.type == p.type).float().mean() == 1.0
    assert f.has_artifact.float().mean() < 0.01


@pytest.mark.parametrize("kind", ["blob", "hole", "stripe"])
def test_fit_finds_planted_defects(clean, kind):
    x, _ = clean
    x = x[:50].clone()
    truth = torch.zeros_like(x, dtype=torch.bool)
    g = torch.Generator().manual_seed(1)
    for i in range(x.shape[0]):
        if kind == "blob":  # a bright 3x3 blob in a background corner
            y0, x0 = [int(v) for v in torch.randint(0, 3, (2,), generator=g)]
            x[i, 0, y0 : y0 + 3, x0 : x0 + 3] = 0.8
            truth[i, 0, y0 : y0 + 3, x0 : x0 + 3] = True
        elif kind == "hole":  # a dark 3x3 hole in the middle of the shape is found when it lands on the shape
            f0 = fit_shapes(x[i : i + 1])
            cy, cx = int(f0.params.cy), int(f0.params.cx)
            x[i, 0, cy - 1 : cy + 2, cx - 1 : cx + 2] = -1.0
            truth[i, 0, cy - 1 : cy + 2, cx - 1 : cx + 2] = True
        else:  # a 1-px grey stripe along the bottom row
            x[i, 0, 31, 4:20] = 0.5
            truth[i, 0, 31, 4:20] = True
    f = fit_shapes(x)
    assert f.has_artifact.all()
    inter = (f.mask & truth).flatten(1).sum(1).float()
    union = (f.mask | truth).flatten(1).sum(1).float()
    assert float((inter / union).mean()) > 0.8


def test_render_and_fit_reject_bad_input():
    p = ShapeParams(torch.tensor([0]), torch.tensor([2]), torch.tensor([3]), torch.tensor([16]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="centre"):
        render_shapes(p)
    with pytest.raises(ValueError, match="x: expected shape"):
        fit_shapes(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        fit_shapes(torch.full((1, 1, 32, 32), float("nan")))
    assert max(HALF_EXTENTS) < 16
