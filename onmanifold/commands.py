"""Implementations of the ``onmanifold sample`` command (kept apart from argument parsing).

Order of work, so that nothing is lost and nothing is ignored: every option is checked first (an
option that the chosen ``--method``/``--task``/``--operator`` would not use is an error, not a no-op),
then the model is loaded, the user's files (``--images``, ``--mask``, ``--measurement``,
``--time-predictor``) are read and checked against it, then the output folder is checked (creatable,
writable, room for the result), and only then are the samples drawn. The outputs are written as one
:class:`~onmanifold.io.OutputSet`: a full disk or a kill leaves the earlier set as it was.

Methods compose (``--method dsg,tag,asced``): the plugins are built in the one order the loop accepts
and that keeps every move, whatever order the option lists them in (docs/architecture.md):

    ASCED (detects, re-noises at n_c: before_model)  ->  TAG (pre placement: before_model)
      ->  DSG or DPS (the update point: DSG replaces x_prev, DPS displaces it)

At most one loss guidance (``dps`` or ``dsg``) runs; ``none`` stands alone.

Measurements: ``--task`` takes a bundled bed's inverse problem (its masks, operators and held-out
images); ``--operator inpaint|sr:FACTOR|blur:SIGMA,SIZE`` with ``--mask`` (inpainting) takes the
user's own problem at the model's size, with ``y`` from ``--measurement`` or simulated from
``--images`` (``y = A(x) + sigma_y w``, :func:`~onmanifold.operators.make_measurements`). For an
inpainting measurement given as a full image, only the observed pixels are kept (``y <- m * y``), so
the missing ones never enter the loss.

Micro-batching (``--micro-batch N``) is off by default: the network sees each batch as it comes. It
is for runs that must be bit-identical whatever ``--batch-size`` (CPU kernels pick their algorithm by
batch size, so a sample's ``eps`` can differ at float rounding between batch sizes); with it every
call is padded to exactly ``N`` rows, which costs up to ``N - 1`` padded rows per call.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

__all__ = ["run_sample", "sampler_for", "guidance_setup", "check_sample_options", "parse_methods", "parse_operator",
           "SAMPLE_DEFAULTS", "SAMPLE_OUTPUTS", "METHODS"]

SAMPLE_DEFAULTS = {"zeta": 1.0, "guidance_rate": 0.2, "interval": 1, "sigma_y": 0.05, "omega0": 1.0}
"""Values of the method options when they are not given (the CLI leaves them None to know what was given)."""

SAMPLE_OUTPUTS = ("samples.pt", "grid.png", "scatter.png", "comparison.png")
"""Files an ``onmanifold sample`` output folder may hold besides the manifest ``samples.json``, the per-sample
PNGs ``sample-NNNNN.png`` and ASCED's masks ``asced-mask-NNNNN.png`` (both listed in the manifest)."""

METHODS = ("none", "dps", "dsg", "tag", "asced")
_BUILD_ORDER = ("asced", "tag", "dsg", "dps")  # the order that keeps every move (module docstring)
_GUIDANCE = ("dps", "dsg")

# which options each method / task uses (given anywhere else, they are refused)
_METHOD_OPTIONS = {"zeta": ("dps",), "guidance_rate": ("dsg",), "interval": ("dsg",), "guidance_window": ("dps", "dsg"),
                   "time_travel": ("dps", "dsg"), "omega0": ("tag",), "time_predictor": ("tag",),
                   "asced_k": ("asced",), "asced_td_frac": ("asced",), "asced_tc_frac": ("asced",), "asced_dilation": ("asced",),
                   "asced_correction": ("asced",)}
