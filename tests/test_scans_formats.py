"""Raw scans in the endings nnU-Net v2 reads besides NIfTI: NRRD, MetaImage (through
SimpleITK) and 2D natural images (PNG, RGB as three channels). A dataset converted from
NIfTI imports as its NIfTI original; predictions are written in the input's format on its
grid, and scored from there. The oracles read the files themselves: nibabel the NIfTI
originals, SimpleITK and Pillow the converted files."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mper import cli, pipeline
from mper.data.raw_scans import MSD, NNUNET, load_scan, read_case, read_raw_dataset
from mper.data.synth_scans import synthesize_scans
from mper.eval.predict import label_image, save_label_map
from tiny_runs import TWO_ITERATIONS, set_arguments

# medpy's dependency, which scripts/gpu_wheels.sh leaves out: where it is missing these tests are skipped
sitk = pytest.importorskip("SimpleITK")

pytestmark = pytest.mark.usefixtures("only_built_in_datasets")

TINY = (16, 16, 5)
TINY_RUN = ["--device", "cpu", *set_arguments(TWO_ITERATIONS)]


@pytest.fixture(scope="module")
def nifti(tmp_path_factory):
    """A tiny synthetic nnU-Net dataset in NIfTI (rotated, flipped, anisotropic cases)."""
    return synthesize_scans(tmp_path_factory.mktemp("raw") / "nii", NNUNET, cases=6, seed=3, size=TINY, progress=False)


def _sitk_copy(nii_path, out_path):
    """The volume of the NIfTI file ``nii_path`` written by SimpleITK to ``out_path``: its
    voxels and ITK's geometry, without the NIfTI header's other fields."""
    read = sitk.ReadImage(str(nii_path))
    written = sitk.GetImageFromArray(sitk.GetArrayFromImage(read))
    written.CopyInformation(read)
    sitk.WriteImage(written, str(out_path), True)


def _converted(source, out, ending):
    """A copy of the NIfTI dataset ``source`` with every file converted by SimpleITK to ``ending``."""
    out = shutil.copytree(source, out)
    for path in sorted(out.glob("*/*.nii.gz")):
        _sitk_copy(path, path.with_name(path.name[: -len(".nii.gz")] + ending))
        path.unlink()
    document = json.loads((out / "dataset.json").read_text())
    (out / "dataset.json").write_text(json.dumps({**document, "file_ending": ending}))
    return out


def _h5_contents(path):
    contents = {}
    with h5py.File(path, "r") as file:
        file.visititems(
            lambda name, item: contents.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None
        )
        contents.update({f"attr:{key}": value for key, value in file.attrs.items()})
    return contents


def _assert_close(got, expected, key):
    """``got`` equals ``expected`` (arrays, numbers, and the JSON records of attributes) up to
    float32 rounding of the NIfTI header's geometry (ITK reads it as doubles)."""
    if isinstance(expected, (str, bytes)) and str(expected).startswith("{"):
        got, expected = json.loads(got), json.loads(expected)
    if isinstance(expected, dict):
        assert sorted(got) == sorted(expected), key
        for name in expected:
            _assert_close(got[name], expected[name], f"{key}.{name}")
    elif isinstance(expected, list) and expected and isinstance(expected[0], dict):
        assert len(got) == len(expected), key
        for index, (one, other) in enumerate(zip(got, expected)):
            _assert_close(one, other, f"{key}[{index}]")
    elif expected is None or isinstance(expected, (str, bytes)):
        assert got == expected, key
    elif np.asarray(expected).dtype.kind == "f":
        np.testing.assert_allclose(np.asarray(got, dtype=np.float64), expected, atol=1e-5, err_msg=key)
    else:
        np.testing.assert_array_equal(got, expected, err_msg=key)


