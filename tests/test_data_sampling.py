"""Tests of labelreg.data.sampling: label-reg's two-stage sampling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from labelreg.data.sampling import PairSampler
from labelreg.errors import DataError

NUM_LABELS = [3, 1, 5, 2, 4, 2, 6]


def test_deterministic_for_a_seed():
    a, b = PairSampler(NUM_LABELS, 3, seed=5), PairSampler(NUM_LABELS, 3, seed=5)
    for step in range(20):
        for x, y in zip(a.sample(step), b.sample(step), strict=True):
            np.testing.assert_array_equal(x, y)
    other = PairSampler(NUM_LABELS, 3, seed=6)
    assert any(
        not np.array_equal(a.sample(s)[0], other.sample(s)[0]) for s in range(5)
    ), "different seeds must give different sequences"


@pytest.mark.parametrize("minibatch_size", [1, 2, 3, 7])
def test_epochs_are_permutations_with_leftover_dropped(minibatch_size):
    sampler = PairSampler(NUM_LABELS, minibatch_size, seed=1)
    per_epoch = len(NUM_LABELS) // minibatch_size
    assert sampler.steps_per_epoch == per_epoch
    for epoch in range(3):
        steps = range(epoch * per_epoch, (epoch + 1) * per_epoch)
        cases = np.concatenate([sampler.cases(s) for s in steps])
        assert cases.size == per_epoch * minibatch_size
        assert len(set(cases.tolist())) == cases.size  # no case twice within an epoch
        order = sampler.epoch_order(epoch)
        np.testing.assert_array_equal(cases, order[: cases.size])
        assert sorted(order.tolist()) == list(range(len(NUM_LABELS)))
    # Epochs are shuffled differently.
    assert not np.array_equal(sampler.epoch_order(0), sampler.epoch_order(1))


def test_resume_at_step_equals_uninterrupted_run():
    sampler = PairSampler(NUM_LABELS, 2, seed=3)
    full = list(itertools.islice(sampler.iterate(0), 25))
    resumed = list(itertools.islice(PairSampler(NUM_LABELS, 2, seed=3).iterate(11), 14))
    for (s1, c1, l1), (s2, c2, l2) in zip(full[11:], resumed, strict=True):
        assert s1 == s2
        np.testing.assert_array_equal(c1, c2)
        np.testing.assert_array_equal(l1, l2)
    # A pure function of the step: the order of the queries does not matter.
    np.testing.assert_array_equal(sampler.sample(17)[1], full[17][2])


def test_label_indices_in_range_and_uniform():
    sampler = PairSampler(NUM_LABELS, 3, seed=0)
    counts = [np.zeros(n) for n in NUM_LABELS]
    for step in range(6000):
        cases, labels = sampler.sample(step)
        assert cases.dtype == np.int64 and labels.dtype == np.int64
        for c, j in zip(cases, labels, strict=True):
            assert 0 <= j < NUM_LABELS[c]
            counts[c][j] += 1
    for n, count in zip(NUM_LABELS, counts, strict=True):
        frequencies = count / count.sum()
        # About 2500 draws per case: uniform within a few standard errors.
        np.testing.assert_allclose(frequencies, np.full(n, 1.0 / n), atol=0.04)


def test_minibatch_larger_than_dataset():
    with pytest.raises(DataError, match="minibatch_size 8 is larger than the number of cases 7"):
        PairSampler(NUM_LABELS, 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_labels=[2, 0], minibatch_size=1), "at least one label"),
        (dict(num_labels=[2, 2], minibatch_size=0), "minibatch_size must be >= 1"),
        (dict(num_labels=[2, 2], minibatch_size=1, seed=-1), "seed must be a non-negative"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PairSampler(**kwargs)
    with pytest.raises(DataError, match="empty dataset"):
        PairSampler([], 1)
    with pytest.raises(ValueError, match="step must be >= 0"):
        PairSampler([1, 1], 1).sample(-1)
