"""``onmanifold bench speed``: what the loop and each method cost at users' scale, and the memory of guided steps.

A 3x64x64 diffusers ``UNet2DModel`` of ADM-like shape (four resolutions 64/32/16/8, two ResNet blocks
per level, self-attention at 16x16 and 8x8, ``block_out_channels = (32, 64, 96, 128)``: the channel
widths are a quarter of ADM's 64x64 model so that a run fits on two shared CPU cores) with random
weights (seed 0), a diffusers ``DDIMScheduler`` at its defaults (linear betas, ``clip_sample``), one
start ``x_T`` for every run (drawn as ``DDIMPipeline`` draws it: ``randn_tensor`` from a generator of
seed 0). Runs, each ``steps`` DDIM steps on ``batch`` samples:

* ``loop``: the onmanifold loop, no plugin (eta = 0; ``LoadedModel.sampler`` from the pipeline's scheduler
  with ``clipped_model_output=False``, the pipeline's own default); ``diffusers``: ``DDIMPipeline`` on the
  same UNet, steps, eta and ``x_T`` (``output_type="pt"``); every run below uses the same sampler settings;
* ``dps`` / ``dsg``: DPS (zeta = 1) and DSG (g_r = 0.2, every step) on super-resolution x4 (average
  pooling, sigma_y = 0.05) of a random image, eta = 1;
* ``asced``: ASCED at its defaults for 64x64 (``"auto"``) on the plain loop (eta = 0);
* ``tag``: Temporal Alignment Guidance (pre-step, omega0 = 1) with a random ``TimeCNN`` time predictor;
* ``dsg+checkpoint`` / ``dsg+chunks:1``: DSG through :class:`onmanifold.memory.MemorySavingModel`
  (gradient checkpointing in the UNet / VJPs one sample at a time).

Timing: the runs take turns in one process (:func:`onmanifold_bench.timing.alternating`, one warm-up
each, the order reversed on odd rounds); a ratio is taken within each round and the page reports the
median over rounds (and the range), for wall seconds and for the CPU seconds of the process
(``time.process_time``, one torch thread: less disturbed by other jobs on the cores). "Network fixed": two
runs that make the same UNet forward calls are compared by the CPU time each spends outside them, around one
shared network time (the mean of the two runs' UNet time in that round): ``(F + o_a) / (F + o_b)``; the drift
of the machine between the two runs then cancels (forward hooks on the UNet measure ``F``; backward passes
count as outside). Memory: the peak bytes of tensors alive at once during one run
(the whole sampling call), divided by the batch: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU,
where torch keeps no peak counter, :class:`onmanifold.memory.TensorMemoryMeter` (every tensor storage an
operator allocates, from allocation to release; weights and ``x_T`` excluded, allocator caching not seen).
"""

from __future__ import annotations

import datetime as _dt
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from .runner import Cell, Suite
from .tables import format_value, markdown_table
from .timing import alternating, per_sample, timed_cpu

__all__ = ["speed_suite", "UNET_CONFIGS", "GOALS", "build_unet", "speed_runs"]

_LEVELS = dict(down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
               up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), layers_per_block=2)
UNET_CONFIGS = {
    # ADM-like 64x64: attention at 16x16 and 8x8 (after two and three downsamplings)
    "adm64-small": dict(sample_size=64, in_channels=3, out_channels=3, block_out_channels=(32, 64, 96, 128), attention_head_dim=32,
                        norm_num_groups=32, **_LEVELS),
    # the same layout at 16x16 and 8 channels a level for the suite's quick test
    "tiny16": dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 8, 8, 8), attention_head_dim=8,
                   norm_num_groups=4, **_LEVELS),
}
GOALS = {"loop/diffusers": 1.02, "dsg/dps": 1.02, "asced/loop": 1.05}  # issue 13, item 5
RATIOS = {"loop/diffusers": ("loop", "diffusers"), "dsg/dps": ("dsg", "dps"), "asced/loop": ("asced", "loop"), "tag/loop": ("tag", "loop"),
          "dsg+checkpoint/dsg": ("dsg+checkpoint", "dsg"), "dsg+chunks:1/dsg": ("dsg+chunks:1", "dsg")}