_MEASUREMENT_TASKS = ("box", "random", "sr", "blur")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def parse_methods(text: str) -> tuple[str, ...]:
    """``"dsg,tag,asced"`` -> the methods in the order they are built (``("asced", "tag", "dsg")``); ``ValueError`` naming ``--method``."""
    parts = [p.strip().lower() for p in str(text).split(",")]
    unknown = [p for p in parts if p not in METHODS]
    if unknown:
        raise ValueError(f"--method: unknown method {unknown[0]!r}; expected a comma-separated combination of {', '.join(METHODS[1:])} (or none)")
    if len(set(parts)) != len(parts):
        raise ValueError(f"--method: {text!r} names a method twice")
    if "none" in parts:
        if len(parts) > 1:
            raise ValueError(f"--method: 'none' (no method) cannot be combined with others, got {text!r}")
        return ()
    guidance = [p for p in parts if p in _GUIDANCE]
    if len(guidance) > 1:
        raise ValueError("--method: dps and dsg are both loss guidance (both move x_prev at the update point); choose one")
    return tuple(m for m in _BUILD_ORDER if m in parts)


def parse_operator(text: str, masks=None):
    """``inpaint`` (with ``masks``), ``sr:FACTOR`` or ``blur:SIGMA,SIZE`` -> the measurement operator; ``ValueError`` naming ``--operator``."""
    from .operators import Downsample, GaussianBlur, Inpainting

    kind, _, params = str(text).partition(":")
    try:
        if kind == "inpaint" and not params:
            if masks is None:
                raise ValueError("--mask: --operator inpaint needs the masks (a PNG, a folder of PNGs or a tensor file; white = observed)")
            return Inpainting(masks)
        if kind == "sr" and params:
            return Downsample(int(params))
        if kind == "blur" and params:
            sigma, size = params.split(",")
            return GaussianBlur(float(sigma), int(size))
    except ValueError as e:
        if str(e).startswith("--mask"):
            raise
        raise ValueError(f"--operator: {text!r}: {e}") from e
    raise ValueError(f"--operator: expected inpaint, sr:FACTOR or blur:SIGMA,SIZE, got {text!r}")


def parse_guidance_window(text: str | None) -> tuple[int, int] | None:
    """``"T_LO,T_HI"`` -> ``(t_lo, t_hi)`` (checked by the plugins, docs/methods/dsg.md#D19); ``ValueError`` naming ``--guidance-window``."""
    if text is None:
        return None
    parts = str(text).split(",")
    try:
        lo, hi = (int(p.strip()) for p in parts)
    except ValueError:
        raise ValueError(f"--guidance-window: expected T_LO,T_HI (two integer training times), got {text!r}") from None
    return lo, hi


