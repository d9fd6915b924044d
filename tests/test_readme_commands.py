"""The README's commands run as written, from a copy of the repository's entry points.

Every ``python ...`` line of the README's fenced shell blocks is run in order in a scratch
folder holding ``training.py``, ``inference.py`` and ``configs/`` (the demo data are generated
there on first use), with training capped at a few steps: ``--set Train.total_iterations``
is appended, and a later ``--set`` wins. ``make`` and ``pip`` lines are what ``make demo`` and
the CI run themselves.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_docs_commands import documented_commands

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    """The ``python ...`` commands of the README's shell blocks, as
    :func:`tests.test_docs_commands.documented_commands` reads them (comments cut, continuation
    lines joined)."""
    return ["python " + shlex.join(args) for where, args in documented_commands()
            if where == "README.md"]


def test_the_readme_lists_the_commands_of_the_quick_start():
    commands = readme_commands()
    assert any(c.startswith("python training.py configs/demo.ini") for c in commands)
    assert any(c.startswith("python inference.py configs/demo.ini") for c in commands)
    assert any("--export" in c for c in commands)


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path):
    for name in ("training.py", "inference.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    steps = 2
    for command in readme_commands():
        argv = shlex.split(command)
        argv[0] = sys.executable
        if argv[1] == "training.py":
            steps += 2  # each training command goes on from the last checkpoint (or --fresh)
            argv += ["--set", f"Train.total_iterations={steps}"]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert (tmp_path / "runs" / "demo" / "inference" / "metrics.csv").is_file()
    assert (tmp_path / "exports" / "demo" / "1" / "saved_model.pb").is_file()
