"""Console output of the command lines: verbosity flags, the logger, quiet TensorFlow imports."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from labelreg import logs
from labelreg.cli import infer_main, train_main

ROOT = Path(__file__).resolve().parents[1]

ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to " \
              "STDERR\n"
ONEDNN_NOTE = "I0000 00:00:1712345678.123456   27270 port.cc:153] oneDNN custom operations are " \
              "on. You may see slightly different numerical results.\n"
MULTILINE_INFO = "I0000 00:00:1712345678.123500   27270 cpu_feature_guard.cc:227] This binary is " \
                 "optimized.\nTo enable the following instructions: AVX2, rebuild.\n"
NATIVE_ERROR = "E0000 00:00:1712345678.123999   27270 cuda_executor.cc:12] a real failure\n"


@pytest.fixture(autouse=True)
def _restore_output_state(monkeypatch):
    """Undo what :func:`labelreg.logs.configure` changes: the logger, the environment and the
    import hook."""
    logger = logs.get_logger()
    state = list(logger.handlers), logger.level, logger.propagate
    for name in ("TF_CPP_MIN_LOG_LEVEL", logs.VERBOSE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    yield
    logger.handlers[:] = state[0]
    logger.setLevel(state[1])
    logger.propagate = state[2]


def _subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != logs.VERBOSE_ENV}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"  # as the command lines set it
    return {**env, **extra}


# -- TensorFlow's import-time C++ notices ---------------------------------------------------------

def _native_notices(stderr: str) -> list[str]:
    """absl's preamble and the C++ logger's records in ``stderr`` (as :mod:`labelreg.logs`
    recognises them), each without its header of time stamp, thread id and source line (which
    differ from one process to the next)."""
    return [logs._NATIVE_LINE.sub("", line) for line in stderr.splitlines()
            if line.startswith(logs._ABSL_PREAMBLE) or logs._NATIVE_LINE.match(line)]


# Fresh processes importing TensorFlow: the default level in the default suite, --verbose's
# (two processes) in make test-slow.
@pytest.mark.parametrize("verbose", [pytest.param(False, id="default"),
                                     pytest.param(True, id="verbose", marks=pytest.mark.slow)])
def test_importing_tensorflow_prints_no_native_notices_unless_verbose(verbose):
    # The levels the command lines set: 2 by default, 0 with --verbose.
    env = _subprocess_env(**({logs.VERBOSE_ENV: "1", "TF_CPP_MIN_LOG_LEVEL": "0"} if verbose
                             else {}))

    def stderr_of(code: str) -> str:
        return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120, check=True).stderr

    ours = stderr_of("import labelreg._tf")
    if not verbose:
        assert _native_notices(ours) == [], ours
        return
    # Which notices TensorFlow prints depends on the CPU (oneDNN's on AVX-512 machines, the
    # CPU-feature note on others): verbose lets through exactly those of a plain import.
    plain = stderr_of("import tensorflow")
    assert _native_notices(plain), f"a plain import at level 0 printed no notice: {plain!r}"
    assert _native_notices(ours) == _native_notices(plain), ours


# Each case is a fresh process importing TensorFlow (5-6 s): the default (unset) runs in the
# default suite, the user's explicit choices in make test-slow.
@pytest.mark.parametrize("setting, enabled", [
    pytest.param(None, True, id="unset"),
    pytest.param("0", False, id="off", marks=pytest.mark.slow),
    pytest.param("1", True, id="on", marks=pytest.mark.slow)])
def test_importing_labelreg_prefers_onednn_unless_the_user_chose(setting, enabled):
    # Without it an AVX2-only CPU runs Eigen's 3-D convolutions, several times slower.
    env = {k: v for k, v in _subprocess_env().items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    code = ("import labelreg.ops\n"
            "from tensorflow.python.util import _pywrap_util_port\n"
            "print(_pywrap_util_port.IsMklEnabled())")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    assert run.stdout.split()[-1] == str(enabled), run.stderr


def _write_noise() -> None:
    """What a C++ library and Python code write while a package is imported."""
    for text in (ABSL_NOTICE, ONEDNN_NOTE, MULTILINE_INFO, NATIVE_ERROR, ONEDNN_NOTE):
        os.write(2, text.encode())
    # What warnings.warn writes in a plain process (pytest records warnings instead), right
    # after a dropped record.
    os.write(2, b"x.py:1: UserWarning: a Python warning during the import\n  import x\n")
    print("text Python buffered for stderr", file=sys.stderr)


def test_filter_drops_only_the_informational_native_lines(capfd):
    with logs.native_stderr_filtered():
        _write_noise()
    os.write(2, b"written after the block\n")
    err = capfd.readouterr().err
    assert "absl::InitializeLog" not in err and "oneDNN" not in err
    assert "This binary" not in err and "To enable" not in err
    for kept in ("a real failure", "a Python warning during the import", "  import x",
                 "text Python buffered for stderr", "written after the block"):
        assert kept in err


def test_filter_keeps_everything_at_tf_cpp_min_log_level_0(capfd, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    with logs.native_stderr_filtered():
        _write_noise()
    err = capfd.readouterr().err
    assert "oneDNN" in err and "To enable" in err and "a real failure" in err


def test_filter_replays_everything_when_the_block_fails(capfd):
    with pytest.raises(RuntimeError, match="import failed"), logs.native_stderr_filtered():
        os.write(2, ONEDNN_NOTE.encode())
        raise RuntimeError("import failed")
    os.write(2, b"descriptor 2 is back\n")
    err = capfd.readouterr().err
    assert "oneDNN" in err and "descriptor 2 is back" in err


def test_verbose_lets_native_lines_through(capfd, monkeypatch):
    monkeypatch.setenv(logs.VERBOSE_ENV, "1")
    with logs.native_stderr_filtered():
        os.write(2, ONEDNN_NOTE.encode())
    assert "oneDNN" in capfd.readouterr().err


def test_import_hook_filters_the_first_import_whoever_asks(tmp_path, monkeypatch, capfd):
    package = tmp_path / "noisy_native_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import os\n"
        f"os.write(2, {ONEDNN_NOTE.encode()!r})\n"
        f"os.write(2, {NATIVE_ERROR.encode()!r})\n"
        "VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    finder = logs._FilteredImportFinder("noisy_native_pkg")
    sys.meta_path.insert(0, finder)
    try:
        import noisy_native_pkg
    finally:
        sys.modules.pop("noisy_native_pkg", None)
    assert noisy_native_pkg.VALUE == 42
    assert finder not in sys.meta_path  # one use only
    # The module keeps its real loader, not the wrapper.
    assert not isinstance(noisy_native_pkg.__loader__, logs._FilteredLoader)
    assert type(noisy_native_pkg.__spec__.loader).__name__ == "SourceFileLoader"
    err = capfd.readouterr().err
    assert "oneDNN" not in err and "a real failure" in err


# -- the logger and the flags ---------------------------------------------------------------------

def test_logger_writes_bare_info_lines_to_stdout(capsys):
    logs.configure(0)
    logs.configure(0)  # reconfiguring replaces the handler: no line twice
    logger = logs.get_logger()
    logger.info("step 1: loss 0.5")
    logger.debug("a detail")
    captured = capsys.readouterr()
    assert captured.out == "step 1: loss 0.5\n" and captured.err == ""
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert logs.VERBOSE_ENV not in os.environ


def test_quiet_keeps_warnings_and_verbose_adds_debug(capsys):
    logs.configure(-1)
    logs.log_line("step 1: loss 0.5")
    logs.log_line("warning: skipping a damaged checkpoint")
    logs.log_line("[fold 1/2] warning: a prefixed warning")
    logs.log_line("case03: FAILED: unreadable")
    assert capsys.readouterr().out.splitlines() == [
        "warning: skipping a damaged checkpoint", "[fold 1/2] warning: a prefixed warning",
        "case03: FAILED: unreadable"]

    logs.configure(1)
    logs.get_logger().debug("a detail")
    assert capsys.readouterr().out == "a detail\n"
    # --verbose lets TensorFlow's C++ logs through when it is imported later.
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0" and os.environ[logs.VERBOSE_ENV] == "1"
    assert logs.get_logger().level == logging.DEBUG


def test_quiet_still_reports_a_configuration_error(tmp_path, capsys):
    bad = tmp_path / "bad.ini"
    bad.write_text("[Train]\nlearnin_rate = 1e-4\n")
    assert train_main([str(bad), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and "learnin_rate" in captured.err
    assert captured.out == ""


def _evaluation_main(argv):
    from labelreg.evaluation import main

    return main(argv)


def _crossval_main(argv):
    from labelreg.crossval import main

    return main(argv)


def _comir_main(argv):
    from comir_tf.evaluate import main

    return main(argv)


@pytest.mark.parametrize("entry", [train_main, infer_main, _evaluation_main, _crossval_main,
                                   _comir_main])
def test_verbose_and_quiet_exclude_each_other(entry, capsys):
    with pytest.raises(SystemExit) as exit_info:
        entry(["x.ini", "--verbose", "--quiet"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_importing_the_package_does_not_import_absl():
    code = ("import sys, labelreg, labelreg.cli, labelreg.logs; "
            "print(sorted(m for m in ('absl', 'tensorflow', 'keras') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_subprocess_env(),
                         capture_output=True, text=True, timeout=60, check=True)
    assert run.stdout.strip() == "[]"
