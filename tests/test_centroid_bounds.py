"""benchmarks/centroid_bounds.py: the translations that read the labels (geometric median of the
landmark displacements, gland overlap), against known answers and SciPy's optimiser."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize

from labelreg.data.pipeline import read_case
from tests.test_evaluation import CASES, paired_of, translated  # noqa: F401 (fixture)

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "centroid_bounds.py"


@pytest.fixture(scope="module")
def bounds():
    spec = importlib.util.spec_from_file_location("centroid_bounds", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_geometric_median_known_answers(bounds):
    # On a line the median point; at the corners of a square its centre; a point with most of
    # the weight (repeated) is the minimiser itself.
    line = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    np.testing.assert_allclose(bounds.geometric_median(line), [1.0, 0.0], atol=1e-6)
    square = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    np.testing.assert_allclose(bounds.geometric_median(square), [1.0, 1.0], atol=1e-6)
    heavy = np.array([[3.0, 1.0, 2.0]] * 4 + [[0.0, 0.0, 0.0]])
    np.testing.assert_allclose(bounds.geometric_median(heavy), [3.0, 1.0, 2.0], atol=1e-6)


@pytest.mark.parametrize("n", [2, 3])
def test_geometric_median_minimises_the_summed_distance(bounds, n):
    points = np.random.default_rng(n).normal(size=(7, n)) * [3.0, 1.0, 2.0][:n]
    found = bounds.geometric_median(points)

    def total(x):
        return np.linalg.norm(points - x, axis=1).sum()

    reference = optimize.minimize(total, points.mean(0), method="Nelder-Mead",
                                  options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000}).x
    assert total(found) <= total(reference) + 1e-7
    np.testing.assert_allclose(found, reference, atol=1e-4)


def test_label_translations_recover_the_known_shifts(bounds, translated):  # noqa: F811
    paired = paired_of(translated)
    moving, fixed = ([read_case(paired, role, case) for case in range(paired.num_cases)]
                     for role in ("moving_label", "fixed_label"))
    best = bounds.best_shifts(moving, fixed, paired.fixed_spacings(()))
    overlap = bounds.overlap_shifts(moving, fixed, [np.zeros(3)] * paired.num_cases, radius=4)
    for case, (name, (shift, landmarks)) in enumerate(CASES.items()):
        # Every landmark moved by the same shift: the best translation is that shift; a case
        # without landmarks gets none. The glands are balls moved by whole voxels, so their
        # overlap is complete exactly at the shift.
        expected = np.asarray(shift, float) if landmarks else np.zeros(3)
        np.testing.assert_allclose(best[case], expected, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(overlap[case], shift, err_msg=name)


def test_labels_only_command_prints_the_bounds(bounds, translated, capsys):  # noqa: F811
    assert bounds.main([str(translated)]) == 0
    rows = {line[:30].strip(): line[30:].split() for line in capsys.readouterr().out.splitlines()}
    # Best and overlap translations are the exact shifts of 4 of the 5 cases (case2 has no
    # landmark, so no best shift and no TRE): median Dice 1 and TRE 0.
    assert [float(v) for v in rows["best translation"]] == [1.0, 0.0]
    assert [float(v) for v in rows["overlap translation"]] == [1.0, 0.0]
    assert float(rows["identity"][1]) > 1.0
    assert "network" not in rows
