"""labelreg.crossval: a 2-fold run on 4 tiny cases, its table, its folders, one fold run alone
(``--fold``), and a rerun that resumes instead of retraining."""

from __future__ import annotations

import csv
import json

import pytest

from labelreg.crossval import CROSSVAL_COLUMNS, cross_validate, main, make_folds, read_groups
from labelreg.errors import ConfigError, DataError
from tests.test_pipeline_e2e import write_config, write_dataset


def _read(path):
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def test_make_folds_is_a_seeded_partition():
    names = [f"case{i}" for i in range(7)]
    folds = make_folds(names, 3, seed=4)
    assert sorted(n for fold in folds for n in fold) == names
    assert sorted(len(fold) for fold in folds) == [2, 2, 3]
    assert make_folds(names, 3, seed=4) == folds and make_folds(names, 3, seed=5) != folds
    with pytest.raises(ConfigError, match="at least 2"):
        make_folds(names, 1)
    with pytest.raises(ConfigError, match="only 7 cases"):
        make_folds(names, 8)


def test_make_folds_keeps_each_group_in_one_fold():
    names = [f"case{i}" for i in range(10)]
    groups = {name: f"patient{i // 3}" for i, name in enumerate(names)}  # sizes 3, 3, 3, 1
    folds = make_folds(names, 2, seed=1, groups=groups)
    assert sorted(n for fold in folds for n in fold) == names
    for fold in folds:
        for name in fold:  # every case of its group is in this fold
            assert {n for n in names if groups[n] == groups[name]} <= set(fold)
    # Greedy dealing to the smallest fold: 3+3 | 3+1 whatever the shuffle.
    assert sorted(len(fold) for fold in folds) == [4, 6]
    assert make_folds(names, 2, seed=1, groups=groups) == folds
    # One case per group is the plain shuffle's partition by another rule; still a partition.
    singles = make_folds(names, 5, seed=0, groups={n: n for n in names})
    assert sorted(len(fold) for fold in singles) == [2] * 5
    with pytest.raises(ConfigError, match="only 4 groups"):
        make_folds(names, 5, groups=groups)
    partial = {n: g for n, g in groups.items() if n != "case7"}
    with pytest.raises(ConfigError, match="no group for the case.s. case7"):
        make_folds(names, 2, groups=partial)


def test_read_groups_reads_case_group_rows_and_names_what_is_wrong(tmp_path):
    good = tmp_path / "groups.csv"
    good.write_text("case,group,note\nb,p1,x\na,p1,\nc,p2,\n")
    assert read_groups(good, ["a", "b", "c"]) == {"a": "p1", "b": "p1", "c": "p2"}
    bad = tmp_path / "bad.csv"
    for text, match in (("name,group\na,p1\n", "columns 'case' and 'group'"),
                        ("case,group\na,p1\na,p2\n", "line 3: case 'a' is listed twice"),
                        ("case,group\na,\n", "line 2: expected a case name and a group"),
                        ("case,group\na,p1\n", "no group for 2 of the 3 cases \\(b, c\\)")):
        bad.write_text(text)
        with pytest.raises(DataError, match=match):
            read_groups(bad, ["a", "b", "c"])
    with pytest.raises(DataError, match="missing.csv: cannot read"):
        read_groups(tmp_path / "missing.csv", ["a"])


