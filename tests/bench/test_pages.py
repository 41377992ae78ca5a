"""The results pages: each suite's report writer on a tiny run directory of finished records, and a committed page
regenerated from its committed JSON (``--import-results``) with the same tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onmanifold.cli import main
from onmanifold_bench.runner import Cell

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


@pytest.fixture(autouse=True)
def _no_measured_spreads(tmp_path, monkeypatch):
    """The page tests check the stored digits; the spreads' effect has its own test (test_pages_print_the_digits_the_spread_supports)."""
    import onmanifold_bench.precision as precision
    import onmanifold_bench.spreads as spreads

    monkeypatch.setattr(precision, "SPREAD_FILE", tmp_path / "no-precision.json")
    monkeypatch.setattr(spreads, "SPREAD_FILE", tmp_path / "no-precision.json")  # where the pages read them


def _rec(method: str, setting: dict, metrics: dict, shard: int = 0, seeds: tuple = ()) -> dict:
    return {"cell": Cell(method, setting, shard, seeds).describe(), "metrics": metrics, "seconds": 1.0, "finished_at": "2026-01-01T00:00:00+00:00",
            "inputs": []}


def _page(suite_name: str, records: list[dict], tmp_path: Path, **kw) -> str:
    from onmanifold_bench import SUITES

    suite = SUITES()[suite_name](False, tmp_path / "run")
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    path = suite.report(records, results, "onmanifold bench " + suite_name, tmp_path / "run")
    assert path == results / f"{suite_name}.md" and path.is_file()
    return path.read_text()


def test_dsg_page(tmp_path):
    base = {"bed": "digits", "task": "box"}
    records = [
        _rec("dps", {**base, "steps": 100, "n": 256}, {"zeta": 1.0, "psnr": 20.1234, "ssim": 0.81234, "fd": 3.456, "acc": 0.9, "s_per_sample": 0.0123}),
        _rec("dsg", {**base, "steps": 100, "k": 1, "g_r": 0.2, "n": 256}, {"psnr": 21.3456, "ssim": 0.85, "fd": 2.5, "acc": 0.95, "s_per_sample": 0.011}),
        _rec("dps", {**base, "steps": 1000, "n": 256, "zeta_grid": [0.1, 0.3, 1.0, 3.0]},
             {"zeta": 0.3, "psnr": 22.0, "ssim": 0.9, "fd": 2.0, "acc": 0.97, "s_per_sample": 0.5}),
        _rec("label-dps", {"bed": "digits", "steps": 100, "n": 256}, {"acc": 0.8, "fd": 5.25, "s_per_sample": 0.02, "zeta": 3.0}),
        _rec("step-time", {**base, "steps": 50, "n": 64, "repeats": 5},
             {"ratio_guided_dsg_over_dps": 1.01, "ratio_unguided_dsg_over_dps": 0.35, "ratio_guided_all": [1.0, 1.02], "ratio_unguided_all": [0.3]}),
    ]
    page = _page("dsg", records, tmp_path)
    assert "## digits: box" in page
    assert "| 100 | 1 | 20.12 | 21.35 | 0.812 | 0.85 | 3.46 | 2.5 | 0.9 | 0.95 | 0.0123 | 0.011 | 1 / 0.2 |" in page
    assert "| 1000 | 0.3 | 22 | - | 0.9 | - | 2 | - | 0.97 | - | 0.5 | - | 5 / 0.2 |" in page
    assert "| label-dps | zeta=3.0 | 0.8 | 5.25 | 0.02 |" in page
    assert "DSG has the better FD in 1, the worse in 0, within the rounding spread in 0" in page  # spreads off here: no margin
    assert "target <= 1.05" in page  # the project's target, from onmanifold_bench.paper_numbers


