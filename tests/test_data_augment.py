"""Augmentations keep image and label aligned; the training datasets give the promised
shapes and dtypes and replay the same draws for the same (seed, epoch, index)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mper.data import ACDCSlices, LAPatches, TwoStreamBatchSampler, endless_batches
from mper.data.augment import random_crop, random_rot_flip, random_rotate, resize

THRESHOLD = 0.5


def thresholded(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random image and the label ``image > THRESHOLD``: any misalignment breaks the rule."""
    image = np.random.default_rng(seed).random(shape).astype(np.float32)
    return image, (image > THRESHOLD).astype(np.uint8)


def assert_aligned(image: np.ndarray, label: np.ndarray) -> None:
    np.testing.assert_array_equal(np.asarray(label), np.asarray(image) > THRESHOLD)


def test_random_rot_flip_gives_the_four_mirror_symmetries_and_keeps_alignment():
    image, label = thresholded((3, 3, 2))
    results = set()
    for seed in range(100):
        out_image, out_label = random_rot_flip(image, label, np.random.default_rng(seed))
        assert_aligned(out_image, out_label)
        # Only the (H, W) plane moves: each depth slice keeps its own values.
        for depth in range(2):
            before, after = np.sort(image[..., depth], None), np.sort(out_image[..., depth], None)
            np.testing.assert_array_equal(after, before)
        results.add(out_image.tobytes())
    # A rotation followed by a flip is always a mirror image: the 4 reflections of the
    # square, never the identity (as UA-MT's RandomRotFlip).
    mirrors = {np.flip(np.rot90(image, turns), axis=0).tobytes() for turns in range(4)}
    assert results == mirrors and image.tobytes() not in results


def test_random_rotate_keeps_alignment_and_zero_angle_is_identity():
    image, label = thresholded((17, 13))
    for seed in range(10):
        assert_aligned(*random_rotate(image, label, np.random.default_rng(seed)))
    same_image, same_label = random_rotate(image, label, np.random.default_rng(0), max_degrees=0.0)
    np.testing.assert_array_equal(same_image, image)
    np.testing.assert_array_equal(same_label, label)


def test_random_crop_takes_a_window_and_pads_small_inputs():
    image = np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4)
    label = (image % 3).astype(np.uint8)
    crop_image, crop_label = random_crop(image, label, (4, 3, 4), np.random.default_rng(3))
    assert crop_image.shape == crop_label.shape == (4, 3, 4)
    corner = np.argwhere(image == crop_image[0, 0, 0])[0]
    window = tuple(slice(start, start + size) for start, size in zip(corner, (4, 3, 4)))
    np.testing.assert_array_equal(crop_image, image[window])
    np.testing.assert_array_equal(crop_label, label[window])

    padded_image, padded_label = random_crop(image, label, (9, 5, 4), np.random.default_rng(0))
    np.testing.assert_array_equal(padded_image[1:7], image)  # 3 rows missing: 1 before, 2 after
    assert not padded_image[[0, 7, 8]].any() and not padded_label[[0, 7, 8]].any()
    with pytest.raises(ValueError, match="one entry per axis"):
        random_crop(image, label, (4, 3), np.random.default_rng(0))


def test_resize_uses_nearest_neighbour_for_labels():
    image, label = thresholded((10, 14))
    label = label * 3  # classes 0 and 3 only: interpolation would create 1 and 2
    out_image, out_label = resize(image, label, (23, 17))
    assert out_image.shape == out_label.shape == (23, 17)
    assert set(np.unique(out_label)) <= {0, 3}
    same_image, same_label = resize(image, label, (10, 14))
    assert same_image is image and same_label is label


