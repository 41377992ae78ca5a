"""``onmanifold bench asced-mosaic`` end to end on a tiny random 64x64 UNet (issue 16 items 3-7): every cell runs, the
detectors and controls see the same trajectories, and the page renders from the records."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel


@pytest.fixture
def tiny_mosaic_model(tmp_path, monkeypatch):
    import onmanifold_bench.asced_mosaic as am
    from onmanifold import evaluate
    from onmanifold.testbeds import get_testbed

    torch.manual_seed(0)
    net = UNet2DModel(sample_size=64, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
                      down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    DDPMPipeline(net, DDPMScheduler(num_train_timesteps=1000)).save_pretrained(tmp_path / "model")
    monkeypatch.setattr(am, "MODEL", str(tmp_path / "model"))
    monkeypatch.setattr(am, "STEPS", 8)
    monkeypatch.setitem(get_testbed("mosaic").split_sizes, "reference", 24)  # 384 reference tiles instead of 16000
    evaluate._reference_features.cache_clear()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield am
    torch.set_num_threads(before)
    evaluate._reference_features.cache_clear()


def test_suite_runs_and_controls_share_the_trajectories(tiny_mosaic_model, tmp_path):
    from onmanifold.io import load_tensors
    from onmanifold_bench.runner import run_suite

    am = tiny_mosaic_model
    run_dir = tmp_path / "run"
    suite = am.asced_mosaic_suite(quick=True, run_dir=run_dir)
    records = {r["cell"]["method"]: r["metrics"] for r in run_suite(suite, run_dir, progress=False)}
    assert set(records) == {"calibration", "reference", "original", "summary", *am.CORRECTIONS}
    cal = records["calibration"]
    assert 0 <= cal["n_d"] < cal["n_c"] <= am.STEPS - 1 and len(cal["flag_rate_inside"]) == am.STEPS - 1
    art = lambda m: load_tensors(run_dir / "artifacts" / f"{next(c for c in suite.cells if c.method == m).key}.pt")  # noqa: E731
    orig = art("original")
    # ASCED's own detector saw the original trajectory up to n_c: it corrects exactly the samples the observer flagged
    assert torch.equal(art("asced")["corrected"], orig["per-image@paper"]["flagged"])
    assert torch.equal(art("random-location")["corrected"], orig["per-image@paper"]["flagged"])
    # the oracle corrects exactly the samples with a ground-truth artifact; the whole-image control re-noises 64 x 64 pixels
    assert torch.equal(art("oracle-ttc")["corrected"], orig["gt_has"])
    whole = art("whole-image")
    assert torch.equal(whole["area"][whole["corrected"]], torch.full_like(whole["area"][whole["corrected"]], 64 * 64))
    summ = records["summary"]
    assert set(summ["detection"]) == set(am.DETECTORS)
    assert set(summ["table"]) == {"original", *am.CORRECTIONS}
    for m, row in summ["table"].items():
        assert torch.isfinite(torch.tensor(row["fd"]))
        if m != "original":
            lo, hi = row["delta_fd_ci"]
            assert lo <= hi

    from onmanifold_bench.asced_mosaic_report import write_asced_mosaic_report

    page = write_asced_mosaic_report(list(run_suite(suite, run_dir, progress=False)), tmp_path / "results", "cmd").read_text()
    for heading in ("## Calibration", "## Detection", "## Correction and targeting", "## The paper's claims on this bed"):
        assert heading in page
    assert (tmp_path / "results" / "figures" / "asced_mosaic_calibration.png").is_file()


def test_page_without_records_says_not_run(tmp_path):
    from onmanifold_bench.asced_mosaic_report import write_asced_mosaic_report

    assert "Not run yet" in write_asced_mosaic_report([], tmp_path, "cmd").read_text()