@pytest.mark.parametrize("ending", [".nrrd", ".mha", ".mhd", ".nhdr"])
def test_a_dataset_in_nrrd_or_metaimage_imports_as_its_nifti_original(nifti, tmp_path, caplog, ending):
    converted = _converted(nifti, tmp_path / "raw", ending)
    original, dataset = read_raw_dataset(nifti), read_raw_dataset(converted)
    assert [case.name for case in dataset.cases] == [case.name for case in original.cases]
    assert all(path.name.endswith(ending) for case in dataset.cases for path in case.images)
    for case in dataset.cases:
        scan = read_case(case, dataset)
        # the oracle: nibabel reading the NIfTI originals, in their array order and RAS world coordinates
        first = nib.load(nifti / case.images[0].parent.name / case.images[0].name.replace(ending, ".nii.gz"))
        for channel, path in enumerate(case.images):
            nii = nib.load(nifti / path.parent.name / path.name.replace(ending, ".nii.gz"))
            np.testing.assert_array_equal(scan.image[channel], np.asarray(nii.dataobj, dtype=np.float32))
        np.testing.assert_allclose(scan.affine, first.affine, atol=1e-5)
        assert scan.spacing == pytest.approx(first.header.get_zooms()[:3], rel=1e-6)
        if case.label is not None:
            label = nib.load(nifti / case.label.parent.name / case.label.name.replace(ending, ".nii.gz"))
            np.testing.assert_array_equal(scan.label, np.asarray(label.dataobj))
    with caplog.at_level(logging.WARNING, logger="mper"):
        pipeline.import_scans(converted, tmp_path / "imported")
    assert not [message for message in caplog.messages if "ignored" in message], caplog.messages  # no .raw named
    pipeline.import_scans(nifti, tmp_path / "imported-nii")
    cases = sorted(path.name for path in (tmp_path / "imported-nii" / "cases").iterdir())
    assert sorted(path.name for path in (tmp_path / "imported" / "cases").iterdir()) == cases
    for name in cases:
        expected, got = (_h5_contents(tmp_path / root / "cases" / name) for root in ("imported-nii", "imported"))
        assert sorted(got) == sorted(expected)
        for key, value in expected.items():
            _assert_close(got[key], value, key)
    plans = [(tmp_path / root / "plan.toml").read_text().splitlines() for root in ("imported-nii", "imported")]
    differing = [line for line in plans[1] if line not in plans[0] and not line.startswith("#")]  # paths
    assert [line.split(" = ")[0] for line in differing] == ["source", "file_ending"], differing


def _road_case(seed, shape=(24, 20)):
    """An RGB image (rows, columns, 3) of a bright diagonal road on a noisy background, and its 0/1 label."""
    rng = np.random.default_rng(seed)
    rows, columns = np.indices(shape)
    road = np.abs(rows - columns * shape[0] / shape[1] - rng.integers(-4, 5)) < 3
    image = rng.integers(20, 90, (*shape, 3))
    image[road] = rng.integers(150, 250, (int(road.sum()), 3))
    return image.astype(np.uint8), road.astype(np.uint8)


def _png_dataset(root, cases=5, colours="RGB"):
    """nnU-Net's Dataset120_RoadSegmentation in small: ``<case>_0000.png`` RGB files, 0/1 png labels."""
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / folder).mkdir(parents=True)
    for index in range(cases):
        image, label = _road_case(index)
        images, labels = ("imagesTs", "labelsTs") if index == cases - 1 else ("imagesTr", "labelsTr")
        Image.fromarray(image if colours == "RGB" else image[..., 0], colours).save(
            root / images / f"road_{index:03d}_0000.png"
        )
        Image.fromarray(label, "L").save(root / labels / f"road_{index:03d}.png")
    document = {
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, "road": 1},
        "numTraining": cases - 1,
        "file_ending": ".png",
    }
    (root / "dataset.json").write_text(json.dumps(document))
    return root


def test_an_rgb_png_dataset_imports_with_a_channel_per_colour(tmp_path):
    source = _png_dataset(tmp_path / "Dataset120_Road")
    dataset = read_raw_dataset(source)
    assert dataset.channels == ("R", "G", "B") and [len(case.images) for case in dataset.cases] == [1] * 5
    for case in dataset.cases:
        scan = read_case(case, dataset)
        # the oracle: Pillow's (rows, columns, colour) array; mper holds the file's index order (x, y)
        colours = np.asarray(Image.open(case.images[0]))
        assert scan.image.shape == (3, colours.shape[1], colours.shape[0], 1)
        for channel in range(3):
            np.testing.assert_array_equal(scan.image[channel, :, :, 0], colours[..., channel].T)
        np.testing.assert_array_equal(scan.label[:, :, 0], np.asarray(Image.open(case.label)).T)
        assert scan.spacing == (1.0, 1.0, 1.0)
    root = pipeline.import_scans(source, tmp_path / "imported")
    plan = (root / "plan.toml").read_text()
    assert 'file_ending = ".png"' in plan and 'dims = "2d"' in plan
    assert [line for line in plan.splitlines() if line.startswith("name = ")][1:] == [
        'name = "R"',
        'name = "G"',
        'name = "B"',
    ]
    with h5py.File(root / "cases" / "road_000.h5", "r") as file:
        assert file["image"].shape[0] == 3


