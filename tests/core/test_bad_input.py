"""Bad input, one test per case of the robustness contract: a clear error naming the argument, or a documented
safe fallback — never a silent NaN."""

import pytest
import torch

from onmanifold.cli import main
from onmanifold.guidance import DiffusionPosteriorSampling, SphericalGaussianGuidance
from onmanifold.losses import MeasurementLoss
from onmanifold.model import GaussianMixtureModel
from onmanifold.nets.checkpoint import CheckpointError
from onmanifold.nets.networks import TimeMLP
from onmanifold.operators import Inpainting
from onmanifold.sampler import DDIMSampler
from onmanifold.schedule import NoiseSchedule
from onmanifold.temporal import TemporalAlignmentGuidance, TimePredictor, load_time_predictor

SCHED = NoiseSchedule.linear(100, 1e-3, 0.2)
GMM = GaussianMixtureModel(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]), 0.3, SCHED)


def _run(plugins, eta=1.0, model=GMM, n=4):
    return DDIMSampler(SCHED, 10, eta=eta).sample(model, shape=(2,), num_samples=n, seed=0, plugins=plugins)


def test_nan_or_inf_in_a_measurement():
    op = Inpainting(torch.ones(2, 1, 4, 4))
    for bad in (float("nan"), float("inf")):
        y = torch.zeros(2, 1, 4, 4)
        y[1, 0, 0, 0] = bad
        with pytest.raises(ValueError, match=r"y: .*NaN or Inf.*\[1\]"):
            MeasurementLoss(op, y)


def test_wrong_shapes():
    loss = MeasurementLoss(Inpainting(torch.ones(4, 1, 4, 4)), torch.zeros(4, 1, 2, 2))
    with pytest.raises(ValueError, match="y: shape"):
        loss(torch.zeros(4, 1, 4, 4))
    with pytest.raises(ValueError, match="x_T"):
        DDIMSampler(SCHED, 5).sample(GMM, torch.zeros(3))
    with pytest.raises(ValueError, match="masks"):
        Inpainting(torch.ones(4, 4))


def test_time_predictor_class_count_differs_from_the_schedule():
    with pytest.raises(ValueError, match="T = 100"):
        TimePredictor(TimeMLP(num_timesteps=1000), SCHED)


def test_dsg_with_a_deterministic_sampler():
    with pytest.raises(ValueError, match="eta"):
        _run([SphericalGaussianGuidance(lambda x0: x0.pow(2).sum(1), 0.2)], eta=0.0)


@pytest.mark.parametrize("make, name", [
    (lambda: SphericalGaussianGuidance(lambda x0: x0.sum(1), 1.5), "guidance_rate"),
    (lambda: SphericalGaussianGuidance(lambda x0: x0.sum(1), -0.1), "guidance_rate"),
    (lambda: TemporalAlignmentGuidance(TimePredictor(TimeMLP(num_timesteps=100), SCHED), -1.0), "omega0"),
    (lambda: TemporalAlignmentGuidance(TimePredictor(TimeMLP(num_timesteps=100), SCHED), float("inf")), "omega0"),
    (lambda: DiffusionPosteriorSampling(lambda x0: x0.sum(1), -1.0), "zeta"),
])
def test_strengths_out_of_range(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_empty_and_full_masks():
    m = torch.ones(2, 1, 4, 4)
    m[1] = 0
    with pytest.raises(ValueError, match="observe no pixel"):
        Inpainting(m)
    full = Inpainting(torch.ones(2, 1, 4, 4))  # everything observed: the loss is the plain residual
    x = torch.randn(2, 1, 4, 4)
    assert torch.equal(full(x), x)


def test_corrupt_time_predictor_checkpoint(tmp_path):
    folder = tmp_path / "phi"
    folder.mkdir()
    (folder / "onmanifold.json").write_text('{"kind": "time_predictor", "schedule": {"kind": "linear", "num_train_steps": 100, "beta_start": 0.001, "beta_end": 0.2}}')
    (folder / "config.json").write_text('{"class": "TimeMLP", "kwargs": {}}')
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="phi"):
        load_time_predictor(folder)
    with pytest.raises(CheckpointError):
        load_time_predictor(tmp_path / "missing")


def test_model_returning_nan_mid_trajectory_stops_and_names_the_step():
    calls = []

    def model(x, t, c=None):
        calls.append(1)
        out = GMM(x, t)
        return out * float("nan") if len(calls) == 4 else out

    with pytest.raises(FloatingPointError, match=r"step 3 of 10"):
        _run([], model=model)


def test_zero_gradients_are_a_safe_no_op():
    zero = lambda x0: (x0 * 0).sum(1)  # noqa: E731  (gradient exactly zero)
    base = _run([])
    assert torch.equal(_run([DiffusionPosteriorSampling(zero, 1.0)]), base)

    class Flat(torch.nn.Module):  # constant logits: the time-linked score is exactly zero
        num_timesteps = 100

        def forward(self, x, cond=None):
            return x.sum(1, keepdim=True) * 0 + torch.zeros(x.shape[0], 100)

    assert torch.equal(_run([TemporalAlignmentGuidance(Flat(), 5.0)]), base)
    out = _run([SphericalGaussianGuidance(zero, 0.5)])  # DSG falls back to the plain step (documented)
    assert torch.isfinite(out).all()


def test_cli_names_the_bad_option(capsys):
    assert main(["sample", "digits-unet", "--method", "dsg", "--task", "box", "--guidance-rate", "2", "-n", "2", "--no-progress"]) == 2
    assert "guidance_rate" in capsys.readouterr().err
