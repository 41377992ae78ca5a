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


def test_tiles_and_the_tile_evaluation_classifier():
    """FD on mosaic is over tiles: ``split_tiles`` is image-major, row-major; the bundled tile classifier reads type and
    size per tile; ``feature_rows`` gives one row per tile."""
    import pytest
    import torch

    from onmanifold.data.mosaic import sample_mosaic, split_tiles, tile_labels
    from onmanifold.evaluate import TiledFeatures, eval_classifier, feature_rows
    from onmanifold.metrics import classifier_features
    from onmanifold.train import train_classifier

    x, p = sample_mosaic(3, torch.Generator().manual_seed(5))
    tiles = split_tiles(x)
    assert tiles.shape == (48, 1, 16, 16)
    assert torch.equal(tiles[16 + 4 * 2 + 3], x[1, :, 32:48, 48:64])  # image 1, tile row 2, column 3
    labels = tile_labels(p)
    assert torch.equal(labels[16 + 4 * 2 + 3], torch.stack([p.type[1, 2, 3], p.size[1, 2, 3]]).long())
    clf = eval_classifier("mosaic")
    assert isinstance(clf, TiledFeatures)
    with torch.no_grad():
        type_logits, size_logits = clf(x)
    assert torch.equal(type_logits.argmax(1), labels[:, 0]) and torch.equal(size_logits.argmax(1), labels[:, 1])
    f = classifier_features(clf, x)
    assert f.shape == (3, 16 * clf.classifier.feature_dim)
    rows = feature_rows("mosaic", f)
    assert torch.allclose(rows[16 + 11], classifier_features(clf.classifier, tiles[16 + 11 : 16 + 12])[0], atol=1e-5)
    with pytest.raises(ValueError, match="x: expected a tensor of shape"):
        split_tiles(x[:, :, :32])
    with pytest.raises(ValueError, match="role: the mosaic bed has only a tile-level evaluation classifier"):
        train_classifier("mosaic", "guidance", "unused")
