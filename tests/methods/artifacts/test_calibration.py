"""ASCED's window calibration (docs/methods/asced.md#C1): curves and the chosen window on planted flag maps."""

import pytest
import torch

from onmanifold.artifacts.calibration import calibrate_window


def _planted(b=6, steps=25, h=16, w=16, artifact_steps=range(5, 9), seed=0):
    """Pair ``artifact_steps[k]`` flags column ``k`` of G (so only the whole window covers G); elsewhere a random 5 %
    of the pixels outside G."""
    g = torch.zeros(b, h, w, dtype=torch.bool)
    g[:3, 4:8, 4:8] = True  # three images with a 4x4 artifact, three clean
    gen = torch.Generator().manual_seed(seed)
    maps = (torch.rand(b, steps - 1, h, w, generator=gen) < 0.05) & ~g[:, None]
    for k, n in enumerate(artifact_steps):
        column = torch.zeros_like(g)
        column[:, :, 4 + k] = True
        maps[:, n - 1] = g & column
    return maps, g


def test_window_is_the_planted_steps_and_curves_are_exact():
    maps, g = _planted()
    cal = calibrate_window(maps, g)
    assert (cal.n_d, cal.n_c) == (4, 9)  # pairs 4 < n < 9, i.e. n = 5 .. 8
    assert cal.tpr == 1.0 and cal.fpr == 0.0 and cal.youden == 1.0
    assert cal.fractions == (4 / 25, 9 / 25) and round(cal.fractions[1] * 25) == 9
    for n in range(1, 25):
        expected_in = 0.25 if n in range(5, 9) else 0.0
        assert cal.flag_rate_inside[n - 1] == expected_in
        hits = int((maps[:, n - 1] & ~g).sum())
        assert cal.flag_rate_outside[n - 1] == pytest.approx(hits / int((~g).sum()), abs=0)
    # clean images are flagged only by the random 5 %; images with an artifact also at the planted steps
    assert cal.flag_rate_positive_images[6] > cal.flag_rate_negative_images[6]
    assert set(cal.phases) >= {"n_1", "n_c", "n_2", "n_peak", "f_max"}
    assert cal.to_dict()["tc_frac"] == 9 / 25


def test_window_moves_with_the_model():
    maps, g = _planted(artifact_steps=range(14, 18))
    cal = calibrate_window(maps, g)
    assert (cal.n_d, cal.n_c) == (13, 18)


def test_bad_input_is_refused():
    maps, g = _planted()
    with pytest.raises(ValueError, match="gt_masks: no ground-truth artifact"):
        calibrate_window(maps, torch.zeros_like(g))
    with pytest.raises(ValueError, match="gt_masks: expected a bool tensor"):
        calibrate_window(maps, g[:2])
    with pytest.raises(ValueError, match="flag_maps"):
        calibrate_window(maps.float(), g)
    with pytest.raises(ValueError, match="flag_maps: expected at least 2 step pairs"):
        calibrate_window(maps[:, :1], g)