def check_sample_options(args) -> tuple[str, ...]:
    """Check the ``sample`` options before any work; ``ValueError`` naming the option otherwise. Returns the methods.

    Refuses out-of-range numbers and options the run would not use: a method's knobs without that
    method, ``--task``/``--operator`` without loss guidance (and both together), measurement options
    with label guidance, ``--mask`` without inpainting, ``--target`` without ``--task label``.
    """
    methods = parse_methods(args.method)
    if args.num_samples < 1:
        raise ValueError(f"--num-samples: expected a positive integer, got {args.num_samples}")
    if args.steps < 1:
        raise ValueError(f"--steps: expected a positive integer, got {args.steps}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    if args.micro_batch < 0:
        raise ValueError(f"--micro-batch: expected 0 (off) or a positive size, got {args.micro_batch}")
    if args.seed < 0:
        raise ValueError(f"--seed: expected an integer >= 0, got {args.seed}")
    for dest, users in _METHOD_OPTIONS.items():
        if getattr(args, dest, None) is not None and not set(users) & set(methods):
            raise ValueError(f"{_flag(dest)}: only --method {'/'.join(users)} uses it, got --method {args.method}")
    guided = [m for m in methods if m in _GUIDANCE]
    problem = args.task if args.task is not None else args.operator
    if args.task is not None and args.operator is not None:
        raise ValueError("--operator: give either --task (a bundled bed's problem) or --operator (your own), not both")
    if not guided and problem is not None:
        flag = "--task" if args.task is not None else "--operator"
        raise ValueError(f"{flag}: needs --method dps or dsg (without loss guidance nothing is guided towards the {problem} problem)")
    if guided and problem is None:
        raise ValueError(f"--task: --method {guided[0]} needs a task (box, random, sr, blur or label) or --operator")
    if args.task == "label" or problem is None:
        for dest in ("images", "sigma_y", "measurement"):
            if getattr(args, dest) is not None:
                raise ValueError(f"{_flag(dest)}: only measurement problems (--task {'/'.join(_MEASUREMENT_TASKS)} or --operator) use it")
    if args.task is not None and args.measurement is not None:
        raise ValueError("--measurement: a --task simulates its measurement from the images; give --operator to bring your own y")
    if args.mask is not None and not str(args.operator or "").startswith("inpaint"):
        raise ValueError("--mask: only --operator inpaint uses it")
    if args.operator is not None and args.images is None and args.measurement is None:
        raise ValueError("--images: --operator needs the measurement y (--measurement FILE) or the images to simulate it from (--images)")
    if args.target is not None and args.task != "label":
        raise ValueError(f"--target: only --task label uses it, got --task {args.task}")
    if args.sigma_y is not None and not (math.isfinite(args.sigma_y) and args.sigma_y >= 0):
        raise ValueError(f"--sigma-y: expected a finite value >= 0, got {args.sigma_y}")
    if args.sigma_y is not None and args.measurement is not None and args.images is None:
        raise ValueError("--sigma-y: --measurement gives y as measured; sigma_y only simulates y from --images")
    if args.omega0 is not None and not (math.isfinite(args.omega0) and args.omega0 >= 0):
        raise ValueError(f"--omega0: expected a finite strength >= 0, got {args.omega0}")
    window = parse_guidance_window(getattr(args, "guidance_window", None))
    if window is not None:
        from .guidance.steps import check_guidance_window

        check_guidance_window(window)
    if getattr(args, "time_travel", None) is not None:
        from .guidance.steps import check_time_travel

        check_time_travel(args.time_travel)
    scale = getattr(args, "guidance_scale", None)
    if scale is not None and not (math.isfinite(scale) and scale >= 0):
        raise ValueError(f"--guidance-scale: expected a finite scale >= 0, got {scale}")
    return methods


def _option(args, dest: str):
    v = getattr(args, dest, None)
    return SAMPLE_DEFAULTS[dest] if v is None else v


def sampler_for(loaded, steps: int, eta: float = 0.0, spacing: str | None = None, clamp: bool = True, micro_batch: int | None = None):
    """The sampler of ``loaded``'s own scheduler config (:meth:`~onmanifold.model.LoadedModel.sampler`: spacing, offset,
    final alpha, ``clip_sample``/thresholding, ...); ``spacing`` (``--spacing``) and ``clamp=False`` (``--no-clamp``) override it."""
    if steps > loaded.schedule.T:
        raise ValueError(f"--steps: expected at most the model's T = {loaded.schedule.T}, got {steps}")
    overrides = {} if spacing is None else {"spacing": spacing}
    if not clamp:
        overrides["clamp_x0"] = False
    if micro_batch:
        overrides["micro_batch"] = micro_batch
    return loaded.sampler(steps, eta, **overrides)


def _ground_truth(args, loaded, bed: str | None, n: int, shape: tuple[int, ...]):
    """The ``n`` images to measure: ``--images`` (a tensor file, an image or a folder; checked) or the bed's test split."""
    from .testbeds import get_testbed
    from .userdata import load_user_images

    if args.images is not None:
        truth = load_user_images(args.images, "--images").images
        if tuple(truth.shape[1:]) != tuple(shape):
            raise ValueError(f"--images: the model makes images of {' x '.join(map(str, shape))} (C x H x W), "
                             f"got {' x '.join(map(str, truth.shape[1:]))}")
        if truth.shape[0] < n:
            raise ValueError(f"--images: has {truth.shape[0]} images, fewer than --num-samples {n}")
        return truth[:n].float()
    if bed not in ("digits", "shapes", "shapes-latent", "mosaic"):
        raise ValueError("--images: a model folder of unknown data needs ground-truth images to measure")
    truth = get_testbed(bed).images("test", n)[0]
    if truth.shape[0] < n:
        raise ValueError(f"--num-samples: the {bed} test split has {truth.shape[0]} images, fewer than {n}; give --images")
    return truth


def _measurement(args, op, shape: tuple[int, ...], n: int):
    """``y`` from ``--measurement`` (a tensor file, an image or a folder), checked against ``A``'s output shape."""
    import torch

    from .operators import Inpainting
    from .userdata import load_user_images

    y = load_user_images(args.measurement, "--measurement").images
    with torch.no_grad():
        expected = tuple(op(torch.zeros(n, *shape), torch.arange(n)).shape[1:])
    if tuple(y.shape[1:]) != expected:
        raise ValueError(f"--measurement: --operator {args.operator} measures {' x '.join(map(str, expected))} per image, "
                         f"got {' x '.join(map(str, y.shape[1:]))}")
    if y.shape[0] == 1 and n > 1:
        y = y.expand(n, *y.shape[1:])
    if y.shape[0] < n:
        raise ValueError(f"--measurement: has {y.shape[0]} measurements, fewer than --num-samples {n}")
    y = y[:n].float()
    return op.masks * y if isinstance(op, Inpainting) else y  # only the observed pixels (module docstring)


def guidance_setup(args, loaded, bed: str | None, n: int):
    """``(plugin, loss, measurement, truth)`` for the loss guidance of ``--method`` (``(None, ...)`` without one).

    The problem is ``--task`` (a bundled bed's) or ``--operator`` (the user's); for a latent model the loss
    is evaluated on the decoded images (:class:`~onmanifold.losses.DecodedLoss`).
    """
    import torch

    from .guidance import DiffusionPosteriorSampling, SphericalGaussianGuidance
    from .losses import ClassifierLoss, DecodedLoss, MeasurementLoss
    from .operators import make_measurements
    from .testbeds import get_testbed

    guided = [m for m in parse_methods(args.method) if m in _GUIDANCE]
    if not guided:
        return None, None, None, None
    if len(loaded.sample_shape) != 3:
        raise ValueError(f"--task: guidance problems need an image model, got sample shape {loaded.sample_shape}")
    y = truth = None
    if args.task == "label":
        if bed not in ("digits", "shapes", "shapes-latent"):
            raise ValueError("--task label: needs a bundled guidance classifier (digits or shapes models)")
        from .evaluate import guidance_classifier

        ncls = 10 if bed == "digits" else 3
        if args.target is not None and not 0 <= args.target < ncls:
            raise ValueError(f"--target: the {bed} guidance classifier has classes 0 .. {ncls - 1}, got {args.target}")
        target = torch.full((n,), args.target) if args.target is not None else torch.arange(n) % ncls
        loss = ClassifierLoss(guidance_classifier(bed), target)
        if get_testbed(bed).data_shape != tuple(loaded.sample_shape):  # a latent bed: the classifier sees the decoded images
            loss = DecodedLoss(loss, loaded.decode)
    elif args.task is not None:
        task_bed = bed if bed is not None and args.task in get_testbed(bed).tasks else None
        if task_bed is None:
            task_bed = next((b for b in ("digits", "shapes") if get_testbed(b).sample_shape == tuple(loaded.sample_shape)), None)
        if task_bed is None:
            raise ValueError(f"--task: the bundled {args.task} problems are for the test beds' sizes; for samples of shape "
                             f"{tuple(loaded.sample_shape)} give --operator (with --mask for inpainting)")
        data_shape = get_testbed(task_bed).data_shape
        truth = _ground_truth(args, loaded, bed, n, data_shape)
        op = get_testbed(task_bed).make_task(args.task, n, seed=args.seed)
        y = make_measurements(op, truth, _option(args, "sigma_y"), seed=args.seed)
        loss = MeasurementLoss(op, y)
        if data_shape != tuple(loaded.sample_shape):  # a latent bed: the measurement is of the decoded images
            loss = DecodedLoss(loss, loaded.decode)
    else:
        from .userdata import model_image_shape

        shape = model_image_shape(loaded)
        masks = None
        if args.mask is not None:
            from .userdata import load_mask

            masks = load_mask(args.mask, n, tuple(shape[-2:]), "--mask")
        op = parse_operator(args.operator, masks)
        with torch.no_grad():  # the operator fits the model's images (e.g. a blur kernel or an sr factor that does not divide)
            try:
                op(torch.zeros(n, *shape), torch.arange(n))
            except ValueError as e:
                raise ValueError(f"--operator: {args.operator} on the model's {' x '.join(map(str, shape))} images: {e}") from e
        truth = _ground_truth(args, loaded, None, n, shape) if args.images is not None else None
        y = _measurement(args, op, shape, n) if args.measurement is not None else make_measurements(op, truth, _option(args, "sigma_y"), seed=args.seed)
        loss = MeasurementLoss(op, y)
        if tuple(shape) != tuple(loaded.sample_shape):
            loss = DecodedLoss(loss, loaded.decode)
    schedule_options = {"guidance_window": parse_guidance_window(getattr(args, "guidance_window", None)),
                        "time_travel": getattr(args, "time_travel", None) or 1}  # docs/methods/dsg.md#D19, #D20
    if guided[0] == "dps":
        plugin = DiffusionPosteriorSampling(loss, _option(args, "zeta"), **schedule_options)
    else:
        plugin = SphericalGaussianGuidance(loss, _option(args, "guidance_rate"), _option(args, "interval"), **schedule_options)
    return plugin, loss, y, truth


def _time_predictor(args, loaded):
    """TAG's predictor: ``--time-predictor`` (its binding checked against the model) or the bundled model's own."""
    from .binding import check_binding, model_binding
    from .temporal import load_time_predictor
    from .testbeds import bed_of_model

    path = args.time_predictor
    if path is None:
        bed = bed_of_model(args.model)  # by the bundled name only: a model folder of the same shape is another model
        from .testbeds import get_testbed

        path = get_testbed(bed).time_predictor if bed is not None else None
        if path is None:
            raise ValueError("--time-predictor: --method tag needs a time predictor of this model; train one with "
                             f"`onmanifold train time-predictor --model {args.model} --data YOUR_IMAGES --out FOLDER`")
    try:
        predictor = load_time_predictor(path)
    except Exception as e:  # CheckpointError or a broken folder: one line naming the option
        raise ValueError(f"--time-predictor: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    check_binding(getattr(predictor, "binding", None), model_binding(args.model, loaded), "--time-predictor")
    try:
        predictor.check_schedule(loaded.schedule, "model")
    except ValueError as e:
        raise ValueError(f"--time-predictor: {e}") from e
    expected = predictor.sample_shape
    if expected is not None and tuple(expected) != tuple(loaded.sample_shape):
        raise ValueError(f"--time-predictor: trained on samples of shape {tuple(expected)}, the model samples {tuple(loaded.sample_shape)}")
    return predictor, str(path)


def _asced(args, loaded, guided: bool):
    """ASCED at its defaults for the run's height, with the options given; the correction step keeps the sampler's
    eta when loss guidance runs (so DSG still guides it), else the configs' deterministic default."""
    from .artifacts import AbnormalScoreCorrection, CorrectionConfig, DetectorConfig

    if len(loaded.sample_shape) != 3:
        raise ValueError(f"--method: asced needs an image model (C, H, W), got sample shape {tuple(loaded.sample_shape)}")
    h = int(loaded.sample_shape[-2])
    det = {k: getattr(args, f"asced_{k}") for k in ("k", "td_frac", "tc_frac") if getattr(args, f"asced_{k}", None) is not None}
    cor = {k: getattr(args, f"asced_{k}") for k in ("tc_frac", "dilation") if getattr(args, f"asced_{k}", None) is not None}
    if guided:
        cor["eta_c"] = None
    try:
        detector = DetectorConfig.for_resolution(h, **det)
        correction = CorrectionConfig.for_resolution(h, **cor)
    except ValueError as e:
        name = str(e).split(":", 1)[0]
        raise ValueError(f"--asced-{name.replace('_', '-')}:{str(e).split(':', 1)[1]}" if name in ("k", "td_frac", "tc_frac", "dilation") else str(e)) from e
    method = (args.asced_correction or "ttc").replace("-", "_")
    return AbnormalScoreCorrection(detector, correction, method=method), {"detector": vars(detector), "correction": vars(correction), "method": method}


def _physical_memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


_DTYPES = {"float32": "float32", "float64": "float64", "float16": "float16", "bfloat16": "bfloat16"}


def _placement(args):
    """``(device, dtype)`` of the run from ``--device``/``--dtype``, checked (:func:`onmanifold.device.check_device`:
    an unavailable device is refused)."""
    import torch

    from .device import check_device

    device = check_device(args.device, "--device")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device: expected cpu, cuda, cuda:N or mps, got {args.device}")
    return device, getattr(torch, _DTYPES[args.dtype])


def _move_run(device, dtype, loaded, predictor, loss) -> None:
    """Put every network of the run on ``device`` in ``dtype``; the loop follows the model there
    (:meth:`onmanifold.sampler.DDIMSampler.sample`: noise, plugins and seeds on the model's device, the per-sample
    generators on the CPU, so the samples match the CPU's up to the device's arithmetic).

    The diffusion model (a latent model's VAE and prompt encoder with it), TAG's time predictor and every guidance
    classifier take the run's ``x`` and so its dtype (a classifier is copied first: the bundled ones are shared by
    the process, :func:`onmanifold.evaluate.guidance_classifier`); a measurement loss's ``y``, masks and kernels move
    to the device on first use and keep their float32 (:func:`onmanifold.device.buffer_on`).
    """
    import copy

    import torch

    from .losses import ClassifierLoss

    if device.type == "cpu" and dtype == torch.float32:  # where everything is loaded
        return
    loaded.to(device=device, dtype=dtype)
    if predictor is not None:
        predictor.to(device=device, dtype=dtype)
    if loss is not None:
        for part in loss.modules():
            if isinstance(part, ClassifierLoss):
                part.classifier = copy.deepcopy(part.classifier).to(device=device, dtype=dtype)


def _on_cpu(t):
    """``t`` as a float32 CPU tensor (None stays None)."""
    import torch

    return None if t is None else t.detach().to("cpu", torch.float32)


def _captioned_png(img, caption: str):
    """A writer of ``img`` as a PNG whose Description is ``caption`` (what ``onmanifold report`` shows under it)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Description", caption)
    return lambda f: img.save(f, format="PNG", pnginfo=info)


def _per_sample_outputs(outputs, x, images, truth, asced, run: str) -> list[dict]:
    """Stage one PNG per sample and ASCED's masks; return the per-sample metrics rows."""
    import torch
    from PIL import Image

    from . import metrics
    from .images import to_uint8

    rows = [{"index": i} for i in range(x.shape[0])]
    if truth is not None:
        for i, (p, s) in enumerate(zip(metrics.psnr(images, truth).tolist(), metrics.ssim(images, truth).tolist())):
            rows[i].update(psnr=float(p), ssim=float(s))
    if images is not None:
        for i, u in enumerate(to_uint8(images)):
            img = Image.fromarray(u[..., 0] if u.shape[-1] == 1 else u)
            score = f"; PSNR {rows[i]['psnr']:.2f} dB, SSIM {rows[i]['ssim']:.3f} against the truth" if truth is not None else ""
            outputs.add(f"sample-{i:05d}.png", _captioned_png(img, f"Sample {i} at its own size ({run}){score}."))
            rows[i]["png"] = f"sample-{i:05d}.png"
    if asced is not None:
        masks, corrected = asced.detector.results().mask.cpu(), asced.corrector.corrected.cpu()
        for i in range(x.shape[0]):
            m = masks[i]
            img = Image.fromarray((m.to(torch.uint8) * 255).numpy())
            outputs.add(f"asced-mask-{i:05d}.png", _captioned_png(
                img, f"ASCED's detected mask M of sample {i} (white: {int(m.sum())} flagged pixels; "
                     f"{'corrected' if bool(corrected[i]) else 'not corrected'} at the correction step); {run}."))
            rows[i].update(asced_flagged=bool(m.any()), asced_corrected=bool(corrected[i]), asced_mask_pixels=int(m.sum()),
                           asced_mask=f"asced-mask-{i:05d}.png")
    return rows


def _prompt_and_cfg(args, loaded, model):
    """``(cond, model)``: the prompt embeddings of ``--prompt`` (default: the empty prompt) for a model with prompts, and the
    model wrapped in classifier-free guidance with ``--guidance-scale`` (the empty prompt as the unconditional input)."""
    encode = getattr(loaded.model, "encode_prompt", None)
    has_prompts = encode is not None and getattr(loaded.model, "prompt_encoder", None) is not None
    if not has_prompts:
        for flag, value in (("--prompt", args.prompt), ("--guidance-scale", args.guidance_scale)):
            if value is not None:
                raise ValueError(f"{flag}: {args.model} takes no prompts (only latent models with a prompt table or a text encoder do)")
        return None, model
    from .model import ClassifierFreeGuidance

    try:
        cond = encode([args.prompt or ""])
    except ValueError as e:
        raise ValueError(f"--prompt: {str(e).split(': ', 1)[-1]}") from e
    cond = cond.expand(args.num_samples, *cond.shape[1:])
    if args.guidance_scale is None:
        return cond, model
    return cond, ClassifierFreeGuidance(model, args.guidance_scale, encode([""]))


def run_sample(args, progress: bool) -> int:
    import torch

    from .images import save_grid, save_rows, save_scatter
    from .io import OutputSet, output_dir
    from .model import load_diffusion_model
    from .testbeds import bed_of_model

    methods = check_sample_options(args)
    device, dtype = _placement(args)
    loaded = load_diffusion_model(args.model)
    bed = bed_of_model(args.model, loaded.sample_shape)
    if args.no_clamp and loaded.data_range is None:
        raise ValueError(f"--no-clamp: {args.model} has no data range, its x0_hat is never clamped")
    result_bytes = args.num_samples * math.prod(loaded.sample_shape) * 4
    memory = _physical_memory_bytes()
    if memory is not None and result_bytes > memory // 2:
        raise ValueError(f"--num-samples: {args.num_samples} samples of shape {tuple(loaded.sample_shape)} need {result_bytes / 1e9:.3g} GB "
                         f"of memory for the result; this machine has {memory / 1e9:.3g} GB")
    sampler = sampler_for(loaded, args.steps, args.eta, args.spacing, clamp=not args.no_clamp, micro_batch=args.micro_batch)
    guidance, loss, y, truth = guidance_setup(args, loaded, bed, args.num_samples)
    plugins, settings = [], {}
    asced = predictor = None
    if "asced" in methods:
        asced, settings["asced"] = _asced(args, loaded, guided=guidance is not None)
        plugins.append(asced)
    if "tag" in methods:
        from .temporal import TemporalAlignmentGuidance

        predictor, predictor_path = _time_predictor(args, loaded)
        plugins.append(TemporalAlignmentGuidance(predictor, _option(args, "omega0")))
        settings.update(omega0=_option(args, "omega0"), time_predictor=predictor_path)
    if guidance is not None:
        plugins.append(guidance)
    _move_run(device, dtype, loaded, predictor, loss)
    cond, guided_model = _prompt_and_cfg(args, loaded, loaded.model)
    with output_dir(args.out, "--out", need_bytes=result_bytes * 3 + (4 << 20)) as out:  # the tensor, PNGs, masks and the manifest
        x = sampler.sample(guided_model, shape=loaded.sample_shape, num_samples=args.num_samples, seed=args.seed,
                           batch_size=args.batch_size, progress=progress, plugins=plugins, cond=cond)
    latent = loaded.data_range is None and hasattr(loaded.model, "decode") and x.dim() == 4
    with torch.no_grad():
        images = loaded.decode(x).clamp(-1, 1) if latent else (x if x.dim() == 4 else None)
    x, images = _on_cpu(x), _on_cpu(images)  # the outputs (tensor, PNGs, metrics) are written from float32 CPU copies
    info = {"model": args.model, "steps": args.steps, "eta": args.eta, "spacing": sampler.spacing, "seed": args.seed,
            "num_samples": args.num_samples, "timesteps": sampler.timesteps, "bed": bed, "method": ",".join(methods) or "none",
            "plugins": [type(p).__name__ for p in plugins], "task": args.task, "operator": args.operator,
            "micro_batch": args.micro_batch or None, "device": str(device), "dtype": args.dtype}
    if "dps" in methods:
        info["zeta"] = _option(args, "zeta")
    elif "dsg" in methods:
        info.update(guidance_rate=_option(args, "guidance_rate"), interval=_option(args, "interval"))
    if guidance is not None:
        info.update(guidance_window=guidance.guidance_window, time_travel=guidance.time_travel)
    if cond is not None:
        info.update(prompt=args.prompt or "", guidance_scale=args.guidance_scale)
    if y is not None:
        info["sigma_y"] = None if args.measurement is not None else _option(args, "sigma_y")
    info.update(settings)
    if truth is not None:
        from . import metrics

        info.update({"psnr": float(metrics.psnr(images, truth).mean()), "ssim": float(metrics.ssim(images, truth).mean())})
    if asced is not None:
        info.update(asced_flagged_share=float(asced.detector.results().flagged.float().mean()),
                    asced_corrected_share=float(asced.corrector.corrected.float().mean()))
    what = f"{info['method'].upper()} {args.task or args.operator or ''} ".replace("  ", " ") if methods else ""
    run = f"{args.model}, {what}{args.steps} steps, eta {args.eta:g}, seed {args.seed}"
    outputs = OutputSet(out, manifest="samples.json", owned=SAMPLE_OUTPUTS)
    try:
        outputs.add_tensors("samples.pt", x)
        info["per_sample"] = _per_sample_outputs(outputs, x, images, truth, asced, run)
        if images is not None:
            shown = min(64, images.shape[0])
            outputs.add("grid.png", lambda f: save_grid(images[:64], f, caption=f"The first {shown} of {images.shape[0]} samples ({run})."))
        else:
            outputs.add("scatter.png", lambda f: save_scatter({"samples": x}, f, caption=f"All {x.shape[0]} samples ({run})."))
        if truth is not None:
            k = min(8, images.shape[0])
            shown_y = y if y.shape == truth.shape else torch.nn.functional.interpolate(y, size=truth.shape[-2:], mode="nearest")
            label = info["method"]
            outputs.add("comparison.png", lambda f: save_rows(
                [shown_y[:k], images[:k], truth[:k]], ["measurement", label, "truth"], f,
                caption=f"Samples 0-{k - 1}: the measurement (top, shown at full size), the {label.upper()} reconstruction "
                        f"(middle) and the ground truth (bottom); {run}."))
        outputs.commit(info)
    except (OSError, RuntimeError) as e:  # a full disk, a lost mount: torch.save reports it as a RuntimeError
        outputs.discard()
        first = getattr(e, "strerror", None) or (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"--out: could not write the samples into {str(out)!r} ({first}); the earlier outputs there are unchanged") from e
    if truth is not None:
        print(f"PSNR {info['psnr']:.2f} dB, SSIM {info['ssim']:.3f}")
    if asced is not None:
        print(f"ASCED flagged {info['asced_flagged_share']:.0%} of the samples and corrected {info['asced_corrected_share']:.0%}")
    print(f"wrote {args.num_samples} samples to {out / 'samples.pt'}")
    return 0
