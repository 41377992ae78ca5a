"""The demo's numbers hold the digits they show, and the README's demo table is what the code prints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from onmanifold_bench.demo import readme_table, reproducible_columns, update_readme
from onmanifold_bench.precision import SPREAD_FILE, decimals_for, format_with_spread, load_demo_spread

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "value, spread, decimals",
    [(7.03, 0.15, 0), (30.4, 0.27, 0), (0.9219, 0.003, 2), (0.9219, 0.01, 2), (0.9219, 0.0099, 2), (123.4, 1e-9, 1), (0.5, 0.0, None)],
)
def test_decimals_follow_the_spread(value, spread, decimals):
    assert decimals_for(value, spread) == decimals


def test_the_last_printed_digit_is_never_finer_than_the_spread():
    for spread in (3e-5, 0.002, 0.04, 0.5, 2.0):
        d = decimals_for(0.123456 if spread < 0.1 else 31.4159, spread)
        assert 10.0 ** (-d) >= spread or d == 0


def test_bad_spread_is_refused():
    with pytest.raises(ValueError, match="spread"):
        decimals_for(1.0, -0.1)
    with pytest.raises(ValueError, match="spread"):
        decimals_for(1.0, math.nan)


def test_format_with_spread():
    assert format_with_spread(7.0312, 0.15) == "7"
    assert format_with_spread(0.92188, 0.004) == "0.92"
    assert format_with_spread(0.92188, None) == "0.9219"
    assert format_with_spread("-", 0.1) == "-"


def test_update_readme_rewrites_only_the_marked_block_and_drops_wall_times(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- demo-table -->\n```\n| old |\n```\n<!-- /demo-table -->\nrest\n")
    update_readme(readme, "| method | FD | s/sample |\n|---|---|---|\n| DSG | 0.99 | 0.0228 |")
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n")
    assert readme_table(text) == "| method | FD |\n|---|---|\n| DSG | 0.99 |"
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    with pytest.raises(ValueError, match="README"):
        update_readme(bare, "| a |\n|---|\n| 1 |")


def test_the_committed_spreads_cover_every_reproducible_column_of_the_readme():
    spreads = load_demo_spread()
    if spreads is None:
        pytest.skip(f"{SPREAD_FILE} not measured in this checkout")
    cells = reproducible_columns(readme_table((ROOT / "README.md").read_text()))
    header = cells[0]
    for row in cells[1:]:
        key = f"{row[header.index('experiment')]} | {row[header.index('method')]}"
        assert key in spreads, key


@pytest.mark.timeout(900)
def test_the_readme_demo_table_is_what_the_code_prints(tmp_path, capsys):
    """Runs the whole demo (about 80 s on 2 quiet cores) and compares every non-timing cell with the README."""
    from onmanifold.cli import main

    if load_demo_spread() is None:
        pytest.skip(f"{SPREAD_FILE} not measured: the README's table was not written by --update-readme")

    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    table = "\n".join(line for line in printed.splitlines() if line.startswith("|"))
    expected = reproducible_columns(readme_table((ROOT / "README.md").read_text()))
    got = reproducible_columns(table)
    assert got[0] == expected[0] and len(got) == len(expected)
    for row_got, row_expected in zip(got[1:], expected[1:]):
        for a, b in zip(row_got, row_expected):
            assert _same_to_the_last_digit(a, b), (row_got, row_expected)


def _same_to_the_last_digit(a: str, b: str) -> bool:
    """Equal text, or numbers printed with the same decimals that differ by at most one unit of the last digit.

    The last digit can flip when a value sits on a rounding boundary and its spread crosses it.
    """
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    decimals = len(a.partition(".")[2])
    return decimals == len(b.partition(".")[2]) and abs(x - y) <= 1.01 * 10.0 ** (-decimals)


def test_the_last_digit_tolerance():
    assert _same_to_the_last_digit("0.92", "0.93") and _same_to_the_last_digit("7", "8")
    assert not _same_to_the_last_digit("0.92", "0.94") and not _same_to_the_last_digit("0.92", "0.9")
    assert not _same_to_the_last_digit("DSG", "DPS")