def _import_error(source, out, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.data_main(["import", "--source", str(source), "--out", str(out)])
    error = capsys.readouterr().err
    assert stop.value.code == cli.USER_ERROR_EXIT_CODE and "Traceback" not in error, error
    assert not out.exists()
    return error.splitlines()[-1]


def test_a_png_of_another_channel_count_than_channel_names_is_refused_naming_it(tmp_path, capsys):
    source = _png_dataset(tmp_path / "grey", colours="L")  # grey files under three channel_names
    line = _import_error(source, tmp_path / "imported", capsys)
    assert line == (
        f"mper-data: error: {source / 'imagesTr' / 'road_000_0000.png'}: case road_000's image file(s) hold 1 "
        "channel(s) (road_000_0000.png: 1), but 3 are expected (dataset.json's channel_names: R, G, B); a grey "
        "image holds 1 channel, an RGB image 3, an RGBA image 4: give the case files of 3 channel(s) in all"
    )
    rgba = _png_dataset(tmp_path / "rgba")
    image, _ = _road_case(1)
    Image.fromarray(np.dstack([image, np.full(image.shape[:2], 255, np.uint8)]), "RGBA").save(
        rgba / "imagesTr" / "road_001_0000.png"
    )
    assert "road_001_0000.png: case road_001's image file(s) hold 4 channel(s)" in _import_error(
        rgba, tmp_path / "imported", capsys
    )


def test_a_colour_png_label_is_refused_as_not_one_map_of_classes(tmp_path, capsys):
    source = _png_dataset(tmp_path / "raw")
    _, label = _road_case(2)
    Image.fromarray(np.dstack([label] * 3), "RGB").save(source / "labelsTr" / "road_002.png")
    line = _import_error(source, tmp_path / "imported", capsys)
    assert line == (
        f"mper-data: error: {source / 'labelsTr' / 'road_002.png'}: the label is a colour image (3 components per "
        "pixel); a label is one 3D map of class values (0, 1, ...): save it as a one-component (grey) image of "
        "class values (a palette PNG is read as its colours, not its indices)"
    )
    # a palette PNG of class indices: SimpleITK expands the palette to RGB, so it is refused alike
    palette = Image.fromarray(label, "P")
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.save(source / "labelsTr" / "road_002.png")
    assert _import_error(source, tmp_path / "imported", capsys) == line


def test_a_file_ending_no_reader_takes_is_refused_naming_the_endings_read(nifti, tmp_path, capsys):
    source = shutil.copytree(nifti, tmp_path / "raw")
    document = json.loads((source / "dataset.json").read_text())
    (source / "dataset.json").write_text(json.dumps({**document, "file_ending": ".PNG"}))
    assert _import_error(source, tmp_path / "imported", capsys).endswith(
        'rename the files to end in \'.png\' and write "file_ending": ".png"'
    )
    (source / "dataset.json").write_text(json.dumps({**document, "file_ending": ".nrrd"}))
    assert _import_error(source, tmp_path / "imported", capsys) == (
        f"mper-data: error: {source / 'imagesTr'}: no file ends with dataset.json's file_ending '.nrrd', but 8 end "
        f'with \'.nii.gz\' (e.g. synth_000_0000.nii.gz); set "file_ending": ".nii.gz" in {source / "dataset.json"} '
        "to read them"
    )


def test_without_simpleitk_an_nrrd_dataset_says_to_install_it(nifti, tmp_path, capsys, monkeypatch):
    converted = _converted(nifti, tmp_path / "raw", ".nrrd")
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # as a Python set up by scripts/gpu_wheels.sh
    line = _import_error(converted, tmp_path / "imported", capsys)
    assert line == (
        f"mper-data: error: {converted / 'imagesTr' / 'synth_000_0000.nrrd'}: reading and writing .nrrd files needs "
        "SimpleITK, which is not installed here: pip install SimpleITK (or convert the files to NIfTI, which "
        "nibabel reads)"
    )


def test_an_nrrd_file_cut_short_is_refused_in_one_line_naming_it(nifti, tmp_path, capsys):
    converted = _converted(nifti, tmp_path / "raw", ".nrrd")
    damaged = converted / "labelsTr" / "synth_001.nrrd"
    damaged.write_bytes(damaged.read_bytes()[:200])  # an interrupted copy: the header alone, cut
    line = _import_error(converted, tmp_path / "imported", capsys)
    assert line.startswith(f"mper-data: error: {damaged}: not a readable NRRD file (SimpleITK: ") and line.endswith(
        "); replace it"
    ), line
    assert "Exception thrown" not in line and ".cxx" not in line, line


def test_importing_the_commands_leaves_simpleitk_unimported():
    """SimpleITK is imported when a file of its formats is read, not with mper's commands."""
    code = "import sys\nimport mper.cli, mper.pipeline\nassert 'SimpleITK' not in sys.modules, 'SimpleITK imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- predictions in the input's format, scored from there ------------------------------------


@pytest.fixture(scope="module")
def nrrd_run(tmp_path_factory):
    """A tiny 3D run on a synthetic nnU-Net dataset converted to .nrrd."""
    tmp = tmp_path_factory.mktemp("nrrd")
    nifti = synthesize_scans(tmp / "nii", NNUNET, cases=7, seed=4, size=(20, 20, 6), progress=False)
    raw = _converted(nifti, tmp / "raw", ".nrrd")
    root = pipeline.import_scans(raw, tmp / "imported", dims="3d")
    run_dir = tmp / "run"
    cli.train_main(["--data-root", str(root), "--out", str(run_dir), *TINY_RUN, "--set", "network.base_filters=4"])
    return nifti, raw, run_dir


def _geometry(path):
    image = sitk.ReadImage(str(path))
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def test_predictions_of_nrrd_and_metaimage_scans_are_written_in_their_format_on_their_grid(nrrd_run, tmp_path):
    nifti, raw, run_dir = nrrd_run
    inputs = {".nrrd": raw / "imagesTs"}
    for ending in (".mha", ".mhd"):  # the same test scans in the other formats, for the same model
        inputs[ending] = tmp_path / f"in{ending}"
        inputs[ending].mkdir()
        for path in sorted(raw.glob("imagesTs/*.nrrd")):
            _sitk_copy(path, inputs[ending] / path.name.replace(".nrrd", ending))
    predicted = {}
    for ending, folder in inputs.items():
        out = tmp_path / f"out{ending}"
        cli.predict_main(["--checkpoint", str(run_dir / "best.pt"), "--input", str(folder), "--output", str(out)])
        written = ".mha" if ending == ".mhd" else ending  # a detached header's one-file twin
        cases = sorted(path.name[: -len("_0000.nrrd")] for path in raw.glob("imagesTs/*_0000.nrrd"))
        assert sorted(path.name for path in out.iterdir()) == [f"{case}{written}" for case in cases]
        for case in cases:
            label_map = out / f"{case}{written}"
            geometry, expected = _geometry(label_map), _geometry(folder / f"{case}_0000{ending}")
            assert geometry[0] == expected[0]
            # NRRD stores direction times spacing, whose norm reads back off by the last bit of a double
            np.testing.assert_allclose(np.concatenate(geometry[1:]), np.concatenate(expected[1:]), rtol=1e-14, atol=0)
            read = sitk.ReadImage(str(label_map))
            assert read.GetPixelID() == sitk.sitkUInt8
            predicted.setdefault(case, []).append(sitk.GetArrayFromImage(read))
    for maps in predicted.values():  # one model, one scan: one label map whatever the format
        for other in maps[1:]:
            np.testing.assert_array_equal(other, maps[0])
    # the same scans as NIfTI: the same label map, on the NIfTI file's grid
    out = tmp_path / "out.nii"
    cli.predict_main(
        ["--checkpoint", str(run_dir / "best.pt"), "--input", str(nifti / "imagesTs"), "--output", str(out)]
    )
    for case, maps in predicted.items():
        nii = nib.load(out / f"{case}.nii.gz")
        np.testing.assert_array_equal(np.asarray(nii.dataobj).T, maps[0])
        np.testing.assert_allclose(nii.affine, nib.load(nifti / "imagesTs" / f"{case}_0000.nii.gz").affine)


def test_a_scan_stored_with_a_fourth_axis_of_one_is_predicted_as_its_3d_volume(nrrd_run, tmp_path):
    # ITK's (x, y, z, 1): read as its 3D volume, and its label map written on the 3D grid (writing
    # the 4D geometry raised SimpleITK's RuntimeError), as a NIfTI input's trailing axes of one are left out
    _, raw, run_dir = nrrd_run
    case = sorted(raw.glob("imagesTs/*_0000.nrrd"))[0].name[: -len("_0000.nrrd")]
    inputs = {"3d": tmp_path / "in3d", "4d": tmp_path / "in4d"}
    for folder in inputs.values():
        folder.mkdir()
    for channel in sorted(raw.glob(f"imagesTs/{case}_*.nrrd")):
        shutil.copy(channel, inputs["3d"])
        sitk.WriteImage(sitk.JoinSeries(sitk.ReadImage(str(channel))), str(inputs["4d"] / channel.name), True)
        assert sitk.ReadImage(str(inputs["4d"] / channel.name)).GetSize()[3:] == (1,)
    maps = {}
    for name, folder in inputs.items():
        out = tmp_path / f"out{name}"
        cli.predict_main(["--checkpoint", str(run_dir / "best.pt"), "--input", str(folder), "--output", str(out)])
        maps[name] = out / f"{case}.nrrd"
    assert _geometry(maps["4d"]) == _geometry(maps["3d"])
    np.testing.assert_array_equal(*(sitk.GetArrayFromImage(sitk.ReadImage(str(path))) for path in maps.values()))


def test_a_label_map_of_a_4d_file_of_channels_is_written_on_its_3d_grid(tmp_path):
    # a Decathlon case's channels in one file, (x, y, z, channel): the label map is spatial (a
    # reshape to the 4D size raised ValueError)
    volume = sitk.Image(6, 5, 4, sitk.sitkFloat32)
    volume.SetSpacing((0.5, 0.75, 2.0))
    volume.SetOrigin((1.0, -2.0, 3.0))
    volume.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    sitk.WriteImage(sitk.JoinSeries([volume, volume]), str(tmp_path / "case.nrrd"))
    scan = load_scan(tmp_path / "case.nrrd")
    assert scan.shape == (6, 5, 4, 2)
    labels = np.arange(6 * 5 * 4).reshape(6, 5, 4) % 3
    written = save_label_map(label_image(labels, scan), tmp_path / "labels.nrrd")
    size, *geometry = _geometry(written)
    assert size == volume.GetSize()
    np.testing.assert_allclose(
        np.concatenate(geometry), np.concatenate([volume.GetSpacing(), volume.GetOrigin(), volume.GetDirection()])
    )
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(written))).T, labels)


