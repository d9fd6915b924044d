"""label-reg's two-stage sampling of training pairs, as a pure function of (seed, step).

Stage 1 picks a minibatch of cases: the case indices are shuffled once per epoch and cut into
``num_cases // minibatch_size`` minibatches (the leftover cases of an epoch are dropped, as in
label-reg). Stage 2 picks one label index per pair, uniformly among that case's labels, the same
index for the moving and the fixed label; or, with ``label0_probability = p``, label 0 (the
gland of the MR/TRUS data) with probability ``p`` and otherwise one of the others (landmarks)
uniformly, so the small landmarks can be sampled more often than one in ``L``.

Every draw comes from a NumPy generator seeded by ``(seed, epoch)`` or ``(seed, step)``, so the
minibatch of any step can be computed directly: resuming training at step ``k`` needs nothing but
``k`` (no generator state to checkpoint), and the sequence does not depend on where it started.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from labelreg.errors import DataError

__all__ = ["PairSampler"]

# Distinct stream tags, so the epoch shuffles and the label draws never share a seed.
_SHUFFLE_STREAM = 0
_LABEL_STREAM = 1


class PairSampler:
    """Case and label indices of every training step.

    Args:
        num_labels: labels per case (1 for a case without labels); its length is the case count.
        minibatch_size: pairs per step, at most the number of cases.
        seed: non-negative integer seed.
        label0_probability: ``None`` for label-reg's uniform draw; else the probability, in
            [0, 1], of drawing label 0, the other labels sharing the rest uniformly (a case with
            one label always gives label 0).

    Attributes:
        num_cases: number of cases.
        minibatch_size: pairs per step.
        seed: the seed.
        steps_per_epoch: ``num_cases // minibatch_size``.

    Raises:
        DataError: ``minibatch_size`` exceeds the number of cases, or no case has a label.
        ValueError: a non-positive minibatch size or label count, or a negative seed.
    """

    def __init__(self, num_labels: Sequence[int], minibatch_size: int, seed: int = 0,
                 label0_probability: float | None = None) -> None:
        self.num_labels = np.asarray([int(n) for n in num_labels], dtype=np.int64)
        self.num_cases = int(self.num_labels.size)
        if self.num_cases == 0:
            raise DataError("cannot sample training pairs from an empty dataset (0 cases).")
        if np.any(self.num_labels < 1):
            raise ValueError(
                f"every case needs at least one label; received num_labels={list(num_labels)}."
            )
        if int(minibatch_size) < 1:
            raise ValueError(f"minibatch_size must be >= 1; received minibatch_size={minibatch_size}.")
        if int(minibatch_size) > self.num_cases:
            raise DataError(
                f"minibatch_size {minibatch_size} is larger than the number of cases "
                f"{self.num_cases}; lower [Train] minibatch_size or add cases."
            )
        if int(seed) < 0:
            raise ValueError(f"seed must be a non-negative integer; received seed={seed}.")
        if label0_probability is not None and not 0.0 <= float(label0_probability) <= 1.0:
            raise ValueError("label0_probability must be in [0, 1]; received "
                             f"label0_probability={label0_probability}.")
        self.label0_probability = (None if label0_probability is None
                                   else float(label0_probability))
        self.minibatch_size = int(minibatch_size)
        self.seed = int(seed)
        self.steps_per_epoch = self.num_cases // self.minibatch_size

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The shuffled case indices of one epoch, ``int64 [num_cases]``."""
        rng = np.random.default_rng([self.seed, _SHUFFLE_STREAM, int(epoch)])
        return rng.permutation(self.num_cases)

    def cases(self, step: int) -> np.ndarray:
        """Case indices of training step ``step``, ``int64 [minibatch_size]``."""
        if int(step) < 0:
            raise ValueError(f"step must be >= 0; received step={step}.")
        epoch, position = divmod(int(step), self.steps_per_epoch)
        start = position * self.minibatch_size
        return self.epoch_order(epoch)[start : start + self.minibatch_size]

    def sample(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Case and label indices of training step ``step``.

        Returns:
            ``(case_indices, label_indices)``, both ``int64 [minibatch_size]``; the label index
            of a pair is used for its moving and its fixed label.
        """
        cases = self.cases(step)
        rng = np.random.default_rng([self.seed, _LABEL_STREAM, int(step)])
        # floor(u * L) is uniform over 0..L-1 and lets one vector draw serve cases with
        # different label counts.
        counts = self.num_labels[cases]
        if self.label0_probability is None:
            labels = np.floor(rng.random(cases.size) * counts).astype(np.int64)
            return cases, np.minimum(labels, counts - 1)
        # Label 0 with probability p, else one of labels 1..L-1 uniformly (same one-vector trick).
        first, rest = rng.random(cases.size), rng.random(cases.size)
        others = 1 + np.minimum(np.floor(rest * (counts - 1)), counts - 2).astype(np.int64)
        labels = np.where((first < self.label0_probability) | (counts == 1), 0, others)
        return cases, labels.astype(np.int64)

    def iterate(self, start_step: int = 0, stop_step: int | None = None
                ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(step, case_indices, label_indices)`` for ``start_step <= step < stop_step``
        (``stop_step=None``: endless)."""
        step = int(start_step)
        while stop_step is None or step < stop_step:
            cases, labels = self.sample(step)
            yield step, cases, labels
            step += 1
