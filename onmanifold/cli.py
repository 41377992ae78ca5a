"""The ``onmanifold`` command line: ``train``, ``sample``, ``bench``, ``report``, ``demo``.

The contract, for every command:

* bad input (an option out of range, an option the run would not use, an unreadable input file, an
  output folder that cannot be written) ends with one line on stderr, ``onmanifold: error: --option:
  what is wrong``, and exit code 2, before any long work starts;
* Ctrl-C ends with one line saying what was kept and how to resume, and exit code 130 (no traceback);
* outputs are written atomically (:mod:`onmanifold.io`): an interrupted or failed run leaves the
  earlier outputs as they were.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def _command_line(argv: list[str]) -> str:
    return "onmanifold " + " ".join(shlex.quote(a) for a in argv)


class _Parser(argparse.ArgumentParser):
    """argparse, with a parse error in one line (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` (an option whose default the help text states, or that is off unless given)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    fmt = _HelpFormatter
    p = _Parser(
        prog="onmanifold",
        description="Keep diffusion sampling on the data manifold: DSG, Temporal Alignment Guidance and ASCED on one sampling core.",
        formatter_class=fmt,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # ---------------------------------------------------------------- train
    tr = sub.add_parser("train", help="train a network on a bundled test bed or on your own images (--data)",
                        description="Train one of the bundled networks, or a diffusion model, classifier or time predictor on your own images (--data).",
                        formatter_class=fmt)
    trs = tr.add_subparsers(dest="what", required=True, metavar="WHAT")
    td = trs.add_parser("diffusion", help="an eps-prediction diffusion model", formatter_class=fmt,
                        description="Train the eps-prediction diffusion model of a test bed (EMA weights are saved).")
    td.add_argument("--bed", default=None, choices=["gmm2d", "digits", "shapes", "mosaic"], help="test bed (or --data)")
    td.add_argument("--out", required=True, help="output folder (diffusers pipeline layout for UNets)")
    td.add_argument("--steps", type=int, default=6000, help="optimiser steps")
    td.add_argument("--batch-size", type=int, default=128, help="batch size")
    td.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate")
    td.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay of the saved weights")
    td.add_argument("--seed", type=int, default=0, help="random seed")
    td.add_argument("--save-every", type=int, default=0, help="also save snapshots and the resumable training state every this many steps (0: never)")
    td.add_argument("--resume", action="store_true", help="continue from OUT/training-state.pt when it exists (written every --save-every steps)")
    td.add_argument("--block-out-channels", type=int, nargs="+", default=None,
                    help="UNet channels per resolution (default: the bed's; one value per down block)")
    tc = trs.add_parser("classifier", help="a guidance or evaluation classifier", formatter_class=fmt,
                        description="Train the guidance classifier (ConvClassifier) or the independent evaluation classifier (ResidualClassifier) of a bed.")
    tc.add_argument("--bed", default=None, choices=["digits", "shapes", "mosaic"], help="test bed (or --data); mosaic: its tile-level eval classifier")
    tc.add_argument("--role", required=True, choices=["guidance", "eval"], help="guidance: followed by guided sampling; eval: scores samples (FD features, accuracy)")
    tc.add_argument("--out", required=True, help="output folder")
    tc.add_argument("--steps", type=int, default=3000, help="optimiser steps")
    tc.add_argument("--batch-size", type=int, default=128, help="batch size")
    tc.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (one-cycle AdamW)")
    tc.add_argument("--seed", type=int, default=None, help="random seed (default: 1 for guidance, 2 for eval)")
    tc.add_argument("--labels", default=None, metavar="FILE",
                    help="--data: class labels, one per image in the data's order (sorted file names): a .pt/.npy vector of integers "
                         "or a text file with one integer per line; not needed when the --data folder has one subfolder per class")
    tc.add_argument("--save-every", type=int, default=0, help="write the resumable training state every this many steps (0: never)")
    tc.add_argument("--resume", action="store_true", help="continue from OUT/training-state.pt when it exists")
    tp = trs.add_parser("time-predictor", help="a time predictor p(t|x) for Temporal Alignment Guidance", formatter_class=fmt,
                        description="Train a time classifier over the T training steps of a bed's diffusion schedule (TimeCNN for images, TimeMLP for gmm2d).")
    tp.add_argument("--bed", default=None, choices=["gmm2d", "digits", "shapes"], help="test bed (or --data with --model)")
    tp.add_argument("--model", default=None, metavar="FOLDER",
                    help="--data: the diffusion model (diffusers folder, pixel or latent, or a bundled name) the predictor is for: its "
                         "schedule, and for a latent model its VAE's latents of the images; recorded, so the predictor is refused with another model")
    tp.add_argument("--out", required=True, help="output folder")
    tp.add_argument("--condition", action="append", default=[], choices=["digit", "type", "size"],
                    help="condition on this label attribute (repeatable: --condition type --condition size for p(t|x,c1,c2))")
    tp.add_argument("--steps", type=int, default=5000, help="optimiser steps")
    tp.add_argument("--batch-size", type=int, default=256, help="batch size")
    tp.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (cosine decay)")
    tp.add_argument("--widths", type=int, nargs=4, default=[16, 32, 64, 128], help="TimeCNN channels of the four blocks (paper: 32 64 128 256)")
    tp.add_argument("--seed", type=int, default=3, help="random seed")
    tp.add_argument("--save-every", type=int, default=0, help="write the resumable training state every this many steps (0: never)")
    tp.add_argument("--resume", action="store_true", help="continue from OUT/training-state.pt when it exists")
    ta = trs.add_parser("autoencoder", help="the AutoencoderKL of the latent shapes model (32x32 -> 4x8x8)", formatter_class=fmt,
                        description="Train the shapes autoencoder (reconstruction + small KL loss, EMA weights); its config records "
                                    "scaling_factor = 1/std of the latents, as Stable Diffusion does.")
    ta.add_argument("--out", required=True, help="output folder (diffusers AutoencoderKL layout)")
    ta.add_argument("--steps", type=int, default=1500, help="optimiser steps")
    ta.add_argument("--batch-size", type=int, default=32, help="batch size")
    ta.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    ta.add_argument("--kl-weight", type=float, default=1e-4, help="weight of the KL term against the per-image squared error")
    tl = trs.add_parser("latent-diffusion", help="the conditional latent UNet of the shapes bed (Stable Diffusion folder layout)", formatter_class=fmt,
                        description="Train a UNet2DConditionModel on the autoencoder's latents, conditioned on a two-token prompt embedding "
                                    "(type, size) with condition dropout for classifier-free guidance; writes model_index.json, unet/, vae/, "
                                    "scheduler/ and prompt_embeddings.* into OUT.")
    tl.add_argument("--vae", required=True, help="the autoencoder folder written by `onmanifold train autoencoder`")
    tl.add_argument("--out", required=True, help="output folder (Stable Diffusion layout)")
    tl.add_argument("--steps", type=int, default=5000, help="optimiser steps")
    tl.add_argument("--batch-size", type=int, default=64, help="batch size")
    tl.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate")
    tl.add_argument("--cond-dropout", type=float, default=0.1, help="probability of dropping the whole prompt (null embedding)")
    tl.add_argument("--token-dropout", type=float, default=0.1, help="probability of dropping each attribute token")
    tl.add_argument("--num-latents", type=int, default=30000, help="fresh shapes encoded once (posterior mean and std) to train on")
    tl.add_argument("--float32", action="store_true", help="ship float32 weights (default: float16)")
    for a in (ta, tl):
        a.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay of the saved weights")
        a.add_argument("--seed", type=int, default=0, help="random seed")
        a.add_argument("--save-every", type=int, default=250, help="write the resumable training state every this many steps (0: never)")
        a.add_argument("--resume", action="store_true", help="continue from OUT/training-state.pt when it exists")
    for a in (td, tc, tp):
        a.add_argument("--data", default=None, metavar="PATH",
                       help="train on your images instead of a --bed: a folder of PNG/JPEG files (any size with --resize/--crop) or a "
                            ".pt/.npy tensor N x C x H x W in [-1, 1] or [0, 255]; channels and resolution come from the data; the last "
                            "10%% (at most 512) are held out and scored at the end")
        a.add_argument("--resize", type=int, default=None, metavar="S", help="--data images: scale each so its shorter side is S pixels")
        a.add_argument("--crop", type=int, default=None, metavar="S", help="--data images: cut the centre S x S square (after --resize)")
    for a in (td, tc, tp, ta, tl):
        a.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
        a.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    # ---------------------------------------------------------------- sample
    sp = sub.add_parser("sample", help="draw samples from a bundled model or a diffusers model folder", formatter_class=fmt,
                        description="Draw samples with the onmanifold sampling loop and save them (.pt tensor + PNG grid).")
    sp.add_argument("model", help="bundled model name (gmm2d-mlp, digits-unet, shapes-unet) or a diffusers model folder")
    sp.add_argument("--num-samples", "-n", type=int, default=64, help="number of samples")
    sp.add_argument("--steps", type=int, default=50, help="sampling steps N (respaced from the T training steps)")
    sp.add_argument("--eta", type=float, default=0.0, help="DDIM eta in [0, 1]: 0 deterministic, 1 ancestral (DDPM when steps = T)")
    sp.add_argument("--spacing", default=None, choices=["leading", "trailing", "linspace"],
                    help="timestep respacing (default: the model's scheduler config, timestep_spacing; leading without one)")
    sp.add_argument("--seed", type=int, default=0, help="base seed; sample i uses its own generator seeded by (seed, i)")
    sp.add_argument("--batch-size", type=int, default=256, help="samples per network call (does not change the noise of a sample)")
    sp.add_argument("--micro-batch", type=int, default=0,
                    help="0: off (each batch goes to the network as it is). N: evaluate the network in micro-batches of exactly N rows "
                         "(the last one padded), so samples are bit-identical whatever --batch-size; costs up to N - 1 padded rows per call")
    sp.add_argument("--no-clamp", action="store_true", help="do not clamp x0_hat to [-1, 1] (images only)")
    sp.add_argument("--method", default="none", metavar="M[,M...]",
                    help="none, or a comma-separated combination of dps, dsg (loss guidance, one of them), tag (Temporal Alignment Guidance) "
                         "and asced (artifact detection and correction), e.g. dsg,tag,asced; built in the order the loop needs "
                         "(asced, tag, then dsg/dps) whatever the order given")
    sp.add_argument("--task", default=None, choices=["box", "random", "sr", "blur", "label"],
                    help="a bundled bed's inverse problem (box/random inpainting, super-resolution, Gaussian blur, at the bed's size) "
                         "or label guidance; with --method dps/dsg, instead of --operator")
    sp.add_argument("--operator", default=None, metavar="OP",
                    help="your own measurement operator at the model's size: inpaint (with --mask), sr:FACTOR (average pooling) or "
                         "blur:SIGMA,SIZE (Gaussian kernel, odd SIZE); with --method dps/dsg and --measurement or --images")
    sp.add_argument("--mask", default=None, metavar="FILE",
                    help="--operator inpaint: a PNG (white = observed pixel), a folder of PNGs (one per image, sorted by name) or a "
                         ".pt/.npy tensor of 0/1 (H x W for all images, or N x H x W / N x 1 x H x W); sized like the images")
    sp.add_argument("--measurement", default=None, metavar="FILE",
                    help="--operator: the measured y (a .pt/.npy tensor N x C x h x w, or PNGs), shaped like the operator's output")
    sp.add_argument("--images", default=None, metavar="FILE|FOLDER",
                    help="ground-truth images (a .pt/.npy tensor N x C x H x W in [-1, 1] or [0, 255], or PNG/JPEG files) to simulate the "
                         "measurement from and to score PSNR/SSIM against (default with --task: the bed's held-out images)")
    sp.add_argument("--sigma-y", type=float, default=None, help="simulated measurements: std of the Gaussian measurement noise (default: 0.05)")
    sp.add_argument("--target", type=int, default=None, help="--task label: the target class (default: sample i gets class i %% 10)")
    sp.add_argument("--zeta", type=float, default=None, help="--method dps: the step size (default: 1.0)")
    sp.add_argument("--guidance-rate", type=float, default=None, help="--method dsg: the guidance rate g_r in [0, 1] (default: 0.2)")
    sp.add_argument("--interval", type=int, default=None, help="--method dsg: guide every k-th step (default: 1)")
    sp.add_argument("--guidance-window", default=None, metavar="T_LO,T_HI",
                    help="--method dps/dsg: guide only the steps whose training time t lies in [T_LO, T_HI] (default: every step; "
                         "a window that guides no step is refused)")
    sp.add_argument("--time-travel", type=int, default=None, metavar="R",
                    help="--method dps/dsg: take every guided step R times, re-noising its output back to t in between (default: 1, none)")
    sp.add_argument("--prompt", default=None, metavar="TEXT",
                    help="latent models with a prompt table or text encoder: the prompt of every sample (default: the empty prompt, "
                         "the unconditional model)")
    sp.add_argument("--guidance-scale", type=float, default=None, metavar="S",
                    help="classifier-free guidance scale s >= 0 (eps = e_u + s (e_c - e_u), e_u at the empty prompt; needs a model "
                         "with prompts; default: none, the conditional model as is)")
    sp.add_argument("--time-predictor", default=None, metavar="FOLDER",
                    help="--method tag: a time predictor trained for this model (`onmanifold train time-predictor --model MODEL ...`); "
                         "default: the bundled model's own; one bound to another model is refused")
    sp.add_argument("--omega0", type=float, default=None, help="--method tag: strength omega0 >= 0, omega_t = omega0 (1 - abar_t) (default: 1.0)")
    sp.add_argument("--asced-k", type=float, default=None, help="--method asced: threshold multiplier k of the robust z-map (default: 3)")
    sp.add_argument("--asced-td-frac", type=float, default=None, help="--method asced: start of the detection window as a fraction of the steps (default: 0.24)")
    sp.add_argument("--asced-tc-frac", type=float, default=None, help="--method asced: the correction step as a fraction of the steps (default: 0.48)")
    sp.add_argument("--asced-dilation", type=int, default=None, help="--method asced: dilation radius of the corrected region in pixels (default: round(5 H / 256))")
    sp.add_argument("--asced-correction", default=None, choices=["ttc", "state-replacement"],
                    help="--method asced: trajectory-aware correction (ttc, default) or the State Replacement baseline")
    sp.add_argument("--device", default="cpu", help="where the run happens (cpu, cuda, cuda:N, mps): the model, time predictor and "
                                                    "classifiers go there and the loop follows; the per-sample generators stay on the "
                                                    "CPU, so a seed gives the same noise on any device")
    sp.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"],
                    help="precision of the run: the networks' weights and the sampling state (the noise is drawn "
                         "in it, as diffusers does; DSG's and TAG's norms are taken in float32 at least); "
                         "samples.pt is written as float32")
    sp.add_argument("--out", default="samples", help="output folder, checked before sampling (samples.pt, grid.png or scatter.png, "
                                                  "sample-NNNNN.png per sample, comparison.png with a measurement, asced-mask-NNNNN.png "
                                                  "with asced, samples.json with the settings and per-sample metrics; replaced as one set)")
    sp.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    # ---------------------------------------------------------------- bench
    bp = sub.add_parser("bench", help="run a benchmark suite (resumable; results under docs/results/)", formatter_class=fmt,
                        description="Run a benchmark suite cell by cell. Finished cells are written atomically as JSON under RUN_DIR/cells; a rerun skips them.")
    bp.add_argument("suite", help="suite name (see --list)", nargs="?")
    bp.add_argument("--list", action="store_true", help="list the suites and exit")
    bp.add_argument("--run-dir", default=None, help="where cell results go (default: runs/SUITE)")
    bp.add_argument("--results-dir", default=None, help="where the summary JSON and markdown table go (default: docs/results, or the run dir with --quick)")
    bp.add_argument("--quick", action="store_true", help="a reduced suite (few samples) for smoke runs")
    bp.add_argument("--only", action="append", default=[], metavar="KEY=V1,V2",
                    help="run only the cells whose method or setting KEY has one of the values (repeatable; other cells are loaded if finished)")
    bp.add_argument("--exclude", action="append", default=[], metavar="KEY=V1,V2", help="skip the cells matching KEY=V1,V2 (repeatable)")
    bp.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    bp.add_argument("--import-results", default=None, metavar="SUITE.json",
                    help="first seed RUN_DIR/cells with the finished records of a committed summary (e.g. docs/results/dsg.json), "
                         "so a fresh checkout adds cells without recomputing the finished ones (done by default from "
                         "RESULTS_DIR/SUITE.json when RUN_DIR is new)")
    bp.add_argument("--no-import", action="store_true",
                    help="do not seed a new RUN_DIR from RESULTS_DIR/SUITE.json (compute every cell afresh)")
    bp.add_argument("--force", action="store_true",
                    help="write the summary and page even when they hold fewer finished records than RESULTS_DIR/SUITE.json "
                         "(by default such a run refuses, so committed results are never lost)")
    bp.add_argument("--zetas", default=None, metavar="Z1,Z2,...",
                    help="fronts only: the DPS strengths (increasing, > 0; default 0.3,1,3,10,30,100,300,1000,3000)")
    bp.add_argument("--rates", default=None, metavar="G1,G2,...",
                    help="fronts only: the DSG guidance rates g_r (increasing, in (0, 1]; default 0.05,0.1,0.2,0.4,0.7,1)")
    bp.add_argument("--measure-spread", action="store_true",
                    help="instead of the cells: run the suite's representative cells four times (eps x (1 +- 1e-6), 1 vs 2 threads) and "
                         "write each (method, metric) rounding spread to docs/results/precision.json and .md (the pages print each metric "
                         "to the decimals it holds; resumable: runs/precision/SUITE.json)")

    # ---------------------------------------------------------------- report
    rp = sub.add_parser("report", help="one self-contained HTML page + a markdown summary for a run directory", formatter_class=fmt,
                        description="Gather a run directory's markdown summaries, finished benchmark cells and PNG figures into RUN_DIR/report.html (figures inlined) and RUN_DIR/report.md.")
    rp.add_argument("run_dir", metavar="RUN_DIR", help="a run directory: runs/<suite> from bench, demo_out from demo, or a sample output folder")
    rp.add_argument("--title", default=None, help="page title (default: the directory name)")

    # ---------------------------------------------------------------- demo
    dp = sub.add_parser("demo", help="the main job: DSG, TAG and ASCED against their baselines and composed, one table and a report", formatter_class=fmt,
                        description="Run DSG vs DPS (digits inpainting), Temporal Alignment Guidance (gmm2d drift, corrupted digits), ASCED (shapes) "
                                    "and DSG + TAG + ASCED in one run (shapes super-resolution) on the bundled models; print one table and write "
                                    "OUT/summary.md, OUT/summary.json and the self-contained OUT/report.html.")
    dp.add_argument("--out", default="demo_out", help="output folder for the table, grids and report")
    dp.add_argument("--seed", type=int, default=0, help="base seed")
    dp.add_argument("--dsg-samples", type=int, default=256, help="held-out digits for DSG vs DPS")
    dp.add_argument("--tag-samples", type=int, default=256, help="digits samples for the corrupted-process rows")
    dp.add_argument("--asced-samples", type=int, default=256, help="shapes samples for the ASCED rows")
    dp.add_argument("--compose-samples", type=int, default=64, help="shapes for the composition rows")
    dp.add_argument("--update-readme", default=None, metavar="README",
                    help="also write the printed table into README between its <!-- demo-table --> markers")
    dp.add_argument("--measure-spread", action="store_true",
                    help="instead of the demo: run its rows four times (eps x (1 +- 1e-6), 1 vs 2 threads) and write the rounding spread "
                         "of every value to docs/results/precision.json and .md (the demo prints each value to the decimals it holds)")
    dp.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line: 0 on success, 2 on bad input (one line on stderr), 130 on Ctrl-C."""
    from .nets.checkpoint import CheckpointError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args, argv)
    except KeyboardInterrupt:
        print(f"\nonmanifold: interrupted: {_what_was_kept(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, CheckpointError, FloatingPointError, TypeError) as e:
        return _user_error(_name_the_option(str(e), parser, args))
    except OSError as e:  # a file that cannot be read or written, a full disk
        return _user_error(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
    except MemoryError:
        return _user_error("out of memory; use a smaller --num-samples or --batch-size")
    except RuntimeError as e:
        if re.search(r"can't allocate memory|bad_alloc|out of memory", str(e), re.I):
            return _user_error(f"out of memory ({str(e).strip().splitlines()[0][:120]}); use a smaller --num-samples or --batch-size")
        raise
    except SystemExit as e:  # raise SystemExit("message") from a command: the same one-line contract
        if isinstance(e.code, str):
            return _user_error(e.code)
        raise


def _user_error(message: str) -> int:
    lines = [ln for ln in str(message).strip().splitlines() if ln.strip()] or ["unknown error"]
    print(f"onmanifold: error: {' '.join(ln.strip() for ln in lines)}", file=sys.stderr)
    return EXIT_USER_ERROR


_OPTION_ALIASES = {"num_steps": "steps", "conditions": "condition"}  # library argument -> CLI dest, where they differ


def _chosen_parser(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The (sub)parser of the command that ran: ``sample``, ``train diffusion``, ..."""
    for dest in ("command", "what"):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, dest, None)
        if not subs or name not in subs[0].choices:
            break
        parser = subs[0].choices[name]
    return parser


def _name_the_option(message: str, parser: argparse.ArgumentParser, args) -> str:
    """``'interval: ...'`` (a library argument) -> ``'--interval: ...'`` when the command has that option."""
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*):", message)
    if not m:
        return message
    dest = _OPTION_ALIASES.get(m.group(1), m.group(1))
    for action in _chosen_parser(parser, args)._actions:
        if action.dest == dest and action.option_strings:
            flag = max(action.option_strings, key=len)
            return flag + message[m.end() - 1:]
    return message


def _what_was_kept(args) -> str:
    """The Ctrl-C line of each command: what is on disk now and how to go on."""
    if args.command == "train":
        out = Path(args.out)
        if getattr(args, "resume", None) is not None:  # trainings with a resumable state
            state = out / "training-state.pt"
            if state.is_file():
                return f"{state} keeps the training state of the last --save-every step; rerun the same command with --resume to continue from it"
            return (f"no training state was saved yet (it is written every --save-every steps); {out} holds what it held before; "
                    "rerun the command")
        return f"this training is not resumable (it takes minutes); {out} holds what it held before; rerun the command"
    if args.command == "sample":
        return f"nothing was written; {args.out} holds the outputs it held before (they are replaced only when every sample is drawn); rerun the command"
    if args.command == "bench":
        from onmanifold_bench import default_run_dir

        run_dir = args.run_dir or default_run_dir(args.suite or "SUITE", args.quick)
        return (f"every finished cell is kept in {run_dir}/cells; rerun the same command to resume "
                "(finished cells are skipped, the interrupted one starts again)")
    if args.command == "report":
        return "report.html and report.md were not replaced (they are written atomically); rerun the command"
    if args.command == "demo":
        return (f"the demo does not resume: {args.out} keeps the composition grids finished so far, summary.md and report.html are "
                "written at the end; rerun the command")
    return "nothing is kept"


def _train(args, argv: list[str], progress: bool) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    state = Path(args.out) / "training-state.pt"
    if getattr(args, "resume", False) and not state.is_file():  # said, not silently ignored
        print(f"onmanifold: --resume: no {state} yet, training starts at step 1", file=sys.stderr)
    from .train import train_classifier, train_diffusion

    cmd = _command_line(argv)
    user = _user_training_data(args)
    data = {} if user is None else {"data": user.images, "data_source": {"path": str(args.data), "read_as": user.scale,
                                                                          "resize": args.resize, "crop": args.crop}}
    if args.what == "diffusion":
        out = train_diffusion(args.bed, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                              seed=args.seed, save_every=args.save_every, command=cmd, progress=progress, resume=args.resume,
                              unet_overrides=None if args.block_out_channels is None else {"block_out_channels": tuple(args.block_out_channels)},
                              **data)
    elif args.what == "autoencoder":
        from .train_latent import train_autoencoder

        out = train_autoencoder(args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, kl_weight=args.kl_weight,
                                ema_decay=args.ema_decay, seed=args.seed, save_every=args.save_every, resume=args.resume,
                                command=cmd, progress=progress)
    elif args.what == "latent-diffusion":
        from .train_latent import train_latent_diffusion

        out = train_latent_diffusion(args.vae, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                     ema_decay=args.ema_decay, cond_dropout=args.cond_dropout, token_dropout=args.token_dropout,
                                     num_latents=args.num_latents, seed=args.seed, save_every=args.save_every, resume=args.resume,
                                     half=not args.float32, command=cmd, progress=progress)
    elif args.what == "time-predictor":
        from .train import train_time_predictor

        out = train_time_predictor(args.bed, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, conditions=args.condition,
                                   widths=args.widths, seed=args.seed, command=cmd, progress=progress, model=args.model,
                                   save_every=args.save_every, resume=args.resume, **data)
    else:
        if user is not None:
            data["labels"], data["classes"] = _user_labels(args, user)
        out = train_classifier(args.bed, args.role, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                               command=cmd, progress=progress, save_every=args.save_every, resume=args.resume, **data)
    if user is not None:
        _print_heldout(out)
    print(f"saved {out}")
    return 0


def _user_training_data(args):
    """``--data`` read and described (None with ``--bed``); exactly one of them, and the options only they use."""
    if args.what not in ("diffusion", "classifier", "time-predictor"):
        return None
    if (args.bed is None) == (args.data is None):
        raise ValueError("--data: give either --bed (a bundled test bed) or --data (your images), not both or neither")
    if args.data is None:
        for flag in ("resize", "crop", "labels", "model"):
            if getattr(args, flag, None) is not None:
                raise ValueError(f"--{flag}: only training on --data uses it")
        return None
    if args.what == "time-predictor" and args.model is None:
        raise ValueError("--model: a time predictor of your data is trained for one diffusion model; give --model FOLDER")
    if args.what == "time-predictor" and args.condition:
        raise ValueError("--condition: a time predictor of your data is unconditional")
    if args.what == "diffusion" and args.block_out_channels is not None:
        raise ValueError("--block-out-channels: the UNet of your data is sized from its channels and resolution")
    from .userdata import load_user_images

    user = load_user_images(args.data, "--data", args.resize, args.crop)
    print(f"onmanifold: --data: {user.describe()}", file=sys.stderr)
    return user


def _user_labels(args, user):
    """The classes of ``--data``: ``--labels FILE`` or the folder's class subfolders."""
    from .userdata import load_labels

    if args.labels is not None:
        if user.classes:
            raise ValueError("--labels: the --data folder's subfolders already give the classes; give one or the other")
        labels = load_labels(args.labels, user.images.shape[0], "--labels")
        return labels, [str(k) for k in range(int(labels.max()) + 1)]
    if not user.classes:
        raise ValueError("--labels: a classifier needs classes: give --labels FILE, or a --data folder with one subfolder per class")
    return user.labels, user.classes


def _print_heldout(out) -> None:
    import json

    meta = json.loads((Path(out) / "onmanifold.json").read_text())
    held = meta.get("heldout") or meta.get("heldout_accuracy") or {}
    if "top1" in held:
        print(f"held-out: exact step {held['top1']:.3f}, within 5 steps {held['within5']:.3f}, within 20 steps {held['within20']:.3f}, "
              f"mean |error| {held['mean_abs_err']:.1f} steps ({meta['data']['heldout_images']} images)")
    elif "eps_mse" in held:
        print(f"held-out: denoising loss (eps MSE) {held['eps_mse']:.4f} on {held['images']} images")
    elif held.get("class") is not None:
        print(f"held-out: accuracy {held['class']:.3f} on {held['images']} images")
    else:
        print("held-out: none (fewer than 10 images)")


def _dispatch(args, argv: list[str]) -> int:
    from .io import check_output_dir, output_dir

    progress = not getattr(args, "no_progress", False)
    if args.command == "train":
        if args.threads < 0:
            raise ValueError(f"--threads: expected 0 (torch's default) or a positive count, got {args.threads}")
        with output_dir(args.out, "--out"):  # checked before the training, not after it
            return _train(args, argv, progress)
    if args.command == "sample":
        from .commands import run_sample

        return run_sample(args, progress)
    if args.command == "bench":
        from onmanifold_bench import run_bench_cli
        from onmanifold_bench.runner import CellNotReady

        for flag in ("run_dir", "results_dir"):
            if getattr(args, flag):
                check_output_dir(getattr(args, flag), "--" + flag.replace("_", "-"))  # before the first cell
        try:
            return run_bench_cli(args, progress, _command_line(argv))
        except CellNotReady as e:  # a cell needs one that --only/--exclude left out
            raise ValueError(f"--only/--exclude: {e}; include the cells it needs, or drop the filter") from e
    if args.command == "report":
        from onmanifold_bench.report import write_report

        html_path, md_path = write_report(args.run_dir, args.title)
        print(f"wrote {html_path} and {md_path}")
        return 0
    if args.command == "demo":
        from onmanifold_bench.demo import run_demo

        for flag in ("dsg_samples", "tag_samples", "asced_samples", "compose_samples"):
            if getattr(args, flag) < 1:
                raise ValueError(f"--{flag.replace('_', '-')}: expected a positive number of samples, got {getattr(args, flag)}")
        if args.measure_spread:
            from onmanifold_bench.demo import COLUMNS, demo_rows
            from onmanifold_bench.precision import measure_demo_spread

            samples = {k: getattr(args, k) for k in ("dsg_samples", "tag_samples", "asced_samples", "compose_samples", "seed")}
            measure_demo_spread(lambda: demo_rows(args, None)[0], COLUMNS, command=_command_line(argv), samples=samples)
            print("wrote docs/results/precision.json and precision.md")
            return 0
        if args.update_readme is not None and not Path(args.update_readme).is_file():
            raise ValueError(f"--update-readme: no such file {args.update_readme!r}")
        with output_dir(args.out, "--out"):
            return run_demo(args, progress)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