def test_a_label_map_simpleitk_cannot_write_is_a_system_error_naming_it_and_leaves_no_file(tmp_path, monkeypatch):
    # SimpleITK raises RuntimeError (not OSError) for a full disk or a failed write: the
    # commands report system errors in one line naming the file, and anything else keeps a traceback
    volume = sitk.Image(6, 5, 4, sitk.sitkFloat32)
    sitk.WriteImage(volume, str(tmp_path / "case.mha"))
    scan = load_scan(tmp_path / "case.mha")

    def fail(*args):
        raise RuntimeError(
            "Exception thrown in SimpleITK ImageFileWriter_Execute: /src/itkImageFileWriter.hxx:185:\n"
            "itk::ERROR: MetaImageIO(0x1): File cannot be written: No space left on device"
        )

    monkeypatch.setattr(sitk, "WriteImage", fail)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OSError) as raised:
        save_label_map(label_image(np.zeros((6, 5, 4), np.uint8), scan), out / "case.mha")
    assert raised.value.filename == str(out / "case.mha")
    assert raised.value.strerror == "SimpleITK could not write it: File cannot be written: No space left on device"
    assert list(out.iterdir()) == []


def _dice(prediction, truth):
    return 2 * np.count_nonzero(prediction & truth) / (np.count_nonzero(prediction) + np.count_nonzero(truth))


