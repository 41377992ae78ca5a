"""The ``onmanifold`` command line: ``train``, ``sample``, ``bench``, ``demo``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


def _command_line(argv: list[str]) -> str:
    return "onmanifold " + " ".join(shlex.quote(a) for a in argv)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(
        prog="onmanifold",
        description="Keep diffusion sampling on the data manifold: DSG, Temporal Alignment Guidance and ASCED on one sampling core.",
        formatter_class=fmt,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # ---------------------------------------------------------------- train
    tr = sub.add_parser("train", help="train a bundled network from scratch", description="Train one of the bundled networks.", formatter_class=fmt)
    trs = tr.add_subparsers(dest="what", required=True, metavar="WHAT")
    td = trs.add_parser("diffusion", help="an eps-prediction diffusion model", formatter_class=fmt,
                        description="Train the eps-prediction diffusion model of a test bed (EMA weights are saved).")
    td.add_argument("--bed", required=True, choices=["gmm2d", "digits", "shapes", "mosaic"], help="test bed")
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
    tc.add_argument("--bed", required=True, choices=["digits", "shapes"], help="test bed")
    tc.add_argument("--role", required=True, choices=["guidance", "eval"], help="guidance: followed by guided sampling; eval: scores samples (FD features, accuracy)")
    tc.add_argument("--out", required=True, help="output folder")
    tc.add_argument("--steps", type=int, default=3000, help="optimiser steps")
    tc.add_argument("--batch-size", type=int, default=128, help="batch size")
    tc.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (one-cycle AdamW)")
    tc.add_argument("--seed", type=int, default=None, help="random seed (default: 1 for guidance, 2 for eval)")
    tp = trs.add_parser("time-predictor", help="a time predictor p(t|x) for Temporal Alignment Guidance", formatter_class=fmt,
                        description="Train a time classifier over the T training steps of a bed's diffusion schedule (TimeCNN for images, TimeMLP for gmm2d).")
    tp.add_argument("--bed", required=True, choices=["gmm2d", "digits", "shapes"], help="test bed")
    tp.add_argument("--out", required=True, help="output folder")
    tp.add_argument("--condition", action="append", default=[], choices=["digit", "type", "size"],
                    help="condition on this label attribute (repeatable: --condition type --condition size for p(t|x,c1,c2))")
    tp.add_argument("--steps", type=int, default=5000, help="optimiser steps")
    tp.add_argument("--batch-size", type=int, default=256, help="batch size")
    tp.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (cosine decay)")
    tp.add_argument("--widths", type=int, nargs=4, default=[16, 32, 64, 128], help="TimeCNN channels of the four blocks (paper: 32 64 128 256)")
    tp.add_argument("--seed", type=int, default=3, help="random seed")
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
    for a in (td, tc, tp, ta, tl):
        a.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
        a.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    # ---------------------------------------------------------------- sample
    sp = sub.add_parser("sample", help="draw samples from a bundled model or a diffusers model folder", formatter_class=fmt,
                        description="Draw samples with the onmanifold sampling loop and save them (.pt tensor + PNG grid).")
    sp.add_argument("model", help="bundled model name (gmm2d-mlp, digits-unet, shapes-unet) or a diffusers model folder")
    sp.add_argument("--num-samples", "-n", type=int, default=64, help="number of samples")
    sp.add_argument("--steps", type=int, default=50, help="sampling steps N (respaced from the T training steps)")
    sp.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic, 1 ancestral (DDPM when steps = T)")
    sp.add_argument("--spacing", default="leading", choices=["leading", "trailing", "linspace"], help="timestep respacing")
    sp.add_argument("--seed", type=int, default=0, help="base seed; sample i uses its own generator seeded by (seed, i)")
    sp.add_argument("--batch-size", type=int, default=256, help="samples per network call (does not change the samples)")
    sp.add_argument("--micro-batch", type=int, default=16,
                    help="evaluate the network in micro-batches of exactly this size, so samples are bit-identical whatever --batch-size (0: off, faster)")
    sp.add_argument("--no-clamp", action="store_true", help="do not clamp x0_hat to [-1, 1] (images only)")
    sp.add_argument("--method", default="none", choices=["none", "dps", "dsg"], help="loss guidance: none, DPS (zeta * gradient) or DSG (spherical Gaussian constraint)")
    sp.add_argument("--task", default=None, choices=["box", "random", "sr", "blur", "label"],
                    help="inverse problem (box/random inpainting, super-resolution, Gaussian blur) or label guidance; needed with --method dps/dsg")
    sp.add_argument("--images", default=None, help="a .pt tensor (N, C, H, W) of ground-truth images to measure (default: the bed's held-out images)")
    sp.add_argument("--sigma-y", type=float, default=0.05, help="std of the Gaussian measurement noise")
    sp.add_argument("--target", type=int, default=None, help="label guidance: the target class (default: sample i gets class i %% 10)")
    sp.add_argument("--zeta", type=float, default=1.0, help="DPS step size")
    sp.add_argument("--guidance-rate", type=float, default=0.2, help="DSG guidance rate g_r in [0, 1]")
    sp.add_argument("--interval", type=int, default=1, help="DSG interval k: guide every k-th step")
    sp.add_argument("--out", default="samples", help="output folder")
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
                         "so a fresh checkout adds cells without recomputing the finished ones")

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
    dp.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; bad input ends with a one-line ``onmanifold: error: ...`` and exit code 2."""
    from .nets.checkpoint import CheckpointError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args, argv)
    except (ValueError, CheckpointError, FloatingPointError, TypeError) as e:
        print(f"onmanifold: error: {e}", file=sys.stderr)
        return 2


def _dispatch(args, argv: list[str]) -> int:
    progress = not getattr(args, "no_progress", False)
    if args.command == "train":
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        from .train import train_classifier, train_diffusion

        cmd = _command_line(argv)
        if args.what == "diffusion":
            out = train_diffusion(args.bed, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                                  seed=args.seed, save_every=args.save_every, command=cmd, progress=progress, resume=args.resume,
                                  unet_overrides=None if args.block_out_channels is None else {"block_out_channels": tuple(args.block_out_channels)})
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
                                       widths=args.widths, seed=args.seed, command=cmd, progress=progress)
        else:
            out = train_classifier(args.bed, args.role, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                   command=cmd, progress=progress)
        print(f"saved {out}")
        return 0
    if args.command == "sample":
        from .commands import run_sample

        return run_sample(args, progress)
    if args.command == "bench":
        from onmanifold_bench import run_bench_cli

        return run_bench_cli(args, progress, _command_line(argv))
    if args.command == "report":
        from onmanifold_bench.report import write_report

        html_path, md_path = write_report(args.run_dir, args.title)
        print(f"wrote {html_path} and {md_path}")
        return 0
    if args.command == "demo":
        from onmanifold_bench.demo import run_demo

        return run_demo(args, progress)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
