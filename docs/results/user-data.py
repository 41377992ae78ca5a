"""The bed's own path against the user-data path: digits box inpainting, DSG and DPS, 64 held-out digits.

Writes docs/results/user-data.json and user-data.md. Run from the repository root:

    python docs/results/user-data.py [--n 64] [--steps 50] [--work runs/user-data]

Four ways to pose the same problem to ``onmanifold sample digits-unet``:

* ``bed``: ``--task box`` (the bed's held-out images, its 4x4 box masks, sigma_y = 0.05);
* ``tensor``: ``--operator inpaint --mask MASKS/ --images digits.pt``: the same images written out as a
  tensor file and the same masks as a folder of PNGs (binary, so lossless);
* ``png``: ``--images digits/``: the images written out as 8-bit PNGs;
* ``png-pixels``: ``--images digits-8bit.pt``: the PNGs' own pixels as a tensor (what the png path should equal).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

import torch

from onmanifold.cli import main
from onmanifold.io import write_json_atomic, write_text_atomic
from onmanifold.operators import box_masks
from onmanifold.testbeds import get_testbed
from onmanifold.userdata import load_user_images, write_image_folder

RESULTS = Path(__file__).resolve().parent


def run(n: int, steps: int, work: Path) -> dict:
    truth = get_testbed("digits").images("test", n)[0]
    work.mkdir(parents=True, exist_ok=True)
    torch.save(truth, work / "digits.pt")
    write_image_folder(box_masks(n, (1, 8, 8), 4, 0, seed=0) * 2 - 1, work / "masks")
    write_image_folder(truth, work / "digits")
    pixels = load_user_images(work / "digits").images
    torch.save(pixels, work / "digits-8bit.pt")
    user = ["--operator", "inpaint", "--mask", str(work / "masks")]
    paths = {"bed": ["--task", "box"], "tensor": user + ["--images", str(work / "digits.pt")],
             "png": user + ["--images", str(work / "digits")], "png-pixels": user + ["--images", str(work / "digits-8bit.pt")]}
    records, commands = [], []
    for method in ("dsg", "dps"):
        samples = {}
        for path, extra in paths.items():
            out = work / f"{method}-{path}"
            argv = ["sample", "digits-unet", "--method", method, "--eta", "1", "--steps", str(steps), "-n", str(n), *extra,
                    "--out", str(out), "--no-progress"]
            commands.append("onmanifold " + " ".join(shlex.quote(a) for a in argv))
            if main(argv) != 0:
                raise SystemExit(f"failed: {commands[-1]}")
            info = json.loads((out / "samples.json").read_text())
            samples[path] = torch.load(out / "samples.pt", weights_only=True)
            records.append({"method": method, "path": path, "psnr": info["psnr"], "ssim": info["ssim"]})
        for a, b in (("bed", "tensor"), ("png", "png-pixels"), ("bed", "png")):
            records.append({"method": method, "compare": f"{a} vs {b}", "samples_identical": bool(torch.equal(samples[a], samples[b])),
                            "max_abs_sample_difference": float((samples[a] - samples[b]).abs().max())})
    return {"n": n, "steps": steps, "records": records, "commands": commands,
            "truth_quantisation_max_abs": float((pixels - truth).abs().max())}


def _digits_note() -> str:
    """Why the tables keep four decimals: they compare paths within one run; across machines the values move by the
    rounding spread measured for the DSG suite (docs/results/precision.md)."""
    from onmanifold_bench.spreads import load_suite_spread

    loaded = load_suite_spread("dsg")
    spreads = loaded["spreads"] if loaded else {}
    moved = ", ".join(f"{m.upper()} {k.upper()} {spreads[(m, k)]:.2g}" for m in ("dsg", "dps") for k in ("psnr", "ssim") if (m, k) in spreads)
    return ("Digits: the tables keep four decimals because they compare the paths within one run on one machine, where equal "
            "means bit-identical. On another machine each value itself may move by its rounding spread (the largest over the DSG "
            f"suite's probes, docs/results/precision.md: {moved or 'not measured'}); the differences between paths stay.")


def page(result: dict, command: str, date: str) -> str:
    rows = [r for r in result["records"] if "path" in r]
    comps = [r for r in result["records"] if "compare" in r]
    lines = [
        "# The bed's path and the user-data path give the same numbers",
        "",
        f"Run {date}: `{command}` (script: `docs/results/user-data.py`; raw numbers: `user-data.json`).",
        "",
        f"Digits box inpainting (4x4 hole, sigma_y = 0.05), `digits-unet`, DDIM eta = 1 with {result['steps']} steps, seed 0, "
        f"n = {result['n']} held-out digits; DSG at g_r = 0.2 and DPS at zeta = 1 (the command-line defaults, not tuned). "
        "The same problem is posed four ways: `bed` = `--task box`; `tensor` = `--operator inpaint --mask MASKS/ --images digits.pt` "
        "(the bed's images written out as a tensor file, its masks as PNGs); `png` = `--images digits/` (the images as 8-bit PNGs); "
        "`png-pixels` = the PNGs' own pixels as a tensor.",
        "",
        "| method | path | PSNR (dB) | SSIM |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['method'].upper()} | {r['path']} | {r['psnr']:.4f} | {r['ssim']:.4f} |" for r in rows]
    lines += ["", "| method | comparison | samples bit-identical | max abs sample difference |", "|---|---|---|---|"]
    lines += [f"| {r['method'].upper()} | {r['compare']} | {'yes' if r['samples_identical'] else 'no'} | {r['max_abs_sample_difference']:.3g} |"
              for r in comps]
    lines += [
        "",
        "Reading: the tensor path reproduces the bed's path bit for bit (samples and metrics), so masks read from PNGs, "
        "`--operator inpaint` and `--images` add nothing. The PNG path equals the tensor of its own 8-bit pixels bit for bit; "
        "it differs from the bed's path only because 8-bit PNGs cannot hold the digits' 17 grey levels (x = k/8 - 1) exactly: "
        f"the images move by at most {result['truth_quantisation_max_abs']:.4f} on the [-1, 1] scale, and the numbers above show what that does.",
        "",
        _digits_note(),
        "",
        "Commands (run by the script):",
        "",
        "```bash",
        *result["commands"],
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--work", default="runs/user-data")
    a = p.parse_args()
    command = "python docs/results/user-data.py " + " ".join(shlex.quote(v) for v in sys.argv[1:])
    date = datetime.date.today().isoformat()
    result = run(a.n, a.steps, Path(a.work))
    write_json_atomic(RESULTS / "user-data.json", {"command": command.strip(), "date": date, **result})
    write_text_atomic(RESULTS / "user-data.md", page(result, command.strip(), date))
    print(f"wrote {RESULTS / 'user-data.md'}")