def test_nrrd_predictions_are_scored_against_nrrd_labels(nrrd_run, tmp_path, caplog):
    _, raw, run_dir = nrrd_run
    out = tmp_path / "predictions"
    cli.predict_main(["--checkpoint", str(run_dir / "best.pt"), "--input", str(raw / "imagesTs"), "--output", str(out)])
    cli.eval_main(["--predictions", str(out), "--labels", str(raw / "labelsTs"), "--out", str(tmp_path / "scores")])
    metrics = json.loads((tmp_path / "scores" / "metrics.json").read_text())
    cases = sorted(path.name[: -len(".nrrd")] for path in (raw / "labelsTs").iterdir())
    assert sorted(metrics["per_case"]) == cases
    scored = 0
    for case in cases:
        prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nrrd")))
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTs" / f"{case}.nrrd")))
        for label in range(1, 5):
            if (prediction == label).any() and (truth == label).any():
                dice = _dice(prediction == label, truth == label)
                assert metrics["per_case"][case][str(label)]["dice"] == pytest.approx(dice, rel=1e-9)
                scored += 1
    assert scored
    # MetaImage headers beside their data files: the .zraw files are neither label maps nor named as ignored
    headers = tmp_path / "labels-mhd"
    headers.mkdir()
    for case in cases:
        _sitk_copy(raw / "labelsTs" / f"{case}.nrrd", headers / f"{case}.mhd")
    assert sorted(path.suffix for path in headers.iterdir()) == sorted([".mhd", ".zraw"] * len(cases))
    with caplog.at_level(logging.WARNING, logger="mper"):
        cli.eval_main(["--predictions", str(out), "--labels", str(headers), "--out", str(tmp_path / "scores-mhd")])
    assert not [message for message in caplog.messages if "ignored" in message], caplog.messages
    again = json.loads((tmp_path / "scores-mhd" / "metrics.json").read_text())
    assert again["per_case"] == metrics["per_case"]