@pytest.fixture(scope="module")
def la_root(write_h5, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("la")
    for index, shape in enumerate([(20, 18, 12), (10, 12, 6)]):  # the second is smaller than a patch
        path = root / "2018LA_Seg_Training Set" / f"CASE{index}" / "mri_norm2.h5"
        image, _ = thresholded(shape, index)
        image.flat[0] = -1.0  # z-scored, as LA images are: some values negative
        write_h5(path, image=image, label=(image > THRESHOLD).astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def acdc_root(write_h5, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("acdc")
    for index in range(3):
        path = root / "data" / "slices" / f"patient00{index}_frame01_slice_0.h5"
        image, label = thresholded((24, 24), index)
        write_h5(path, image=image, label=label)
    return root


LA_CASES = ["CASE0", "CASE1"]
ACDC_SLICES = [f"patient00{index}_frame01_slice_0" for index in range(3)]


def test_la_patches_shapes_dtypes_and_alignment(la_root):
    dataset = LAPatches(la_root, LA_CASES, patch_size=(16, 14, 8), seed=0)
    assert len(dataset) == 2
    for epoch in range(3):
        for index in range(2):
            item = dataset[(epoch, index)]
            assert item["case"] == LA_CASES[index]
            assert item["image"].shape == (1, 16, 14, 8) and item["image"].dtype == torch.float32
            assert item["label"].shape == (16, 14, 8) and item["label"].dtype == torch.int64
            assert_aligned(item["image"][0].numpy(), item["label"].numpy())


def test_acdc_slices_shapes_dtypes_and_alignment(acdc_root):
    dataset = ACDCSlices(acdc_root, ACDC_SLICES, patch_size=(24, 24), seed=0)
    image = thresholded((24, 24), 1)[0]
    mirrors = {np.flip(np.rot90(image, turns), axis=0).tobytes() for turns in range(4)}
    square_symmetries = mirrors | {image.tobytes()}  # reached by rot/flip, or by no augmentation
    outcomes = []
    for epoch in range(12):
        item = dataset[(epoch, 1)]
        assert item["image"].shape == (1, 24, 24) and item["image"].dtype == torch.float32
        assert item["label"].shape == (24, 24) and item["label"].dtype == torch.int64
        assert_aligned(item["image"][0].numpy(), item["label"].numpy())
        outcomes.append(item["image"][0].numpy().tobytes() in square_symmetries)
    assert any(outcomes) and not all(outcomes)  # both the rot/flip and the free-rotation branch ran
    resized = ACDCSlices(acdc_root, ACDC_SLICES, patch_size=(32, 40), seed=0)[1]
    assert resized["image"].shape == (1, 32, 40) and set(resized["label"].unique().tolist()) <= {0, 1}


def test_acdc_slices_without_augment_only_resize(acdc_root):
    image, label = thresholded((24, 24), 2)
    expected_image, expected_label = resize(image, label, (32, 32))
    for epoch in range(3):
        dataset = ACDCSlices(acdc_root, ACDC_SLICES, patch_size=(32, 32), augment=False)
        item = dataset[(epoch, 2)]
        np.testing.assert_allclose(item["image"][0].numpy(), expected_image, rtol=1e-6)
        np.testing.assert_array_equal(item["label"].numpy(), expected_label)


def items(dataset, epoch: int, order: list[int]) -> dict[int, torch.Tensor]:
    return {index: dataset[(epoch, index)]["image"] for index in order}


@pytest.mark.parametrize("kind", ["la", "acdc"])
def test_datasets_replay_draws_per_seed_epoch_and_index(kind, la_root, acdc_root):
    def make(seed):
        if kind == "la":
            return LAPatches(la_root, LA_CASES, patch_size=(8, 8, 4), seed=seed)
        return ACDCSlices(acdc_root, ACDC_SLICES, patch_size=(24, 24), seed=seed)

    indices = list(range(len(make(0))))
    first = items(make(7), 4, indices)
    # Another instance, items asked in reverse order: the same draws.
    again = items(make(7), 4, indices[::-1])
    assert all(torch.equal(first[index], again[index]) for index in indices)
    other_epoch = items(make(7), 5, indices)
    other_seed = items(make(8), 4, indices)
    assert any(not torch.equal(first[index], other_epoch[index]) for index in indices)
    assert any(not torch.equal(first[index], other_seed[index]) for index in indices)
    assert make(None).seed != make(None).seed


def test_dataset_argument_errors(la_root):
    with pytest.raises(TypeError, match="sequence of case names"):
        LAPatches(la_root, "CASE0")
    with pytest.raises(ValueError, match="cases is empty"):
        LAPatches(la_root, [])
    with pytest.raises(ValueError, match="patch_size"):
        LAPatches(la_root, LA_CASES, patch_size=(8, 8))


def test_keyed_items_carry_their_epoch(la_root):
    dataset = LAPatches(la_root, LA_CASES, patch_size=(8, 8, 4), seed=3)
    assert torch.equal(dataset[1]["image"], dataset[(0, 1)]["image"])
    assert not torch.equal(dataset[(2, 1)]["image"], dataset[(0, 1)]["image"])
    assert dataset[(2, 1)]["case"] == "CASE1"


def test_endless_batches_of_a_dataset(la_root):
    dataset = LAPatches(la_root, LA_CASES, patch_size=(8, 8, 4), seed=3)
    loader = DataLoader(dataset, batch_sampler=TwoStreamBatchSampler([0], [1], 2, 1, seed=0))
    batches = endless_batches(loader, start_iteration=5)
    batch = next(batches)
    assert batch["image"].shape == (2, 1, 8, 8, 4) and batch["case"] == LA_CASES
    assert torch.equal(batch["image"][1], dataset[(5, 1)]["image"])  # one batch per epoch: epoch 5