TIMED_FP32 = ("loop", "diffusers", "dps", "dsg", "asced", "tag", "dsg+checkpoint", "dsg+chunks:1")
TIMED_BF16 = ("loop", "diffusers", "dps", "dsg")  # bfloat16 convolutions are ~30x slower than float32 on this CPU
MEMORY_RUNS = ("loop", "dps", "dsg", "dps+checkpoint", "dps+chunks:1", "dsg+checkpoint", "dsg+chunks:1", "dsg+checkpoint+chunks:1")


def build_unet(name: str, seed: int = 0) -> torch.nn.Module:
    """The suite's random-weight ``UNet2DModel`` ``name`` (:data:`UNET_CONFIGS`), in eval mode."""
    from diffusers import UNet2DModel

    if name not in UNET_CONFIGS:
        raise ValueError(f"unet: expected one of {', '.join(UNET_CONFIGS)}, got {name!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(**UNET_CONFIGS[name]).eval()


@contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def speed_runs(unet_name: str, dtype: torch.dtype, steps: int, batch: int, device: torch.device) -> "_Runs":
    """``{run name: a call that samples once and returns the samples}`` for every run of the module docstring."""
    from diffusers import DDIMPipeline, DDIMScheduler
    from diffusers.utils.torch_utils import randn_tensor

    from onmanifold.artifacts import AbnormalScoreCorrection
    from onmanifold.guidance import DiffusionPosteriorSampling, SphericalGaussianGuidance
    from onmanifold.losses import MeasurementLoss
    from onmanifold.memory import MemorySavingModel
    from onmanifold.model import from_pipeline
    from onmanifold.nets.networks import TimeCNN
    from onmanifold.operators import Downsample, make_measurements
    from onmanifold.temporal import TemporalAlignmentGuidance
    from onmanifold.temporal.predictor import TimePredictor

    unet = build_unet(unet_name).to(device=device, dtype=dtype)
    clock = _UNetClock(unet)
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    loaded = from_pipeline(pipe, unet_name)
    size = UNET_CONFIGS[unet_name]["sample_size"]
    shape = (batch, 3, size, size)
    x_T = randn_tensor(shape, generator=torch.Generator().manual_seed(0), device=device, dtype=dtype)
    truth = torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    op = Downsample(4)
    loss = MeasurementLoss(op, make_measurements(op, truth, 0.05, seed=2)).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        predictor = TimePredictor(TimeCNN(in_channels=3, image_size=size, num_timesteps=1000), loaded.schedule).eval().to(device)
    # DDIMPipeline's default use_clipped_model_output=None keeps the network's eps in the mean: the same trajectory
    deterministic = loaded.sampler(steps, eta=0.0, clipped_model_output=False)
    ancestral = loaded.sampler(steps, eta=1.0, clipped_model_output=False)
    model = loaded.model
    saving = {"": model, "+checkpoint": MemorySavingModel(model, checkpoint=True), "+chunks:1": MemorySavingModel(model, vjp_chunk_size=1),
              "+checkpoint+chunks:1": MemorySavingModel(model, checkpoint=True, vjp_chunk_size=1)}

    def ours(sampler, plugins: Callable[[], list], m=model) -> Callable[[], torch.Tensor]:
        return lambda: sampler.sample(m, x_T, seed=0, plugins=plugins())

    def theirs() -> torch.Tensor:
        images = pipe(batch_size=batch, num_inference_steps=steps, eta=0.0, generator=torch.Generator().manual_seed(0), output_type="pt").images
        return images * 2 - 1  # the pipeline's (x / 2 + 0.5).clamp(0, 1), back on [-1, 1]

    def asced() -> list:
        runs.asced_plugin = AbnormalScoreCorrection()  # type: ignore[attr-defined]  # kept: the share it corrected
        return [runs.asced_plugin]  # type: ignore[attr-defined]

    runs = _Runs({"loop": ours(deterministic, list), "diffusers": theirs, "asced": ours(deterministic, asced),
            "tag": ours(deterministic, lambda: [TemporalAlignmentGuidance(predictor, 1.0)])})
    runs.clock = clock
    for suffix, m in saving.items():
        runs["dps" + suffix] = ours(ancestral, lambda: [DiffusionPosteriorSampling(loss, 1.0)], m)
        runs["dsg" + suffix] = ours(ancestral, lambda: [SphericalGaussianGuidance(loss, 0.2)], m)
    return runs


class _Runs(dict):
    """The runs by name; ``asced_plugin``: the ASCED plugin of the last ``asced`` run (None before one); ``clock``: the
    :class:`_UNetClock` of the runs' UNet."""

    asced_plugin = None
    clock = None


class _UNetClock:
    """CPU seconds spent inside the UNet's forward passes and their number (forward hooks; reset by :meth:`reset`).

    The rest of a run's CPU time is what the loop, the plugins and the backward passes cost around the network;
    two runs with the same network calls compare by it without the drift of the machine between them.
    """

    def __init__(self, unet: torch.nn.Module) -> None:
        self.seconds, self.calls, self._start = 0.0, 0, 0.0
        unet.register_forward_pre_hook(self._enter)
        unet.register_forward_hook(self._leave)

    def _enter(self, module, args) -> None:
        self._start = time.process_time()

    def _leave(self, module, args, output) -> None:
        self.seconds += time.process_time() - self._start
        self.calls += 1

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _timing_cell(s: dict) -> dict:
    dtype = getattr(torch, s["dtype"])
    device = _device()
    with _threads(s["threads"]):
        runs = speed_runs(s["unet"], dtype, s["steps"], s["batch"], device)
        last: dict[str, torch.Tensor] = {}

        def timer(name: str) -> Callable[[], float]:
            def run() -> float:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                runs.clock.reset()
                out, sec, cpu = timed_cpu(runs[name])
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                last[name] = out
                cpu_seconds.setdefault(name, []).append(cpu)
                unet_seconds.setdefault(name, []).append(runs.clock.seconds)
                unet_calls[name] = runs.clock.calls
                return sec
            return run

        names = list(s["runs"])
        cpu_seconds: dict[str, list[float]] = {}
        unet_seconds: dict[str, list[float]] = {}
        unet_calls: dict[str, int] = {}
        seconds = alternating({n: timer(n) for n in names}, s["rounds"], warmup=[timer(n) for n in names], swap=True)
        cpu = {n: v[1:] for n, v in cpu_seconds.items()}  # the warm-up call first, then one per round
        inside = {n: v[1:] for n, v in unet_seconds.items()}
    out: dict = {"device": str(device), "torch": torch.__version__}
    for clock, measured in (("", seconds), ("cpu_", cpu)):
        for n in names:
            out[f"{clock}s_per_sample[{n}]"] = per_sample(statistics.median(measured[n]), s["batch"])
        for label, (a, b) in RATIOS.items():
            if a in measured and b in measured:
                r = [x / y for x, y in zip(measured[a], measured[b])]
                out[f"{clock}ratio[{label}]"] = statistics.median(r)
                out[f"{clock}ratio_range[{label}]"] = [min(r), max(r)]
    for n in names:
        out[f"unet_forwards[{n}]"] = unet_calls[n]
        out[f"cpu_outside_unet_s_per_sample[{n}]"] = per_sample(statistics.median(c - u for c, u in zip(cpu[n], inside[n])), s["batch"])
    for label, (a, b) in RATIOS.items():
        if a in cpu and b in cpu and unet_calls[a] == unet_calls[b]:
            est = []
            for ca, ua, cb, ub in zip(cpu[a], inside[a], cpu[b], inside[b]):
                f = (ua + ub) / 2  # the same network calls: one network time for both, each run's own time around it
                est.append((f + ca - ua) / (f + cb - ub))
            out[f"network_fixed_ratio[{label}]"] = statistics.median(est)
    if runs.asced_plugin is not None:
        out["asced_corrected_share"] = float(runs.asced_plugin.corrector.corrected.float().mean())
    out["loop_vs_diffusers_max_abs_diff"] = float((last["loop"].float().clamp(-1, 1) - last["diffusers"].float()).abs().max())
    return out


def _memory_cell(s: dict) -> dict:
    from onmanifold.memory import peak_tensor_bytes

    dtype = getattr(torch, s["dtype"])
    device = _device()
    out: dict = {"device": str(device)}
    samples = {}
    with _threads(s["threads"]):
        runs = speed_runs(s["unet"], dtype, s["steps"], s["batch"], device)
        for name in s["runs"]:
            samples[name], peak, how = peak_tensor_bytes(runs[name], device)
            out[f"mib_per_sample[{name}]"] = peak / s["batch"] / 2**20
            out["measured_by"] = how
    for name in s["runs"]:  # the memory-saving runs give the same samples (float rounding at most)
        base = name.split("+")[0]
        if base != name:
            out[f"max_abs_diff_vs_{base}[{name}]"] = float((samples[name] - samples[base]).abs().max())
    return out


def speed_suite(quick: bool = False, run_dir: str | Path = "runs/speed") -> Suite:
    """Users' scale (3x64x64 ADM-like UNet): loop vs diffusers DDIMPipeline, DSG vs DPS, ASCED and TAG vs plain, fp32/bf16, peak memory."""
    if quick:
        common = {"unet": "tiny16", "batch": 2, "threads": 1}
        cells = [Cell("timing", {**common, "dtype": "float32", "steps": 2, "rounds": 1, "runs": list(TIMED_FP32)}),
                 Cell("timing", {**common, "dtype": "bfloat16", "steps": 2, "rounds": 1, "runs": list(TIMED_BF16)}),
                 Cell("memory", {**common, "dtype": "float32", "steps": 2, "runs": list(MEMORY_RUNS)})]
    else:
        common = {"unet": "adm64-small", "batch": 2, "threads": 1}
        cells = [Cell("timing", {**common, "dtype": "float32", "steps": 10, "rounds": 3, "runs": list(TIMED_FP32)}),
                 Cell("timing", {**common, "dtype": "bfloat16", "steps": 2, "rounds": 2, "runs": list(TIMED_BF16)}),
                 Cell("memory", {**common, "dtype": "float32", "steps": 2, "runs": list(MEMORY_RUNS)})]

    def run_cell(cell: Cell) -> dict:
        return _timing_cell(cell.setting) if cell.method == "timing" else _memory_cell(cell.setting)

    return Suite("speed", cells, run_cell, description=__doc__.split("\n\n", 1)[1].strip(), report=write_speed_report)


def _goal_text(label: str, value: float | None) -> str:
    goal = GOALS.get(label)
    if goal is None or value is None:
        return "-"
    return f"<= {goal:.2f}: " + ("met" if value <= goal else "missed")


def write_speed_report(records: list[dict], results_dir, command: str, run_dir) -> Path:
    """``docs/results/speed.md``: the protocol, the ratio and time tables per dtype, the memory table, the reading."""
    from onmanifold.nets.checkpoint import write_text_atomic

    L = ["# Speed and memory at users' scale", "", __doc__.split("\n\n", 1)[1].strip(), "", "Command(s):", "", "```", command, "```", "",
         f"Date: {_dt.date.today().isoformat()}", ""]
    timing = [r for r in records if r["cell"]["method"] == "timing"]
    memory = [r for r in records if r["cell"]["method"] == "memory"]
    for r in timing:
        s, m = r["cell"]["setting"], r["metrics"]
        L += [f"## Time, {s['dtype']} ({s['unet']}, {s['steps']} steps, batch {s['batch']}, {s['rounds']} rounds, {s['threads']} thread(s), "
              f"{m['device']})", ""]
        rows = []
        for label in RATIOS:
            row = [label]
            for clock in ("", "cpu_"):
                v = m.get(f"{clock}ratio[{label}]")
                lo, hi = m.get(f"{clock}ratio_range[{label}]", (None, None))
                row += [format_value(v, decimals=3), "-" if lo is None else f"{lo:.3f} .. {hi:.3f}", _goal_text(label, v)]
            if row[1] != "-":
                rows.append(row)
        for row in rows:
            v = m.get(f"network_fixed_ratio[{row[0]}]")
            row += [format_value(v, decimals=3), _goal_text(row[0], v)]
        L += [markdown_table(["ratio", "wall: median", "wall: range", "wall: goal", "CPU: median", "CPU: range", "CPU: goal",
                              "network fixed: median", "network fixed: goal"], rows), ""]
        L += [markdown_table(["run", "wall s / sample (median)", "CPU s / sample (median)", "UNet forwards", "CPU s / sample outside the UNet's forwards"],
                             [[n, format_value(m[f"s_per_sample[{n}]"], decimals=3), format_value(m.get(f"cpu_s_per_sample[{n}]"), decimals=3),
                               format_value(m.get(f"unet_forwards[{n}]")), format_value(m.get(f"cpu_outside_unet_s_per_sample[{n}]"), decimals=4)]
                              for n in s["runs"]]), ""]
        if "asced_corrected_share" in m:
            L += [f"ASCED corrected {100 * m['asced_corrected_share']:.0f} % of the samples (random weights).", ""]
        L += [f"Loop vs diffusers, final samples: max |difference| = {m['loop_vs_diffusers_max_abs_diff']:.2e} (same x_T).", ""]
    for r in memory:
        s, m = r["cell"]["setting"], r["metrics"]
        L += [f"## Peak memory, {s['dtype']} ({s['unet']}, {s['steps']} steps, batch {s['batch']}, {m['device']})", "",
              f"Measured by: {m['measured_by']}; MiB per sample = peak bytes of one sampling call / batch.", ""]
        rows = []
        for n in s["runs"]:
            base = n.split("+")[0]
            diff = m.get(f"max_abs_diff_vs_{base}[{n}]")
            rows.append([n, format_value(m[f"mib_per_sample[{n}]"], decimals=1),
                         format_value(m[f"mib_per_sample[{n}]"] / m[f"mib_per_sample[{base}]"], decimals=2) if base != n else "-",
                         "-" if diff is None else f"{diff:.1e}"])
        L += [markdown_table(["run", "MiB / sample", f"vs its plain method", "max |sample difference| vs it"], rows), ""]
    L += ["## Reading", ""]
    for r in timing:
        s, m = r["cell"]["setting"], r["metrics"]
        for label in GOALS:
            v, c, n = m.get(f"ratio[{label}]"), m.get(f"cpu_ratio[{label}]"), m.get(f"network_fixed_ratio[{label}]")
            if v is not None:
                lo, hi = m[f"ratio_range[{label}]"]
                L.append(f"- {s['dtype']}, {label} (goal <= {GOALS[label]:.2f}): "
                         + ("" if n is None else f"network fixed {n:.3f} ({'met' if n <= GOALS[label] else 'missed'}); ")
                         + f"wall {v:.3f} ({'met' if v <= GOALS[label] else 'missed'}; rounds {lo:.3f} .. {hi:.3f})"
                         + ("" if c is None else f", CPU {c:.3f} ({'met' if c <= GOALS[label] else 'missed'})") + ".")
        outside = {n: m.get(f"cpu_outside_unet_s_per_sample[{n}]") for n in s["runs"]}
        if all(outside.get(k) is not None for k in ("loop", "diffusers")):
            L.append(f"- {s['dtype']}: CPU time per sample outside the UNet's forward passes: "
                     + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in outside.items() if v is not None)
                     + f" (the UNet's forwards: about {1000 * (m['cpu_s_per_sample[loop]'] - outside['loop']):.0f} ms per sample for the loop).")
    for r in memory:
        m = r["metrics"]
        base = m["mib_per_sample[loop]"]
        L.append(f"- Memory: DPS and DSG hold {m['mib_per_sample[dps]'] / base:.1f} and {m['mib_per_sample[dsg]'] / base:.1f} times the plain "
                 f"loop's peak per sample (the UNet's autograd graph); gradient checkpointing brings DSG to "
                 f"{m['mib_per_sample[dsg+checkpoint]'] / m['mib_per_sample[dsg]']:.2f} of it (samples differing from DSG's by at most "
                 f"{m['max_abs_diff_vs_dsg[dsg+checkpoint]']:.1e}), chunks of one "
                 f"sample to {m['mib_per_sample[dsg+chunks:1]'] / m['mib_per_sample[dsg]']:.2f} (at batch {r['cell']['setting']['batch']}; one sample's graph at a time whatever the "
                 f"batch), both to {m['mib_per_sample[dsg+checkpoint+chunks:1]'] / m['mib_per_sample[dsg]']:.2f}.")
    L += ["- The machine is shared (two cores, other jobs running): wall-clock and even CPU-time rounds drift by more than the "
          "goals' margins; the network-fixed ratios, which compare the work around the same network calls within one round, are the "
          "measure to read for the goals.",
          "- Random weights: the timings hold for any checkpoint of this shape; ASCED's cost depends on how many samples it corrects "
          "(with random weights it may correct any share), so its ratio is for this network only.", ""]
    path = Path(results_dir) / "speed.md"
    write_text_atomic(path, "\n".join(L))
    return path