def test_tag_page(tmp_path):
    def toy(variant, w1, **extra):
        return _rec("toy", {"eps": "mlp", "variant": variant, "seed": 0, "n": 2000}, {"w1": w1, "tg": 5.0, "tg_exact": 4.0, **extra})

    records = [_rec("toy-val", {"eps": "mlp", "phi": "learned", "omega0": 1.0, "n": 2000}, {"w1": 2.5}),
               toy("clean", 1.0), toy("drift", 3.0), toy("tag-learned", 2.0, omega0=1.0),
               _rec("cost", {"bed": "digits", "steps": 50, "n": 256, "repeats": 2},
                    {"ratio_tag_over_plain": 1.5, "ratio_dps_tag_over_dps": 1.2, "predictor_share_of_tag_time": 0.25,
                     "all_tag_over_plain": [1.4, 1.6], "all_dps_tag_over_dps": [1.2, 1.2]})]
    page = _page("tag", records, tmp_path)
    assert "| eps model | run | omega0 | W1 | TG (learned predictor) | TG (exact posterior) |" in page
    assert "| mlp | drift | - | 3.000 +- 0.000 | 5 | 4 |" in page and "| mlp | tag-learned | 1 | 2.000 +- 0.000 | 5 | 4 |" in page
    assert "Paper: W1 6.458 -> 1.713" in page  # the paper's number, from onmanifold_bench.paper_numbers
    assert "toy (mlp eps): drift W1 3.00 -> 2.00 with TAG (learned predictor), clean 1.00: TAG closes 50 % of the drift gap (holds)." in page
    assert "TAG step / plain step = 1.500 (runs 1.400, 1.600)" in page


def test_compose_page(tmp_path):
    def test_cell(method, psnr, **extra):
        return _rec(method, {"n": 128}, {"chosen_zeta": 10.0, "chosen_g_r": 0.1, "chosen_omega0": 1.0, "psnr": psnr, "ssim": 0.91234,
                                         "fd": 1.5, "gt_artifact_rate": 0.0625, "s_per_sample": 0.25, **extra})

    records = [_rec("val-dsg", {"g_r": 0.1, "n": 32}, {"psnr": 35.0}), test_cell("dsg", 36.4831),
               test_cell("dsg+tag+asced", 36.07, corrected_share=0.5)]
    page = _page("compose", records, tmp_path)
    assert "Chosen on validation: DPS zeta = 10, DSG g_r = 0.1, TAG omega0 = 1." in page
    assert "| method | PSNR | SSIM | FD | GT artifact rate | ASCED corrected | s/sample |" in page
    assert "| dsg | 36.48 | 0.9123 | 1.500 | 0.062 | - | 0.250 |" in page
    assert "| dsg+tag+asced | 36.07 | 0.9123 | 1.500 | 0.062 | 0.500 | 0.250 |" in page
    assert "corrected 50 % of the samples" in page


def test_asced_page(tmp_path, monkeypatch):
    """The ASCED page from its summary and overhead records (here the committed ones: no sample artifacts in the run dir)."""
    import onmanifold_bench.asced as asced
    import onmanifold_bench.spreads as spreads

    monkeypatch.setattr(asced, "_saturation", lambda n: [0.5] * asced.STEPS)  # a measurement the page makes itself (seconds)
    monkeypatch.setattr(spreads, "SPREAD_FILE", RESULTS / "precision.json")  # the committed page's digits (its ΔFD column) follow them
    committed = json.loads((RESULTS / "asced.json").read_text())["records"]
    records = [r for r in committed if r["cell"]["method"] in ("summary", "overhead", "snapshot-gt-rate")]
    page = _page("asced", records, tmp_path)
    rows = [ln for ln in (RESULTS / "asced.md").read_text().splitlines() if ln.startswith("| original |") or ln.startswith("| asced |")]
    assert len(rows) >= 4 and all(row in page for row in rows)  # generation-quality and digits tables, number for number
    assert "Paper (Table 2, hand-picked 100 + 100 images at 256x256): ASCED 56.7-70.3 % image-level accuracy." in page
    assert "step-001000 85.8 % (n = 500)" in page
    assert "needs the samples of the original cells" in page  # said, not silently dropped
    for fig in ("asced_phases_shapes.png", "asced_phases_digits.png", "asced_tc_sweep.png"):
        assert (tmp_path / "results" / "figures" / fig).is_file()


