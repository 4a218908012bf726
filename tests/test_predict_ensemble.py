"""mper-predict with several checkpoints (the mean of their softmax probabilities, as nnU-Net
ensembles its folds) and with --mirror (the mean over flips of the axes training flips),
against oracles computed here with the networks called directly; one checkpoint without
--mirror predicts as before, bit for bit."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from mper import cli, pipeline
from mper.data import acdc_volume_path, normalize_intensity
from mper.datasets import get_dataset, synthesize
from mper.eval.inference import Ensemble, ensemble, predict_volume, sliding_window_predict
from mper.eval.predict import predict_file, predict_path
from mper.nets import SegmentationOutput
from mper.train.checkpoint import load_checkpoint, save_checkpoint
from mper.train.config import load_config
from tiny_runs import TINY_ACDC, acdc_run_arguments


class ConvNet(nn.Module):
    """One random 3x3(x3) convolution to the class logits: neither flip-equivariant nor
    blind to its neighbours, so mirroring changes what it predicts."""

    def __init__(self, dims: int, num_classes: int, seed: int, kernel: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        convolution = nn.Conv3d if dims == 3 else nn.Conv2d
        self.conv = convolution(1, num_classes, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> SegmentationOutput:
        return SegmentationOutput(4 * self.conv(x), x)


def oracle_probabilities(nets, batch, flip_axes=()):
    """The mean softmax of ``nets`` over ``batch`` (N, 1, *window) and its flips along
    ``flip_axes`` (spatial axes), each flipped back: computed here, one call per pass."""
    flips = [combo for count in range(len(flip_axes) + 1) for combo in itertools.combinations(flip_axes, count)]
    passes = []
    with torch.no_grad():
        for net in nets:
            net.eval()
            for flip in flips:
                dims = [axis + 2 for axis in flip]
                logits = net(batch.flip(dims) if dims else batch).pred
                probabilities = torch.softmax(logits.float(), dim=1)
                passes.append(probabilities.flip(dims) if dims else probabilities)
    total = passes[0]
    for probabilities in passes[1:]:
        total = total + probabilities
    return total / len(passes)


def test_one_network_unmirrored_is_the_network_itself_and_two_copies_predict_as_one():
    net = ConvNet(3, 3, seed=0)
    assert ensemble([net]) is net
    assert isinstance(ensemble([net, net]), Ensemble) and isinstance(ensemble([net], (0, 1)), Ensemble)
    image = np.random.default_rng(0).normal(size=(20, 18, 10)).astype(np.float32)
    options = {"patch_size": (12, 12, 8), "stride": (6, 6, 4)}
    one_labels, one_probabilities = sliding_window_predict(net, image, 3, **options)
    two_labels, two_probabilities = sliding_window_predict(Ensemble([net, net]), image, 3, **options)
    np.testing.assert_array_equal(two_probabilities, one_probabilities)  # (p + p) / 2 is p exactly
    np.testing.assert_array_equal(two_labels, one_labels)


@pytest.mark.parametrize("flip_axes", [(), (0, 1)])
def test_a_3d_ensemble_predicts_the_argmax_of_its_networks_mean_probabilities(flip_axes):
    nets = [ConvNet(3, 3, seed=1), ConvNet(3, 3, seed=2)]
    image = np.random.default_rng(1).normal(size=(12, 10, 6)).astype(np.float32)
    # one window over the whole volume: the oracle sees what each window sees
    labels, probabilities = sliding_window_predict(
        Ensemble(nets, flip_axes), image, 3, patch_size=image.shape, stride=image.shape
    )
    expected = oracle_probabilities(nets, torch.from_numpy(image)[None, None], flip_axes)[0].numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(labels, expected.argmax(axis=0))
    alone = [sliding_window_predict(net, image, 3, image.shape, image.shape)[1] for net in nets]
    assert not np.allclose(alone[0], alone[1], atol=1e-3)  # two different networks
    if flip_axes:  # mirroring changes what a network that is not flip-equivariant predicts
        unmirrored = sliding_window_predict(Ensemble(nets), image, 3, image.shape, image.shape)[1]
        assert not np.allclose(unmirrored, probabilities, atol=1e-3)


def test_mirroring_a_flip_equivariant_network_changes_nothing():
    net = ConvNet(3, 2, seed=3, kernel=1)  # voxel by voxel: equivariant to every flip
    image = np.random.default_rng(2).normal(size=(16, 12, 8)).astype(np.float32)
    options = {"patch_size": (8, 8, 8), "stride": (4, 4, 4)}
    plain = sliding_window_predict(net, image, 2, **options)[1]
    mirrored = sliding_window_predict(Ensemble([net], (0, 1, 2)), image, 2, **options)[1]
    np.testing.assert_allclose(mirrored, plain, rtol=1e-6, atol=1e-7)


def test_an_ensemble_refuses_flips_of_axes_its_windows_lack():
    with pytest.raises(ValueError, match="flip_axes"):
        Ensemble([ConvNet(2, 2, seed=0)], (0, 0))
    with pytest.raises(ValueError, match=r"flip_axes \(0, 2\) are not all axes of a window"):
        sliding_window_predict(
            Ensemble([ConvNet(2, 2, seed=0)], (0, 2)), np.zeros((8, 8), np.float32), 2, (8, 8), (8, 8)
        )


def test_flip_axes_are_those_training_flips():
    assert get_dataset("la").flip_axes == (0, 1)  # rot90 + flip in the (H, W) plane of (H, W, D) patches
    assert get_dataset("acdc").flip_axes == (0, 1)  # of its (H, W) slices


@pytest.mark.parametrize("flip_axes", [(), (0, 1)])
def test_la_files_are_segmented_by_the_mean_of_the_ensembles_probabilities(tmp_path, flip_axes):
    raw = np.random.default_rng(3).normal(100, 20, size=(12, 10, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(raw, np.eye(4)), tmp_path / "scan.nii.gz")
    nets = [ConvNet(3, 2, seed=4), ConvNet(3, 2, seed=5)]
    out = predict_file(
        Ensemble(nets, flip_axes),
        tmp_path / "scan.nii.gz",
        "la",
        tmp_path / "out",
        patch_size=raw.shape,
        stride=raw.shape,
    )
    image = normalize_intensity(raw, get_dataset("la").normalization)
    expected = oracle_probabilities(nets, torch.from_numpy(image)[None, None], flip_axes)[0].argmax(dim=0)
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), expected.numpy())


@pytest.mark.parametrize("flip_axes", [(), (0, 1)])
def test_acdc_slices_are_segmented_by_the_mean_of_the_ensembles_probabilities(flip_axes):
    volume = np.random.default_rng(4).random(size=(5, 16, 16)).astype(np.float32)  # (S, H, W), as h5 holds it
    nets = [ConvNet(2, 4, seed=6), ConvNet(2, 4, seed=7)]
    # slices of the patch size: resizing them to it and back changes nothing
    labels = predict_volume(Ensemble(nets, flip_axes), volume, "acdc", 4, patch_size=(16, 16))
    expected = oracle_probabilities(nets, torch.from_numpy(volume)[:, None], flip_axes).argmax(dim=1)
    np.testing.assert_array_equal(labels, expected.numpy())


# --- checkpoints: mper-predict end to end on ACDC ---------------------------------------------


@pytest.fixture(scope="module")
def acdc_models(tmp_path_factory):
    """A tiny ACDC run's best.pt, a copy of it with other weights (another fold, say) and the
    h5 volume of a test case."""
    tmp = tmp_path_factory.mktemp("ensemble")
    root = synthesize("acdc", tmp / "acdc", cases=5, seed=0, size=(32, 32), progress=False)
    run = tmp / "run"
    cli.train_main(acdc_run_arguments(root, run, TINY_ACDC))
    state = load_checkpoint(run / "best.pt")
    generator = torch.Generator().manual_seed(0)
    for weights in ("student", "teacher"):
        for name, tensor in state[weights].items():
            if tensor.is_floating_point() and name.endswith("weight"):
                state[weights][name] = tensor + 0.3 * tensor.std() * torch.randn(tensor.shape, generator=generator)
    other = save_checkpoint(tmp / "other" / "best.pt", state)
    case = (root / "test.list").read_text().split()[0]
    return run / "best.pt", other, acdc_volume_path(root, case)


def _predicted(checkpoints, source, out, *options):
    cli.predict_main(
        ["--checkpoint", *map(str, checkpoints), "--input", str(source), "--output", str(out), "--device", "cpu"]
        + list(options)
    )
    (written,) = out.iterdir()
    return np.asarray(nib.load(written).dataobj)


def test_one_checkpoint_predicts_as_before_and_two_copies_as_one(acdc_models, tmp_path):
    first, _, source = acdc_models
    net, config = pipeline.load_network(first, device="cpu")
    (before,) = predict_path(
        net,
        source,
        config.dataset,
        tmp_path / "before",
        num_classes=config.num_classes,
        postprocess=config.eval.postprocess,
        ops=config.ops,
        **pipeline.inference_options(config),
    )
    one = _predicted([first], source, tmp_path / "one")
    np.testing.assert_array_equal(one, np.asarray(nib.load(before).dataobj))
    assert (tmp_path / "one" / before.name).read_bytes() == before.read_bytes()
    np.testing.assert_array_equal(_predicted([first, first], source, tmp_path / "two"), one)


@pytest.mark.parametrize("weights", ["student", "teacher"])
def test_two_checkpoints_predict_the_argmax_of_their_mean_probabilities(acdc_models, tmp_path, weights):
    first, other, source = acdc_models
    nets = [pipeline.load_network(path, device="cpu", weights=weights)[0] for path in (first, other)]
    config = pipeline.load_network(first, device="cpu")[1]
    assert config.eval.postprocess == "none" and tuple(config.data.patch_size) == (32, 32)
    image, _ = get_dataset("acdc").load_volume(source.parent.parent, source.stem)
    assert image.shape[1:] == (32, 32) and image.shape[0] <= 16  # one batch of whole slices: the oracle's
    batch = torch.from_numpy(np.moveaxis(image, get_dataset("acdc").slice_axis, 0).copy())[:, None]
    expected = np.moveaxis(oracle_probabilities(nets, batch).argmax(dim=1).numpy(), 0, get_dataset("acdc").slice_axis)
    both = _predicted([first, other], source, tmp_path / "both", "--weights", weights)
    np.testing.assert_array_equal(both, expected)
    alone = [
        _predicted([path], source, tmp_path / f"alone{index}", "--weights", weights)
        for index, path in enumerate((first, other))
    ]
    assert not np.array_equal(alone[0], alone[1])  # the copy's weights predict otherwise


def test_mirror_averages_over_the_in_plane_flips(acdc_models, tmp_path):
    first, _, source = acdc_models
    net = pipeline.load_network(first, device="cpu")[0]
    image, _ = get_dataset("acdc").load_volume(source.parent.parent, source.stem)
    axis = get_dataset("acdc").slice_axis
    batch = torch.from_numpy(np.moveaxis(image, axis, 0).copy())[:, None]
    expected = np.moveaxis(oracle_probabilities([net], batch, (0, 1)).argmax(dim=1).numpy(), 0, axis)
    np.testing.assert_array_equal(_predicted([first], source, tmp_path / "mirrored", "--mirror"), expected)


def test_checkpoints_of_other_windows_or_datasets_are_refused_in_one_line(acdc_models, tmp_path, capsys):
    first, _, source = acdc_models
    state = load_checkpoint(first)
    state["config"]["data"]["patch_size"] = [48, 48]
    smaller = save_checkpoint(tmp_path / "smaller.pt", state)
    with pytest.raises(SystemExit) as exit_info:
        cli.predict_main(
            ["--checkpoint", str(first), str(smaller), "--input", str(source), "--output", str(tmp_path / "out")]
        )
    error = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == cli.USER_ERROR_EXIT_CODE and len(error) == 1, error
    assert error[0] == (
        f"mper-predict: error: {first} and {smaller} cannot be ensembled: they differ in the patch size (the window "
        "of inference) ((32, 32) and (48, 48)); give checkpoints of one dataset, trained with one plan and patch "
        "size (e.g. the folds of one cross-validation)"
    )
    assert not (tmp_path / "out").exists()
    acdc = load_config("acdc", "paper", {"data_root": "a"})
    la = load_config("la", "paper", {"data_root": "b"})
    assert pipeline._ensemble_difference((acdc, get_dataset("acdc")), (la, get_dataset("la"))) == (
        "the dataset (acdc of 4 classes and la of 2)"
    )
    assert pipeline._ensemble_difference((acdc, get_dataset("acdc")), (acdc, get_dataset("acdc"))) == ""


def test_mper_predict_help_tells_mirror_is_not_what_mper_eval_scores(capsys):
    with pytest.raises(SystemExit):
        cli.predict_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--checkpoint FILE [FILE ...]" in text
    assert "Off by default: mper-eval scores predictions without it" in text
    assert "which network of every checkpoint" in text
