"""``tf.distribute`` for the trainer: which strategy, who writes, and how a batch is split.

``[Train] strategy`` picks the strategy:

- ``default``: one device, or ``MirroredStrategy`` over every GPU when there are several;
- ``mirrored``: ``MirroredStrategy`` over every local GPU, or over every logical CPU device when
  there is no GPU (tests use two logical CPUs);
- ``multi_worker``: ``MultiWorkerMirroredStrategy``, its cluster read from ``TF_CONFIG``
  (see ``docs/distributed.md``).

The methods' datasets yield *global* batches (``[Train] minibatch_size`` samples), a pure
function of ``(seed, step)``. :func:`distribute_batches` cuts each global batch into
per-replica slices, so every replica of every worker trains on its own part of the same global
batch an uninterrupted single-device run sees; each slice carries ``sample_index`` (its
samples' positions in the global batch), from which per-sample randomness is drawn, so that
augmentation does not depend on the number of replicas.
"""

from __future__ import annotations

import json
import os
from typing import Any

from labelreg._tf import tf
from labelreg.errors import ConfigError

__all__ = ["STRATEGIES", "make_strategy", "is_chief", "task_label", "check_global_batch",
           "distribute_batches"]

STRATEGIES = ("default", "mirrored", "multi_worker")


def make_strategy(kind: str = "default") -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy ``[Train] strategy`` names (see the module docstring).

    Raises:
        ConfigError: an unknown kind, or ``multi_worker`` without a usable ``TF_CONFIG``.
    """
    if kind == "default":
        gpus = tf.config.list_logical_devices("GPU")
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        # Without GPUs, MirroredStrategy() would use one CPU; name every logical CPU instead.
        cross = None if gpus else tf.distribute.ReductionToOneDevice()
        return tf.distribute.MirroredStrategy(devices, cross_device_ops=cross)
    if kind == "multi_worker":
        _check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"[Train] strategy: expected one of {', '.join(STRATEGIES)}; "
                      f"received {kind!r}.")


def _check_tf_config() -> None:
    text = os.environ.get("TF_CONFIG", "")
    if not text:
        raise ConfigError("[Train] strategy = multi_worker needs the TF_CONFIG environment "
                          "variable (cluster and task); see docs/distributed.md.")
    try:
        config = json.loads(text)
        workers = config["cluster"]["worker"]
        task = config["task"]
        if task["type"] not in config["cluster"]:
            raise KeyError(task["type"])
        int(task["index"])
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            "TF_CONFIG: expected JSON like {\"cluster\": {\"worker\": [\"host:port\", ...]}, "
            f"\"task\": {{\"type\": \"worker\", \"index\": 0}}}}; received {text!r} ({err!r})."
        ) from None
    if not workers:
        raise ConfigError("TF_CONFIG: cluster.worker lists no worker.")


def _task(strategy: tf.distribute.Strategy) -> tuple[str | None, int]:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run folder, checkpoints and summaries: always, except
    under ``multi_worker``, where only the chief does (worker 0 when the cluster has no
    ``chief`` task)."""
    task_type, task_id = _task(strategy)
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    resolver = strategy.cluster_resolver
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def task_label(strategy: tf.distribute.Strategy) -> str:
    """``worker 1`` etc. under ``multi_worker``; empty otherwise."""
    task_type, task_id = _task(strategy)
    return "" if task_type is None else f"{task_type} {task_id}"


def check_global_batch(strategy: tf.distribute.Strategy, global_batch: int) -> None:
    """Raise :class:`ConfigError` unless ``[Train] minibatch_size`` splits evenly over the
    strategy's replicas."""
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise ConfigError(f"[Train] minibatch_size = {global_batch} must be a multiple of the "
                          f"{replicas} replicas of the distribution strategy ([Train] "
                          "strategy).")


def _slice_element(element: dict[str, Any], first: int, count: int, per: int
                   ) -> dict[str, Any]:
    """Stack the ``count`` per-replica slices starting at replica ``first`` along a new axis 0:
    ``[count, per, ...]`` for batched entries; scalars (the step) are repeated."""
    out = {}
    for key, value in element.items():
        if value.shape.rank:
            part = value[first * per:(first + count) * per]
            out[key] = tf.reshape(part, tf.concat([[count, per], tf.shape(part)[1:]], 0))
        else:
            out[key] = tf.repeat(value[tf.newaxis], count, axis=0)
    positions = tf.range(first * per, (first + count) * per, dtype=tf.int32)
    out["sample_index"] = tf.reshape(positions, [count, per])
    return out


def distribute_batches(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset,
                       global_batch: int) -> Any:
    """An iterable over ``dataset``'s global batches, split over the strategy's replicas.

    Args:
        strategy: the trainer's strategy.
        dataset: dicts whose entries of rank >= 1 have ``global_batch`` as their first
            dimension (scalars, e.g. the ``step``, go to every replica).
        global_batch: ``[Train] minibatch_size``.

    Returns:
        ``dataset`` itself with one replica; otherwise a distributed dataset whose replica
        ``r`` (numbered across workers) receives samples ``[r * b, (r + 1) * b)`` of each
        global batch, ``b = global_batch / replicas``, plus ``sample_index [b]``.

    Raises:
        ConfigError: ``global_batch`` is not a multiple of the number of replicas.
    """
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return dataset
    check_global_batch(strategy, global_batch)
    per = global_batch // replicas

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * local
        # Consecutive elements go to consecutive local replicas.
        return dataset.map(lambda e: _slice_element(e, first, local, per)) \
            .unbatch().prefetch(local)

    options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
    return strategy.distribute_datasets_from_function(dataset_fn, options)