def test_compose_page_regenerated_from_its_committed_json(tmp_path, capsys, monkeypatch):
    """``onmanifold bench compose --import-results docs/results/compose.json`` into a scratch results dir: same tables
    (with the committed rounding spreads, as the committed page was written)."""
    import onmanifold_bench.precision as precision
    import onmanifold_bench.spreads as spreads

    monkeypatch.setattr(precision, "SPREAD_FILE", RESULTS / "precision.json")
    monkeypatch.setattr(spreads, "SPREAD_FILE", RESULTS / "precision.json")  # where the pages read them
    res = tmp_path / "results"
    assert main(["bench", "compose", "--import-results", str(RESULTS / "compose.json"), "--run-dir", str(tmp_path / "run"),
                 "--results-dir", str(res), "--no-progress"]) == 0
    assert "imported 16 finished cells" in capsys.readouterr().out
    for name in ("compose.md",):
        committed = [ln for ln in (RESULTS / name).read_text().splitlines() if ln.startswith("|")]
        assert committed and [ln for ln in (res / name).read_text().splitlines() if ln.startswith("|")] == committed
    assert json.loads((res / "compose.json").read_text())["records"][0]["metrics"] == \
        json.loads((RESULTS / "compose.json").read_text())["records"][0]["metrics"]


@pytest.mark.parametrize("suite", ["models", "dsg", "tag", "asced", "compose"])
def test_committed_summary_imports_every_record(tmp_path, suite):
    """Committed summaries predate checksums and input lists: every record still imports (as a legacy record)."""
    from onmanifold_bench import SUITES
    from onmanifold_bench.runner import finished_keys, import_records

    s = SUITES()[suite](False, tmp_path)
    written, kept, dropped, _ = import_records(s, tmp_path, RESULTS / f"{suite}.json")
    n = len(json.loads((RESULTS / f"{suite}.json").read_text())["records"])
    if suite == "models":  # the speed cell's identity holds the machine's thread count
        assert written + len(dropped) == n
    else:
        assert (written, kept, dropped) == (n, 0, []) and len(finished_keys(s, tmp_path)) == n


def test_pages_print_the_digits_the_spread_supports(tmp_path, monkeypatch):
    """With measured spreads a metric loses the decimals rounding moves (DPS FD spread 0.25: no decimal), keeps the stored
    digits where the spread is small, and the page says where its digits come from and which metrics had no probe."""
    import onmanifold_bench.precision as precision
    import onmanifold_bench.spreads as spreads

    spread_file = tmp_path / "precision.json"
    probes = [{"method": "dps", "setting": "probe", "base": {"psnr": 20.1, "fd": 3.4, "ssim": 0.81}, "spreads": {"psnr": 0.43, "fd": 0.25, "ssim": 0.01}},
              {"method": "dsg", "setting": "probe", "base": {"psnr": 21.3, "fd": 2.5, "ssim": 0.85}, "spreads": {"psnr": 0.009, "fd": 0.005, "ssim": 6e-6}}]
    spread_file.write_text(json.dumps({"suites": {"compose": {"command": "onmanifold bench compose --measure-spread", "date": "2026-12-03",
                                                              "conditions": list(precision.CONDITIONS), "probes": probes}}}))
    monkeypatch.setattr(precision, "SPREAD_FILE", spread_file)
    monkeypatch.setattr(spreads, "SPREAD_FILE", spread_file)  # where the pages read them

    def test_cell(method, psnr, **extra):
        return _rec(method, {"n": 128}, {"chosen_zeta": 10.0, "chosen_g_r": 0.1, "chosen_omega0": 1.0, "psnr": psnr, "ssim": 0.91234,
                                         "fd": 1.5, "gt_artifact_rate": 0.0625, "s_per_sample": 0.25, **extra})

    records = [_rec("val-dsg", {"g_r": 0.1, "n": 32}, {"psnr": 35.0}), test_cell("dps", 30.4031), test_cell("dsg", 36.4831)]
    page = _page("compose", records, tmp_path)
    assert "| dps | 30 | 0.91 | 2 | 0.062 | - | 0.250 |" in page  # psnr spread 0.43, ssim 0.01, fd 0.25
    assert "| dsg | 36.48 | 0.9123 | 1.50 | 0.062 | - | 0.250 |" in page  # small spreads: the stored digits (fd 0.005: two decimals)
    assert "Digits: each metric is printed with no more decimals than its rounding spread supports" in page
    assert "measured 2026-12-03 by `onmanifold bench compose --measure-spread`" in page
    assert "Not probed, printed as stored: gt_artifact_rate." in page