def test_png_scans_are_predicted_as_8_bit_pngs_of_their_size(tmp_path):
    source = _png_dataset(tmp_path / "Dataset120_Road", cases=5)
    root = pipeline.import_scans(source, tmp_path / "imported")
    run_dir = tmp_path / "run"
    cli.train_main(
        ["--data-root", str(root), "--out", str(run_dir), *TINY_RUN, "--set", "network.channels=[4,8,16,32,64]"]
    )
    out = tmp_path / "predictions"
    cli.predict_main(
        ["--checkpoint", str(run_dir / "best.pt"), "--input", str(source / "imagesTs"), "--output", str(out)]
    )
    assert sorted(path.name for path in out.iterdir()) == ["road_004.png"]
    written = Image.open(out / "road_004.png")
    assert written.mode == "L" and written.size == Image.open(source / "imagesTs" / "road_004_0000.png").size
    assert set(np.unique(np.asarray(written))) <= {0, 1}
    cli.eval_main(["--predictions", str(out), "--labels", str(source / "labelsTs"), "--out", str(tmp_path / "scores")])
    metrics = json.loads((tmp_path / "scores" / "metrics.json").read_text())
    truth = np.asarray(Image.open(source / "labelsTs" / "road_004.png")) == 1
    predicted = np.asarray(written) == 1
    expected = _dice(predicted, truth) if predicted.any() else 0.0
    assert metrics["per_case"]["road_004"]["1"]["dice"] == pytest.approx(expected, rel=1e-9)


def test_a_grey_bmp_dataset_imports_with_one_channel_as_pillow_reads_it(tmp_path):
    """A grey BMP is 8-bit indices into a grey ramp: SimpleITK reads its colours, Pillow (so
    nnU-Net's NaturalImage2DIO) one grey channel, and so does mper, for images and labels."""
    source = _png_dataset(tmp_path / "raw", colours="L")
    for path in sorted(source.glob("*/*.png")):
        Image.open(path).save(path.with_suffix(".bmp"))
        path.unlink()
    document = json.loads((source / "dataset.json").read_text())
    (source / "dataset.json").write_text(
        json.dumps({**document, "channel_names": {"0": "grey"}, "file_ending": ".bmp"})
    )
    assert Image.open(source / "imagesTr" / "road_000_0000.bmp").mode == "L"
    assert sitk.ReadImage(str(source / "imagesTr" / "road_000_0000.bmp")).GetNumberOfComponentsPerPixel() == 3
    dataset = read_raw_dataset(source)
    for case in dataset.cases:
        scan = read_case(case, dataset)
        grey = np.asarray(Image.open(case.images[0]))  # the oracle: Pillow's (rows, columns)
        assert scan.image.shape == (1, grey.shape[1], grey.shape[0], 1)
        np.testing.assert_array_equal(scan.image[0, :, :, 0], grey.T)
        np.testing.assert_array_equal(scan.label[:, :, 0], np.asarray(Image.open(case.label)).T)


