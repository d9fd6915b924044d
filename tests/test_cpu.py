"""CPU capability at start-up: bfloat16 settings on a CPU without bfloat16 hardware are named
once, with what they cost, instead of running silently slower."""

from __future__ import annotations

import os

import pytest

from labelreg import cpu

AVX2_EPYC = {"fpu", "sse4_2", "avx", "avx2", "fma"}
SAPPHIRE = AVX2_EPYC | {"avx512f", "avx512bw", "avx512_bf16", "amx_bf16", "amx_tile"}


def test_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2 fma\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu.cpu_flags(str(info)) == frozenset({"fpu", "avx", "avx2", "fma"})
    assert cpu.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_bfloat16_hardware_and_the_note():
    assert cpu.bfloat16_hardware(AVX2_EPYC) is False
    assert cpu.bfloat16_hardware(SAPPHIRE) is True
    assert cpu.bfloat16_hardware(set()) is None  # unknown: say nothing
    note = cpu.bfloat16_note(AVX2_EPYC)
    assert note.startswith("warning: this CPU has no bfloat16 instructions") and "AVX2" in note
    assert "10x slower than float32" in note and "\n" not in note
    assert cpu.bfloat16_note(SAPPHIRE) is None and cpu.bfloat16_note(set()) is None


def test_a_bfloat16_scope_says_it_once_on_such_a_cpu(monkeypatch):
    from labelreg.networks import precision

    lines: list[str] = []
    monkeypatch.setattr(precision, "bfloat16_note", lambda: cpu.bfloat16_note(AVX2_EPYC))
    monkeypatch.setattr(precision, "log_line", lines.append)
    precision._note_emulated_bfloat16.cache_clear()
    try:
        with precision.precision_scope("float32"):
            pass
        assert lines == []
        for _ in range(2):
            with precision.precision_scope("mixed_bfloat16"):
                pass
        assert len(lines) == 1 and "emulates bfloat16" in lines[0]
    finally:
        precision._note_emulated_bfloat16.cache_clear()


@pytest.mark.parametrize("flags", [SAPPHIRE, set()])
def test_no_note_with_bfloat16_hardware_or_unknown_flags(monkeypatch, flags):
    from labelreg.networks import precision

    lines: list[str] = []
    monkeypatch.setattr(precision, "bfloat16_note", lambda: cpu.bfloat16_note(flags))
    monkeypatch.setattr(precision, "log_line", lines.append)
    precision._note_emulated_bfloat16.cache_clear()
    try:
        with precision.precision_scope("bfloat16"):
            pass
        assert lines == []
    finally:
        precision._note_emulated_bfloat16.cache_clear()


AVX2_ONLY = ("fpu", "sse4_2", "avx", "avx2", "fma")


def test_onednn_default_follows_tensorflows_rule():
    from labelreg.cpu import onednn_default

    assert onednn_default(AVX2_ONLY) is False
    assert onednn_default((*AVX2_ONLY, "avx512f", "avx512_vnni")) is True
    assert onednn_default((*AVX2_ONLY, "avx_vnni")) is True
    assert onednn_default(()) is None


def test_the_import_order_note_names_the_cost_and_the_fix():
    from labelreg.cpu import onednn_import_note

    note = onednn_import_note(True, {}, AVX2_ONLY)
    assert note is not None and "\n" not in note
    assert "2.3x slower" in note and "TF_ENABLE_ONEDNN_OPTS=1" in note and "before" in note
    # Nothing to say: TensorFlow not loaded yet (labelreg turns oneDNN on), the user chose, or
    # TensorFlow turns it on by itself on this CPU.
    assert onednn_import_note(False, {}, AVX2_ONLY) is None
    assert onednn_import_note(True, {"TF_ENABLE_ONEDNN_OPTS": "0"}, AVX2_ONLY) is None
    assert onednn_import_note(True, {}, (*AVX2_ONLY, "avx512_vnni")) is None
    assert onednn_import_note(True, {}, ()) is None


def test_importing_tensorflow_first_prints_the_note_once_where_it_applies():
    import subprocess
    import sys

    from labelreg.cpu import onednn_default

    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    done = subprocess.run([sys.executable, "-c", "import tensorflow, labelreg, labelreg.ops"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    notes = [line for line in done.stderr.splitlines() if "imported before labelreg" in line]
    # On this machine's CPU: one line where TensorFlow leaves oneDNN off, none where it is on.
    assert len(notes) == (1 if onednn_default() is False else 0), done.stderr[-2000:]
