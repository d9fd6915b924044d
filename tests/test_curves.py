"""Learning curves drawn from runs' validation.csv (``python -m labelreg.curves``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from labelreg.curves import main, plot_learning_curves, read_history
from labelreg.errors import ConfigError, DataError


def _run(folder, rows, header="step,dice,tre_mm"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "validation.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return folder


def test_read_history_sorts_by_step_and_reads_empty_cells_as_nan(tmp_path):
    run = _run(tmp_path / "run", ["200,0.7,", "100,0.6,15.5"])
    history = read_history(run)
    assert history["step"] == [100.0, 200.0]
    assert history["dice"] == [0.6, 0.7]
    assert history["tre_mm"][0] == 15.5 and math.isnan(history["tre_mm"][1])
    assert read_history(run / "validation.csv") == history


def test_read_history_names_the_missing_or_broken_file(tmp_path):
    with pytest.raises(DataError, match=r"nothing[/\\]validation\.csv: no validation history"):
        read_history(tmp_path / "nothing")
    broken = _run(tmp_path / "broken", ["a,b,c"])
    with pytest.raises(DataError, match=r"broken[/\\]validation\.csv: not a validation history"):
        read_history(broken)
    empty = _run(tmp_path / "empty", [])
    with pytest.raises(DataError, match="has no rows"):
        read_history(empty)


def test_plot_draws_one_panel_per_figure_with_every_run(tmp_path):
    one = _run(tmp_path / "fold1" / "run", ["50,0.6,16", "100,0.7,14"])
    two = _run(tmp_path / "fold2" / "run", ["50,0.5,18", "100,0.75,12"])
    out = plot_learning_curves({"fold 1": one, "fold 2": two}, tmp_path / "curves.png",
                               hlines=[("dice", 0.5, "identity"), ("tre_mm", math.nan, "x")])
    with Image.open(out) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"))
    # Two 5.2 x 3.8 inch panels at 110 dpi.
    assert (width, height) == (round(2 * 5.2 * 110), round(3.8 * 110))
    # Matplotlib's first two line colours (blue and orange) are both drawn.
    blue = np.all(np.abs(pixels.astype(int) - (31, 119, 180)) < 30, axis=-1)
    orange = np.all(np.abs(pixels.astype(int) - (255, 127, 14)) < 30, axis=-1)
    assert blue.sum() > 50 and orange.sum() > 50
    # A figure no run has is skipped; asking only for such figures is an error.
    single = plot_learning_curves({"a": one}, tmp_path / "one.png", figures=("dice", "nope"))
    with Image.open(single) as image:
        assert image.size[0] == round(5.2 * 110)
    with pytest.raises(ConfigError, match=r"none of the figures \['nope'\]"):
        plot_learning_curves({"a": one}, tmp_path / "none.png", figures=("nope",))
    assert not (tmp_path / "none.png").exists()


def test_command_writes_the_png_and_reports_errors(tmp_path, capsys):
    run = _run(tmp_path / "mrus", ["100,0.7,15", "200,0.72,14"])
    out = tmp_path / "curve.png"
    assert main([str(run), "--output", str(out), "--hline", "dice=0.5:identity",
                 "--title", "mrus"]) == 0
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out
    assert main([str(tmp_path / "missing"), "--output", str(out)]) == 2
    assert "no validation history" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(run), "--output", str(out), "--hline", "dice:0.5"])
    assert "expected FIGURE=VALUE[:LABEL]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(run), "--output", str(out), "--labels", "a", "b"])
    assert "one label per input" in capsys.readouterr().err


CASES_CSV = """row,case,label_index,dice_identity,dice,tre_mm_identity,tre_mm,landmarks,lost,lost_identity
case,obs001,0,0.4,0.8,12.0,4.0,2,0,0
landmark,obs001,1,0.1,0.5,11.0,3.0,1,0,0
case,obs002,0,0.5,0.85,9.0,,0,0,0
case,obs003,0,0.3,0.7,20.0,8.5,3,1,0
"""


def test_case_tre_plot_draws_every_case_with_a_tre(tmp_path, capsys):
    from labelreg.curves import plot_case_tre, read_cases

    path = tmp_path / "crossval_cases.csv"
    path.write_text(CASES_CSV)
    cases = read_cases(path)
    assert [c["case"] for c in cases] == ["obs001", "obs002", "obs003"]
    assert cases[0]["tre_mm"] == 4.0 and math.isnan(cases[1]["tre_mm"])
    out = plot_case_tre(cases, tmp_path / "tre.png")
    with Image.open(out) as image:
        pixels = np.asarray(image.convert("RGB"))
    # The registered TREs (blue) and the identity's (grey) are both drawn.
    blue = np.all(np.abs(pixels.astype(int) - (31, 119, 180)) < 30, axis=-1)
    grey = np.all(np.abs(pixels.astype(int) - (127, 127, 127)) < 20, axis=-1)
    assert blue.sum() > 30 and grey.sum() > 30
    with pytest.raises(ConfigError, match="no case has a registered TRE"):
        plot_case_tre([cases[1]], tmp_path / "none.png")
    # The command, and a CSV that is not an evaluation.
    assert main(["--cases", str(path), "--output", str(tmp_path / "cmd.png")]) == 0
    assert (tmp_path / "cmd.png").stat().st_size > 0
    (tmp_path / "other.csv").write_text("step,dice\n1,0.5\n")
    assert main(["--cases", str(tmp_path / "other.csv"), "--output", str(tmp_path / "x.png")]) == 2
    assert "expected an evaluation CSV" in capsys.readouterr().err


def test_method_comparison_puts_the_identity_first_and_every_method_on_the_same_cases(
        tmp_path, capsys):
    from labelreg.curves import comparison_columns, plot_method_comparison, read_cases

    first = tmp_path / "a.csv"
    first.write_text(CASES_CSV)
    # The same cases in another order, other registered figures.
    second = tmp_path / "b.csv"
    second.write_text(
        "row,case,label_index,dice_identity,dice,tre_mm_identity,tre_mm,landmarks,lost,"
        "lost_identity\n"
        "case,obs003,0,0.3,0.6,20.0,10.0,3,0,0\n"
        "case,obs001,0,0.4,0.9,12.0,2.0,2,0,0\n"
        "case,obs002,0,0.5,0.75,9.0,5.0,1,0,0\n")
    tables = {"recipe": read_cases(first), "other": read_cases(second)}
    columns = comparison_columns(tables)
    assert [c[0] for c in columns] == ["identity", "recipe", "other"]
    assert columns[0][1] == [0.4, 0.5, 0.3] and columns[0][2] == [12.0, 9.0, 20.0]
    assert columns[2][1] == [0.9, 0.75, 0.6] and columns[2][2] == [2.0, 5.0, 10.0]
    assert math.isnan(columns[1][2][1])  # obs002 has no landmark in the first table
    out = plot_method_comparison(tables, tmp_path / "methods.png")
    with Image.open(out) as image:
        pixels = np.asarray(image.convert("RGB"))
    grey = np.all(np.abs(pixels.astype(int) - (127, 127, 127)) < 20, axis=-1)
    blue = np.all(np.abs(pixels.astype(int) - (31, 119, 180)) < 30, axis=-1)  # C0: recipe
    assert grey.sum() > 20 and blue.sum() > 20
    # Other cases are refused, naming both tables.
    fewer = tmp_path / "c.csv"
    fewer.write_text("\n".join(second.read_text().splitlines()[:3]) + "\n")
    with pytest.raises(DataError, match="'short' was evaluated on other cases than 'recipe'"):
        comparison_columns({"recipe": read_cases(first), "short": read_cases(fewer)})
    assert main(["--compare", str(first), str(second), "--labels", "recipe", "other",
                 "--output", str(tmp_path / "cmd.png")]) == 0
    assert (tmp_path / "cmd.png").stat().st_size > 0
    assert main(["--compare", str(first), str(fewer), "--output", str(tmp_path / "x.png")]) == 2
    assert "evaluated on other cases" in capsys.readouterr().err
