"""One's own scans end to end: a raw dataset in the nnU-Net v2 layout and one in the Decathlon
layout are written, imported, trained on (tiny MPER runs: a 3D V-Net, a 2D U-Net; two
channels, five classes), evaluated and predicted back onto the scanners' grids, through
the commands a user types."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from mper import cli, pipeline
from mper.data.raw_scans import MSD, NNUNET, TEST, RawCase, read_image, scan_spacing
from mper.data.scan_preprocess import preprocess_scan, restore_labels
from mper.data.synth_scans import SYNTH_SCAN_CLASSES
from mper.datasets import get_dataset
from mper.datasets.registry import _REGISTRY
from mper.errors import DataFormatError, UserError
from mper.eval.protocol import postprocess_labels
from mper.eval.scans import predict_scan, predict_scans
from mper.train.checkpoint import load_checkpoint
from mper.train.config import TrainConfig, load_config
from test_predict_ensemble import oracle_probabilities
from tiny_runs import TINY_ACDC, set_arguments

pytestmark = pytest.mark.usefixtures("only_built_in_datasets")

TINY = [
    "--device",
    "cpu",
    "--set",
    "data.num_workers=0",
    "--set",
    "pretrain.iterations=2",
    "--set",
    "selftrain.iterations=2",
    "--set",
    "eval.val_interval=2",
    "--set",
    "prototypes.kmeans_max_voxels=500",
]
NETWORKS = {"3d": ["--set", "network.base_filters=4"], "2d": ["--set", "network.channels=[4,8,16,32,64]"]}
NAME = "Synth"


def _run(tmp, layout, dims, *options):
    raw = tmp / f"raw-{layout}"
    cli.data_main(
        ["synth", "--format", layout, "--out", str(raw), "--cases", "7", "--size", "20", "20", "6", "--seed", "4"]
    )
    root = tmp / f"imported-{layout}"
    cli.data_main(["import", "--source", str(raw), "--out", str(root), "--dims", dims])
    run_dir = tmp / f"run-{layout}"
    cli.train_main(["--data-root", str(root), "--out", str(run_dir), *TINY, *NETWORKS[dims], *options])
    return raw, root, run_dir


@pytest.fixture(scope="module")
def nnunet_3d(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("nnunet"), NNUNET, "3d")


@pytest.fixture(scope="module")
def decathlon_2d(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("msd"), MSD, "2d", "--labeled", "all", "--fold", "1")


def _dice(pred, truth):
    if not pred.any() and not truth.any():
        return 1.0
    return 2 * np.count_nonzero(pred & truth) / (np.count_nonzero(pred) + np.count_nonzero(truth))


def _average_surface_distance(pred, truth, spacing):
    """medpy's asd, written out: mean distance from the prediction's surface voxels to the
    truth's surface, in the units of ``spacing``."""
    cross = ndimage.generate_binary_structure(3, 1)
    pred_surface = pred & ~ndimage.binary_erosion(pred, cross)
    truth_surface = truth & ~ndimage.binary_erosion(truth, cross)
    return float(ndimage.distance_transform_edt(~truth_surface, sampling=spacing)[pred_surface].mean())


def _test_images(raw, layout):
    folder = raw / "imagesTs"
    suffix = "_0000.nii.gz" if layout == NNUNET else ".nii.gz"
    return {path.name[: -len(suffix)]: path for path in sorted(folder.glob(f"*{suffix}"))}


