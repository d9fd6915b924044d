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


def test_label0_probability_sets_how_often_the_gland_is_drawn():
    # Cases of 4 labels (a gland and 3 landmarks) and one case with the gland alone.
    sampler = PairSampler([4] * 9 + [1], minibatch_size=5, seed=7, label0_probability=0.25)
    labels, cases = [], []
    for step in range(2000):
        c, lab = sampler.sample(step)
        cases.append(c)
        labels.append(lab)
    cases, labels = np.concatenate(cases), np.concatenate(labels)
    several = cases != 9
    assert np.all(labels[~several] == 0)  # one label: always label 0
    share = np.mean(labels[several] == 0)
    assert abs(share - 0.25) < 0.02  # label-reg's uniform draw gives 0.25 only by chance here
    counts = np.bincount(labels[several], minlength=4)[1:]
    assert np.all(np.abs(counts / counts.sum() - 1 / 3) < 0.03)  # the landmarks share the rest
    # A pure function of (seed, step), as the uniform draw.
    again = PairSampler([4] * 9 + [1], minibatch_size=5, seed=7, label0_probability=0.25)
    np.testing.assert_array_equal(again.sample(123)[1], sampler.sample(123)[1])
    # 0 never draws the gland where there are landmarks; 1 always does.
    never = PairSampler([3] * 4, 2, seed=1, label0_probability=0.0)
    assert all(np.all(never.sample(s)[1] > 0) for s in range(50))
    always = PairSampler([3] * 4, 2, seed=1, label0_probability=1.0)
    assert all(np.all(always.sample(s)[1] == 0) for s in range(50))
    with pytest.raises(ValueError, match="label0_probability must be in"):
        PairSampler([3] * 4, 2, label0_probability=1.5)


def test_the_uniform_draw_is_unchanged_without_label0_probability():
    sampler = PairSampler([5, 3, 1, 4], minibatch_size=2, seed=3)
    # label-reg's draw, floor(u * L) with u from the (seed, stream 1, step) generator.
    for step in range(20):
        cases, labels = sampler.sample(step)
        u = np.random.default_rng([3, 1, step]).random(cases.size)
        np.testing.assert_array_equal(labels, np.floor(u * np.array([5, 3, 1, 4])[cases]))