# Two fold trainings (make test-slow); the default suite runs the command end to end in the
# keep_best test below, and the fold arithmetic in the tests above.
@pytest.mark.slow
def test_two_folds_validate_every_case_once_and_a_rerun_does_not_retrain(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", num_cases=4)
    # GlobalNet (an affine network): the quickest network to trace, twice, on 2 cores.
    ini = write_config(tmp_path / "cv.ini", data, Network={"network_type": "global"},
                       Loss={"similarity_scales": "[0]"},
                       Train={"total_iterations": "2", "freq_model_save": "2"})
    directory = tmp_path / "cv"
    # One fold alone (as a parallel process would run it): trained and evaluated, no table.
    assert main([str(ini), "--folds", "2", "--dir", str(directory), "--fold", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("training labelreg") == 1 and "[fold 2/2]" in out and "[fold 1/2]" not in out
    assert "ran fold 2 of 2" in out and "pooled" not in out
    assert (directory / "fold2" / "evaluation.csv").is_file()
    assert not (directory / "fold1").exists() and not (directory / "crossval.csv").exists()
    assert main([str(ini), "--folds", "2", "--dir", str(directory), "--fold", "3"]) == 2
    assert "--fold 3: expected a fold number in 1..2" in capsys.readouterr().err

    # The whole run trains fold 1 only (fold 2 is done) and writes the tables.
    lines: list[str] = []
    result = cross_validate(ini, folds=2, seed=0, directory=directory, log=lines.append)
    assert sum("training labelreg" in line for line in lines) == 1
    assert sum("nothing to do" in line for line in lines) == 1

    rows = _read(directory / "crossval.csv")
    assert [r["fold"] for r in rows] == ["1", "2", "pooled"]
    assert tuple(rows[0]) == CROSSVAL_COLUMNS
    assert [int(r["cases"]) for r in rows] == [2, 2, 4]
    assert all(float(r["train_seconds"]) > 0 for r in rows)
    validated = [r["case"] for r in _read(directory / "crossval_cases.csv") if r["row"] == "case"]
    assert sorted(validated) == ["case00", "case01", "case02", "case03"]  # each exactly once
    # The per-case TRE picture of the held-out cases (matplotlib is a test dependency).
    assert (directory / "crossval_tre.png").stat().st_size > 0
    for k, fold in enumerate(result.folds, start=1):
        fold_dir = directory / f"fold{k}"
        held_out = {p.name.removesuffix(".nii.gz") for p in
                    (fold_dir / "valid" / "fixed_labels").iterdir()}
        trained_on = {p.name.removesuffix(".nii.gz") for p in
                      (fold_dir / "train" / "moving_images").iterdir()}
        assert held_out == set(fold.cases) and not held_out & trained_on
        assert len(held_out | trained_on) == 4
        assert (fold_dir / "valid" / "fixed_labels" / f"{fold.cases[0]}.nii.gz").is_symlink()
        assert (fold_dir / "run" / "checkpoints").is_dir()
        assert [r["case"] for r in _read(fold_dir / "evaluation.csv") if r["row"] == "case"] \
            == fold.cases
    assert json.loads((directory / "folds.json").read_text())["valid"] == \
        [fold.cases for fold in result.folds]

    # The rerun, through the command: both folds are already trained; evaluation is redone.
    assert main([str(ini), "--folds", "2", "--dir", str(directory)]) == 0
    out = capsys.readouterr().out
    assert out.count("already trained to step 2 of 2; nothing to do") == 2
    assert "training labelreg" not in out and "pooled" in out
    again = _read(directory / "crossval.csv")
    for before, after in zip(rows, again, strict=True):
        assert after["train_seconds"] == before["train_seconds"]  # nothing retrained
        assert float(after["dice"]) == pytest.approx(float(before["dice"]), abs=1e-4)

    # Another split in the same folder would mix runs: refused before any training.
    assert main([str(ini), "--folds", "3", "--dir", str(directory)]) == 2
    assert "another split" in capsys.readouterr().err
    assert main([str(ini), "--folds", "5", "--dir", str(tmp_path / "other")]) == 2
    assert "only 4 cases" in capsys.readouterr().err

    # Groups: a case left out of the file is refused, before any training.
    groups = tmp_path / "groups.csv"
    groups.write_text("case,group\ncase00,p0\ncase01,p0\ncase02,p1\n")
    assert main([str(ini), "--folds", "2", "--dir", str(tmp_path / "grouped"), "--groups",
                 str(groups)]) == 2
    assert "no group for 1 of the 4 cases (case03)" in capsys.readouterr().err


def test_make_inner_split_sets_whole_groups_aside():
    from labelreg.crossval import make_inner_split

    names = [f"case{i}" for i in range(10)]
    groups = {name: f"patient{i // 2}" for i, name in enumerate(names)}  # 5 patients of 2
    train, inner = make_inner_split(names, 0.3, seed=3, groups=groups)
    assert sorted(train + inner) == names and not set(train) & set(inner)
    assert len(inner) == 4  # whole patients until >= 30% of the cases: 2 of them
    for name in inner:
        assert {n for n in names if groups[n] == groups[name]} <= set(inner)
    assert make_inner_split(names, 0.3, seed=3, groups=groups) == (train, inner)
    assert len({tuple(make_inner_split(names, 0.3, seed=k, groups=groups)[1])
                for k in range(6)}) > 1  # the seed chooses the patients
    # At least one group on each side, whatever the fraction.
    assert len(make_inner_split(names, 0.01, groups=groups)[1]) == 2
    assert len(make_inner_split(names, 0.99, groups=groups)[0]) == 2
    # Without groups every case is its own.
    assert len(make_inner_split(names, 0.2)[1]) == 2
    for fraction in (0.0, 1.0, -0.5):
        with pytest.raises(ConfigError, match="--inner-valid"):
            make_inner_split(names, fraction)
    with pytest.raises(ConfigError, match="at least 2"):
        make_inner_split(["a", "b"], 0.5, groups={"a": "p", "b": "p"})


def test_keep_best_chooses_on_the_inner_split_and_is_refused_without_one(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", num_cases=8)
    # Two of the cases live in another folder, pooled with --add-cases.
    more = tmp_path / "more"
    for folder in ("moving_images", "fixed_images", "moving_labels", "fixed_labels"):
        (more / folder).mkdir(parents=True)
        for case in ("case06", "case07"):
            (data / folder / f"{case}.nii.gz").rename(more / folder / f"{case}.nii.gz")
    patients = {"case00": "p0", "case01": "p0", "case02": "p1", "case03": "p2", "case04": "p3",
                "case05": "p3", "case06": "p4", "case07": "p5"}
    groups = tmp_path / "groups.csv"
    groups.write_text("case,group\n" + "".join(f"{c},{g}\n" for c, g in patients.items()))
    # The config's own validation split (valid_fraction) is each fold's default inner split.
    ini = write_config(tmp_path / "cv.ini", data, Network={"network_type": "global"},
                       Data={"case_groups": str(groups), "valid_fraction": "0.25"},
                       Loss={"similarity_scales": "[0]"},
                       Train={"total_iterations": "2", "freq_model_save": "1",
                              "keep_best": "dice", "minibatch_size": "1"})
    directory = tmp_path / "cv"
    # Choosing the checkpoint on the reported cases is refused before anything is trained.
    assert main([str(ini), "--folds", "2", "--dir", str(directory), "--inner-valid", "0"]) == 2
    assert "--inner-valid" in capsys.readouterr().err and not directory.exists()
    assert main([str(ini), "--folds", "2", "--dir", str(directory), "--add-cases",
                 str(tmp_path / "nowhere")]) == 2
    assert "--add-cases" in capsys.readouterr().err and not directory.exists()

    assert main([str(ini), "--folds", "2", "--dir", str(directory), "--add-cases", str(more),
                 "--fold", "1"]) == 0
    out = capsys.readouterr().out
    assert "of 8 cases of 6 groups" in out and "validates on 0.25" in out
    assert "choosing on" in out
    split = json.loads((directory / "folds.json").read_text())
    fold = directory / "fold1"
    held_out = sorted(p.name.split(".")[0] for p in (fold / "valid" / "moving_images").iterdir())
    inner = sorted(p.name.split(".")[0] for p in (fold / "inner" / "moving_images").iterdir())
    train = sorted(p.name.split(".")[0] for p in (fold / "train" / "moving_images").iterdir())
    assert held_out == split["valid"][0] and inner == split["inner"][0] and inner
    assert sorted(held_out + inner + train) == sorted(patients)
    sides = [{patients[c] for c in part} for part in (held_out, inner, train)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    # The run validated on the inner cases and the fold was evaluated with the kept checkpoint.
    best = json.loads((fold / "run" / "best" / "best.json").read_text())
    assert best["metric"] == "dice" and "kept" in out
    evaluated = [r["case"] for r in _read(fold / "evaluation.csv") if r["row"] == "case"]
    assert evaluated == held_out
    # Another inner fraction is another split: the folder is not reused for it.
    assert main([str(ini), "--folds", "2", "--dir", str(directory), "--add-cases", str(more),
                 "--inner-valid", "0.5", "--fold", "1"]) == 2
    assert "--inner-valid" in capsys.readouterr().err


def test_fold_checkpoint_prefers_the_kept_best(tmp_path):
    from labelreg.crossval import fold_checkpoint

    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    assert fold_checkpoint({"Train": {"keep_best": "dice"}}, run) == run  # nothing kept yet
    (run / "best" / "best.json").write_text("{}")
    assert fold_checkpoint({"Train": {"keep_best": "dice"}}, run) == run / "best"
    assert fold_checkpoint({"Train": {"keep_best": "none"}}, run) == run
