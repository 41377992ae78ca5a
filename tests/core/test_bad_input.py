"""Bad input: a clear error naming the argument, or a documented safe fallback — never a silent NaN, a
traceback or a silent no-op.

The battery runs every case of the robustness contract: on the command line (in process, through
``onmanifold.cli.main``) each bad input ends with exit code 2 and one line on stderr naming the
option; in the Python API each raises its documented exception naming the argument.
"""

import json
import shutil

import pytest
import torch

from onmanifold.cli import main
from onmanifold.guidance import DiffusionPosteriorSampling, SphericalGaussianGuidance
from onmanifold.losses import MeasurementLoss
from onmanifold.model import GaussianMixtureModel
from onmanifold.nets.checkpoint import BUNDLED_DIR, CheckpointError
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


# ---------------------------------------------------------------------------------------------- the battery
# Files the cases refer to, made once per test session.


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad-input")
    a_file = d / "a-file"
    a_file.write_text("x")
    torch.save([1, 2, 3], d / "list.pt")

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {d / 'pwned'}",))

    import pickle

    (d / "pickled.pt").write_bytes(pickle.dumps(Payload()))
    nan = torch.zeros(8, 1, 8, 8)
    nan[3, 0, 2, 2] = float("nan")
    torch.save(nan, d / "nan.pt")
    torch.save(torch.zeros(8, 1, 16, 16), d / "16x16.pt")
    torch.save(torch.zeros(8, 8, 8, 1, dtype=torch.uint8), d / "uint8.pt")  # channels last
    torch.save(torch.full((8, 1, 8, 8), 300.0), d / "0-255.pt")  # beyond [0, 255]
    torch.save(torch.full((8, 1, 8, 8), 0.5), d / "0-1.pt")  # [0, 1]: ambiguous, refused
    torch.save(torch.zeros(2, 1, 8, 8), d / "two.pt")
    string_config = d / "string-config"
    string_config.mkdir()
    (string_config / "config.json").write_text('"google/ddpm-cifar10-32"')
    (string_config / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (string_config / "scheduler_config.json").write_text("{}")
    other_T = d / "other-T"
    shutil.copytree(BUNDLED_DIR / "digits-unet", other_T)
    cfg = json.loads((other_T / "scheduler" / "scheduler_config.json").read_text())
    (other_T / "scheduler" / "scheduler_config.json").write_text(json.dumps({**cfg, "num_train_timesteps": 500}))
    list_meta = d / "list-meta"
    shutil.copytree(BUNDLED_DIR / "gmm2d-mlp", list_meta)
    (list_meta / "onmanifold.json").write_text("[1, 2]")
    return {"dir": d, "file": a_file, "list": d / "list.pt", "pickled": d / "pickled.pt", "nan": d / "nan.pt", "x16": d / "16x16.pt",
            "uint8": d / "uint8.pt", "x0_255": d / "0-255.pt", "two": d / "two.pt", "x0_1": d / "0-1.pt", "string_config": string_config, "other_T": other_T,
            "list_meta": list_meta}


BOX = ["sample", "digits-unet", "--method", "dps", "--task", "box", "-n", "4", "--steps", "5", "--eta", "1", "--no-progress"]
GMM_SAMPLE = ["sample", "gmm2d-mlp", "--steps", "5", "-n", "4", "--no-progress"]

# (id, argv with {name} placeholders for the files above, the option the one-line message must name)
CLI_CASES = [
    ("images-missing", BOX + ["--images", "{dir}/missing.pt"], "--images"),
    ("images-pickled-code", BOX + ["--images", "{pickled}"], "--images"),
    ("images-not-a-tensor", BOX + ["--images", "{list}"], "--images"),
    ("images-not-a-torch-file", BOX + ["--images", "{file}"], "--images"),
    ("images-nan", BOX + ["--images", "{nan}"], "--images"),
    ("images-16x16-for-8x8", BOX + ["--images", "{x16}"], "--images"),
    ("images-channels-last", BOX + ["--images", "{uint8}"], "--images"),
    ("images-above-255", BOX + ["--images", "{x0_255}"], "--images"),
    ("images-in-0-1", BOX + ["--images", "{x0_1}"], "--images"),
    ("images-too-few", BOX + ["--images", "{two}"], "--images"),
    ("images-with-label-task", ["sample", "digits-unet", "--method", "dps", "--task", "label", "--images", "{two}"], "--images"),
    ("out-is-a-file", GMM_SAMPLE + ["--out", "{file}"], "--out"),
    ("out-under-a-file", GMM_SAMPLE + ["--out", "{file}/sub"], "--out"),
    ("n-absurd", ["sample", "gmm2d-mlp", "-n", "100000000000", "--out", "{dir}/o"], "--num-samples"),
    ("n-zero", ["sample", "gmm2d-mlp", "-n", "0"], "--num-samples"),
    ("n-negative", ["sample", "gmm2d-mlp", "-n", "-5"], "--num-samples"),
    ("zeta-without-method", ["sample", "gmm2d-mlp", "--zeta", "3"], "--zeta"),
    ("task-without-method", ["sample", "digits-unet", "--task", "box"], "--task"),
    ("method-without-task", ["sample", "digits-unet", "--method", "dps"], "--task"),
    ("guidance-rate-with-dps", ["sample", "digits-unet", "--method", "dps", "--task", "box", "--guidance-rate", "0.3"], "--guidance-rate"),
    ("interval-without-method", ["sample", "digits-unet", "--interval", "2"], "--interval"),
    ("zeta-with-dsg", ["sample", "digits-unet", "--method", "dsg", "--task", "box", "--zeta", "0.5"], "--zeta"),
    ("sigma-y-with-label", ["sample", "digits-unet", "--method", "dps", "--task", "label", "--sigma-y", "0.1"], "--sigma-y"),
    ("target-without-label", ["sample", "digits-unet", "--method", "dps", "--task", "box", "--target", "3"], "--target"),
    ("target-out-of-range", ["sample", "digits-unet", "--method", "dps", "--task", "label", "--target", "12", "-n", "2", "--out", "{dir}/t"],
     "--target"),
    ("eta-5", GMM_SAMPLE + ["--eta", "5", "--out", "{dir}/o"], "--eta"),
    ("eta-negative", GMM_SAMPLE + ["--eta", "-1", "--out", "{dir}/o"], "--eta"),
    ("steps-zero", ["sample", "gmm2d-mlp", "--steps", "0"], "--steps"),
    ("steps-above-T", ["sample", "gmm2d-mlp", "--steps", "500", "--out", "{dir}/o"], "--steps"),
    ("steps-not-a-number", ["sample", "gmm2d-mlp", "--steps", "x"], "--steps"),
    ("batch-size-zero", ["sample", "gmm2d-mlp", "--batch-size", "0"], "--batch-size"),
    ("micro-batch-negative", ["sample", "gmm2d-mlp", "--micro-batch", "-1"], "--micro-batch"),
    ("seed-negative", ["sample", "gmm2d-mlp", "--seed", "-1"], "--seed"),
    ("sigma-y-negative", ["sample", "digits-unet", "--method", "dps", "--task", "box", "--sigma-y", "-1"], "--sigma-y"),
    ("sigma-y-nan", ["sample", "digits-unet", "--method", "dps", "--task", "box", "--sigma-y", "nan"], "--sigma-y"),
    ("guidance-rate-2", ["sample", "digits-unet", "--method", "dsg", "--task", "box", "--eta", "1", "--guidance-rate", "2", "-n", "2",
                         "--out", "{dir}/o"], "--guidance-rate"),
    ("zeta-negative", BOX + ["--zeta", "-1", "--out", "{dir}/o"], "--zeta"),
    ("dsg-interval-guides-no-step", ["sample", "digits-unet", "--method", "dsg", "--task", "box", "--eta", "1", "--steps", "10",
                                     "--interval", "10", "-n", "2", "--out", "{dir}/o", "--no-progress"], "--interval"),
    ("dsg-deterministic", ["sample", "digits-unet", "--method", "dsg", "--task", "box", "--eta", "0", "-n", "2", "--out", "{dir}/o"], "--eta: DSG"),
    ("no-clamp-without-range", GMM_SAMPLE + ["--no-clamp", "--out", "{dir}/o"], "--no-clamp"),
    ("method-unknown", ["sample", "gmm2d-mlp", "--method", "nope"], "--method"),
    ("model-unknown", ["sample", "nope", "--out", "{dir}/o"], "'nope'"),
    ("model-config-holds-a-string", ["sample", "{string_config}", "--out", "{dir}/o"], "config.json"),
    ("model-scheduler-T-differs", ["sample", "{other_T}", "--out", "{dir}/o"], "scheduler_config.json"),
    ("model-metadata-not-an-object", ["sample", "{list_meta}", "--out", "{dir}/o"], "onmanifold.json"),
    ("train-classifier-batch-size-0", ["train", "classifier", "--bed", "digits", "--role", "guidance", "--out", "{dir}/c", "--batch-size", "0"],
     "--batch-size"),
    ("train-classifier-steps-0", ["train", "classifier", "--bed", "digits", "--role", "eval", "--out", "{dir}/c", "--steps", "0"], "--steps"),
    ("train-diffusion-unet-channels-for-gmm2d", ["train", "diffusion", "--bed", "gmm2d", "--out", "{dir}/d", "--block-out-channels", "32", "64"],
     "--block-out-channels"),
    ("train-diffusion-unet-channels-wrong", ["train", "diffusion", "--bed", "digits", "--out", "{dir}/d", "--block-out-channels", "30", "64"],
     "--block-out-channels"),
    ("train-diffusion-save-every-negative", ["train", "diffusion", "--bed", "gmm2d", "--out", "{dir}/d", "--save-every", "-1"], "--save-every"),
    ("train-diffusion-ema-decay-1.5", ["train", "diffusion", "--bed", "gmm2d", "--out", "{dir}/d", "--ema-decay", "1.5"], "--ema-decay"),
    ("train-time-predictor-lr-0", ["train", "time-predictor", "--bed", "gmm2d", "--out", "{dir}/p", "--lr", "0"], "--lr"),
    ("train-threads-negative", ["train", "classifier", "--bed", "digits", "--role", "eval", "--out", "{dir}/c", "--threads", "-2"], "--threads"),
    ("train-out-is-a-file", ["train", "classifier", "--bed", "digits", "--role", "eval", "--out", "{file}"], "--out"),
    ("report-missing-dir", ["report", "{dir}/no-run"], "RUN_DIR"),
    ("demo-zero-samples", ["demo", "--dsg-samples", "0", "--out", "{dir}/demo"], "--dsg-samples"),
    ("demo-out-is-a-file", ["demo", "--out", "{file}"], "--out"),
    ("bench-unknown-suite", ["bench", "nosuch"], "suite"),
    ("bench-only-malformed", ["bench", "dsg", "--quick", "--only", "method", "--run-dir", "{dir}/r"], "--only"),
    ("bench-run-dir-is-a-file", ["bench", "dsg", "--run-dir", "{file}"], "--run-dir"),
]


def test_the_battery_has_at_least_40_command_line_cases():
    assert len(CLI_CASES) >= 40 and len({c[0] for c in CLI_CASES}) == len(CLI_CASES)


@pytest.mark.parametrize("argv, option", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_command_line_bad_input_is_one_line_naming_the_option(argv, option, files, capsys):
    argv = [a.format(**files) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors (a value of the wrong type, an unknown choice)
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error:" in lines[0], err
    assert option in lines[0], lines[0]
    assert "Traceback" not in err
    assert not (files["dir"] / "pwned").exists()  # nothing was unpickled
    assert not (files["dir"] / "c").exists() and not (files["dir"] / "d").exists()  # a refused training leaves no folder behind


# Python API: (id, callable, exception type, text the message must contain)


def _digits_time_on_shapes():
    from onmanifold.testbeds import get_testbed

    phi = load_time_predictor("digits-time")
    zero_eps = lambda x, t, c=None: torch.zeros_like(x)  # noqa: E731
    sampler = DDIMSampler(get_testbed("shapes").schedule(), 3, eta=1.0)
    sampler.sample(zero_eps, shape=(1, 32, 32), num_samples=2, plugins=[TemporalAlignmentGuidance(phi, 1.0)])


def _x_T_16x16_for_the_8x8_unet():
    from onmanifold.model import load_diffusion_model

    loaded = load_diffusion_model("digits-unet")
    DDIMSampler(loaded.schedule, 3).sample(loaded.model, torch.zeros(2, 1, 16, 16))


def _load(folder_key):
    def run(files):
        from onmanifold.model import load_diffusion_model

        load_diffusion_model(files[folder_key])

    return run


def _train_classifier(**kw):
    def run(files):
        from onmanifold.train import train_classifier

        train_classifier("digits", "guidance", files["dir"] / "api-c", **kw)

    return run


API_CASES = [
    ("eta-5", lambda f: DDIMSampler(SCHED, 10, eta=5.0), ValueError, "eta"),
    ("eta-True", lambda f: DDIMSampler(SCHED, 10, eta=True), ValueError, "eta"),
    ("guidance-rate-True", lambda f: SphericalGaussianGuidance(lambda x0: x0.sum(1), True), ValueError, "guidance_rate"),
    ("zeta-True", lambda f: DiffusionPosteriorSampling(lambda x0: x0.sum(1), True), ValueError, "zeta"),
    ("dsg-interval-guides-no-step", lambda f: _run([SphericalGaussianGuidance(lambda x0: x0.sum(1), 0.2, interval=10)]), ValueError, "interval"),
    ("time-predictor-of-another-bed", lambda f: _digits_time_on_shapes(), ValueError, "time predictor: trained on samples of shape (1, 8, 8)"),
    ("x_T-16x16-for-8x8-model", lambda f: _x_T_16x16_for_the_8x8_unet(), ValueError, "x_T"),
    ("config-holds-a-string", _load("string_config"), CheckpointError, "config.json must hold a JSON object"),
    ("scheduler-T-differs", _load("other_T"), CheckpointError, "scheduler_config.json has num_train_timesteps = 500"),
    ("metadata-not-an-object", _load("list_meta"), CheckpointError, "onmanifold.json must hold a JSON object"),
    ("train-classifier-batch-size-0", _train_classifier(batch_size=0), ValueError, "batch_size"),
    ("train-classifier-steps-0", _train_classifier(steps=0), ValueError, "steps"),
    ("train-classifier-lr-nan", _train_classifier(lr=float("nan")), ValueError, "lr"),
    ("tensors-pickled-code", lambda f: __import__("onmanifold.io").io.load_tensors(f["pickled"], "path"), ValueError, "not a file of tensors"),
]


@pytest.mark.parametrize("run, error, text", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_python_api_bad_input_names_the_argument(run, error, text, files):
    with pytest.raises(error) as e:
        run(files)
    assert text in str(e.value)


def test_dsg_with_the_largest_interval_that_guides_a_step_still_guides():
    """k = N - 1 guides step i = N - 1 only: accepted, and the samples differ from unguided ones (no silent no-op)."""
    loss = lambda x0: (x0 - 3).pow(2).sum(1)  # noqa: E731
    base = _run([])
    assert not torch.equal(_run([SphericalGaussianGuidance(loss, 0.5, interval=9)]), base)


# The user's own data and problems (issue 15): one line naming the option, exit code 2, nothing written.


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    from onmanifold.userdata import write_image_folder

    d = tmp_path_factory.mktemp("user-data")
    (d / "empty").mkdir()
    write_image_folder(torch.zeros(2, 1, 8, 8), d / "mixed", prefix="a")
    write_image_folder(torch.zeros(1, 1, 12, 12), d / "mixed", prefix="b")
    write_image_folder(torch.zeros(12, 1, 8, 8), d / "digits8")
    write_image_folder(torch.ones(1, 1, 16, 16), d / "mask16")
    torch.save(torch.zeros(12, 8, 8, 1), d / "channels-last.pt")
    return {"dir": d, "empty": d / "empty", "mixed": d / "mixed", "digits8": d / "digits8", "mask16": d / "mask16" / "00000.png",
            "channels_last": d / "channels-last.pt"}


OPERATOR = ["sample", "digits-unet", "--method", "dsg", "--eta", "1", "--steps", "3", "-n", "2", "--no-progress"]
USER_CASES = [
    ("train-data-empty-folder", ["train", "diffusion", "--data", "{empty}"], "--data"),
    ("train-data-mixed-sizes", ["train", "diffusion", "--data", "{mixed}"], "--data"),
    ("train-data-channels-last", ["train", "classifier", "--role", "eval", "--data", "{channels_last}", "--labels", "{channels_last}"], "--data"),
    ("train-data-and-bed", ["train", "diffusion", "--bed", "digits", "--data", "{digits8}"], "--data"),
    ("train-resize-without-data", ["train", "diffusion", "--bed", "digits", "--resize", "8"], "--resize"),
    ("train-time-predictor-data-without-model", ["train", "time-predictor", "--data", "{digits8}"], "--model"),
    ("train-time-predictor-data-of-another-size", ["train", "time-predictor", "--data", "{digits8}", "--model", "shapes-unet"], "--data"),
    ("train-classifier-data-without-labels", ["train", "classifier", "--role", "eval", "--data", "{digits8}"], "--labels"),
    ("sample-mask-size-mismatch", OPERATOR + ["--operator", "inpaint", "--mask", "{mask16}", "--images", "{digits8}"], "--mask"),
    ("sample-mask-without-inpaint", OPERATOR + ["--operator", "sr:2", "--mask", "{mask16}", "--images", "{digits8}"], "--mask"),
    ("sample-operator-unknown", OPERATOR + ["--operator", "warp:3", "--images", "{digits8}"], "--operator"),
    ("sample-operator-sr-factor-3-on-8x8", OPERATOR + ["--operator", "sr:3", "--images", "{digits8}"], "--operator"),
    ("sample-operator-without-y", OPERATOR + ["--operator", "sr:2"], "--images"),
    ("sample-operator-and-task", OPERATOR + ["--operator", "sr:2", "--task", "sr", "--images", "{digits8}"], "--operator"),
    ("sample-images-of-another-size", OPERATOR + ["--operator", "sr:2", "--images", "{mask16}"], "--images"),
    ("sample-methods-dps-and-dsg", ["sample", "digits-unet", "--method", "dps,dsg", "--task", "box"], "--method"),
    ("sample-method-unknown", ["sample", "digits-unet", "--method", "dsg,magic", "--task", "box"], "--method"),
    ("sample-predictor-of-another-model", ["sample", "gmm2d-mlp", "--method", "tag", "--time-predictor", "digits-time"], "--time-predictor"),
    ("sample-predictor-missing", ["sample", "digits-unet", "--method", "tag", "--time-predictor", "{dir}/none"], "--time-predictor"),
    ("sample-omega0-without-tag", ["sample", "digits-unet", "--omega0", "2"], "--omega0"),
    ("sample-asced-k-without-asced", ["sample", "digits-unet", "--method", "tag", "--asced-k", "2"], "--asced-k"),
    ("sample-asced-k-negative", ["sample", "digits-unet", "--method", "asced", "--asced-k", "-1"], "--asced-k"),
    ("sample-device-unavailable", ["sample", "digits-unet", "--device", "cuda:7"], "--device"),
]


@pytest.mark.parametrize("argv, option", [c[1:] for c in USER_CASES], ids=[c[0] for c in USER_CASES])
def test_user_data_bad_input_is_one_line_naming_the_option(argv, option, user_files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [a.format(**user_files) for a in argv] + ["--out", str(out)]
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("onmanifold: --data: ")]  # the data's description
    assert code == 2, err
    assert len(lines) == 1 and "error:" in lines[0], err
    assert option in lines[0], lines[0]
    assert not out.exists()  # nothing written
