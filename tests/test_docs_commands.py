"""Every ``python ...`` command in the README's and docs/'s shell blocks names things that exist:
its config loads with its ``--set`` overrides (the check training and inference make before any
work), its module accepts its flags, its script is in the repository.

This is the quick, default-suite half of "every documented command runs as written";
``tests/test_docs_runs.py`` (slow) runs them for real.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from labelreg.methods.registry import load_config

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```(?:bash|sh|shell)\s*$(.*?)^```", re.M | re.S)
ASSIGNMENT = re.compile(r'^(\w+)="(.*)"$')
CONFIG_COMMANDS = ("training.py", "inference.py")
CONFIG_MODULES = ("labelreg.crossval", "labelreg.evaluation", "comir_tf.evaluate")


def documented_commands() -> list[tuple[str, list[str]]]:
    """``(file, argv)`` of every ``python`` command in the shell blocks of README.md and
    docs/*.md: continuation lines joined, comments cut, shell variables set in the same block
    substituted, ``taskset -c N`` and a trailing ``&`` or ``; wait`` dropped."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in FENCE.findall(path.read_text()):
            variables: dict[str, str] = {}
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].strip()
                assignment = ASSIGNMENT.match(line)
                if assignment:
                    variables[assignment.group(1)] = assignment.group(2)
                    continue
                for name, value in variables.items():
                    line = line.replace(f"${name}", value)
                line = line.replace("; wait", "").rstrip("&").strip()
                if "python" not in line:
                    continue  # other tools' lines (curl, docker, saved_model_cli)
                argv = shlex.split(line)
                if argv[:2] == ["taskset", "-c"]:
                    argv = argv[3:]
                if argv[:1] == ["python"]:
                    found.append((path.name, argv[1:]))
    return found


COMMANDS = documented_commands()


def test_the_docs_have_commands_to_check():
    files = {name for name, _ in COMMANDS}
    assert {"README.md", "usage.md", "serving.md", "image_driven.md"} <= files
    assert len(COMMANDS) > 30


def test_the_readme_lists_the_commands_of_the_quick_start():
    readme = [" ".join(args) for where, args in COMMANDS if where == "README.md"]
    assert any(c.startswith("training.py configs/demo.ini") for c in readme)
    assert any(c.startswith("inference.py configs/demo.ini") for c in readme)
    assert any("--export" in c for c in readme)


@pytest.mark.parametrize(("where", "args"), COMMANDS,
                         ids=[f"{name}:{' '.join(args)[:50]}" for name, args in COMMANDS])
def test_a_documented_command_names_what_exists(where, args):
    command = "python " + " ".join(args)
    if args[0] == "-c":
        compile(args[1], where, "exec")
        return
    if args[0] in CONFIG_COMMANDS or (args[0] == "-m" and args[1] in CONFIG_MODULES):
        config = args[1] if args[0] != "-m" else args[2]
        overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        load_config(ROOT / config, overrides)  # raises ConfigError naming file and key
    if args[0] == "-m":
        done = subprocess.run([sys.executable, "-m", args[1], "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{where}: {command}\n{done.stderr[-1500:]}"
        for flag in (a.split("=")[0] for a in args if a.startswith("--")):
            assert flag in done.stdout, f"{where}: {command}: {args[1]} has no {flag}"
    elif args[0] not in CONFIG_COMMANDS:
        assert (ROOT / args[0]).is_file(), f"{where}: {command}: no {args[0]}"