def test_measure_suite_spread_records_each_method_and_metric_and_resumes(tmp_path, monkeypatch):
    """``measure_suite_spread`` runs every probe under the four conditions, stores max - min per (method, metric) beside the
    demo's spreads, and a rerun reuses the finished (probe, condition) pairs instead of recomputing them."""
    import onmanifold_bench.precision as precision

    calls = []

    def probe():
        calls.append(1)
        return {"fd": 2.0 + 0.01 * len(calls)}

    monkeypatch.setattr(precision, "SUITE_PROBES", {"dsg": lambda: [precision.Probe("dsg", "dps", "a probe", probe)]})
    out = tmp_path / "precision.json"
    out.write_text(json.dumps({"spreads": {"e | m": {"FD": 0.1}}, "values": {"base": [{"experiment": "e", "method": "m", "FD": 1.0}]},
                               "command": "demo", "date": "d", "conditions": []}))
    precision.measure_suite_spread("dsg", out=out, command="onmanifold bench dsg --measure-spread", scratch=tmp_path / "scratch.json")
    record = json.loads(out.read_text())
    assert record["spreads"] == {"e | m": {"FD": 0.1}}  # the demo's spreads are kept
    assert len(calls) == 4 and abs(record["suites"]["dsg"]["probes"][0]["spreads"]["fd"] - 0.03) < 1e-12
    assert precision.load_suite_spread("dsg", out)["spreads"] == {("dps", "fd"): record["suites"]["dsg"]["probes"][0]["spreads"]["fd"]}
    precision.measure_suite_spread("dsg", out=out, scratch=tmp_path / "scratch.json")
    assert len(calls) == 4  # resumed: nothing recomputed
    assert "Rounding spread of the results pages' numbers" in out.with_suffix(".md").read_text()


def test_measure_spread_takes_no_cell_filter(tmp_path, capsys):
    assert main(["bench", "dsg", "--measure-spread", "--only", "method=dps", "--run-dir", str(tmp_path / "r")]) == 2
    assert "--measure-spread" in capsys.readouterr().err


def test_the_eps_perturbation_reaches_latent_models_and_keeps_their_parts():
    """The spread conditions perturb eps by 1 +- 1e-6 through :class:`ScaledEps`, which keeps every other part of the model
    (a latent model's decode, encode and encode_prompt, its data range): the latent suite runs perturbed, and the
    perturbation is exactly the model's eps times the scale; full_prediction is hidden, so no eps escapes the scale.
    A learned-variance model is refused."""
    import dataclasses

    import torch

    import onmanifold.model as model_module
    from onmanifold_bench import models
    from onmanifold_bench.precision import ScaledEps, _condition

    with _condition("eps+1e-06"):
        loaded = models.diffusion_model("shapes-latent")
        assert isinstance(loaded.model, ScaledEps) and loaded.data_range is None
        z = torch.randn(2, *loaded.sample_shape, generator=torch.Generator().manual_seed(0))
        cond = loaded.encode_prompt(["", ""])
        t = torch.tensor([300, 700])
        with torch.no_grad():
            assert torch.equal(loaded.model(z, t, cond), loaded.model.inner(z, t, cond) * (1 + 1e-6))
            assert torch.equal(loaded.decode(z), dataclasses.replace(loaded, model=loaded.model.inner).decode(z))
    assert not isinstance(models.diffusion_model("shapes-latent").model, ScaledEps)  # restored after the condition
    assert model_module.load_diffusion_model.__name__ == "load_diffusion_model"

    digits = models.diffusion_model("digits-unet").model
    assert hasattr(digits, "full_prediction") and not hasattr(ScaledEps(digits, 1.0), "full_prediction")  # every eps through the scale

    class LearnedVariance(torch.nn.Module):
        learned_variance = True

    with pytest.raises(ValueError, match=r"^model: a learned-variance model"):
        ScaledEps(LearnedVariance(), 1.0)


