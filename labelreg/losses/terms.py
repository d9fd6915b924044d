"""Objective terms as objects: a training objective is a list of weighted :class:`Term` s and
:class:`Monitor` s over phases (:class:`Phase`), assembled from the method's config and from
what its network contributes (a network may define ``training_objective(loss_settings)``; see
:class:`labelreg.networks.centroid_align.CentroidAlignNet`).

A term's function takes the batch and the outputs of the phase's forward pass (``ddf``,
``warped_label``, ``warped_moving_image`` and whatever else the network returns, e.g. its
segmentations) and returns one value per sample ``[B]``, or ``None`` when the term does not
apply to those outputs (a label term in a phase that computes no DDF, say). :func:`evaluate`
adds up the weighted terms that apply into ``loss``; every applied term is logged under its
name, and a monitor's values are logged but never enter the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from labelreg._tf import tf

__all__ = ["Term", "Monitor", "Phase", "ModelObjective", "evaluate", "batch_keys"]

Batch = Mapping[str, Any]
Outputs = Mapping[str, tf.Tensor]


@dataclass(frozen=True)
class Term:
    """One weighted part of the loss.

    Attributes:
        name: the logged name (e.g. ``label_loss``).
        weight: the factor of the term in ``loss``; 0 logs the term without training on it.
        fn: ``(batch, outputs) -> [B]``, or ``None`` when the term does not apply.
        phases: the phase indices in which the term is active; ``None`` = every phase.
        needs: batch keys the term reads beyond the images (the data source provides them,
            e.g. ``moving_seg_label``).
    """

    name: str
    weight: float
    fn: Callable[[Batch, Outputs], tf.Tensor | None]
    phases: tuple[int, ...] | None = None
    needs: tuple[str, ...] = ()

    def active(self, phase: int) -> bool:
        return self.phases is None or phase in self.phases


@dataclass(frozen=True)
class Monitor:
    """Figures logged beside the loss: ``fn(batch, outputs) -> {name: [B]}`` (empty when none
    apply)."""

    fn: Callable[[Batch, Outputs], Mapping[str, tf.Tensor]]


@dataclass(frozen=True)
class Phase:
    """A stretch of training with its own objective, from step index ``start`` on.

    Attributes:
        start: the first step index (0-based) of the phase; the learning-rate schedule starts
            again there.
        forward: ``batch -> outputs`` of this phase (e.g. the segmentations alone), or ``None``
            for the method's registration forward pass.
    """

    start: int
    forward: Callable[[Batch], dict[str, tf.Tensor]] | None = None


@dataclass(frozen=True)
class ModelObjective:
    """What a network contributes to its method's objective: extra terms and phases."""

    terms: tuple[Term, ...] = ()
    phases: tuple[Phase, ...] = (Phase(0),)


def evaluate(terms: Sequence[Term], monitors: Sequence[Monitor], batch: Batch,
             outputs: Outputs, phase: int) -> dict[str, tf.Tensor]:
    """``{"loss": sum of weight * term, name: value of every applied term and monitor}``, each
    per sample ``[B]``.

    A batch to which no term applies has a zero loss (nothing is trained on it).
    """
    values: dict[str, tf.Tensor] = {}
    total = None
    for term in terms:
        if not term.active(phase):
            continue
        value = term.fn(batch, outputs)
        if value is None:
            continue
        values[term.name] = value
        if term.weight > 0:
            weighted = term.weight * value
            total = weighted if total is None else total + weighted
    for monitor in monitors:
        values.update(monitor.fn(batch, outputs))
    values["loss"] = total if total is not None else tf.zeros(
        tf.shape(batch["fixed_image"])[:1])
    return values


def batch_keys(terms: Sequence[Term]) -> set[str]:
    """Every batch key the terms need beyond the images."""
    return {key for term in terms for key in term.needs}