def _check_predictions_and_scores(raw, run_dir, layout, tmp_path, capsys):
    out = tmp_path / "predictions"
    cli.predict_main(
        [
            "--checkpoint",
            str(run_dir / "best.pt"),
            "--input",
            str(raw / "imagesTs"),
            "--output",
            str(out),
            "--device",
            "cpu",
        ]
    )
    cli.eval_main(["--checkpoint", str(run_dir / "best.pt"), "--out", str(tmp_path / "eval"), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "95HD and ASD in mm" in printed and "| tumour |" in printed and "| spleen |" in printed
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    images = _test_images(raw, layout)
    assert sorted(path.name for path in out.iterdir()) == [f"{case}.nii.gz" for case in images]
    assert sorted(metrics["per_case"]) == sorted(images)
    distances_checked = overlaps = 0
    for case, image_path in images.items():
        image, predicted = nib.load(image_path), nib.load(out / f"{case}.nii.gz")
        assert predicted.shape == image.shape[:3]
        np.testing.assert_array_equal(predicted.affine, image.affine)
        assert predicted.header.get_zooms()[:3] == image.header.get_zooms()[:3]
        pred = np.asarray(predicted.dataobj)
        truth = np.asarray(nib.load(raw / "labelsTs" / f"{case}.nii.gz").dataobj)
        assert set(np.unique(truth)) == set(range(len(SYNTH_SCAN_CLASSES)))
        for label in range(1, len(SYNTH_SCAN_CLASSES)):
            scores = metrics["per_case"][case][str(label)]
            assert scores["dice"] == pytest.approx(_dice(pred == label, truth == label), rel=1e-9, abs=1e-12)
            overlaps += scores["dice"] > 0
            if (pred == label).any():
                spacing = image.header.get_zooms()[:3]
                expected = _average_surface_distance(pred == label, truth == label, spacing)
                assert scores["asd"] == pytest.approx(expected, rel=1e-6)
                distances_checked += 1
    assert distances_checked and overlaps


def test_an_nnunet_dataset_trains_in_3d_and_predicts_onto_each_scans_grid(nnunet_3d, tmp_path, capsys):
    raw, root, run_dir = nnunet_3d
    config = TrainConfig.from_dict(load_checkpoint(run_dir / "last.pt")["config"])
    assert (config.dataset, config.num_classes, config.data.val_split, config.data.fold) == (NAME, 5, "fold", 0)
    net = pipeline.load_network(run_dir / "best.pt", device="cpu")[0]
    assert type(net).__name__ == "VNet3D" and net.in_channels == 2
    bank = load_checkpoint(run_dir / "last.pt")["bank"]["prototypes"]
    assert bank.shape == (5 * config.prototypes.per_class, 4)
    assert (run_dir / "plan.toml").is_file() and (run_dir / "figures").is_dir()
    table = (run_dir / "metrics.md").read_text()
    assert "| MPER | 3 | 1 |" in table  # 4 labeled cases, one in the validation fold; 1 unlabeled scan
    _check_predictions_and_scores(raw, run_dir, NNUNET, tmp_path, capsys)


def test_a_decathlon_dataset_trains_in_2d_on_every_labeled_case_of_a_fold(decathlon_2d, tmp_path, capsys):
    raw, root, run_dir = decathlon_2d
    config = TrainConfig.from_dict(load_checkpoint(run_dir / "last.pt")["config"])
    assert (config.data.fold, config.labeled, config.data.patch_size) == (1, 3, (32, 32))
    net = pipeline.load_network(run_dir / "best.pt", device="cpu")[0]
    assert type(net).__name__ == "UNet2D" and net.in_channels == 2
    _check_predictions_and_scores(raw, run_dir, MSD, tmp_path, capsys)


def test_a_run_predicts_and_resumes_from_its_own_copy_of_the_plan(nnunet_3d, tmp_path, capsys):
    raw, root, run_dir = nnunet_3d
    moved = shutil.move(str(root), tmp_path / "elsewhere")
    del _REGISTRY[NAME]
    try:
        written = pipeline.predict(
            run_dir / "best.pt", raw / "imagesTs" / "synth_005_0001.nii.gz", tmp_path / "one", device="cpu"
        )
        assert [path.name for path in written] == ["synth_005.nii.gz"]
        assert get_dataset(NAME).scans is not None
    finally:
        shutil.move(moved, root)
    del _REGISTRY[NAME]
    cli.train_main(["--resume", "--out", str(run_dir)])  # finished: evaluates again
    assert "| MPER | 3 | 1 |" in capsys.readouterr().out


def test_a_damaged_plan_copy_of_a_run_is_restored_from_the_data_folders_plan(nnunet_3d, tmp_path, capsys):
    _, root, run_dir = nnunet_3d
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(run_dir / "best.pt", run)
    (run / "plan.toml").write_text((run_dir / "plan.toml").read_text().replace("\nspacing = ", "\n# spacing = "))
    with pytest.raises(SystemExit) as exit_info:
        cli.eval_main(["--checkpoint", str(run / "best.pt"), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"mper-eval: error: {run / 'plan.toml'} lacks spacing; restore it from {root / 'plan.toml'} or train again"
    )


@pytest.mark.parametrize(
    "old, new, difference",
    [
        ("mean = ", "mean = 300.0  # ", "channel 0 (CT) has mean = 300.0, not mean = "),
        ("clip = [", "clip = [-1000.0, 1000.0]  # [", "channel 0 (CT) has clip = [-1000.0, 1000.0], not clip = ["),
        ("spacing = [", "spacing = [9.5, 9.5, 9.5]  # ", "another target spacing (9.5 x 9.5 x 9.5 mm, not "),
        ('dims = "3d"', 'dims = "2d"', "dims = '2d', where it trained with dims = '3d'"),
        ('layout = "nnunet"', 'layout = "msd"', "layout = 'msd', where it trained with layout = 'nnunet'"),
    ],
)
def test_a_runs_plan_edited_after_training_is_refused_before_predicting(
    nnunet_3d, tmp_path, capsys, old, new, difference
):
    """The checkpoint records the plan it trained with: an edited normalisation or spacing in
    the run's plan.toml predicted garbage with exit 0; an edited dims failed in the settings."""
    raw, root, run_dir = nnunet_3d
    run = shutil.copytree(run_dir, tmp_path / "run")
    plan = run / "plan.toml"
    plan.write_text(plan.read_text().replace(old, new, 1))
    code, error = _predict_exit(run, _test_case_inputs(raw, tmp_path), tmp_path / "out", capsys)
    assert code == cli.USER_ERROR_EXIT_CODE and not any("Traceback" in line for line in error), error
    assert error[-1].startswith(
        f"mper-predict: error: {plan} differs from the plan {run / 'best.pt'} trained with (recorded in it): "
        f"{difference}"
    ), error[-1]
    assert error[-1].endswith(f"restore it from {root / 'plan.toml'}, or train again"), error[-1]
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        cli.train_main(["--resume", "--out", str(run)])
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"mper-train: error: {plan} differs from the plan ")


def test_a_runs_plan_with_renamed_classes_still_predicts(nnunet_3d, tmp_path, capsys):
    raw, _, run_dir = nnunet_3d
    run = shutil.copytree(run_dir, tmp_path / "run")
    (run / "plan.toml").write_text((run / "plan.toml").read_text().replace('"liver"', '"hepar"', 1))
    written = pipeline.predict(run / "best.pt", _test_case_inputs(raw, tmp_path), tmp_path / "out", device="cpu")
    assert [path.name for path in written] == ["synth_005.nii.gz"]


def _test_case_inputs(raw, tmp_path):
    """A folder ``tmp_path/in`` holding the two channel files of the test case synth_005."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for channel in ("0000", "0001"):
        shutil.copy(raw / "imagesTs" / f"synth_005_{channel}.nii.gz", inputs)
    return inputs


def _predict_exit(run_dir, inputs, out, capsys):
    """mper-predict's exit status and what it printed to stderr, line by line."""
    with pytest.raises(SystemExit) as exit_info:
        cli.predict_main(["--checkpoint", str(run_dir / "best.pt"), "--input", str(inputs), "--output", str(out)])
    return exit_info.value.code, capsys.readouterr().err.splitlines()


def test_prediction_skips_incomplete_and_flat_cases_ignores_other_files_and_exits_2(nnunet_3d, tmp_path, capsys):
    raw, _, run_dir = nnunet_3d
    inputs = shutil.copytree(raw / "imagesTs", tmp_path / "in")
    (inputs / "readme.txt").write_text("notes")
    shutil.copy(inputs / "synth_006_0000.nii.gz", inputs / "stray_0002.nii.gz")  # no file the model takes
    # a scan of three channels: the model takes two
    for channel, copied in (("0000", "0000"), ("0001", "0001"), ("0002", "0001")):
        shutil.copy(inputs / f"synth_006_{copied}.nii.gz", inputs / f"extra_{channel}.nii.gz")
    shutil.copy(inputs / "synth_006_0000.nii.gz", inputs / "lonely_0000.nii.gz")  # its MRI channel missing
    for channel in ("0000", "0001"):  # synth_005 becomes its middle slice: a 2D image
        scan = nib.load(inputs / f"synth_005_{channel}.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(scan.dataobj)[:, :, 3], scan.affine), scan.get_filename())
    out = tmp_path / "out"
    code, lines = _predict_exit(run_dir, inputs, out, capsys)
    assert code == 2
    assert lines[0] == (
        f"ignored 2 file(s) of {inputs} not named as the model's input, <case>_0000.nii.gz ... <case>_0001.nii.gz: "
        "readme.txt, stray_0002.nii.gz"
    )
    flat_shape = nib.load(inputs / "synth_005_0000.nii.gz").shape
    assert lines[1:] == [
        f"[1/4] skipped: {inputs}: case extra has 1 channel file(s) beyond the 2 the model takes (CT, MRI): "
        "extra_0002.nii.gz; segment it with a model trained on all its channels, or pass --force to segment it "
        "from the model's channels alone",
        f"[2/4] skipped: {inputs / 'lonely_0001.nii.gz'} not found: case lonely lacks channel 1 (MRI) of the 2 the "
        "model takes (CT, MRI); add the file",
        f"[3/4] skipped: {inputs / 'synth_005_0000.nii.gz'}: a 2D image of shape {flat_shape}, but the model is a 3D "
        "V-Net trained on 3D volumes (median shape [16, 14, 6] after import); give the whole 3D volume",
        f"[4/4] {inputs / 'synth_006_0000.nii.gz'} -> {out / 'synth_006.nii.gz'}",
        f"mper-predict: error: 3 of 4 cases could not be segmented (reasons above), first extra; the other 1 label "
        f"maps are in {out}",
    ]
    assert sorted(path.name for path in out.iterdir()) == ["synth_006.nii.gz"]
    # one file of the case, its other channels beside it: the same refusal, no line about the folder
    code, lines = _predict_exit(run_dir, inputs / "extra_0000.nii.gz", tmp_path / "one", capsys)
    assert code == 2 and len(lines) == 2 and lines[0].startswith("[1/1] skipped: ") and "case extra has 1" in lines[0]
    code, lines = _predict_exit(run_dir, inputs / "extra_0002.nii.gz", tmp_path / "one", capsys)
    assert (code, lines) == (
        cli.USER_ERROR_EXIT_CODE,
        [
            f"mper-predict: error: {inputs / 'extra_0002.nii.gz'} is a channel file of case extra beyond the 2 the "
            "model takes (CT, MRI); give the case's first file, extra_0000.nii.gz"
        ],
    )
    for path in [*inputs.glob("lonely_*"), *inputs.glob("synth_005_*")]:
        path.unlink()
    forced = tmp_path / "forced"
    cli.predict_main(
        ["--checkpoint", str(run_dir / "best.pt"), "--input", str(inputs), "--output", str(forced), "--force"]
    )
    assert sorted(path.name for path in forced.iterdir()) == ["extra.nii.gz", "synth_006.nii.gz"]
    assert (
        "case extra has 1 channel file(s) beyond the 2 the model takes (CT, MRI): extra_0002.nii.gz; segmenting it "
        "from the model's channels (--force)" in capsys.readouterr().err
    )
    # the extra channel is left out: the same label map as the case's two channels alone
    assert np.array_equal(
        np.asarray(nib.load(forced / "extra.nii.gz").dataobj), np.asarray(nib.load(forced / "synth_006.nii.gz").dataobj)
    )


def test_prediction_names_a_channel_file_of_several_volumes_and_a_misnamed_single_file(nnunet_3d, tmp_path, capsys):
    raw, _, run_dir = nnunet_3d
    inputs = tmp_path / "in"
    inputs.mkdir()
    channels = [nib.load(raw / "imagesTs" / f"synth_006_{channel}.nii.gz") for channel in ("0000", "0001")]
    stacked = np.stack([np.asarray(scan.dataobj) for scan in channels], axis=-1)
    nib.save(nib.Nifti1Image(stacked, channels[0].affine), inputs / "both_0000.nii.gz")
    shutil.copy(raw / "imagesTs" / "synth_006_0001.nii.gz", inputs / "both_0001.nii.gz")
    code, lines = _predict_exit(run_dir, inputs, tmp_path / "out", capsys)
    assert code == 2
    assert lines[0] == (
        f"[1/1] skipped: {inputs / 'both_0000.nii.gz'}: shape {stacked.shape}, more than one 3D volume, but the model "
        "takes one per channel file (<case>_0000.nii.gz ... <case>_0001.nii.gz: CT, MRI); write each channel to a "
        "file of its own"
    )
    for channel in ("0000", "0001"):  # one volume each, with trailing axes of one as ITK writes them
        scan = nib.load(raw / "imagesTs" / f"synth_006_{channel}.nii.gz")
        five_d = nib.Nifti1Image(np.asarray(scan.dataobj)[..., None, None], scan.affine)
        nib.save(five_d, inputs / f"both_{channel}.nii.gz")
    cli.predict_main(
        ["--checkpoint", str(run_dir / "best.pt"), "--input", str(inputs), "--output", str(tmp_path / "out")]
    )
    assert nib.load(tmp_path / "out" / "both.nii.gz").shape == scan.shape
    code, lines = _predict_exit(run_dir, raw, tmp_path / "out", capsys)
    assert lines[-1] == (
        f"mper-predict: error: no scans in {raw}, a raw dataset's folder: give the folder of its scans, e.g. "
        f"--input {raw / 'imagesTs'}"
    )
    misnamed = shutil.copy(raw / "imagesTs" / "synth_006_0000.nii.gz", inputs / "scan.nii.gz")
    code, lines = _predict_exit(run_dir, misnamed, tmp_path / "out", capsys)
    assert code == cli.USER_ERROR_EXIT_CODE
    assert lines == [
        f"mper-predict: error: {misnamed} is not named as the model's input, <case>_0000.nii.gz ... "
        "<case>_0001.nii.gz (or ending in another ending mper reads: .nii, .nrrd, .nhdr, .mha, .mhd, .gipl.gz, "
        ".gipl, .png, .bmp, .tif, .tiff); rename it"
    ]


def test_prediction_skips_a_case_whose_file_was_cut_short(nnunet_3d, tmp_path, capsys):
    raw, _, run_dir = nnunet_3d
    inputs = shutil.copytree(raw / "imagesTs", tmp_path / "in")
    cut = inputs / "synth_005_0001.nii.gz"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    out = tmp_path / "out"
    code, lines = _predict_exit(run_dir, inputs, out, capsys)
    assert code == 2 and not any("Traceback" in line for line in lines)
    assert lines[0].startswith(f"[1/2] skipped: {cut}: not a readable NIfTI file (") and lines[0].endswith("replace it")
    assert lines[1] == f"[2/2] {inputs / 'synth_006_0000.nii.gz'} -> {out / 'synth_006.nii.gz'}"
    assert sorted(path.name for path in out.iterdir()) == ["synth_006.nii.gz"]


def test_prediction_refuses_an_output_among_a_datasets_files(nnunet_3d, tmp_path, capsys):
    """A raw dataset's labelsTs/ is its ground truth: predictions written there replaced it
    with exit 0, and the next import scored the model against its own output."""
    raw, root, run_dir = nnunet_3d
    copy = shutil.copytree(raw, tmp_path / "raw")
    truth = {path.name: path.read_bytes() for path in (copy / "labelsTs").iterdir()}
    code, lines = _predict_exit(run_dir, copy / "imagesTs", copy / "labelsTs", capsys)
    assert (code, lines) == (
        cli.USER_ERROR_EXIT_CODE,
        [
            f"mper-predict: error: --output {copy / 'labelsTs'} is the labelsTs/ folder of the raw dataset {copy}: "
            "the label maps would replace or join its files, read as data by the next import; choose a folder "
            "outside these"
        ],
    )
    assert {path.name: path.read_bytes() for path in (copy / "labelsTs").iterdir()} == truth
    code, lines = _predict_exit(run_dir, copy / "imagesTs", root, capsys)
    assert (code, lines) == (
        cli.USER_ERROR_EXIT_CODE,
        [
            f"mper-predict: error: --output {root} is a dataset's folder: the label maps would lie among its data; "
            "choose a folder of their own"
        ],
    )
    for inside, where in (
        (root / "cases", f"lies inside the dataset folder {root}: the label maps would lie among its data; "),
        (copy / "labelsTs" / "run1", f"lies in the labelsTs/ folder of the raw dataset {copy}: the label maps would "),
    ):
        code, lines = _predict_exit(run_dir, copy / "imagesTs", inside, capsys)
        assert code == cli.USER_ERROR_EXIT_CODE and lines[-1].startswith(
            f"mper-predict: error: --output {inside} {where}"
        ), lines
    assert not (copy / "labelsTs" / "run1").exists() and not list((root / "cases").glob("*.nii.gz"))
    beside = ["--checkpoint", str(run_dir / "best.pt"), "--input", str(copy / "imagesTs")]
    cli.predict_main([*beside, "--output", str(copy / "predictions")])  # beside the data's folders: fine
    assert sorted(path.name for path in (copy / "predictions").iterdir())


def test_prediction_reads_either_nifti_ending_and_refuses_a_case_given_in_both(nnunet_3d, tmp_path, capsys):
    raw, _, run_dir = nnunet_3d
    inputs = tmp_path / "in"
    inputs.mkdir()
    for channel in ("0000", "0001"):  # the model was trained on .nii.gz files; these are .nii
        scan = nib.load(raw / "imagesTs" / f"synth_005_{channel}.nii.gz")
        nib.save(scan, inputs / f"synth_005_{channel}.nii")
    expected = tmp_path / "expected"
    for given, out in ((inputs, tmp_path / "out"), (raw / "imagesTs" / "synth_005_0000.nii.gz", expected)):
        cli.predict_main(["--checkpoint", str(run_dir / "best.pt"), "--input", str(given), "--output", str(out)])
    written, reference = nib.load(tmp_path / "out" / "synth_005.nii.gz"), nib.load(expected / "synth_005.nii.gz")
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(reference.dataobj))
    np.testing.assert_array_equal(written.affine, reference.affine)
    shutil.copy(raw / "imagesTs" / "synth_005_0000.nii.gz", inputs)
    capsys.readouterr()
    code, lines = _predict_exit(run_dir, inputs, tmp_path / "twice", capsys)
    assert code == 2 and lines == [
        f"mper-predict: error: {inputs}: case synth_005 is there twice, as synth_005_0000.nii and "
        "synth_005_0000.nii.gz; keep one of them"
    ]


def test_prediction_refuses_a_case_whose_channel_files_mix_the_endings_naming_them(nnunet_3d, tmp_path, capsys):
    raw, _, run_dir = nnunet_3d
    inputs = tmp_path / "in"
    inputs.mkdir()
    nib.save(nib.load(raw / "imagesTs" / "synth_005_0000.nii.gz"), inputs / "synth_005_0000.nii")
    shutil.copy(raw / "imagesTs" / "synth_005_0001.nii.gz", inputs)  # each channel once, in another ending
    code, lines = _predict_exit(run_dir, inputs, tmp_path / "out", capsys)
    assert code == 2 and lines == [
        f"mper-predict: error: {inputs}: case synth_005 mixes the endings .nii and .nii.gz (synth_005_0000.nii, "
        "synth_005_0001.nii.gz); give all its files one of them"
    ]


def test_prediction_warns_of_a_blank_channel_file_and_still_writes_its_label_map(nnunet_3d, tmp_path, caplog):
    raw, _, run_dir = nnunet_3d
    inputs = _test_case_inputs(raw, tmp_path)
    blank = inputs / "synth_005_0001.nii.gz"
    scan = nib.load(blank)
    nib.save(nib.Nifti1Image(np.full(scan.shape, 7.0, np.float32), scan.affine), blank)
    with caplog.at_level(logging.WARNING, logger="mper"):
        cli.predict_main(
            ["--checkpoint", str(run_dir / "best.pt"), "--input", str(inputs), "--output", str(tmp_path / "out")]
        )
    assert (tmp_path / "out" / "synth_005.nii.gz").is_file()
    assert caplog.messages == [
        f"{blank} holds one value everywhere (7): a blank or damaged scan? Its label map is what the model makes of "
        "a blank image"
    ]


def test_prediction_names_input_files_ending_in_capitals_with_the_rename_to_do(nnunet_3d, tmp_path, caplog, capsys):
    raw, _, run_dir = nnunet_3d
    inputs = _test_case_inputs(raw, tmp_path)
    for channel in ("0000", "0001"):
        shutil.copy(inputs / f"synth_005_{channel}.nii.gz", inputs / f"loud_{channel}.NII.GZ")
    out = str(tmp_path / "out")
    with caplog.at_level(logging.WARNING, logger="mper"):
        cli.predict_main(["--checkpoint", str(run_dir / "best.pt"), "--input", str(inputs), "--output", out])
    assert caplog.messages[0].endswith(
        ": loud_0000.NII.GZ, loud_0001.NII.GZ; rename the endings of loud_0000.NII.GZ, loud_0001.NII.GZ to "
        "lowercase (.nii.gz)"
    )
    code, lines = _predict_exit(run_dir, inputs / "loud_0000.NII.GZ", tmp_path / "out2", capsys)
    assert code == 2 and lines[-1].endswith("); rename the endings of loud_0000.NII.GZ to lowercase (.nii.gz)")


def test_prediction_names_nan_voxels_of_an_input_file_without_asking_to_import_again(nnunet_3d, tmp_path, capsys):
    raw, _, run_dir = nnunet_3d
    inputs = _test_case_inputs(raw, tmp_path)
    damaged = inputs / "synth_005_0001.nii.gz"
    scan = nib.load(damaged)
    image = np.asarray(scan.dataobj, dtype=np.float32).copy()
    image[2, 3, 1] = image[4, 5, 2] = np.nan
    nib.save(nib.Nifti1Image(image, scan.affine), damaged)
    code, lines = _predict_exit(run_dir, inputs, tmp_path / "out", capsys)
    assert code == 2
    assert lines[0].startswith(f"[1/1] skipped: {damaged}: image has 2 NaN or infinite value(s) among ")
    assert lines[0].endswith("; mper needs finite values: replace them (e.g. with 0) in that file")
    assert not (tmp_path / "out").exists()


def test_a_decathlon_model_refuses_a_case_without_its_channels_in_one_4d_file(decathlon_2d, tmp_path, capsys):
    raw, _, run_dir = decathlon_2d
    case = sorted((raw / "imagesTs").glob("*.nii.gz"))[0]
    scan = nib.load(case)
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(np.asarray(scan.dataobj)[..., 0], scan.affine), tmp_path / "in" / case.name)
    code, lines = _predict_exit(run_dir, tmp_path / "in", tmp_path / "out", capsys)
    assert code == 2 and "dataset.json" not in "\n".join(lines) and "import again" not in "\n".join(lines)
    assert lines[0] == (
        f"[1/1] skipped: {tmp_path / 'in' / case.name}: shape {scan.shape[:3]}, but the model takes 2 channels "
        "(CT, MRI) in one 4D image (x, y, z, 2); stack the case's channels along a fourth axis in that order"
    )
    assert not (tmp_path / "out").exists()


def test_without_labeled_test_cases_a_run_is_scored_on_its_validation_fold(decathlon_2d, tmp_path, capsys):
    _, root, _ = decathlon_2d
    unlabeled_tests = shutil.copytree(root, tmp_path / "no-test-labels")
    (unlabeled_tests / "test.list").write_text("")
    run_dir = tmp_path / "run"
    cli.train_main(["--data-root", str(unlabeled_tests), "--out", str(run_dir), *TINY, *NETWORKS["2d"]])
    assert "means over 1 validation cases" in (run_dir / "metrics.md").read_text()  # fold 0 of four labeled cases
    assert json.loads((run_dir / "metrics.json").read_text())["split"] == "val"
    with pytest.raises(SystemExit):
        cli.eval_main(["--checkpoint", str(run_dir / "best.pt"), "--device", "cpu"])
    assert "has no labeled test cases" in capsys.readouterr().err.splitlines()[-1]
    cli.eval_main(["--checkpoint", str(run_dir / "best.pt"), "--device", "cpu", "--split", "val"])
    assert json.loads((run_dir / "eval-val" / "metrics.json").read_text())["split"] == "val"
    assert "validation metrics (" in (run_dir / "train.log").read_text()


def test_two_dimensional_images_train_in_2d_and_predict_in_their_own_shape(nnunet_3d, tmp_path):
    raw, _, _ = nnunet_3d
    flat = shutil.copytree(raw, tmp_path / "raw-2d")
    for path in sorted(flat.glob("*/*.nii.gz")):  # every image and label becomes its middle slice
        scan = nib.load(path)
        data = np.asarray(scan.dataobj)
        nib.save(nib.Nifti1Image(data[:, :, data.shape[2] // 2], scan.affine), path)
    root = pipeline.import_scans(flat, tmp_path / "imported")
    plan = (root / "plan.toml").read_text()
    assert 'dims = "2d"' in plan and "\n[3d." not in plan and "\n[2d.paper]" in plan
    run_dir = tmp_path / "run"
    cli.train_main(["--data-root", str(root), "--out", str(run_dir), *TINY, *NETWORKS["2d"]])
    written = pipeline.predict(run_dir / "best.pt", flat / "imagesTs", tmp_path / "predictions", device="cpu")
    for path in written:
        image = nib.load(flat / "imagesTs" / path.name.replace(".nii.gz", "_0000.nii.gz"))
        assert nib.load(path).shape == image.shape and len(image.shape) == 2
        np.testing.assert_array_equal(nib.load(path).affine, image.affine)
    volume = raw / "imagesTs" / "synth_005_0000.nii.gz"  # a 3D volume for a model of 2D images
    with pytest.raises(UserError, match=r"1 of 1 cases could not be segmented .*; no label map was written$"):
        pipeline.predict(run_dir / "best.pt", volume, tmp_path / "volume", device="cpu")
    assert not (tmp_path / "volume").exists()
    with pytest.raises(
        DataFormatError,
        match=re.escape(
            f"{volume}: a 3D volume of shape {nib.load(volume).shape}, but the model is a 2D U-Net on slices across "
            "axis 2 trained on 2D images (median shape"
        )
        + r".*\); give its slices as 2D images, one file each$",
    ):
        predict_scan(
            pipeline.load_network(run_dir / "best.pt", device="cpu")[0],
            (volume, raw / "imagesTs" / "synth_005_0001.nii.gz"),
            "synth_005",
            NAME,
            tmp_path / "volume" / "synth_005.nii.gz",
            5,
            patch_size=(32, 32),
        )


def test_every_preset_and_setting_applies_to_imported_data(nnunet_3d, capsys):
    _, root, _ = nnunet_3d
    for preset in ("paper", "reference", "strict", "demo", "reference+demo"):
        cli.train_main(
            [
                "--data-root",
                str(root),
                "--preset",
                preset,
                "--print-config",
                "--set",
                "selftrain.iterations=7",
                "--fold",
                "2",
            ]
        )
        printed = capsys.readouterr().out
        assert f'dataset = "{NAME}"' in printed and 'val_split = "fold"' in printed and "fold = 2" in printed
        assert "iterations = 7" in printed and "num_classes = 5" in printed
        assert 'dice = "pooled-squared"' in printed  # not LA's per-image Dice: small classes miss most patches
    assert tomllib.loads(printed)["data"]["patch_size"] == [32, 32, 32]


def test_an_edited_plan_is_what_trains(nnunet_3d, tmp_path, capsys):
    _, root, _ = nnunet_3d
    edited = shutil.copytree(root, tmp_path / "edited")
    plan = edited / "plan.toml"
    plan.write_text(plan.read_text().replace('"tumour"', '"lesion"').replace('dims = "3d"', 'dims = "2d"'))
    cli.train_main(["--data-root", str(edited), "--print-config"])
    assert tomllib.loads(capsys.readouterr().out)["data"]["patch_size"] == [32, 32]
    assert get_dataset(NAME).class_names[-1] == "lesion" and get_dataset(NAME).network.__name__ == "UNet2D"
    with pytest.raises(SystemExit) as stop:
        cli.train_main(["--data-root", str(edited), "--labeled", "9", "--out", str(tmp_path / "r"), *TINY])
    error = capsys.readouterr().err.splitlines()[-1]
    assert stop.value.code == cli.USER_ERROR_EXIT_CODE
    assert "labeled must be between 1 and the 3 labeled training cases outside validation fold 0, got 9" in error
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "old, new, said",
    [
        ("mean = ", "mean = 300.0  # ", "channel 0 (CT) has mean = 300.0, but the case was normalised with mean = "),
        ("clip = [", "clip = [0.0, 1.0]  # ", "channel 0 (CT) has clip = (0.0, 1.0), but the case was normalised with"),
        (
            'normalization = "z-score"',
            'normalization = "rescale"',
            "channel 1 (MRI) has normalization = 'rescale', but the case was normalised by 'z-score'",
        ),
        ("spacing = [", "spacing = [9.5, 9.5, 9.5]  # ", "spacing = [9.5, 9.5, 9.5], but the case was resampled to ["),
        ("mask_for_norm = ", "mask_for_norm = EDITED  # ", "mask_for_norm = "),
    ],
)
def test_a_plan_whose_fixed_values_were_edited_is_refused_before_training(nnunet_3d, tmp_path, capsys, old, new, said):
    """Training reads the imported files, prediction preprocesses raw scans by the plan: an
    edited normalisation or spacing trained well and predicted garbage with exit 0."""
    _, root, _ = nnunet_3d
    if "EDITED" in new:  # the other value than the import's
        masked = tomllib.loads((root / "plan.toml").read_text())["dataset"]["mask_for_norm"]
        new = new.replace("EDITED", "false" if masked else "true")
    edited = _other_dataset(root, tmp_path, old, new)
    with pytest.raises(SystemExit) as stop:
        cli.train_main(["--data-root", str(edited), "--out", str(tmp_path / "r"), *TINY, *NETWORKS["3d"]])
    error = capsys.readouterr().err
    assert stop.value.code == cli.USER_ERROR_EXIT_CODE and "Traceback" not in error, error
    line = error.splitlines()[-1]
    assert line.startswith(f"mper-train: error: {edited / 'plan.toml'}: {said}"), line
    assert line.endswith("change only by importing again: restore the import's value, or import again"), line
    assert not (tmp_path / "r").exists()


def test_a_bad_value_in_the_plans_settings_tables_is_named_with_the_plan(nnunet_3d, tmp_path, capsys):
    _, root, _ = nnunet_3d
    edited = shutil.copytree(root, tmp_path / "edited")
    plan = edited / "plan.toml"
    text = plan.read_text()
    table = text.index("\n[3d.paper.data]\n")
    plan.write_text(text[:table] + re.sub(r"\nbatch_size = \d+", "\nbatch_size = -4", text[table:], count=1))
    with pytest.raises(SystemExit) as stop:
        cli.train_main(["--data-root", str(edited), "--out", str(tmp_path / "r"), *TINY, *NETWORKS["3d"]])
    error = capsys.readouterr().err
    assert stop.value.code == cli.USER_ERROR_EXIT_CODE and "Traceback" not in error, error
    assert error.splitlines()[-1] == (
        f"mper-train: error: {plan}: a value of its settings tables ([3d.paper]) is refused: data.batch_size must be "
        "a positive integer, got -4; fix it there"
    )
    assert not (tmp_path / "r").exists()
    demo = text[text.index("\n[3d.demo.data]\n") :]
    assert re.search(r"\nbatch_size = \d+", demo[: demo.index("\n[", 1)])  # demo's own batch size overrides it
    with pytest.raises(SystemExit):
        cli.train_main(["--data-root", str(edited), "--preset", "demo", "--out", str(tmp_path / "r"), *TINY])
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"mper-train: error: {plan}: a value of its settings tables ([3d.paper]) is refused: data.batch_size must be "
        "a positive integer, got -4; fix it there"
    )
    with pytest.raises(SystemExit):  # a preset that does not exist is the option's mistake, not the plan's
        cli.train_main(["--data-root", str(root), "--preset", "demoo", "--out", str(tmp_path / "r"), *TINY])
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith("mper-train: error: preset 'demoo' is not defined for Synth; available: ") and (
        "plan.toml" not in line
    ), line


def test_class_names_edited_to_fewer_classes_are_refused_before_training(nnunet_3d, tmp_path, capsys):
    """The labels hold the five classes the import found: a plan naming four would fail in
    the loss at the first batch, with a traceback."""
    _, root, _ = nnunet_3d
    edited = shutil.copytree(root, tmp_path / "edited")
    plan = edited / "plan.toml"
    plan.write_text(plan.read_text().replace(', "tumour"]', "]"))
    with pytest.raises(SystemExit) as stop:
        cli.train_main(["--data-root", str(edited), "--out", str(tmp_path / "r"), *TINY, *NETWORKS["3d"]])
    error = capsys.readouterr().err
    assert stop.value.code == cli.USER_ERROR_EXIT_CODE and "Traceback" not in error, error
    assert re.fullmatch(
        rf"mper-train: error: {re.escape(str(edited))}: the label of case \S+ holds class value\(s\) \[4\], more "
        rf"than the 4 of class_names in {re.escape(str(plan))} \(background, liver, kidney, spleen\); name every "
        r"class the import found there, one name per label value",
        error.splitlines()[-1],
    ), error
    assert not (tmp_path / "r").exists()


def _prune(raw, cases):
    """Remove ``cases`` (their images and labels) from the nnU-Net raw dataset ``raw``."""
    for case in cases:
        for path in (raw / "imagesTr").glob(f"{case}_*.nii.gz"):
            path.unlink()
        (raw / "labelsTr" / f"{case}.nii.gz").unlink(missing_ok=True)


@pytest.mark.parametrize(
    "dims, removed",
    [
        ("3d", ["synth_004"]),  # 4 labeled, no unlabeled case: the default split used to label 1
        ("3d", ["synth_003"]),  # 3 labeled and 1 unlabeled: the fewest a 3D plan accepts
        ("2d", ["synth_002", "synth_003"]),  # 2 labeled and 1 unlabeled: the fewest any plan accepts
    ],
)
def test_the_smallest_datasets_import_accepts_train_with_the_plan_as_written(tmp_path, dims, removed):
    raw = tmp_path / "raw"
    cli.data_main(["synth", "--format", NNUNET, "--out", str(raw), "--cases", "7", "--size", "20", "20", "6"])
    _prune(raw, removed)
    root = tmp_path / "imported"
    cli.data_main(["import", "--source", str(raw), "--out", str(root), "--dims", dims])
    plan = tomllib.loads((root / "plan.toml").read_text())[dims]
    labeled = plan["paper"]["labeled"]
    assert plan["demo"]["labeled"] == labeled
    run_dir = tmp_path / "run"
    cli.train_main(["--data-root", str(root), "--out", str(run_dir), *TINY, *NETWORKS[dims]])
    config = TrainConfig.from_dict(load_checkpoint(run_dir / "last.pt")["config"])
    assert config.labeled == labeled and (run_dir / "best.pt").is_file()


def _other_dataset(root, tmp_path, old, new):
    """A copy of the imported dataset ``root`` whose plan says ``new`` where it says ``old``."""
    other = shutil.copytree(root, tmp_path / "other")
    plan = other / "plan.toml"
    plan.write_text(plan.read_text().replace(old, new, 1))
    return other


TRAINED_ON = "Synth (3d; classes background, liver, kidney, spleen, tumour; channels CT, MRI)"
DESCRIBED = "Synth (3d; classes background, liver, kidney, spleen, tumour; channels {})"
OTHER_DATASETS = [
    (
        '"spleen", "tumour"]',
        '"spleen"]',
        "Synth (3d; classes background, liver, kidney, spleen; channels CT, MRI)",
        "another number of classes (4, not 5)",
    ),
    ('name = "CT"', 'name = "PET"', DESCRIBED.format("PET, MRI"), "another list of channels (PET, MRI, not CT, MRI)"),
]


@pytest.mark.parametrize("old, new, described, difference", OTHER_DATASETS)
def test_eval_refuses_another_imported_dataset_before_scoring(
    nnunet_3d, tmp_path, capsys, old, new, described, difference
):
    _, root, run_dir = nnunet_3d
    other = _other_dataset(root, tmp_path, old, new)
    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as exit_info:
        cli.eval_main(["--checkpoint", str(run_dir / "best.pt"), "--data-root", str(other), "--out", str(out)])
    error = capsys.readouterr().err
    assert exit_info.value.code == cli.USER_ERROR_EXIT_CODE and "Traceback" not in error
    assert error.splitlines()[-1].startswith(
        f"mper-eval: error: {other} holds the imported dataset {described}, but {run_dir / 'best.pt'} was trained "
        f"on {TRAINED_ON}, {difference}"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "old, new, said",
    [
        ("std = ", "std = 1  # ", "channel 0 (CT) has std = 1.0, but the case was normalised with std = "),
        ("spacing = [", "spacing = [9.5, 9.5, 9.5]  # ", "spacing = [9.5, 9.5, 9.5], but the case was resampled to ["),
    ],
)
def test_eval_and_resume_name_a_fixed_value_edited_in_the_data_folders_plan(
    nnunet_3d, tmp_path, capsys, old, new, said
):
    """As mper-train does: the edited value and the case, not "another import", also for the
    run's own data folder, which eval and resume take without comparing it to anything."""
    _, root, run_dir = nnunet_3d
    edited = _other_dataset(root, tmp_path, old, new)
    arguments = ["--checkpoint", str(run_dir / "best.pt"), "--data-root", str(edited), "--out", str(tmp_path / "e")]
    with pytest.raises(SystemExit):
        cli.eval_main(arguments)
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith(f"mper-eval: error: {edited / 'plan.toml'}: {said}"), line
    run = shutil.copytree(run_dir, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    saved = load_checkpoint(run / "last.pt")
    saved["config"]["data_root"] = config["data_root"] = str(edited)  # the run's own data folder, edited since
    torch.save(saved, run / "last.pt")
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit):
        cli.train_main(["--resume", "--out", str(run)])
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith(f"mper-train: error: {edited / 'plan.toml'}: {said}"), line


def test_eval_takes_a_copy_of_the_import_whose_editable_plan_fields_were_edited(nnunet_3d, tmp_path, capsys):
    # name, dims and class names may be edited (own-data.md): the files are the same import's
    _, root, run_dir = nnunet_3d
    other = _other_dataset(root, tmp_path, 'name = "Synth"', 'name = "Edited"')
    plan = other / "plan.toml"
    plan.write_text(plan.read_text().replace('dims = "3d"', 'dims = "2d"', 1).replace('"liver"', '"hepar"', 1))
    out = tmp_path / "eval"
    cli.eval_main(["--checkpoint", str(run_dir / "best.pt"), "--data-root", str(other), "--out", str(out)])
    assert (out / "metrics.json").exists(), capsys.readouterr().err


def test_resume_takes_a_moved_data_folder_and_refuses_another_dataset_before_writing(nnunet_3d, tmp_path, capsys):
    _, root, run_dir = nnunet_3d
    run = shutil.copytree(run_dir, tmp_path / "run")
    old, new, described, difference = OTHER_DATASETS[0]
    other = _other_dataset(root, tmp_path, old, new)
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--resume", "--out", str(run), "--data-root", str(other)])
    error = capsys.readouterr().err
    assert exit_info.value.code == cli.USER_ERROR_EXIT_CODE and "Traceback" not in error
    assert (
        f"{other} holds the imported dataset {described}, but the run trains on {TRAINED_ON}, {difference}; "
        in (error.splitlines()[-1])
    )
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before
    fewer, unlabeled = _copy_without_its_first(root, tmp_path / "fewer", "unlabeled.list")  # a scan left out since
    line = _resume_error(run, capsys, "--data-root", str(fewer))
    assert line == (
        f"mper-train: error: --data-root {fewer} holds other cases than the run in {run} trained on (unlabeled "
        f"cases: 1 of its {len(unlabeled)} missing, e.g. {unlabeled[0]}); a resumed run repeats the interrupted "
        f"one only on the same data: give --data-root the folder it trained on, {root}, or a copy of it"
    )
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before
    untested, tests = _copy_without_its_first(root, tmp_path / "untested", "test.list")  # scored on fewer cases
    line = _resume_error(run, capsys, "--data-root", str(untested))
    assert f"(test cases: 1 of its {len(tests)} missing, e.g. {tests[0]})" in line, line
    moved = shutil.copytree(root, tmp_path / "moved")
    cli.train_main(["--resume", "--out", str(run), "--data-root", str(moved)])  # finished: evaluates again
    assert "| MPER | 3 | 1 |" in capsys.readouterr().out
    assert TrainConfig.from_dict(load_checkpoint(run / "last.pt")["config"]).data_root == str(moved)
    assert json.loads((run / "cases.json").read_text())["unlabeled"] == unlabeled  # written once, at the start


def _copy_without_its_first(root, copy, list_file):
    """A copy of the imported dataset ``root`` whose ``list_file`` lost its first case; (copy, the names it held)."""
    copy = shutil.copytree(root, copy)
    names = (copy / list_file).read_text().split()
    (copy / list_file).write_text("\n".join(names[1:]) + "\n")
    return copy, names


def _resume_error(run, capsys, *options):
    """The one line ``mper-train --resume --out run`` refuses with."""
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--resume", "--out", str(run), *options])
    error = capsys.readouterr().err
    assert exit_info.value.code == cli.USER_ERROR_EXIT_CODE, error
    return error.splitlines()[-1]


def test_resume_on_its_own_data_folder_changed_since_says_to_bring_the_cases_back(nnunet_3d, tmp_path, capsys):
    # without --data-root the run resumes on the folder it trained on: naming it as the one to give is no help
    _, root, run_dir = nnunet_3d
    run = shutil.copytree(run_dir, tmp_path / "run")
    record = json.loads((run / "cases.json").read_text())
    record["unlabeled"].append("synth_999")  # as if a scan was removed from the import since
    (run / "cases.json").write_text(json.dumps(record))
    line = _resume_error(run, capsys)
    assert line == (
        f"mper-train: error: {root} holds other cases than when the run in {run} started on it (unlabeled cases: "
        f"1 of its {len(record['unlabeled'])} missing, e.g. synth_999); a resumed run repeats the interrupted one "
        f"only on the same data: bring back the cases {run / 'cases.json'} lists (an earlier copy or import of the "
        "data) and give it as --data-root, or start a new run in another --out"
    )


def test_a_checkpoint_without_its_runs_plan_says_where_the_plan_belongs(nnunet_3d, tmp_path, capsys):
    raw, root, run_dir = nnunet_3d
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run_dir / "best.pt", alone)
    run = shutil.copytree(run_dir, tmp_path / "run")
    (run / "plan.toml").unlink()
    moved = shutil.move(str(root), tmp_path / "elsewhere")
    _REGISTRY.pop(NAME, None)
    try:
        for main, arguments, folder in (
            (cli.eval_main, ["--checkpoint", str(alone / "best.pt")], alone),
            (
                cli.predict_main,
                [
                    "--checkpoint",
                    str(alone / "best.pt"),
                    "--input",
                    str(raw / "imagesTs"),
                    "--output",
                    str(tmp_path / "labels"),
                ],
                alone,
            ),
            (cli.train_main, ["--resume", "--out", str(run)], run),
        ):
            with pytest.raises(SystemExit) as exit_info:
                main(arguments)
            error = capsys.readouterr().err
            assert exit_info.value.code == cli.USER_ERROR_EXIT_CODE and "Traceback" not in error
            line = error.splitlines()[-1]
            assert f"{folder / 'plan.toml'} not found: " in line and f"imported dataset {NAME}" in line
            assert "copy the plan.toml of the run folder it came from next to it" in line
        (alone / "plan.toml").write_text((run_dir / "plan.toml").read_text().replace('name = "Synth"', 'name = "X"'))
        with pytest.raises(SystemExit):
            cli.eval_main(["--checkpoint", str(alone / "best.pt")])
        line = capsys.readouterr().err.splitlines()[-1]
        assert f"{alone / 'plan.toml'} is the plan of another dataset: " in line, line
    finally:
        shutil.move(moved, root)


def test_a_builtin_dataset_on_an_imported_folder_says_to_drop_dataset(nnunet_3d, tmp_path, capsys):
    _, root, _ = nnunet_3d
    for extra in ([], ["--print-config"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.train_main(["--dataset", "la", "--data-root", str(root), "--out", str(tmp_path / "run"), *TINY, *extra])
        error = capsys.readouterr().err
        assert exit_info.value.code == cli.USER_ERROR_EXIT_CODE and "Traceback" not in error
        assert error.splitlines()[-1] == (
            f"mper-train: error: {root} holds a dataset imported by mper-data import (it has plan.toml), not LA "
            f"data: drop --dataset la, --data-root alone trains on it"
        )
    assert not (tmp_path / "run").exists()
    # from Python, without the command line's advice about its options
    config = load_config("la", "demo", {"data_root": str(root), "out": str(tmp_path / "run"), "device": "cpu"})
    with pytest.raises(UserError, match=rf"^{re.escape(str(root))} holds a dataset imported by mper-data import"):
        pipeline.train(config)
    assert not (tmp_path / "run").exists()


def test_training_on_the_raw_folder_says_to_import_it_first(nnunet_3d, tmp_path, capsys):
    """The docs' first command trains on the imported folder; a user who gives the raw
    dataset instead is told to import it, not that --dataset is required."""
    raw, _, _ = nnunet_3d
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--data-root", str(raw), "--out", str(tmp_path / "run"), *TINY])
    error = capsys.readouterr().err
    assert exit_info.value.code == cli.USER_ERROR_EXIT_CODE and "Traceback" not in error
    assert error.splitlines()[-1] == (
        f"mper-train: error: {raw} is a raw dataset (it holds dataset.json), not an imported one: import it first, "
        f"mper-data import --source {raw} --out DIR, then pass --data-root DIR"
    )
    assert not (tmp_path / "run").exists()


def test_training_on_the_imports_cases_folder_names_the_folder_above(nnunet_3d, tmp_path, capsys):
    _, root, _ = nnunet_3d
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--data-root", str(root / "cases"), "--out", str(tmp_path / "run"), *TINY])
    error = capsys.readouterr().err
    assert exit_info.value.code == cli.USER_ERROR_EXIT_CODE and "Traceback" not in error
    assert error.splitlines()[-1] == (
        f"mper-train: error: {root / 'cases'} holds no plan.toml of scans imported by mper-data import, but the "
        f"folder above it does: pass --data-root {root}"
    )
    assert not (tmp_path / "run").exists()


def test_eval_of_a_builtin_datasets_checkpoint_refuses_an_imported_folder(nnunet_3d, tmp_path, capsys):
    _, root, _ = nnunet_3d
    acdc, run_dir = tmp_path / "acdc", tmp_path / "run"
    cli.data_main(["synth", "--dataset", "acdc", "--out", str(acdc), "--cases", "5", "--size", "32", "32"])
    arguments = ["--dataset", "acdc", "--data-root", str(acdc), "--labeled", "1", "--out", str(run_dir)]
    cli.train_main([*arguments, "--device", "cpu", "--ops", "reference", *set_arguments(TINY_ACDC)])
    capsys.readouterr()
    _REGISTRY.pop(NAME, None)  # as in a new process, which knows only the built-in datasets
    with pytest.raises(SystemExit) as exit_info:
        cli.eval_main(
            ["--checkpoint", str(run_dir / "best.pt"), "--data-root", str(root), "--out", str(tmp_path / "e")]
        )
    assert exit_info.value.code == cli.USER_ERROR_EXIT_CODE
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"mper-eval: error: {root} holds a dataset imported by mper-data import (it has plan.toml), but ACDC data "
        f"is expected: {run_dir / 'best.pt'} was trained on acdc; pass the folder of the ACDC data"
    )
    assert not (tmp_path / "e").exists()


# --- a class the labeled cases of a run lack ------------------------------------------------

TUMOUR = SYNTH_SCAN_CLASSES.index("tumour")
LIVER = SYNTH_SCAN_CLASSES.index("liver")


@pytest.fixture(scope="module")
def synth_raw(tmp_path_factory):
    """Raw scans as `_run` writes them: labeled training cases synth_000 to synth_003 (one
    per fold of four), unlabeled synth_004, labeled test cases synth_005 and synth_006;
    every label holds every class."""
    raw = tmp_path_factory.mktemp("synth") / "raw"
    cli.data_main(
        ["synth", "--format", NNUNET, "--out", str(raw), "--cases", "7", "--size", "20", "20", "6", "--seed", "4"]
    )
    return raw


def _relabel(raw, folder, cases, old, new):
    """Paint class ``old`` of the labels of ``cases`` in ``folder`` (labelsTr, labelsTs) as ``new``."""
    for case in cases:
        path = raw / folder / f"{case}.nii.gz"
        image = nib.load(path)
        label = np.asarray(image.dataobj).copy()
        label[label == old] = new
        nib.save(nib.Nifti1Image(label, image.affine, image.header), path)


def _imported_without(synth_raw, tmp_path, old, keep=(), tests_keep=True, labels=None):
    """A copy of ``synth_raw`` whose labeled training cases other than ``keep`` (and, unless
    ``tests_keep``, its test cases) have class ``old`` painted as liver, with dataset.json's
    ``labels`` if given, imported; (raw, root)."""
    raw = shutil.copytree(synth_raw, tmp_path / "raw")
    _relabel(raw, "labelsTr", [f"synth_{index:03d}" for index in range(4) if index not in keep], old, LIVER)
    if not tests_keep:
        _relabel(raw, "labelsTs", ["synth_005", "synth_006"], old, LIVER)
    if labels is not None:
        document = json.loads((raw / "dataset.json").read_text())
        (raw / "dataset.json").write_text(json.dumps({**document, "labels": labels}))
    root = tmp_path / "imported"
    cli.data_main(["import", "--source", str(raw), "--out", str(root), "--dims", "3d"])
    return raw, root


def _train_error(root, run_dir, capsys, *options):
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.train_main(["--data-root", str(root), "--out", str(run_dir), *TINY, *NETWORKS["3d"], *options])
    error = capsys.readouterr().err
    assert stop.value.code == cli.USER_ERROR_EXIT_CODE and "Traceback" not in error, error
    assert not run_dir.exists()
    return error.splitlines()[-1]


def _trains(root, run_dir, *options):
    cli.train_main(["--data-root", str(root), "--out", str(run_dir), *TINY, *NETWORKS["3d"], *options])
    assert (run_dir / "best.pt").is_file()


def test_a_class_only_the_validation_fold_holds_names_a_fold_that_labels_it(synth_raw, tmp_path, capsys):
    """The tumour is in synth_002 alone, the case of validation fold 0: raising --labeled
    cannot help, another fold can."""
    _, root = _imported_without(synth_raw, tmp_path, TUMOUR, keep=(2,))
    line = _train_error(root, tmp_path / "run", capsys, "--fold", "0")
    assert line == (
        f"mper-train: error: class 4 (tumour) has no voxel in the 3 labeled training item(s) of {root} "
        "(--labeled 3), so its prototypes cannot be initialised; of the cases with labels only case synth_002 of the "
        "validation fold 0 (never trained on) holds it: train another fold, e.g. --fold 1 --labeled 3"
    )
    _trains(root, tmp_path / "fixed", "--fold", "1", "--labeled", "3")


def test_a_class_only_unlabeled_cases_of_the_run_hold_says_how_many_to_label(synth_raw, tmp_path, capsys):
    """Fold 0 keeps synth_000, synth_001 and synth_003 to label, in that order: with the
    tumour in synth_003 alone, --labeled 2 leaves it out and 3 takes it in."""
    _, root = _imported_without(synth_raw, tmp_path, TUMOUR, keep=(3,))
    line = _train_error(root, tmp_path / "run", capsys, "--fold", "0", "--labeled", "2")
    assert line == (
        f"mper-train: error: class 4 (tumour) has no voxel in the 2 labeled training item(s) of {root} "
        "(--labeled 2), so its prototypes cannot be initialised; of the cases with labels only case synth_003 "
        "(left unlabeled by --labeled 2) holds it: train with --labeled 3"
    )
    _trains(root, tmp_path / "fixed", "--fold", "0", "--labeled", "3")


def test_a_last_class_no_label_holds_is_warned_at_import_and_dropped_from_the_plan(synth_raw, tmp_path, capsys, caplog):
    with caplog.at_level("WARNING", logger="mper"):
        raw, root = _imported_without(synth_raw, tmp_path, TUMOUR, tests_keep=False)
    assert [message for message in caplog.messages if "class" in message] == [
        f"{raw / 'dataset.json'}: class 4 (tumour) has no voxel in any of the 4 labeled training case(s), so "
        "self-training will refuse it (its prototypes start from labeled voxels): label cases that contain it, or "
        "remove it from labels (renumbering the values above it)"
    ]
    line = _train_error(root, tmp_path / "run", capsys)
    plan = root / "plan.toml"
    assert line == (
        f"mper-train: error: class 4 (tumour) has no voxel in the 3 labeled training item(s) of {root} "
        "(--labeled 3), so its prototypes cannot be initialised; no labeled case holds class 4 (tumour): label "
        f"training cases that contain it, or remove 'tumour' from class_names in {plan}"
    )
    plan.write_text(plan.read_text().replace(', "tumour"]', "]"))
    _trains(root, tmp_path / "fixed")


def test_a_class_too_small_for_the_target_spacing_is_warned_at_import_and_named_as_lost_in_resampling(
    synth_raw, tmp_path, capsys, caplog
):
    """A tumour of one voxel per labeled case is gone at a coarse target spacing: the import
    says so, and training names the resampling, not the labels, as the cause."""
    raw = shutil.copytree(synth_raw, tmp_path / "raw")
    cases = [f"synth_{index:03d}" for index in range(4)]
    _relabel(raw, "labelsTr", cases, TUMOUR, LIVER)
    _relabel(raw, "labelsTs", ["synth_005", "synth_006"], TUMOUR, LIVER)
    for case in cases:
        path = raw / "labelsTr" / f"{case}.nii.gz"
        image = nib.load(path)
        label = np.asarray(image.dataobj).copy()
        label[3, 3, 1] = TUMOUR  # one voxel, beside no other tumour voxel
        nib.save(nib.Nifti1Image(label, image.affine, image.header), path)
    root = tmp_path / "imported"
    zooms = nib.load(raw / "imagesTr" / "synth_000_0000.nii.gz").header.get_zooms()
    spacing = [2 * zooms[0], 2 * zooms[1], zooms[2]]  # in-plane only: 6 slices stay 6
    with caplog.at_level("WARNING", logger="mper"):
        cli.data_main(
            ["import", "--source", str(raw), "--out", str(root), "--dims", "3d", "--spacing", *map(str, spacing)]
        )
    shown = " x ".join(f"{float(value):g}" for value in spacing)
    vanished = [message for message in caplog.messages if "class 4 (tumour) vanished" in message]
    assert vanished == [
        f"{raw / 'dataset.json'}: class 4 (tumour) vanished from the label of 4 case(s) when resampled to the target "
        f"spacing {shown} mm (it holds too few voxels there): {', '.join(cases)}; import with a finer --spacing if "
        "it matters"
    ]
    line = _train_error(root, tmp_path / "run", capsys)
    assert line.endswith(
        "no labeled case holds class 4 (tumour): the raw labels of cases synth_000, synth_001, synth_002, synth_003 "
        f"hold it, but it vanished when the import resampled them to its target spacing ({shown} mm: too few "
        "voxels): import again with a finer --spacing"
    ), line


@pytest.mark.parametrize(
    "old, test_cases",
    [
        (TUMOUR, " (only test cases synth_005, synth_006, scored and never trained on)"),
        (SYNTH_SCAN_CLASSES.index("spleen"), ""),
    ],
)
def test_a_class_no_labeled_case_holds_says_to_import_again_where_dropping_its_name_cannot_work(
    synth_raw, tmp_path, capsys, old, test_cases
):
    """A test label holding the tumour, or the spleen's value below the tumour's, would stay
    beyond class_names if the name went: the class has to go from the labels themselves."""
    _, root = _imported_without(synth_raw, tmp_path, old, tests_keep=bool(test_cases))
    line = _train_error(root, tmp_path / "run", capsys)
    assert line == (
        f"mper-train: error: class {old} ({SYNTH_SCAN_CLASSES[old]}) has no voxel in the 3 labeled training item(s) "
        f"of {root} (--labeled 3), so its prototypes cannot be initialised; no labeled case holds class {old} "
        f"({SYNTH_SCAN_CLASSES[old]}){test_cases}: label training cases that contain it, or drop it: remove it "
        "from labels in the raw dataset.json, renumber the label files to match and import again"
    )


def test_a_declared_class_that_no_label_holds_is_warned_at_import(synth_raw, tmp_path, caplog):
    labels = {**{name: value for value, name in enumerate(SYNTH_SCAN_CLASSES)}, "cyst": len(SYNTH_SCAN_CLASSES)}
    with caplog.at_level("WARNING", logger="mper"):
        raw, _ = _imported_without(synth_raw, tmp_path, TUMOUR, keep=range(4), labels=labels)
    assert [message for message in caplog.messages if "no voxel" in message] == [
        f"{raw / 'dataset.json'}: class 5 (cyst) has no voxel in any of the 4 labeled training case(s), so "
        "self-training will refuse it (its prototypes start from labeled voxels): label cases that contain it, or "
        "remove it from labels (renumbering the values above it)"
    ]


# --- ensembles and test-time mirroring (mper-predict) ------------------------------------


def _ensemble_oracle(checkpoints, files, flip_axes=()):
    """The label map of the case of ``files`` on its scan's grid, from the mean softmax of the
    networks of ``checkpoints`` (each over the case flipped along every combination of
    ``flip_axes``, flipped back), called here on the whole preprocessed volume: the case
    must fit in one window, which is then what the sliding window gives each network."""
    loaded = [pipeline.load_network(path, device="cpu") for path in checkpoints]
    config, plan = loaded[0][1], get_dataset(NAME).scans
    image, first = read_image(RawCase("case", tuple(files), None, TEST), len(plan.channels), "channels")
    preprocessed, _, geometry = preprocess_scan(image, None, scan_spacing(first, files[0]), first.affine, plan.rules)
    shape, patch = preprocessed.shape[1:], tuple(config.data.patch_size)
    assert all(size <= window for size, window in zip(shape, patch)), (shape, patch)  # one window
    pads = [((window - size) // 2, window - size - (window - size) // 2) for size, window in zip(shape, patch)]
    batch = torch.from_numpy(np.pad(preprocessed, [(0, 0), *pads]))[None]
    probabilities = oracle_probabilities([net for net, _ in loaded], batch, flip_axes)[0].numpy()
    probabilities = probabilities[
        (slice(None), *(slice(before, before + size) for (before, _), size in zip(pads, shape)))
    ]
    labels = restore_labels(probabilities, geometry, plan.rules.spacing)
    return postprocess_labels(labels, config.eval.postprocess, config.num_classes, config.ops)


def _other_weights(run_dir, tmp_path):
    """A copy of the run folder whose best.pt holds other weights (another fold's, say)."""
    copy = shutil.copytree(run_dir, tmp_path / "other-fold")
    state = load_checkpoint(copy / "best.pt")
    generator = torch.Generator().manual_seed(1)
    for name, tensor in state["student"].items():
        if tensor.is_floating_point() and name.endswith("weight"):
            state["student"][name] = tensor + 0.3 * tensor.std() * torch.randn(tensor.shape, generator=generator)
    torch.save(state, copy / "best.pt")
    return copy / "best.pt"


def _predicted_case(checkpoints, inputs, out, *options):
    cli.predict_main(
        ["--checkpoint", *map(str, checkpoints), "--input", str(inputs), "--output", str(out), "--device", "cpu"]
        + list(options)
    )
    return np.asarray(nib.load(out / "synth_005.nii.gz").dataobj)


def test_imported_scans_one_checkpoint_predicts_as_before_and_two_copies_as_one(nnunet_3d, tmp_path):
    raw, _, run_dir = nnunet_3d
    inputs = _test_case_inputs(raw, tmp_path)
    net, config = pipeline.load_network(run_dir / "best.pt", device="cpu")
    (before,) = predict_scans(
        net,
        inputs,
        NAME,
        tmp_path / "before",
        config.num_classes,
        config.eval.postprocess,
        config.ops,
        device="cpu",
        **pipeline.inference_options(config),
    )
    one = _predicted_case([run_dir / "best.pt"], inputs, tmp_path / "one")
    assert (tmp_path / "one" / before.name).read_bytes() == before.read_bytes()
    two = _predicted_case([run_dir / "best.pt", run_dir / "best.pt"], inputs, tmp_path / "two")
    np.testing.assert_array_equal(two, one)


def test_imported_scans_two_checkpoints_predict_the_argmax_of_their_mean_probabilities(nnunet_3d, tmp_path):
    raw, _, run_dir = nnunet_3d
    inputs = _test_case_inputs(raw, tmp_path)
    checkpoints = [run_dir / "best.pt", _other_weights(run_dir, tmp_path)]
    files = sorted(inputs.iterdir())
    both = _predicted_case(checkpoints, inputs, tmp_path / "both")
    np.testing.assert_array_equal(both, _ensemble_oracle(checkpoints, files))
    assert not np.array_equal(both, _predicted_case(checkpoints[:1], inputs, tmp_path / "first"))


def test_imported_scans_mirror_every_axis_of_the_3d_patch(nnunet_3d, tmp_path):
    raw, _, run_dir = nnunet_3d
    inputs = _test_case_inputs(raw, tmp_path)
    mirrored = _predicted_case([run_dir / "best.pt"], inputs, tmp_path / "mirrored", "--mirror")
    assert get_dataset(NAME).flip_axes == (0, 1, 2)  # ScanItems flips every axis of a patch
    np.testing.assert_array_equal(
        mirrored, _ensemble_oracle([run_dir / "best.pt"], sorted(inputs.iterdir()), (0, 1, 2))
    )


def test_imported_scans_checkpoints_of_another_plan_are_refused_in_one_line(nnunet_3d, decathlon_2d, tmp_path, capsys):
    raw, _, run_3d = nnunet_3d
    run_2d = decathlon_2d[2]
    with pytest.raises(SystemExit) as exit_info:
        cli.predict_main(
            [
                "--checkpoint",
                str(run_3d / "best.pt"),
                str(run_2d / "best.pt"),
                "--input",
                str(_test_case_inputs(raw, tmp_path)),
                "--output",
                str(tmp_path / "out"),
            ]
        )
    error = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == cli.USER_ERROR_EXIT_CODE and len(error) == 1, error
    assert error[0].startswith(
        f"mper-predict: error: {run_3d / 'best.pt'} and {run_2d / 'best.pt'} cannot be ensembled: they differ in "
        "the plan"
    ), error[0]
    assert not (tmp_path / "out").exists()
    assert get_dataset(NAME).flip_axes == (0, 1)  # as the 2D checkpoint registered it: its patches' two axes
    config, spec = pipeline.load_network(run_3d / "best.pt", device="cpu")[1], get_dataset(NAME)
    rules = dataclasses.replace(spec.scans.rules, spacing=(9.5, 9.5, 9.5))
    resampled = dataclasses.replace(spec, scans=dataclasses.replace(spec.scans, rules=rules))
    assert pipeline._ensemble_difference((config, spec), (config, resampled)).startswith(
        "the plan of the imported scans (another target spacing ("
    )