def test_a_win_counts_only_beyond_both_rounding_spreads():
    """The DSG page counts DSG's wins and losses against DPS only where the difference exceeds the two methods' rounding
    spreads together; a smaller difference is reported as within the spread, never as a win."""
    from onmanifold_bench.tables import MetricFormat

    fm = MetricFormat("dsg", {("dps", "fd"): 0.2, ("dsg", "fd"): 0.05, ("dps", "psnr"): 0.1})
    assert fm.outcome(3.0, 3.2, "fd", "dsg", "dps", lower_is_better=True) == 0  # 0.2 < 0.25
    assert fm.outcome(3.0, 3.3, "fd", "dsg", "dps", lower_is_better=True) == 1
    assert fm.outcome(3.3, 3.0, "fd", "dsg", "dps", lower_is_better=True) == -1
    assert fm.outcome(20.3, 20.0, "psnr", "dsg", "dps", lower_is_better=False) == 1  # dsg has no psnr probe: dps's 0.1 is the suite's largest
    assert fm.outcome(20.15, 20.0, "psnr", "dsg", "dps", lower_is_better=False) == 0


def test_claims_print_fewer_digits_where_the_spread_is_large(tmp_path, monkeypatch):
    """The claim sentences go through the page's MetricFormat like its tables: a W1 spread of 0.15 leaves the toy claim no
    decimal (stored rule: two), and a difference (TAG's few-step FD gain) takes both values' spreads summed: FD spread 0.008
    keeps each FD's two decimals in the table, but the gain, spread 0.016, keeps one."""
    import onmanifold_bench.spreads as spreads

    spread_file = tmp_path / "precision.json"
    probes = [{"method": "drift", "setting": "probe", "spreads": {"w1": 0.15}}, {"method": "corrupted", "setting": "probe", "spreads": {"fd": 0.008}}]
    spread_file.write_text(json.dumps({"suites": {"tag": {"command": "onmanifold bench tag --measure-spread", "date": "2026-12-03", "probes": probes}}}))
    monkeypatch.setattr(spreads, "SPREAD_FILE", spread_file)

    def toy(variant, w1, **extra):
        return _rec("toy", {"eps": "mlp", "variant": variant, "seed": 0, "n": 2000}, {"w1": w1, "tg": 5.0, "tg_exact": 4.0, **extra})

    def fewstep(variant, fd):
        return _rec("fewstep", {"nfe": 3, "spacing": "leading", "eta": 0.0, "variant": variant, "n": 1000}, {"fd": fd, "tg": 7.0, "omega0": 2.0})

    records = [toy("clean", 1.0123), toy("drift", 3.0412), toy("tag-learned", 2.0113, omega0=1.0), fewstep("none", 5.1234), fewstep("tag", 3.9876)]
    page = _page("tag", records, tmp_path)
    assert "toy (mlp eps): drift W1 3 -> 2 with TAG (learned predictor), clean 1: TAG closes" in page
    assert "| leading, eta 0 | 3 | 5.12 | 3.99 | 2 |" in page  # each FD: its own spread, two decimals
    assert "FD gain of TAG per NFE 3: +1.1 — largest at the fewest steps (holds)." in page  # the difference: one decimal
    assert "Digits: each metric is printed with no more decimals" in page