@pytest.mark.parametrize("header", [".mhd", ".nhdr"])
def test_a_header_without_its_data_file_is_refused_naming_the_data_file(nifti, tmp_path, capsys, header):
    converted = _converted(nifti, tmp_path / "raw", header)
    data = {".mhd": "synth_001.zraw", ".nhdr": "synth_001.raw.gz"}[header]
    (converted / "labelsTr" / data).unlink()  # copied without it
    line = _import_error(converted, tmp_path / "imported", capsys)
    kind, one_file = {".mhd": ("MetaImage", ".mha"), ".nhdr": ("NRRD", ".nrrd")}[header]
    assert line == (
        f"mper-data: error: {converted / 'labelsTr' / f'synth_001{header}'}: its data file {data}, which the {kind} "
        f"header names, is not beside it; put the data file in {converted / 'labelsTr'} (or write the image as one "
        f"{one_file} file)"
    )


@pytest.mark.parametrize("entry", ["training", "test"])
def test_a_decathlon_dataset_of_nrrd_files_is_refused_saying_to_convert_them(tmp_path, capsys, entry):
    source = synthesize_scans(tmp_path / "msd", MSD, cases=6, seed=3, size=TINY, progress=False)
    document = json.loads((source / "dataset.json").read_text())
    listed = document["training"][0]["image"] if entry == "training" else document["test"][0]
    sitk.WriteImage(sitk.ReadImage(str(source / listed)), str(source / listed.replace(".nii.gz", ".nrrd")))
    (source / listed).unlink()
    if entry == "training":
        document["training"][0]["image"] = listed.replace(".nii.gz", ".nrrd")
    else:
        document["test"][0] = listed.replace(".nii.gz", ".nrrd")
    (source / "dataset.json").write_text(json.dumps(document))
    what = "training image" if entry == "training" else "test image"
    assert _import_error(source, tmp_path / "imported", capsys) == (
        f"mper-data: error: {source / 'dataset.json'}: {what} {listed.replace('.nii.gz', '.nrrd')} is not a .nii.gz "
        "file, which the Decathlon layout takes: convert it to NIfTI (e.g. with SimpleITK) and list it as .nii.gz, "
        "or use the nnU-Net v2 layout, whose file_ending may be .nrrd"
    )


def test_a_png_label_of_0_and_255_is_refused_saying_to_write_0_and_1(tmp_path, capsys):
    source = _png_dataset(tmp_path / "raw")
    _, label = _road_case(1)
    Image.fromarray(label * 255, "L").save(source / "labelsTr" / "road_001.png")  # as an image editor saves a mask
    assert _import_error(source, tmp_path / "imported", capsys) == (
        f"mper-data: error: {source / 'labelsTr' / 'road_001.png'}: label value(s) [255] are not declared in "
        "dataset.json (labels: 0 background, 1 road); declare them or relabel (a mask saved as 0 and 255: write 0 "
        "and 1)"
    )


def test_a_sheared_nrrd_scan_is_refused_though_its_spacing_agrees_with_its_affine(nifti, tmp_path, capsys):
    """ITK's spacing is the length of each voxel axis, so a sheared NRRD's voxel size agrees
    with its affine: the shear is refused on its own, as for NIfTI."""
    converted = _converted(nifti, tmp_path / "raw", ".nrrd")
    for path in sorted(converted.glob("*/synth_001*.nrrd")):  # its channels and its label
        image = sitk.ReadImage(str(path))
        image.SetDirection((1.0, 0.3, 0.0, 0.0, 0.954, 0.0, 0.0, 0.0, 1.0))  # a tilted gantry's second axis
        sitk.WriteImage(image, str(path), True)
    assert _import_error(converted, tmp_path / "imported", capsys) == (
        f"mper-data: error: {converted / 'imagesTr' / 'synth_001_0000.nrrd'}: its affine is sheared (its voxel axes "
        "are not at right angles, as a CT acquired with a tilted gantry is stored): mper, as nnU-Net, reads grids "
        "of right angles; resample it onto one (e.g. dcm2niix's gantry tilt correction) and save it"
    )
