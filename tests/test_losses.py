"""Hand-checked values of the copy-paste loss, its parts, the ramp and Eq. 6."""

from __future__ import annotations

import math

import pytest
import torch

from mper.losses import (
    copy_paste_loss,
    masked_cross_entropy,
    masked_dice_loss,
    mper_objective,
    ramp_weight,
)


def two_voxel_case():
    """Voxel 0: p = (0.5, 0.5), label 1, in the mask region; voxel 1: p = (0.75, 0.25),
    label 0, in the pasted box."""
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]).reshape(1, 2, 1, 2)
    label = torch.tensor([[[1, 0]]])
    mix_mask = torch.tensor([[1.0, 0.0]])
    return logits, label, mix_mask


def test_masked_cross_entropy_averages_over_the_region_only():
    logits, label, mix_mask = two_voxel_case()
    assert masked_cross_entropy(logits, label, mix_mask).item() == pytest.approx(math.log(2))
    assert masked_cross_entropy(logits, label, 1 - mix_mask).item() == pytest.approx(-math.log(0.75))
    both = torch.ones_like(mix_mask)
    expected = (math.log(2) - math.log(0.75)) / 2
    assert masked_cross_entropy(logits, label, both).item() == pytest.approx(expected)


def test_masked_cross_entropy_of_an_empty_region_is_zero():
    logits, label, mix_mask = two_voxel_case()
    assert masked_cross_entropy(logits, label, torch.zeros_like(mix_mask)).item() == 0.0


def test_masked_dice_uses_squared_probabilities_and_every_class():
    logits, label, mix_mask = two_voxel_case()
    # Region 1 (voxel 0, label 1): class 0 dice 0 / 0.25 = 0, class 1 dice 1 / 1.25 = 0.8.
    assert masked_dice_loss(logits, label, mix_mask).item() == pytest.approx((1.0 + 0.2) / 2)
    # Box (voxel 1, label 0): class 0 dice 1.5 / 1.5625 = 0.96, class 1 dice 0.
    assert masked_dice_loss(logits, label, 1 - mix_mask).item() == pytest.approx((0.04 + 1.0) / 2)


def test_copy_paste_loss_weights_each_region():
    logits, label, mix_mask = two_voxel_case()
    mask_region = math.log(2) + 0.6
    box_region = -math.log(0.75) + 0.52
    loss = copy_paste_loss(logits, label, label, mix_mask, surround_weight=1.0, box_weight=0.5)
    assert loss.item() == pytest.approx(mask_region + 0.5 * box_region)
    swapped = copy_paste_loss(logits, label, label, mix_mask, surround_weight=0.5, box_weight=1.0)
    assert swapped.item() == pytest.approx(0.5 * mask_region + box_region)
    halved = copy_paste_loss(logits, label, label, mix_mask, 1.0, 1.0, scale=0.5)
    assert halved.item() == pytest.approx((mask_region + box_region) / 2)


def test_copy_paste_loss_is_small_for_a_confident_correct_prediction():
    label = torch.tensor([[[0, 1], [2, 1]]])
    logits = 30.0 * torch.nn.functional.one_hot(label, 3).movedim(-1, 1).float()
    loss = copy_paste_loss(logits, label, label, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 1.0, 0.5)
    # A class absent from a region and predicted nowhere there counts as matched.
    assert 0 <= loss.item() < 1e-6


def test_copy_paste_loss_sends_gradients_to_the_logits():
    logits, label, mix_mask = two_voxel_case()
    logits.requires_grad_(True)
    copy_paste_loss(logits, label, label, mix_mask, 1.0, 0.5).backward()
    # Raising the labeled class's logit lowers the loss.
    assert logits.grad[0, 1, 0, 0] < 0 and logits.grad[0, 0, 0, 1] < 0


@pytest.mark.parametrize(
    "iteration, expected",
    [
        (0, math.exp(-5)),
        (149, math.exp(-5)),
        (150 * 20, math.exp(-5 * 0.5**2)),
        (150 * 40, 1.0),
        (150 * 1000, 1.0),
    ],
)
def test_ramp_follows_the_sigmoid_schedule_in_epochs_of_150_iterations(iteration, expected):
    assert ramp_weight(iteration, weight=1.0, rampup_epochs=40, epoch_length=150) == pytest.approx(expected)


def test_ramp_scales_with_its_weight_and_skips_an_empty_rampup():
    assert ramp_weight(150 * 40, weight=0.5, rampup_epochs=40, epoch_length=150) == pytest.approx(0.5)
    assert ramp_weight(0, weight=0.5, rampup_epochs=0, epoch_length=150) == 0.5
    assert ramp_weight(20, weight=1.0, rampup_epochs=4, epoch_length=10) == pytest.approx(math.exp(-5 * 0.25))


def test_the_ramp_s_epoch_length_comes_from_the_preset_alone():
    """``selftrain.ramp_epoch_length`` is the one place the epoch of the ramp is set: the
    function has no default of its own that could drift from the presets'."""
    with pytest.raises(TypeError, match="epoch_length"):
        ramp_weight(0, weight=1.0, rampup_epochs=40)


def test_objective_combines_the_three_losses_as_in_eq_6():
    total = mper_objective(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0), ramp=0.5, contrastive_weight=0.1)
    assert total.item() == pytest.approx(1.0 + 0.5 * (2.0 + 0.1 * 3.0))
