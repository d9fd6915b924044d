"""Every ``python ...`` command of the README and of each docs/ page runs as written, in the
page's order.

Each page gets a scratch copy of the repository's entry points (``training.py``,
``inference.py``, ``configs/``, ``benchmarks/``) beside a link to the shared data, and its
commands run one after the other there, so a command that reads what an earlier one wrote (an
evaluation after its training, an export after its run) finds it. Only the length changes:
each training of a page stops two steps after the page's last one (so a resumed run trains
too), cross-validation folds stop after a few steps, benchmarks take their smallest step
counts, and what a page leaves to the reader (the files a ``python -c`` line opens, a second
run to compare) is put in place first. ``make`` and ``pip`` lines are what ``make demo`` and
the CI run themselves. ``tests/test_docs_commands.py`` (default suite) checks the same
commands' configs, modules and flags in seconds.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_docs_commands import documented_commands

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
STEPS = 2

#: Commands that need a cluster: what they do is run by the test named here.
ELSEWHERE = {
    "--set Train.strategy=multi_worker":
        "tests/test_distributed.py runs two workers with TF_CONFIG (slow suite)",
}

#: Keys that only shorten a training, set when the command's config file sets them: the first
#: phase ends before the last step, so ``keep_best`` has a checkpoint to keep (without a warm-up,
#: which each phase would have to outlast), and learnsim's posterior takes a few iterations per
#: metric step.
SHORTER_KEYS = {("Loss", "segmentation_only_steps"): "1", ("Train", "warmup_steps"): "0",
                ("Variational", "iterations"): "2"}

#: What a page takes as done before its first command (the README's quick start, a training of
#: the config it exports).
BEFORE = {
    "serving.md": [["training.py", "configs/demo.ini"], ["training.py", "configs/mrus.ini"],
                   ["training.py", "configs/mrus_realtime.ini"]],
    "usage.md": [["training.py", "configs/mrus.ini"]],  # the run its curves command draws
}

#: What a page's commands must leave behind (the README's quick start: metrics and an export).
LEAVES = {"README.md": ["runs/demo/inference/metrics.csv", "exports/demo/1/saved_model.pb"]}

#: Extra arguments that only shorten a command (never change what it does).
SHORTER = {
    "benchmarks/bench_gradirn.py": ["--steps", "2"],
    "benchmarks/bench_learnsim.py": ["--steps", "1", "--iterations", "2"],
    "benchmarks/bench_export.py": ["--repeats", "2", "--warmup", "1", "--onednn", "1"],
}


def _left_elsewhere(argv: list[str]) -> bool:
    return any(marker in " ".join(argv) for marker in ELSEWHERE)


def _pages() -> dict[str, list[list[str]]]:
    """The README's and docs pages' commands, in order, less those run elsewhere (a page left
    with none, docs/distributed.md, is not listed)."""
    pages: dict[str, list[list[str]]] = {}
    for where, argv in documented_commands():
        if not _left_elsewhere(argv):
            pages.setdefault(where, []).append(argv)
    return pages


PAGES = _pages()


def _scratch(tmp_path: Path) -> Path:
    """``tmp_path/main`` with the entry points, and ``tmp_path/shared`` linking the data, so
    the configs' ``../../shared/data`` paths resolve as in a clone."""
    main = tmp_path / "main"
    main.mkdir()
    for name in ("training.py", "inference.py"):
        shutil.copy(ROOT / name, main / name)
    for folder in ("configs", "benchmarks"):
        shutil.copytree(ROOT / folder, main / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "shared").symlink_to(SHARED)
    return main


def _prepare(argv: list[str], main: Path) -> None:
    """Put in place what the page leaves to the reader before this command."""
    if argv[0] == "-c" and "mr.nii.gz" in argv[1]:
        sample = SHARED / "data" / "mrus-sample"
        first = sorted((sample / "moving_images").iterdir())[0].name
        shutil.copy(sample / "moving_images" / first, main / "mr.nii.gz")
        shutil.copy(sample / "fixed_images" / first, main / "us.nii.gz")
    if argv[:2] == ["-m", "labelreg.curves"]:
        for run in (a for a in argv[2:] if a.startswith("runs/")):
            if not (main / run).exists():  # the page's second run: a copy of the first
                shutil.copytree(main / "runs" / "mrus", main / run)


def _shortened(argv: list[str], main: Path, steps: int) -> list[str]:
    """``argv`` with the settings that make it quick: ``steps`` steps, the last one saved (and
    validated, where the config validates), and the :data:`SHORTER_KEYS` its config sets."""
    if argv[0] != "training.py" and argv[1:2] != ["labelreg.crossval"]:
        return [*argv, *SHORTER.get(argv[0], [])]
    ini = configparser.ConfigParser()
    ini.read(main / next(a for a in argv if a.endswith(".ini")))
    keys = {"Train.total_iterations": steps, "Train.freq_model_save": steps}
    keys.update({f"{section}.{key}": value for (section, key), value in SHORTER_KEYS.items()
                 if ini.has_option(section, key)})
    return [*argv, *(a for k, v in keys.items() for a in ("--set", f"{k}={v}"))]


@pytest.mark.slow
@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_command_of_a_page_runs_as_written(page, tmp_path):
    assert SHARED.is_dir(), f"the shared data is missing at {SHARED}"
    main = _scratch(tmp_path)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    steps = STEPS
    for argv in [*BEFORE.get(page, []), *PAGES[page]]:
        command = "python " + " ".join(argv)
        _prepare(argv, main)
        if argv[0] == "training.py":
            steps += 2  # a training that resumes the page's last run trains two more steps
        done = subprocess.run([sys.executable, *_shortened(argv, main, steps)], cwd=main,
                              env=env, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, (f"{page}: {command}\n{done.stdout[-2000:]}\n"
                                      f"{done.stderr[-3000:]}")
    for path in LEAVES.get(page, []):
        assert (main / path).is_file(), f"{page}: no {path} after its commands"


def test_every_docs_page_with_commands_is_run():
    pages = {where for where, _ in documented_commands()}
    left = {where for where, argv in documented_commands() if _left_elsewhere(argv)}
    assert pages - set(PAGES) <= left == {"distributed.md"}
    assert {"README.md", "usage.md", "serving.md", "results.md", "image_driven.md"} <= set(PAGES)
