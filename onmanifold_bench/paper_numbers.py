"""The papers' reference numbers that the results pages compare against, as data.

One dict per paper; each entry names where in the paper the number stands. The pages format these
values (they never carry a paper's number as a literal inside a sentence), and the verdicts on the
pages ("held" / "did not hold") are computed against them. Project targets that are not a paper's
number (cost ceilings the project set itself) are in :data:`TARGETS`.
"""

from __future__ import annotations

__all__ = ["DSG", "TAG", "ASCED", "TARGETS"]

DSG: dict = {
    "paper": "Yang et al., Guidance with Spherical Gaussian Constraint for Conditional Diffusion, ICML 2024 (docs/methods/dsg.md)",
    # Table 3: sampler steps -> (interval k, guidance rate g_r); the inpainting row serves box and random masks
    # (docs/methods/dsg.md#D15). The 20-step deblurring entry is not confirmed by the paper: the default row.
    "table3": {
        "inpainting": {1000: (5, 0.2), 100: (1, 0.2), 50: (1, 0.2), 20: (1, 0.2)},
        "sr": {1000: (20, 0.2), 100: (2, 0.1), 50: (1, 0.1), 20: (1, 0.2)},
        "blur": {1000: (5, 0.2), 100: (1, 0.1), 50: (1, 0.1), 20: (1, 0.2)},
    },
}

TAG: dict = {
    "paper": "Park, Jung, Bae, Yun, Temporal Alignment Guidance: On-Manifold Sampling in Diffusion Models, arXiv 2510.11057 (2025) (docs/methods/tag.md)",
    # Sec. 2, the toy with drift: W1 of the drifted sampler and of the sampler with TAG
    "toy_w1": {"drift": 6.458, "tag": 1.713},
}

ASCED: dict = {
    "paper": "Cao, Zhao, Patras, Gong, Temporal Score Analysis for Understanding and Correcting Diffusion Artifacts, CVPR 2025 (docs/methods/asced.md)",
    # Table 1: FID gain of ASCED over the original sampler, absolute and relative, over the paper's data sets
    "table1_fid_gain": (0.26, 1.70),
    "table1_fid_gain_percent": (1, 6),
    # Table 1: State Replacement is worse than the original sampler on this many of the paper's data sets
    "state_replacement_worse_on": (3, 5),
    # Table 2: image-level detection accuracy, on hand-picked positive + negative images at this resolution
    "table2_accuracy": (0.567, 0.703),
    "table2_images": (100, 100),
    "table2_resolution": 256,
    # Fig. 8: the correction pays off up to T_c / T of about this value and declines after it
    "fig8_best_tc_frac": 0.48,
    "fig8_best_window": (0.40, 0.52),
}

TARGETS: dict = {
    # a guided DSG step against a DPS step, same run (docs/results/dsg.md, claim (c))
    "dsg_step_over_dps_step": 1.05,
    # ASCED's detection + correction against plain DDIM-25, same samples (docs/results/asced.md)
    "asced_over_plain": 1.10,
    # the onmanifold loop against diffusers' DDIMPipeline, same UNet (docs/results/models.md)
    "loop_over_ddim_pipeline": 1.05,
}
