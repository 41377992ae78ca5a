"""ASCED's image operations (onmanifold.artifacts.image_ops): small exact tests against scipy / numpy references."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from onmanifold.artifacts.image_ops import (
    ROBUST_SCALE,
    dilate_mask,
    filter_components,
    full_blocks,
    gaussian_blur_reflect,
    gaussian_kernel_1d,
    open_mask,
    reflect_indices,
    robust_median_mad,
    robust_threshold,
)


def test_kernel_and_reflect_indices_by_hand():
    k = gaussian_kernel_1d(0.5)  # radius int(2.5) = 2: exp(-2 x^2) normalised
    phi = np.exp(-2.0 * np.arange(-2, 3) ** 2)
    assert k.dtype == torch.float64 and np.array_equal(k.numpy(), phi / phi.sum())
    # scipy 'reflect' repeats the edge sample: d c b a | a b c d | d c b a, periodic beyond
    assert reflect_indices(4, 4).tolist() == [3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0]
    assert reflect_indices(2, 5).tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1]  # a a b b a | a b | b a a b b
    with pytest.raises(ValueError, match="sigma"):
        gaussian_kernel_1d(0.0)


@pytest.mark.parametrize("sigma, blur_channels", [(0.5, False), (2.0, True), (9.0, False)])  # radius 36 > 8: periodic reflection
def test_blur_matches_scipy_reflect(sigma, blur_channels):
    d = torch.rand(2, 3, 8, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = gaussian_blur_reflect(d, sigma, blur_channels)
    ref = np.stack([ndimage.gaussian_filter(d[b].numpy(), (sigma if blur_channels else 0, sigma, sigma), mode="reflect", truncate=4.0)
                    for b in range(2)])
    assert np.allclose(got.numpy(), ref, rtol=0, atol=1e-12)
    assert gaussian_blur_reflect(d, 0.0) is d
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur_reflect(d, -1.0)


def test_median_mad_and_threshold_are_per_sample_and_interpolating():
    d = torch.tensor([[1.0, 2.0, 4.0, 10.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    med, mad = robust_median_mad(d)
    assert med.tolist() == [3.0, 0.0]  # (2 + 4) / 2, numpy's median, not torch.median's lower middle value 2
    assert mad.tolist() == [np.median(np.abs(np.array([1, 2, 4, 10]) - 3.0)), 0.0]  # |d - 3| = 2 1 1 7 -> 1.5
    thr, med2, mad2 = robust_threshold(d, 3.0, 1.0)
    assert thr.tolist() == [3.0 + 3.0 * ROBUST_SCALE * 1.5, 1.0]  # the floor a_min where mad = 0
    assert torch.equal(med2, med) and torch.equal(mad2, mad)


def test_full_blocks_and_opening():
    m = torch.zeros(1, 5, 6, dtype=torch.bool)
    m[0, 1:3, 1:4] = True  # a 2x3 rectangle
    m[0, 4, 0] = True      # an isolated pixel
    fb = full_blocks(m, 2)
    assert fb.shape == (1, 4, 5) and torch.nonzero(fb[0]).tolist() == [[1, 1], [1, 2]]
    assert torch.equal(open_mask(m, 2)[0], m[0] & ~(torch.arange(5)[:, None] == 4))  # the pixel goes, the rectangle stays
    assert torch.equal(open_mask(m, 1), m)
    ref = ndimage.binary_opening(m[0].numpy(), np.ones((2, 2)))
    assert np.array_equal(open_mask(m, 2)[0].numpy(), ref)
    with pytest.raises(ValueError, match="width"):
        full_blocks(m, 0)


def test_component_filters_area_band_and_width():
    u = torch.zeros(1, 32, 32, dtype=torch.bool)
    u[0, 1, 1:3] = True                  # 2 px: area not > 2
    u[0, 5, 2:20] = True                 # 18 px streak, 1 px wide: no 2x2 block
    u[0, 10:12, 10:12] = True            # 4 px block: kept
    u[0, 20:31, 0:15] = True             # 165 px: not < 156
    u[0, 14:16, 20:22] = True            # 2x2 block plus a tail, one component: kept whole
    u[0, 16, 21:25] = True
    m = filter_components(u, 2, 156, 2)[0]
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[10:12, 10:12] = True
    expected[14:16, 20:22] = True
    expected[16, 21:25] = True
    assert torch.equal(m, expected)
    assert torch.equal(filter_components(u, 2, 156, 1)[0], expected | (u[0] & (torch.arange(32)[:, None] == 5)))
    # diagonal neighbours are separate components (4-connectivity): two 2-px pieces, each not > 2
    diag = torch.zeros(1, 4, 4, dtype=torch.bool)
    diag[0, 0, 0:2] = True
    diag[0, 1, 2:4] = True
    assert not filter_components(diag, 2, 10, 1).any() and filter_components(diag, 1, 10, 1).sum() == 4
    with pytest.raises(ValueError, match="union"):
        filter_components(u[0], 2, 156, 2)


def test_dilation_matches_scipy():
    m = torch.zeros(2, 9, 9, dtype=torch.bool)
    m[0, 4, 4] = True
    m[1, 0, 8] = True
    for r in (0, 1, 2):
        got = dilate_mask(m, r)
        for b in range(2):
            ref = ndimage.binary_dilation(m[b].numpy(), np.ones((2 * r + 1, 2 * r + 1))) if r else m[b].numpy()
            assert np.array_equal(got[b].numpy(), ref)
    assert int(dilate_mask(m, 1)[0].sum()) == 9 and int(dilate_mask(m, 1)[1].sum()) == 4  # clipped at the corner
    with pytest.raises(ValueError, match="radius"):
        dilate_mask(m, -1)
