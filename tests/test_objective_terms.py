"""Objective terms (labelreg.losses.terms): weighted sums by hand, phases, monitors, and the
objective a PairwiseMethod assembles with and without a network's contribution."""

from __future__ import annotations

import numpy as np
import pytest

from labelreg._tf import tf
from labelreg.losses.terms import Monitor, Phase, Term, batch_keys, evaluate

BATCH = {"fixed_image": tf.zeros([3, 4, 4, 1])}


def _const(*values):
    return lambda batch, out: tf.constant(values, tf.float32)


def test_the_loss_is_the_weighted_sum_of_the_terms_that_apply():
    terms = [Term("a", 2.0, _const(1.0, 2.0, 3.0)),
             Term("b", 0.5, _const(4.0, 0.0, 2.0)),
             Term("c", 1.0, lambda batch, out: None),  # does not apply to these outputs
             Term("d", 0.0, _const(9.0, 9.0, 9.0))]  # logged, not trained on
    out = evaluate(terms, [], BATCH, {}, phase=0)
    np.testing.assert_allclose(out["loss"].numpy(), [2 + 2, 4 + 0, 6 + 1])
    assert set(out) == {"a", "b", "d", "loss"}
    np.testing.assert_allclose(out["d"].numpy(), [9, 9, 9])


def test_phases_and_monitors():
    terms = [Term("first", 1.0, _const(1.0, 1.0, 1.0), phases=(0,)),
             Term("second", 3.0, _const(2.0, 2.0, 2.0), phases=(1,)),
             Term("always", 1.0, _const(0.5, 0.5, 0.5))]
    monitors = [Monitor(lambda batch, out: {"figure": tf.constant([7.0, 8.0, 9.0])})]
    zero = evaluate(terms, monitors, BATCH, {}, phase=0)
    one = evaluate(terms, monitors, BATCH, {}, phase=1)
    np.testing.assert_allclose(zero["loss"].numpy(), [1.5] * 3)
    np.testing.assert_allclose(one["loss"].numpy(), [6.5] * 3)
    assert "second" not in zero and "first" not in one
    np.testing.assert_allclose(one["figure"].numpy(), [7, 8, 9])  # never in the loss


def test_no_term_applies_gives_a_zero_loss_per_sample():
    out = evaluate([Term("a", 1.0, lambda batch, out: None)], [], BATCH, {}, phase=0)
    np.testing.assert_array_equal(out["loss"].numpy(), [0.0, 0.0, 0.0])


def test_batch_keys_and_phase_defaults():
    terms = [Term("a", 1.0, _const(1.0), needs=("moving_seg_label",)),
             Term("b", 1.0, _const(1.0), needs=("fixed_seg_label", "moving_seg_label"))]
    assert batch_keys(terms) == {"moving_seg_label", "fixed_seg_label"}
    assert Phase(0).forward is None and Term("c", 1.0, _const(1.0)).active(5)


def test_pairwise_objective_by_hand(tmp_path):
    """label_loss + 0.5 * regulariser for a LocalNet, from the method's terms, against the
    losses called directly on the same DDF."""
    from labelreg import config
    from labelreg.losses.deform import bending_energy
    from labelreg.losses.label import multi_scale_dice_loss
    from labelreg.methods.label_driven import LabelDriven
    from labelreg.networks.apply import register_pair
    from tests.test_pipeline_e2e import write_config, write_dataset

    data = write_dataset(tmp_path / "data", num_cases=2)
    method = LabelDriven(config.load(write_config(tmp_path / "x.ini", data)),
                         log=lambda line: None)
    method.prepare_data()
    method.models = method.build()
    terms, monitors, phases = method.objective()
    assert [t.name for t in terms] == ["label_loss", "regulariser"] and len(phases) == 1
    assert method.schedule_restarts() == ()
    batch = {**method.source.cache.batch([0, 1], [0, 0]), "spacing": tf.ones([2, 3])}
    values = method.loss_terms(batch)
    out = register_pair(method.ddf_function(training=True), batch["moving_image"],
                        batch["fixed_image"], batch["moving_label"])
    label = multi_scale_dice_loss(batch["fixed_label"], out["warped_label"], scales=(0, 1, 2))
    expected = label + 0.5 * bending_energy(out["ddf"])
    np.testing.assert_allclose(values["loss"].numpy(), expected.numpy(), rtol=1e-5)
    assert {"dice", "centroid_distance_mm", "label_loss", "regulariser"} <= set(values)


@pytest.mark.parametrize("frozen", [False, True])
def test_centroid_align_contributes_its_terms_and_phases(frozen):
    from labelreg.networks.centroid_align import CentroidAlignNet

    model = CentroidAlignNet(ndim=3, num_channel_initial=2, num_channel_segment=2)
    settings = {"segmentation_weight": 0.5, "segmentation_only_steps": 4,
                "freeze_segmentations": frozen}
    objective = model.training_objective(settings)
    assert [p.start for p in objective.phases] == [0, 4]
    assert [(t.name, t.weight, t.phases) for t in objective.terms] == [
        ("segmentation_loss", 0.5, (0,)), ("segmentation_loss", 0.0 if frozen else 0.5, (1,))]
    assert batch_keys(objective.terms) == {"moving_seg_label", "fixed_seg_label"}
    assert model.training_objective({"segmentation_weight": 0.0}).terms == ()
    single = model.training_objective({"segmentation_weight": 1.0})
    assert len(single.phases) == 1 and single.terms[0].phases is None
