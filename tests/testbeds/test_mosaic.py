"""The mosaic bed: deterministic rendering, an exact fit (zero residual on real mosaics), planted
artifacts flagged exactly where planted, the registry entry, bad input."""

import pytest
import torch

from onmanifold.data.mosaic import GRID, IMAGE_SIZE, TILE, MosaicParams, fit_mosaic, render_mosaic, sample_mosaic
from onmanifold.testbeds import get_testbed


@pytest.fixture(scope="module")
def real():
    return sample_mosaic(48, torch.Generator().manual_seed(11))


def test_rendering_is_deterministic_and_in_range(real):
    x, p = real
    x2, p2 = sample_mosaic(48, torch.Generator().manual_seed(11))
    assert torch.equal(x, x2) and torch.equal(render_mosaic(p), x)
    assert x.shape == (48, 1, IMAGE_SIZE, IMAGE_SIZE) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert p.type.shape == (48, GRID, GRID)
    assert (p.contrast.abs() >= 0.8 - 1e-6).all() and (p.contrast.abs() <= 1.2 + 1e-6).all()
    assert (p.background.abs() >= 0.2 - 1e-6).all() and (p.background.abs() <= 0.5 + 1e-6).all()


def test_real_mosaics_fit_exactly_and_are_never_flagged(real):
    x, p = real
    f = fit_mosaic(x)
    assert f.deviation.max() < 1e-5  # float32 rounding of the rendered image only
    for name in ("type", "size", "cy", "cx"):
        assert torch.equal(getattr(f.params, name), getattr(p, name)), name
    assert torch.allclose(f.params.contrast, p.contrast, atol=1e-5)
    assert torch.allclose(f.params.background, p.background, atol=1e-5)
    g = get_testbed("mosaic").artifact_masks(x)
    assert g.shape == (48, IMAGE_SIZE, IMAGE_SIZE) and g.dtype == torch.bool and not g.any()


def _one_circle_per_tile(n: int) -> MosaicParams:
    full = lambda v, dt=torch.float32: torch.full((n, GRID, GRID), v, dtype=dt)  # noqa: E731
    return MosaicParams(full(0, torch.long), full(0, torch.long), full(7, torch.long), full(8, torch.long),
                        full(0.8), full(-0.3), full(0.1), full(-0.05))


def test_planted_blob_is_flagged_exactly_where_planted():
    x = render_mosaic(_one_circle_per_tile(2))
    y = x.clone()
    r0, c0 = 2 * TILE + 1, 1 * TILE + 11  # tile (2, 1), a 4x4 blob right of its circle
    y[1, 0, r0 : r0 + 4, c0 : c0 + 4] += 1.0
    g = get_testbed("mosaic").artifact_masks(y)
    want = torch.zeros_like(g)
    want[1, r0 : r0 + 4, c0 : c0 + 4] = True
    assert torch.equal(g, want)


def test_missing_object_is_flagged_on_the_object():
    p = _one_circle_per_tile(1)
    x = render_mosaic(p)
    p.contrast[0, 0, 3] = 0.0  # tile (0, 3) loses its object: not a valid mosaic (|a| >= 0.8)
    g = get_testbed("mosaic").artifact_masks(render_mosaic(p))
    # the nearest valid tile holds the least visible object (a small triangle at |a| = 0.8): its core is flagged
    assert g[0, :TILE, 3 * TILE :].sum() >= 8 and not g[0, :, : 3 * TILE].any() and not g[0, TILE:].any()
    assert not get_testbed("mosaic").artifact_masks(x).any()


def test_registry_entry():
    bed = get_testbed("mosaic")
    assert bed.sample_shape == (1, IMAGE_SIZE, IMAGE_SIZE) and bed.model == "mosaic-unet"
    x, labels = bed.images("val", 4)
    assert x.shape == (4, 1, IMAGE_SIZE, IMAGE_SIZE) and labels is None
    assert torch.equal(x, bed.images("val", 4)[0])
    assert not torch.equal(x, bed.images("test", 4)[0])
    for split in ("test", "reference", "floor", "ground-truth-check"):
        assert bed.images(split, 2)[0].shape == (2, 1, IMAGE_SIZE, IMAGE_SIZE)
    op = bed.make_task("box", 3, 0)
    assert op(x[:3]).shape == (3, 1, IMAGE_SIZE, IMAGE_SIZE)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="x: expected"):
        fit_mosaic(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="x: expected"):
        get_testbed("mosaic").artifact_masks(torch.zeros(2, 64, 64))
    with pytest.raises(ValueError, match="x: contains NaN"):
        fit_mosaic(torch.full((1, 1, 64, 64), float("nan")))
    with pytest.raises(ValueError, match="n: expected"):
        sample_mosaic(0)
    p = _one_circle_per_tile(1)
    p.cy[0, 0, 0] = 0
    with pytest.raises(ValueError, match="params: tile 0"):
        render_mosaic(p)
