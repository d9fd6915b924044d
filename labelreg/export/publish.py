"""Versioned SavedModels for TF-Serving, for any method: the method supplies the signatures.

A TF-Serving model folder holds one sub-folder per integer version::

    <base_dir>/<name>/1/      saved_model.pb, variables/, assets.extra/labelreg/, README.md
    <base_dir>/<name>/2/      ...

``README.md`` lists the signatures and the environment a server needs
(:func:`serving_readme`).

:func:`export_endpoints` writes the next free version (a version is never overwritten) with
``keras.export.ExportArchive`` into a hidden staging folder and renames it into place, so a
TF-Serving server polling the folder never sees a half-written version. :func:`export_saved_model`
restores a training run of any method and exports the signatures its method defines
(:meth:`labelreg.methods.base.Method.serving_endpoints`); :func:`export_onnx` converts a run's
``serving_default`` signature with tf2onnx.

Metadata: the description (method, the networks' Keras configs, the training meta and step,
the precision the signatures compute with, the signatures) and the run's ``config.ini`` are
written to ``assets.extra/labelreg/`` and are also inside the SavedModel as the variables
``training_step`` (int64) and ``model_description`` (a JSON string), readable with TensorFlow
alone: ``tf.saved_model.load(path).training_step[0]``.

XLA: :func:`labelreg.warp` is compiled with XLA in training, but TF-Serving's stock CPU server does
not run XLA clusters by default, so signatures are traced inside
:func:`labelreg.ops.xla_disabled` unless ``jit_compile=True`` is asked for.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras

from labelreg import ops
from labelreg._tf import tf
from labelreg.errors import ConfigError, DataError

__all__ = [
    "METADATA_DIR",
    "SERVER_ENVIRONMENT",
    "serving_readme",
    "SERVING_DEFAULT",
    "describe_spec",
    "export_endpoints",
    "list_versions",
    "next_version",
    "training_step",
]

SERVING_DEFAULT = "serving_default"
METADATA_DIR = os.path.join("assets.extra", "labelreg")


def describe_spec(spec: tf.TensorSpec) -> str:
    """``"[?, ?, 3]"`` for a ``TensorSpec`` of shape ``[None, None, 3]``."""
    return "[" + ", ".join("?" if s is None else str(s) for s in spec.shape) + "]"


def _add_metadata_variables(
    archive: keras.export.ExportArchive, step: int | None, description: dict[str, Any]
) -> None:
    # Readable with TensorFlow alone: tf.saved_model.load(path).training_step[0].
    archive.add_variable_collection(
        "training_step", [tf.Variable(int(step if step is not None else -1), dtype=tf.int64,
                                      trainable=False, name="training_step")])
    archive.add_variable_collection(
        "model_description", [tf.Variable(json.dumps(description), dtype=tf.string,
                                          trainable=False, name="model_description")])


def _traced_once(fn: Callable[..., Any], specs: Sequence[tf.TensorSpec]) -> Callable[..., Any]:
    """``fn`` traced once into a concrete function.

    ``ExportArchive.write_out`` traces each endpoint twice: once to list the variables it uses
    and once more inside ``tf.saved_model.save``, whose save context is part of TensorFlow's
    trace cache key. Handing it a function already traced makes both of those traces a single
    call op: the network's graph is built once, and an export of a small LocalNet is 1.4-1.8
    times faster (``benchmarks/bench_graph_building.py --exports``)."""
    if not isinstance(fn, tf.types.experimental.GenericFunction):
        fn = tf.function(fn, autograph=False)
    return fn.get_concrete_function(*specs)


def _xla_context(jit_compile: bool) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if jit_compile else ops.xla_disabled()


def list_versions(model_dir: str | os.PathLike) -> list[int]:
    """The integer versions present in a TF-Serving model folder, sorted (empty if none)."""
    path = Path(model_dir)
    if not path.is_dir():
        return []
    return sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_dir: str | os.PathLike) -> int:
    """One more than the highest version in ``model_dir`` (1 for a new folder)."""
    versions = list_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def _check_version(version: Any) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(
            f"version must be a positive integer (TF-Serving's version folders); received "
            f"version={version!r}."
        )
    return version


def _check_name(name: Any) -> str:
    text = str(name)
    if not text or text in (".", "..") or "/" in text or os.sep in text:
        raise ConfigError(
            f"name must be a plain folder name (the TF-Serving model name); received name={name!r}."
        )
    return text


def _publish(staging: Path, model_dir: Path, version: int | None) -> Path:
    """Rename the staged SavedModel to its version folder, never replacing an existing one."""
    explicit = version is not None
    for _ in range(100):
        number = version if explicit else next_version(model_dir)
        target = model_dir / str(number)
        if target.exists():
            if explicit:
                raise DataError(
                    f"{target}: version {number} already exists; exports never overwrite a "
                    f"version. Pick another --version or leave it unset for the next free one "
                    f"({next_version(model_dir)})."
                )
            continue
        try:
            os.rename(staging, target)
        except OSError:
            if explicit or not target.exists():
                raise
            continue  # another export took this number meanwhile: try the next one
        return target
    raise DataError(f"{model_dir}: could not find a free version folder.")


def _prepare_target(
    base_dir: str | os.PathLike, name: str, version: int | None
) -> tuple[Path, int | None]:
    """Check the name and version before any work, and create the model folder."""
    name = _check_name(name)
    if version is not None:
        version = _check_version(version)
    model_dir = Path(base_dir) / name
    if version is not None and (model_dir / str(version)).exists():
        raise DataError(
            f"{model_dir / str(version)}: version {version} already exists; exports never "
            f"overwrite a version (next free: {next_version(model_dir)})."
        )
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{model_dir}: cannot create the model folder ({err}).") from err
    return model_dir, version


def _write_archive(
    archive: keras.export.ExportArchive,
    model_dir: Path,
    version: int | None,
    files: dict[str, str],
) -> Path:
    # A hidden, non-numeric staging name: TF-Serving only loads folders named by an integer.
    staging = Path(tempfile.mkdtemp(prefix=f".export-{uuid.uuid4().hex[:8]}-", dir=model_dir))
    try:
        saved = staging / "model"
        archive.write_out(str(saved), verbose=False)
        for relative, text in files.items():  # paths relative to the version folder
            target = saved / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        return _publish(saved, model_dir, version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


#: The environment a TensorFlow-only server (TF-Serving) needs on CPUs where TensorFlow leaves
#: its oneDNN kernels off (no AVX-512 VNNI/BF16 or AMX, e.g. AVX2-only): with it, the mrus
#: recipe's SavedModel answered in 753 ms instead of 1,684 ms on 2 AVX2 cores.
SERVER_ENVIRONMENT = {"TF_ENABLE_ONEDNN_OPTS": "1"}


def serving_readme(name: str, description: Mapping[str, Any]) -> str:
    """The ``README.md`` of an exported version folder: its signatures, and the settings a
    TensorFlow-only server needs (:data:`SERVER_ENVIRONMENT`)."""
    export = description.get("export", {})
    lines = [f"# {name}: a labelreg SavedModel for TF-Serving", ""]
    method = description.get("method")
    if method:
        lines.append(f"Method `{method}`, training step {description.get('training_step')}, "
                     f"precision {description.get('meta', {}).get('precision', 'float32')}, "
                     f"TensorFlow {export.get('tensorflow', '?')}.")
        lines.append("")
    lines += ["## Signatures", ""]
    for signature, spec in export.get("signatures", {}).items():
        inputs = ", ".join(f"`{i}`" for i in spec.get("inputs", []))
        outputs = ", ".join(f"`{o}`" for o in spec.get("outputs", [])) or "see model.json"
        lines.append(f"- `{signature}`: {inputs} -> {outputs}")
    env = " ".join(f"{k}={v}" for k, v in SERVER_ENVIRONMENT.items())
    docker_env = " ".join(f"-e {k}={v}" for k, v in SERVER_ENVIRONMENT.items())
    lines += [
        "",
        "## Server settings",
        "",
        "On a CPU without AVX-512 VNNI/BF16 or AMX (for example an AVX2-only CPU), TensorFlow "
        "leaves its oneDNN kernels off and this model's 3-D convolutions run about 2.2x slower "
        f"(measured: 1,684 ms against 753 ms per registration of the mrus recipe on 2 AVX2 "
        f"cores). Start the server with `{env}`, e.g.",
        "",
        "```bash",
        f"docker run -p 8500:8500 -p 8501:8501 {docker_env} \\",
        f"  --mount type=bind,source=\"$(pwd)/{name}\",target=/models/{name} \\",
        f"  -e MODEL_NAME={name} -t tensorflow/serving",
        "```",
        "",
        "`assets.extra/labelreg/model.json` holds the shapes the network was trained on and the "
        "options of this export; see the project's docs/serving.md.",
        "",
    ]
    return "\n".join(lines)


def training_step(prefix: str) -> int | None:
    """The step stored in a checkpoint (or the number ending its prefix)."""
    try:
        names = dict(tf.train.list_variables(prefix))
        if "step/.ATTRIBUTES/VARIABLE_VALUE" in names:
            return int(tf.train.load_variable(prefix, "step/.ATTRIBUTES/VARIABLE_VALUE"))
    except (tf.errors.OpError, ValueError):
        pass
    tail = prefix.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def export_endpoints(
    endpoints: Mapping[str, Sequence[Any]],
    base_dir: str | os.PathLike,
    name: str,
    version: int | None = None,
    *,
    description: dict[str, Any] | None = None,
    step: int | None = None,
    config_text: str | None = None,
    jit_compile: bool = False,
) -> Path:
    """Write signatures as the TF-Serving model version ``base_dir/name/version/``.

    Args:
        endpoints: ``{signature name: (function, input_signature[, output names])}``; without a
            ``serving_default`` the first one also serves as the default.
        base_dir: the folder TF-Serving's ``--model_base_path`` points above.
        name: the model name (a plain folder name).
        version: a positive int, or ``None`` for the next free version.
        description: JSON-able metadata (method, models, meta); the export's own facts
            (signatures, time, versions, ``jit_compile``) and ``training_step`` are added.
        step: the training step to record.
        config_text: the run's INI text to record (``assets.extra/labelreg/config.ini``).
        jit_compile: trace with XLA (faster in Python; TF-Serving's stock CPU server does not
            compile XLA clusters).

    Returns:
        The version folder written.

    Raises:
        ConfigError: for a bad name or version, or no endpoints.
        DataError: when the version exists or the folder cannot be written.
    """
    if not endpoints:
        raise ConfigError("an export needs at least one signature; received none.")
    model_dir, version = _prepare_target(base_dir, name, version)
    description = {
        **(description or {}),
        "training_step": step,
        "export": {
            "jit_compile": bool(jit_compile),
            "signatures": {
                signature: {"inputs": [f"{s.name} {describe_spec(s)}" for s in entry[1]],
                            "outputs": list(entry[2]) if len(entry) > 2 else []}
                for signature, entry in endpoints.items()
            },
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
    }
    files = {os.path.join(METADATA_DIR, "model.json"): json.dumps(description, indent=2) + "\n",
             "README.md": serving_readme(model_dir.name, description)}
    if config_text is not None:
        files[os.path.join(METADATA_DIR, "config.ini")] = config_text
    with _xla_context(jit_compile):
        archive = keras.export.ExportArchive()
        # No archive.track(model): the endpoints capture every variable they use, and tracking
        # the Keras model as well stores every weight twice (measured: variables/ doubles).
        for signature, (fn, specs, *_) in endpoints.items():
            archive.add_endpoint(signature, _traced_once(fn, specs), input_signature=specs)
        _add_metadata_variables(archive, step, description)
        return _write_archive(archive, model_dir, version, files)
