"""ASCED's settings (onmanifold.artifacts.config): the resolution rule, the steps, and clear errors."""

import pytest

from onmanifold.artifacts import CorrectionConfig, DetectorConfig
from onmanifold.artifacts.config import correction_step
from onmanifold.sampler import DDIMSampler
from onmanifold.schedule import NoiseSchedule

SAMPLER = DDIMSampler(NoiseSchedule.linear(1000), 25, eta=0.0, spacing="linspace")


def test_for_resolution_follows_the_table():
    d32, d8, d256 = DetectorConfig.for_resolution(32), DetectorConfig.for_resolution(8), DetectorConfig.for_resolution(256)
    assert (d32.sigma, d32.area_min, d32.area_max, d32.min_width) == (0.5, 2, 156, 2)
    assert (d8.sigma, d8.area_min, d8.area_max, d8.min_width) == (0.5, 1, 10, 1)
    assert d256 == DetectorConfig()  # the defaults are the official code's 256x256 values
    assert [CorrectionConfig.for_resolution(h).dilation for h in (8, 32, 256)] == [0, 1, 5]
    assert CorrectionConfig.for_resolution(256) == CorrectionConfig()
    cf = DetectorConfig.code_faithful()
    assert cf.quantize and cf.blur_channels and cf.a_min == 0.0 and cf.k == 3.0 and cf.area_min == 100
    assert DetectorConfig.for_resolution(32, k=2.0).k == 2.0 and CorrectionConfig.for_resolution(32, eta_c=None).eta_c is None


def test_steps_fraction_and_alpha_bar_rules():
    assert DetectorConfig().window(25) == (6, 12) and CorrectionConfig().step_of(SAMPLER) == 12
    assert DetectorConfig(td_frac=0.5, tc_frac=0.5).window(25) == (12, 12)
    # the alpha_bar rule picks t = 500 (abar ~ 0.078) on the linear schedule's DDIM-25 grid
    n_d, n_c = DetectorConfig(tc_rule="alpha_bar").steps_of(SAMPLER)
    assert SAMPLER.timesteps[n_c] == 500 and (n_d, n_c) == (6, 12)
    assert CorrectionConfig(tc_rule="alpha_bar").step_of(SAMPLER) == 12
    with pytest.raises(ValueError, match="abar_of_steps"):
        correction_step(0.48, "alpha_bar", 25)


@pytest.mark.parametrize("kwargs, name", [
    ({"k": 0}, "k"), ({"sigma": -1}, "sigma"), ({"area_min": 10, "area_max": 11}, "area_max"), ({"min_width": 0}, "min_width"),
    ({"tc_frac": 1.5}, "tc_frac"), ({"td_frac": 0.6, "tc_frac": 0.5}, "td_frac"), ({"tc_rule": "late"}, "tc_rule"),
    ({"quantity": "score"}, "quantity"), ({"a_min": -1.0}, "a_min"), ({"quantize": True, "sigma": float("nan")}, "sigma"),
])
def test_bad_detector_config_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DetectorConfig(**kwargs)


@pytest.mark.parametrize("kwargs, name", [
    ({"dilation": -1}, "dilation"), ({"tc_frac": -0.1}, "tc_frac"), ({"tc_rule": "late"}, "tc_rule"), ({"gamma": float("nan")}, "gamma"),
    ({"eta_c": -0.1}, "eta_c"), ({"x0_source": "old"}, "x0_source"), ({"dilation": 1.5}, "dilation"),
])
def test_bad_correction_config_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CorrectionConfig(**kwargs)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="height"):
        DetectorConfig.for_resolution(0)
    with pytest.raises(ValueError, match="height"):
        CorrectionConfig.for_resolution(-3)
    with pytest.raises(ValueError, match="not_a_field.*DetectorConfig"):
        DetectorConfig().with_(not_a_field=1)
    with pytest.raises(ValueError, match="gamma.*CorrectionConfig"):  # a correction setting is not a detector field
        DetectorConfig().with_(gamma=0.2)
    with pytest.raises(ValueError, match="k"):
        CorrectionConfig().with_(k=2.0)
