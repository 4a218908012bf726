"""Raw scans in the nnU-Net v2 and Decathlon layouts: the synthetic writer, the readers, the
checks that refuse bad input before anything is written, the preprocessing by nnU-Net's
conventions and the way back, the plan file and the training items."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.orientations import aff2axcodes, io_orientation, ornt_transform
from scipy import ndimage

from mper import cli
from mper.data import raw_scans
from mper.data.imported import ImportedLayout, scan_items, write_scan_case, write_scan_lists
from mper.data.raw_scans import LABELED, MSD, NNUNET, TEST, UNLABELED, read_case, read_raw_dataset
from mper.data.scan_plan import ScanPlan, parse_scan_plan, plan_text, read_plan, write_plan
from mper.data.scan_preprocess import (
    CaseGeometry,
    ChannelStatistics,
    Normalization,
    ScanRules,
    anisotropic_axis,
    foreground_statistics,
    nonzero_box,
    normalize_channel,
    preprocess_scan,
    resample_labels,
    resampled_shape,
    restore_labels,
    rules_difference,
    target_spacing,
)
from mper.data.splits import fold_cases
from mper.data.synth_scans import SYNTH_SCAN_CHANNELS, SYNTH_SCAN_CLASSES, synthesize_scans
from mper.datasets import check_dataset_root, scans
from mper.datasets.registry import _REGISTRY, register_imported
from mper.datasets.scans import (
    MIN_PATCH_SIDE,
    DataSummary,
    labeled_range,
    patch_and_batch,
    plan_settings,
    scan_spec,
)
from mper.errors import ConfigError, DataFormatError, MissingFileError
from mper.train.config import load_config

TINY = (16, 16, 5)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """A tiny synthetic raw dataset in each layout."""
    root = tmp_path_factory.mktemp("raw")
    return {
        layout: synthesize_scans(root / layout, layout, cases=6, seed=3, size=TINY, progress=False)
        for layout in (NNUNET, MSD)
    }


# --- the synthetic writer and the readers --------------------------------------------------


@pytest.mark.parametrize("layout", [NNUNET, MSD])
def test_synthetic_scans_have_the_layout_and_variety_the_issue_asks_for(raw, layout):
    dataset = read_raw_dataset(raw[layout])
    assert dataset.layout == layout
    assert dataset.channels == SYNTH_SCAN_CHANNELS and dataset.normalization == ("ct", "z-score")
    assert dataset.class_names == SYNTH_SCAN_CLASSES and len(SYNTH_SCAN_CLASSES) == 5
    roles = [case.role for case in dataset.cases]
    assert roles.count(LABELED) == 3 and roles.count(UNLABELED) == 1 and roles.count(TEST) == 2
    shapes, spacings = set(), set()
    for case in dataset.cases:
        scan = read_case(case, dataset)
        assert scan.image.shape[0] == 2 and scan.image.dtype == np.float32
        assert (scan.label is None) == (case.role == UNLABELED)
        assert not np.allclose(scan.affine, np.diag([*scan.spacing, 1.0]))  # rotated, flipped, shifted
        assert max(scan.spacing) / min(scan.spacing) > 2.5  # thick slices
        ct, mr = scan.image
        assert ct.min() <= -900 and mr.min() == 0 and mr.max() > 100  # air in CT, a zero MR background
        if scan.label is not None:
            assert set(np.unique(scan.label)) == set(range(len(SYNTH_SCAN_CLASSES)))
        shapes.add(scan.image.shape)
        spacings.add(scan.spacing)
    assert len(shapes) > 1 and len(spacings) > 1


def test_both_layouts_hold_the_same_cases(raw):
    nnunet, msd = (read_raw_dataset(raw[layout]) for layout in (NNUNET, MSD))
    assert [case.name for case in nnunet.cases] == [case.name for case in msd.cases]
    assert all(len(case.images) == 2 for case in nnunet.cases) and all(len(case.images) == 1 for case in msd.cases)
    first = nnunet.cases[0]
    a, b = read_case(first, nnunet), read_case(msd.cases[0], msd)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_allclose(a.affine, b.affine)
    assert json.loads((raw[MSD] / "dataset.json").read_text())["tensorImageSize"] == "4D"


def test_mper_data_synth_writes_raw_scans_and_asks_for_one_kind_of_data(tmp_path, capsys):
    cli.data_main(
        ["synth", "--format", "msd", "--out", str(tmp_path / "msd"), "--cases", "5", "--size", "12", "12", "4"]
    )
    assert "wrote synthetic msd scans" in capsys.readouterr().out
    assert read_raw_dataset(tmp_path / "msd").layout == MSD
    for options in ([], ["--format", "nnunet", "--dataset", "la"]):
        with pytest.raises(SystemExit):
            cli.data_main(["synth", "--out", str(tmp_path / "x"), *options])
        assert "needs one of --dataset (LA / ACDC layout) or --format (raw scans)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.data_main(["synth", "--format", "nnunet", "--family", "scanners", "--out", str(tmp_path / "x")])
    assert "--family chooses how LA / ACDC data (--dataset) vary" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# --- bad input: one line naming the file, nothing written -------------------------------------


def _rewrite(path, data=None, affine=None):
    scan = nib.load(path)
    nib.save(
        nib.Nifti1Image(np.asarray(scan.dataobj) if data is None else data, scan.affine if affine is None else affine),
        path,
    )


def _missing_channel(root):
    (root / "imagesTr" / "synth_001_0001.nii.gz").unlink()
    return "synth_001_0001.nii.gz", "add it"


def _label_shape(root):
    path = root / "labelsTr" / "synth_000.nii.gz"
    _rewrite(path, np.asarray(nib.load(path).dataobj)[:-1])
    return "labelsTr/synth_000.nii.gz", "shape"


def _channel_affine(root):
    path = root / "imagesTr" / "synth_002_0001.nii.gz"
    affine = nib.load(path).affine.copy()
    affine[0, 3] += 5
    _rewrite(path, affine=affine)
    return "imagesTr/synth_002_0001.nii.gz", "origin"


def _undeclared_label(root):
    path = root / "labelsTr" / "synth_001.nii.gz"
    label = np.asarray(nib.load(path).dataobj).copy()
    label[0, 0, 0] = 7
    _rewrite(path, label)
    return "labelsTr/synth_001.nii.gz", "not declared in dataset.json"


def _four_d_label(root):
    path = root / "labelsTr" / "synth_000.nii.gz"
    label = np.asarray(nib.load(path).dataobj)
    _rewrite(path, np.stack([label, label], axis=-1))
    return "labelsTr/synth_000.nii.gz", "4D label"


def _nan_voxels(root):
    path = root / "imagesTr" / "synth_002_0001.nii.gz"
    image = np.asarray(nib.load(path).dataobj, dtype=np.float32).copy()
    image[1, 2, 0] = np.nan
    _rewrite(path, image)
    return "imagesTr/synth_002_0001.nii.gz", "image has 1 NaN or infinite value(s) among"


def _cut_short(path):
    """Keep the first half of ``path``: its header whole, its voxels cut short, as an
    interrupted copy leaves a file."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _truncated_image(root):
    _cut_short(root / "imagesTr" / "synth_001_0001.nii.gz")
    return "imagesTr/synth_001_0001.nii.gz: not a readable NIfTI file", "replace it"


def _truncated_label(root):
    _cut_short(root / "labelsTr" / "synth_002.nii.gz")
    return "labelsTr/synth_002.nii.gz: not a readable NIfTI file", "replace it"


def _duplicate_case(root):
    for channel in (0, 1):
        shutil.copy(
            root / "imagesTs" / f"synth_004_{channel:04d}.nii.gz", root / "imagesTs" / f"synth_000_{channel:04d}.nii.gz"
        )
    return "synth_000", "twice"


def _empty_training(root):
    for folder in ("imagesTr", "labelsTr"):
        shutil.rmtree(root / folder)
        (root / folder).mkdir()
    return "imagesTr", "no labeled training case"


def _no_file_ending(root):
    document = json.loads((root / "dataset.json").read_text())
    del document["file_ending"]
    (root / "dataset.json").write_text(json.dumps(document))
    return "dataset.json", 'has no "file_ending", which nnU-Net v2\'s dataset.json names: add "file_ending"'


def _edit_dataset_json(root, **changes):
    document = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**document, **changes}))


def _file_ending_without_dot(root):
    _edit_dataset_json(root, file_ending="nii.gz")
    return "dataset.json: file_ending 'nii.gz' lacks its leading dot", 'write "file_ending": ".nii.gz"'


def _file_ending_not_read(root):
    _edit_dataset_json(root, file_ending=".dcm")
    return (
        "dataset.json: file_ending '.dcm' is not an ending mper reads; it reads NIfTI (.nii.gz, .nii) through "
        "nibabel, and through SimpleITK .nrrd, .nhdr, .mha, .mhd, .gipl.gz, .gipl and 2D .png, .bmp, .tif, .tiff",
        "convert the images (e.g. with SimpleITK)",
    )


def _file_ending_in_capitals(root):
    _edit_dataset_json(root, file_ending=".NII.GZ")
    return "dataset.json: file_ending '.NII.GZ'", "rename the files to end in '.nii.gz' and write \"file_ending\""


def _files_ending_in_capitals(root):
    for path in root.glob("*/*.nii.gz"):
        path.rename(path.with_name(path.name.replace(".nii.gz", ".NII.GZ")))
    return "imagesTr: no file ends with dataset.json's file_ending '.nii.gz', but", "rename them to end in '.nii.gz'"


def _files_ending_in_capitals_of_the_other_ending(root):
    for path in root.glob("*/*.nii.gz"):  # uncompressed .NII files under "file_ending": ".nii.gz"
        nib.save(nib.load(path), path.with_name(path.name.replace(".nii.gz", ".NII")))
        path.unlink()
    return (
        "imagesTr: no file ends with dataset.json's file_ending '.nii.gz', but",
        "end with '.nii' in other letter case (e.g. synth_000_0000.NII); rename them to end in '.nii' and set "
        '"file_ending": ".nii" in',
    )


def _ignore_label(root):
    labels = json.loads((root / "dataset.json").read_text())["labels"]
    _edit_dataset_json(root, labels={**labels, "ignore": len(labels)})
    return "dataset.json: an 'ignore' label (voxels left unannotated) is not supported", "annotate those voxels"


def _too_many_classes(root):
    # the imported labels are uint8: class 258 became class 2 without a word
    _edit_dataset_json(root, labels={"background": 0, **{f"class {value}": value for value in range(1, 300)}})
    return "dataset.json: labels declare 300 classes", "at most 256 classes"


def _rgb_image(root):
    # an RGB24 NIfTI (as ITK writes colour images): numpy's promotion error ended the import in a traceback
    path = root / "imagesTr" / "synth_002_0001.nii.gz"
    grey = np.clip(np.asarray(nib.load(path).dataobj), 0, 255).astype(np.uint8)
    colours = np.zeros(grey.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    for colour in ("R", "G", "B"):
        colours[colour] = grey
    _rewrite(path, colours)
    return "imagesTr/synth_002_0001.nii.gz: its voxels are colours (R, G, B per voxel)", "RGB as three channels"


def _complex_label(root):
    # a complex map was read as its real part without a word
    path = root / "labelsTr" / "synth_001.nii.gz"
    _rewrite(path, np.asarray(nib.load(path).dataobj).astype(np.complex64))
    return "labelsTr/synth_001.nii.gz: its voxels are complex numbers (complex64)", "write the magnitude"


def _renamed_case(root, name):
    for path in root.glob("*/synth_001*.nii.gz"):
        path.rename(path.with_name(path.name.replace("synth_001", name)))


def _case_name_ending_in_a_space(root):
    # the case lists drop surrounding spaces: training looked for cases/case.h5 and stopped
    _renamed_case(root, "case ")
    return "imagesTr/case _0000.nii.gz: the case name 'case '", "begins or ends with white space"


def _case_name_ending_in_h5(root):
    # the case lists read "scan.h5" as the file of case "scan"
    _renamed_case(root, "scan.h5")
    return "the case name 'scan.h5'", "rename the case's files"


# nnU-Net v2's get_normalization_scheme: the channel name, casefolded, names CT, noNorm, zscore,
# rescale_to_0_1 or rgb_to_0_1; any other name (its ACDC conversion's "cineMRI", a name it once
# had, "rescale_0_1") is z-scored per image
@pytest.mark.parametrize(
    ("channel_name", "normalization"),
    [
        ("CT", "ct"),
        ("ct", "ct"),
        ("noNorm", "none"),
        ("NONORM", "none"),
        ("zscore", "z-score"),
        ("ZScore", "z-score"),
        ("rescale_to_0_1", "rescale"),
        ("Rescale_To_0_1", "rescale"),
        ("rgb_to_0_1", "rgb"),
        ("RGB_TO_0_1", "rgb"),
        ("cineMRI", "z-score"),
        ("T2", "z-score"),
        ("XYZ", "z-score"),
        ("rescale_0_1", "z-score"),
        ("CT ", "z-score"),
    ],
)
def test_channel_names_map_to_normalisation_as_in_nnunet(raw, tmp_path, channel_name, normalization):
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    document = json.loads((source / "dataset.json").read_text())
    document["channel_names"]["1"] = channel_name
    (source / "dataset.json").write_text(json.dumps(document))
    dataset = read_raw_dataset(source)
    assert dataset.channels == ("CT", channel_name) and dataset.normalization == ("ct", normalization)


def test_a_dataset_json_saved_with_a_byte_order_mark_is_read_as_utf8(raw, tmp_path):
    # Windows editors may save dataset.json as UTF-8 with a byte order mark: it was refused as "not valid JSON"
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    document = json.loads((source / "dataset.json").read_text())
    document["labels"] = {"background": 0, **{f"Läsion {value}": value for value in range(1, len(document["labels"]))}}
    (source / "dataset.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(document, ensure_ascii=False).encode("utf-8"))
    assert read_raw_dataset(source).class_names[1] == "Läsion 1"
    assert raw_scans.read_class_names(source / "dataset.json")[1] == "Läsion 1"


def test_a_dataset_named_as_nnunets_acdc_conversion_names_its_channel_imports(raw, tmp_path):
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    document = json.loads((source / "dataset.json").read_text())
    document["channel_names"] = {"0": "cineMRI", "1": "cineMRI"}
    (source / "dataset.json").write_text(json.dumps(document))
    cli.data_main(["import", "--source", str(source), "--out", str(tmp_path / "imported"), "--dims", "2d"])
    plan = read_plan(tmp_path / "imported")
    assert plan.channels == ("cineMRI", "cineMRI")
    assert plan.rules.schemes == ("z-score", "z-score")


@pytest.mark.parametrize(
    "damage",
    [
        _missing_channel,
        _label_shape,
        _channel_affine,
        _undeclared_label,
        _four_d_label,
        _nan_voxels,
        _truncated_image,
        _truncated_label,
        _duplicate_case,
        _empty_training,
        _no_file_ending,
        _file_ending_without_dot,
        _file_ending_not_read,
        _file_ending_in_capitals,
        _files_ending_in_capitals,
        _files_ending_in_capitals_of_the_other_ending,
        _ignore_label,
        _case_name_ending_in_a_space,
        _case_name_ending_in_h5,
        _too_many_classes,
        _rgb_image,
        _complex_label,
    ],
)
def test_bad_input_is_refused_in_one_line_before_anything_is_written(raw, tmp_path, capsys, damage):
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    named, advice = damage(source)
    out = tmp_path / "imported"
    with pytest.raises(SystemExit) as stop:
        cli.data_main(["import", "--source", str(source), "--out", str(out)])
    error = capsys.readouterr().err
    assert stop.value.code == cli.USER_ERROR_EXIT_CODE and "Traceback" not in error, error
    line = error.splitlines()[-1]  # after the progress bar's
    assert line.startswith("mper-data: error: ") and named in line and advice in line, error
    assert not out.exists()


def _moved_label(source, move):
    """Rewrite synth_000's label with ``move(affine)`` of its affine; returns the label's path
    and the image's affine."""
    image, label = source / "imagesTr" / "synth_000_0000.nii.gz", source / "labelsTr" / "synth_000.nii.gz"
    affine = nib.load(image).affine
    _rewrite(label, affine=move(affine.copy()))
    return label, affine


def _read_first_case(source):
    dataset = read_raw_dataset(source)
    return read_case(next(case for case in dataset.cases if case.name == "synth_000"), dataset)


def _shifted(shift):
    def move(affine):
        affine[:3, 3] += shift
        return affine

    return move


def test_a_label_shifted_by_header_rounding_is_read_and_a_shift_of_a_voxel_fraction_is_refused(raw, tmp_path):
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    _moved_label(source, _shifted([0.001, -0.001, 0.001]))  # millimetres: positions rounded to 3 decimals
    assert _read_first_case(source).label is not None
    # the tolerance is a fraction of the voxel: it scales with the spacing
    voxel = min(nib.load(source / "imagesTr" / "synth_000_0000.nii.gz").header.get_zooms()[:3])
    _moved_label(source, _shifted([0.0, 0.009 * voxel, 0.0]))
    assert _read_first_case(source).label is not None
    _moved_label(source, _shifted([0.0, 0.011 * voxel, 0.0]))
    with pytest.raises(DataFormatError, match="origin"):
        _read_first_case(source)


def test_a_label_off_the_images_grid_is_refused_naming_the_part_both_values_and_the_file(raw, tmp_path):
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    label, affine = _moved_label(source, _shifted([0.0, 2.0, 0.0]))
    spacing = nib.load(label).header.get_zooms()[:3]
    voxel = min(spacing)
    origin = affine[:3, 3]
    with pytest.raises(DataFormatError) as refused:
        _read_first_case(source)

    def mm(values):
        return "(" + ", ".join(f"{value:.3f}" for value in values) + ")"

    assert str(refused.value) == (
        f"{label}: its origin {mm(origin + [0, 2, 0])} mm differs from synth_000_0000.nii.gz's {mm(origin)} mm "
        f"by 2.000 mm, more than the {0.01 * voxel:.3f} mm (1% of a {voxel:.3f} mm voxel) that the channels and "
        "the label of a case may differ by; resample them to one voxel grid (or fix the header)"
    )

    def stretched(affine):
        affine[:3, 0] *= 1.01
        return affine

    _moved_label(source, stretched)
    with pytest.raises(DataFormatError) as refused:
        _read_first_case(source)
    message = str(refused.value)
    found = re.fullmatch(
        rf"{re.escape(str(label))}: its spacing \(([0-9.]+), .* synth_000_0000\.nii\.gz's \(([0-9.]+), .*", message
    )
    assert found is not None, message
    assert float(found[1]) == pytest.approx(spacing[0] * 1.01, abs=1e-4), message
    assert float(found[2]) == pytest.approx(spacing[0], abs=1e-4), message

    def turned(affine):
        angle = 0.01
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        affine[:3, :3] = rotation @ affine[:3, :3]
        return affine

    _moved_label(source, turned)
    with pytest.raises(DataFormatError) as refused:
        _read_first_case(source)
    message = str(refused.value)
    assert message.startswith(f"{label}: its direction of array axis 0 (") and "voxel" in message, message


def test_a_label_whose_sform_and_qform_disagree_is_refused_with_a_note_saying_so(raw, tmp_path):
    # ITK-based viewers may show such a label on its image (the qform), nibabel reads the sform: say which
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    image, label = source / "imagesTr" / "synth_000_0000.nii.gz", source / "labelsTr" / "synth_000.nii.gz"
    affine = nib.load(image).affine
    sform = affine.copy()
    sform[:3, 3] += [0.0, 2.0, 0.0]
    stored = nib.Nifti1Image(np.asarray(nib.load(label).dataobj), affine)
    stored.set_qform(affine, code=1)
    stored.set_sform(sform, code=1)
    nib.save(stored, label)
    with pytest.raises(DataFormatError) as refused:
        _read_first_case(source)
    message = str(refused.value)
    assert message.startswith(f"{label}: its origin ") and "by 2.000 mm" in message, message
    assert message.endswith(
        "; note that synth_000.nii.gz's sform and qform disagree (by up to 2.000 mm): mper reads the sform, as "
        "nibabel does, while ITK-based tools (SimpleITK, ITK-SNAP) may show the qform; make them agree"
    ), message


def test_an_off_grid_label_whose_qform_cannot_be_read_is_refused_in_one_line(raw, tmp_path):
    # its sform is read; a qform of quaternion parameters beyond a unit quaternion ended the refusal's note on the
    # forms in nibabel's ValueError traceback
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    label = source / "labelsTr" / "synth_000.nii.gz"
    loaded = nib.load(label)
    sform = loaded.affine.copy()
    sform[:3, 3] += [0.0, 2.0, 0.0]
    stored = nib.Nifti1Image(np.asarray(loaded.dataobj), sform)
    nib.save(stored, label)
    header_bytes = bytearray(gzip.decompress(label.read_bytes()))
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(header_bytes)))
    header["qform_code"] = 1
    header["quatern_b"], header["quatern_c"], header["quatern_d"] = 0.6, 0.6, 0.6
    header_bytes[: header.sizeof_hdr] = header.binaryblock
    label.write_bytes(gzip.compress(bytes(header_bytes)))
    with pytest.raises(ValueError):
        nib.load(label).header.get_qform()
    with pytest.raises(DataFormatError) as refused:
        _read_first_case(source)
    message = str(refused.value)
    assert message.startswith(f"{label}: its origin ") and "by 2.000 mm" in message, message


@pytest.mark.parametrize(
    ("affine", "said"),
    [
        (
            np.eye(4),
            "the identity affine (1 mm voxels from the origin), as a map saved without its image's header "
            "does (nib.Nifti1Image(array, np.eye(4)))",
        ),
        (
            None,
            "neither an sform nor a qform (nibabel places it by its voxel sizes alone), as a map saved without its "
            "image's header does (nib.Nifti1Image(array, None))",
        ),
    ],
    ids=["identity", "no form"],
)
def test_a_label_saved_without_its_images_header_is_refused_with_a_note_saying_so(raw, tmp_path, affine, said):
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    label = source / "labelsTr" / "synth_000.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(nib.load(label).dataobj), affine), label)
    with pytest.raises(DataFormatError) as refused:
        _read_first_case(source)
    message = str(refused.value)
    assert message.startswith(f"{label}: its ") and "\n" not in message, message
    assert message.endswith(
        f"; note that synth_000.nii.gz's header holds {said}: if it holds synth_000_0000.nii.gz's voxels, save it "
        "with synth_000_0000.nii.gz's affine"
    ), message


@pytest.mark.parametrize(
    ("order", "mirrored", "how"),
    [
        ((0, 1, 2), (0, 1), "mirrored along its array axes 0 and 1"),  # e.g. LPS against RAS
        ((1, 2, 0), (0, 2), "transposed to axes (1, 2, 0), mirrored along its array axes 0 and 2"),
    ],
)
def test_a_label_of_the_images_voxels_in_another_orientation_is_named_as_such(raw, tmp_path, order, mirrored, how):
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    image, label = source / "imagesTr" / "synth_000_0000.nii.gz", source / "labelsTr" / "synth_000.nii.gz"
    stored = nib.Nifti1Image(np.asarray(nib.load(label).dataobj), nib.load(image).affine)
    own = io_orientation(stored.affine)
    other = own[list(order)]  # the label's axis i: the image's axis order[i], mirrored where asked
    other[list(mirrored), 1] *= -1
    reoriented = stored.as_reoriented(ornt_transform(own, other))
    nib.save(reoriented, label)
    with pytest.raises(DataFormatError) as refused:
        _read_first_case(source)
    codes = ("".join(aff2axcodes(affine)) for affine in (reoriented.affine, stored.affine))
    assert str(refused.value) == (
        f"{label}: holds the voxels of synth_000_0000.nii.gz's grid in another orientation ({next(codes)}, not "
        f"{next(codes)}: its array is synth_000_0000.nii.gz's {how}); mper does not reorient scans: save it in "
        "synth_000_0000.nii.gz's orientation (e.g. nibabel's as_reoriented, or resample it onto "
        "synth_000_0000.nii.gz)"
    )


@pytest.mark.parametrize(
    "label_affine",
    [np.diag([0.8, 0.7, 1.0, 1.0]), np.diag([0.8, 0.7, -999.0, 1.0])],
    ids=["saved with two axes", "its slice mirrored"],
)
def test_a_2d_label_fits_its_image_of_one_slice_whatever_that_slices_thickness_or_sign(tmp_path, label_affine):
    # nnU-Net writes a 2D image as (x, y, 1) with a slice 999 mm thick; a label saved as (x, y) reads as 1 mm
    # thick, one mirrored along its slice as -999: no voxel is elsewhere, yet both were refused as off the grid
    image_affine = np.diag([0.8, 0.7, 999.0, 1.0])
    label = np.zeros((6, 5), np.uint8)
    label[1:4, 2:4] = 1
    image_path, label_path = tmp_path / "case_0000.nii.gz", tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(30, dtype=np.float32).reshape(6, 5, 1), image_affine), image_path)
    nib.save(nib.Nifti1Image(label if label_affine[2, 2] == 1 else label[:, :, None], label_affine), label_path)
    dataset = raw_scans.RawDataset(tmp_path, NNUNET, "2d", ("MRI",), ("z-score",), ("background", "a"), ".nii.gz", ())
    scan = read_case(raw_scans.RawCase("case", (image_path,), label_path, LABELED), dataset)
    assert scan.label is not None and np.array_equal(scan.label[:, :, 0], label)
    shifted = label_affine.copy()
    shifted[0, 3] = 0.4  # half a voxel in plane: still refused
    nib.save(nib.Nifti1Image(label, shifted), label_path)
    with pytest.raises(DataFormatError, match="origin"):
        read_case(raw_scans.RawCase("case", (image_path,), label_path, LABELED), dataset)


@pytest.mark.parametrize("value", [1.5, "one", float("inf")])  # dataset.json may hold Infinity, which json reads
def test_a_label_value_that_is_not_an_integer_is_refused(raw, tmp_path, capsys, value):
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    document = json.loads((source / "dataset.json").read_text())
    document["labels"] = {"background": 0, "liver": value, "tumour": 2}
    (source / "dataset.json").write_text(json.dumps(document))
    assert _import_error(source, tmp_path / "out", capsys) == (
        f"mper-data: error: {source / 'dataset.json'}: label 'liver' has the value {value!r}, expected an integer"
    )


@pytest.mark.parametrize(
    ("layout", "labels", "said"),
    [
        (NNUNET, {"0": "background", "1": "liver", "2": "tumour"}, "the Decathlon's way, but this is an nnU-Net v2"),
        (MSD, {"background": 0, "liver": 1, "tumour": 2}, "nnU-Net v2's way, but this is a Decathlon"),
    ],
)
def test_labels_written_the_other_layouts_way_round_are_named_as_such(raw, tmp_path, capsys, layout, labels, said):
    source = shutil.copytree(raw[layout], tmp_path / "raw")
    document = json.loads((source / "dataset.json").read_text())
    document["labels"] = labels
    (source / "dataset.json").write_text(json.dumps(document))
    error = _import_error(source, tmp_path / "out", capsys)
    assert error.startswith(f"mper-data: error: {source / 'dataset.json'}: labels map ") and said in error, error


def test_label_values_with_a_gap_are_refused_saying_to_renumber_them(raw, tmp_path, capsys):
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    document = json.loads((source / "dataset.json").read_text())
    document["labels"] = {"background": 0, "liver": 1, "tumour": 3}
    (source / "dataset.json").write_text(json.dumps(document))
    assert _import_error(source, tmp_path / "out", capsys) == (
        f"mper-data: error: {source / 'dataset.json'}: label values must be 0 (background) and 1, 2, ... without "
        "gaps; got [0, 1, 3]: number the classes so, in labels and in the label files (relabel them)"
    )


@pytest.mark.parametrize(
    "key, entry, example",
    [
        ("training", {"image": 3, "label": "./labelsTr/x.nii.gz"}, "./imagesTr/"),
        ("test", {"image": "x"}, "./imagesTs/"),
    ],
)
def test_a_decathlon_entry_that_is_not_a_path_is_refused_with_an_example_of_its_folder(
    raw, tmp_path, key, entry, example
):
    source = shutil.copytree(raw[MSD], tmp_path / "raw")
    document = json.loads((source / "dataset.json").read_text())
    (source / "dataset.json").write_text(json.dumps({**document, key: [*document[key], entry]}))
    with pytest.raises(DataFormatError, match=rf"entry must be a file path such as {example}case\.nii\.gz$"):
        read_raw_dataset(source)


def test_a_decathlon_case_listed_twice_is_refused(raw, tmp_path, capsys):
    source = shutil.copytree(raw[MSD], tmp_path / "raw")
    document = json.loads((source / "dataset.json").read_text())
    document["training"].append(document["training"][0])
    (source / "dataset.json").write_text(json.dumps(document))
    with pytest.raises(SystemExit):
        cli.data_main(["import", "--source", str(source), "--out", str(tmp_path / "out")])
    assert "case synth_000 is listed twice in training" in capsys.readouterr().err


def test_image_files_named_without_their_channel_are_named_as_such(raw, tmp_path):
    # cases numbered in four digits, their images written without the channel: case_0001.nii.gz read as channel 1 of
    # case "case" was refused as "channel 1 is not in dataset.json", without what to do
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    _edit_dataset_json(source, channel_names={"0": "CT"})
    for path in (source / "imagesTr").glob("*_0001.nii.gz"):
        path.unlink()
    for folder, suffix in (("imagesTr", "_0000.nii.gz"), ("labelsTr", ".nii.gz")):
        for path in (source / folder).glob(f"synth_*{suffix}"):
            number = int(path.name[len("synth_") :][:3])
            path.rename(path.with_name(f"case_{number:04d}.nii.gz"))
    with pytest.raises(DataFormatError) as refused:
        read_raw_dataset(source)
    assert str(refused.value).endswith(
        "; if case_0001 is a case, name its image file case_0001_0000.nii.gz: nnU-Net names image files "
        "<case>_<XXXX>.nii.gz, XXXX the channel, and reads case_0001.nii.gz as channel 1 of case case"
    ), refused.value
    for folder in ("imagesTr", "labelsTr"):
        for path in (source / folder).glob("case_000[1-9].nii.gz"):
            path.unlink()
    with pytest.raises(DataFormatError) as refused:
        read_raw_dataset(source)
    assert str(refused.value).endswith(
        f"; {source / 'imagesTr' / 'case_0000.nii.gz'} lacks the channel: name it case_0000_0000.nii.gz, as nnU-Net "
        "names image files <case>_<XXXX>.nii.gz, XXXX the channel"
    ), refused.value


def test_an_nnunet_v1_task_is_named_as_such_with_the_conversion_to_do(raw, tmp_path, capsys):
    # nnU-Net v1: a Decathlon dataset.json beside channel files; "imagesTr/synth_000.nii.gz not found ... add it"
    # sent the user looking for a file that is there as synth_000_0000.nii.gz
    source = shutil.copytree(raw[MSD], tmp_path / "Task001_Synth")
    for path in (source / "imagesTr").glob("*.nii.gz"):
        path.rename(path.with_name(path.name.replace(".nii.gz", "_0000.nii.gz")))
    with pytest.raises(SystemExit):
        cli.data_main(["import", "--source", str(source), "--out", str(tmp_path / "out")])
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith(
        f"mper-data: error: {source / 'dataset.json'} lists synth_000.nii.gz in training, but its folder holds "
        "synth_000_0000.nii.gz, one file per channel: an nnU-Net v1 task"
    ), line
    assert "nnUNetv2_convert_old_nnUNet_dataset" in line and '"file_ending"' in line, line


def test_labeled_voxels_outside_the_images_nonzero_region_are_named_as_cropped_away(raw, tmp_path, caplog):
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    for channel in sorted((source / "imagesTr").glob("synth_001_*.nii.gz")):
        scan = nib.load(channel)
        image = np.asarray(scan.dataobj).copy()
        image[:3] = 0  # a slab of zeros, which the crop box leaves out
        nib.save(nib.Nifti1Image(image, scan.affine, scan.header), channel)
    path = source / "labelsTr" / "synth_001.nii.gz"
    scan = nib.load(path)
    label = np.asarray(scan.dataobj).copy()
    label[:3] = 0
    label[0, :2, 0] = 1  # two labeled voxels in the slab
    nib.save(nib.Nifti1Image(label, scan.affine, scan.header), path)
    with caplog.at_level("WARNING", logger="mper"):
        cli.data_main(["import", "--source", str(source), "--out", str(tmp_path / "out")])
    assert [message for message in caplog.messages if "crops to" in message] == [
        f"{source}: 1 case(s) mark labeled voxels where their image is zero in every channel, outside the region the "
        "import crops to (as nnU-Net does), and lose them: synth_001 (2 voxel(s)); check that those labels fit their "
        "images"
    ]


@pytest.mark.parametrize("entry", ["image", "label"])
def test_a_decathlon_file_of_another_ending_is_refused_with_what_to_do(raw, tmp_path, capsys, entry):
    """A label listed as .nii was used, while the import's list of ignored files named it."""
    source = shutil.copytree(raw[MSD], tmp_path / "raw")
    document = json.loads((source / "dataset.json").read_text())
    listed = document["training"][0][entry]
    document["training"][0][entry] = listed.replace(".nii.gz", ".nii")
    (source / "dataset.json").write_text(json.dumps(document))
    assert _import_error(source, tmp_path / "out", capsys) == (
        f"mper-data: error: {source / 'dataset.json'}: training {entry} {listed.replace('.nii.gz', '.nii')} is not "
        "a .nii.gz file, which the Decathlon layout takes: compress it (gzip) and list it as .nii.gz, or use the "
        "nnU-Net v2 layout, whose file_ending may be .nii"
    )


def test_unlabeled_scans_at_one_of_the_datasets_folders_are_named_as_read_twice(raw, tmp_path, capsys):
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    first = sorted((source / "imagesTs").iterdir())[0]
    assert _import_error(source, tmp_path / "out", capsys, "--unlabeled", str(source / "imagesTs")) == (
        f"mper-data: error: {first}: read twice, as an unlabeled scan of --unlabeled {source / 'imagesTs'} and as a "
        f"case of {source}; --unlabeled must be a folder of other scans than the dataset's"
    )


@pytest.mark.parametrize("orphan", ["unlisted", "without_image"])
def test_a_decathlon_label_that_training_does_not_list_is_refused(raw, tmp_path, capsys, orphan):
    source = shutil.copytree(raw[MSD], tmp_path / "raw")
    document = json.loads((source / "dataset.json").read_text())
    if orphan == "unlisted":  # its image would be read as unlabeled, the label unused
        label = source / document["training"].pop(0)["label"]
        (source / "dataset.json").write_text(json.dumps(document))
    else:
        label = source / "labelsTr" / "ghost.nii.gz"
        shutil.copy(source / document["training"][0]["label"], label)
    line = _import_error(source, tmp_path / "out", capsys)
    assert line == (
        f"mper-data: error: {label}: a label that {source / 'dataset.json'}'s training does not list, so it would "
        "go unused; list it with its image in training, or remove it"
    )


def test_a_decathlon_image_with_the_wrong_channel_count_is_refused(raw, tmp_path):
    source = shutil.copytree(raw[MSD], tmp_path / "raw")
    path = source / "imagesTr" / "synth_001.nii.gz"
    _rewrite(path, np.asarray(nib.load(path).dataobj)[..., :1])
    dataset = read_raw_dataset(source)
    with pytest.raises(ValueError, match=r"synth_001.nii.gz: shape .* expected a 4D image \(x, y, z, 2 channels\)"):
        read_case(next(case for case in dataset.cases if case.name == "synth_001"), dataset)


@pytest.mark.parametrize("ones", [1, 2])  # (x, y, z, 1) as some tools write every volume, (x, y, z, 1, 1) as ITK
def test_channel_files_written_as_4d_volumes_of_one_channel_read_as_their_3d_volumes(raw, tmp_path, capsys, ones):
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    for path in source.glob("*/*.nii.gz"):
        _rewrite(path, np.asarray(nib.load(path).dataobj).reshape(nib.load(path).shape + (1,) * ones))
    original, four_d = read_raw_dataset(raw[NNUNET]), read_raw_dataset(source)
    for case, case_4d in zip(original.cases, four_d.cases, strict=True):
        scan, scan_4d = read_case(case, original), read_case(case_4d, four_d)
        assert len(case_4d.images) == len(SYNTH_SCAN_CHANNELS) and scan_4d.image.shape == scan.image.shape
        assert np.array_equal(scan_4d.image, scan.image) and np.array_equal(scan_4d.affine, scan.affine)
        assert (scan.label is None) == (scan_4d.label is None)
        assert scan.label is None or np.array_equal(scan_4d.label, scan.label)
    path = source / "imagesTr" / "synth_001_0001.nii.gz"  # several channels in one file: refused
    _rewrite(path, np.repeat(np.asarray(nib.load(path).dataobj), 2, axis=-1))
    line = _import_error(source, tmp_path / "out", capsys)
    assert f"{path}: the image has shape" in line and "write each channel to a file of its own" in line, line


def test_a_float_label_of_whole_values_is_read_and_one_of_fractions_is_refused_naming_them(raw, tmp_path, capsys):
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    path = source / "labelsTr" / "synth_000.nii.gz"
    label = np.asarray(nib.load(path).dataobj)
    _rewrite(path, label.astype(np.float32))  # 0.0, 1.0, ...: read as the classes they are
    assert np.array_equal(_read_first_case(source).label, label)
    resampled = label.astype(np.float32)
    resampled[label == 1] = 0.99999  # a label map interpolated by another tool
    _rewrite(path, resampled)
    assert _import_error(source, tmp_path / "out", capsys) == (
        f"mper-data: error: {path}: the label holds non-integer values ({int((label == 1).sum())} voxel(s), e.g. "
        "0.99999: a label map interpolated, or written with a scale factor?); write class values 0, 1, ..."
    )


def test_a_label_stored_with_a_scale_factor_is_read_as_its_classes_and_a_fraction_named_in_full(raw, tmp_path, capsys):
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    path = source / "labelsTr" / "synth_000.nii.gz"
    scan = nib.load(path)
    label = np.asarray(scan.dataobj)
    scaled = nib.Nifti1Image((label * 10).astype(np.int16), scan.affine)
    scaled.header.set_slope_inter(0.1, 0)  # float32 0.1: class 1 reads 1.0000000149
    nib.save(scaled, path)
    assert np.asarray(nib.load(path).dataobj).max() != 1
    assert np.array_equal(_read_first_case(source).label, label)
    resampled = label.astype(np.float32)
    resampled[label == 1] = 0.999998  # off by more than float32 rounding: named as stored, not as "1"
    _rewrite(path, resampled)
    assert "e.g. 0.999998: a label map interpolated" in _import_error(source, tmp_path / "out", capsys)


def test_a_label_of_more_axes_is_refused_without_the_advice_for_channel_files(raw, tmp_path, capsys):
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    path = source / "labelsTr" / "synth_000.nii.gz"
    label = np.asarray(nib.load(path).dataobj)
    _rewrite(path, np.stack([label, label], axis=-1)[..., None, :])  # (x, y, z, 1, 2)
    line = _import_error(source, tmp_path / "out", capsys)
    assert line == (
        f"mper-data: error: {path}: the label has shape {(*label.shape, 1, 2)}, expected one 3D volume (x, y, z), "
        "or with trailing axes of one ((x, y, z, 1), (x, y, z, 1, 1)); a label is one 3D map of class values "
        "(0, 1, ...): save it with three axes"
    )


def test_a_source_one_level_off_the_dataset_folder_names_the_folder_to_pass(raw, tmp_path, capsys):
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw" / "Dataset001_Synth")
    said = (
        "a raw dataset folder holds dataset.json (nnU-Net v2 or Medical Segmentation Decathlon layout) beside "
        "imagesTr/ and labelsTr/"
    )
    assert _import_error(source / "imagesTr", tmp_path / "out", capsys) == (
        f"mper-data: error: {source / 'imagesTr' / 'dataset.json'} not found: {said}; {source} is one: pass "
        f"--source {source}"
    )
    assert _import_error(source.parent, tmp_path / "out", capsys) == (
        f"mper-data: error: {source.parent / 'dataset.json'} not found: {said}; {source.parent} holds 1 such "
        f"folder(s): pass one, e.g. --source {source}"
    )


def test_a_header_whose_pixdim_disagrees_with_its_affine_is_refused(raw, tmp_path, capsys):
    """The affine places the voxels, pixdim resamples them: a writer that set one and left
    the other (an sform of the true grid, pixdim at 1 mm) imported on a wrong grid, exit 0."""
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    path = source / "imagesTr" / "synth_000_0000.nii.gz"
    scan = nib.load(path)
    stale = nib.Nifti1Image(np.asarray(scan.dataobj), scan.affine)
    stale.set_qform(None, code=0)
    stale.header["pixdim"][1:4] = 1.0
    nib.save(stale, path)
    with pytest.raises(SystemExit):
        cli.data_main(["import", "--source", str(source), "--out", str(tmp_path / "out")])
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith(f"mper-data: error: {path}: its header's voxel size (pixdim) (1, 1, 1) mm disagrees with ")
    assert line.endswith("image.set_qform(image.affine), which sets pixdim from the affine, then save it)")
    assert not (tmp_path / "out").exists()
    sheared = scan.affine.copy()
    sheared[1, 2] = 0.3 * sheared[2, 2]  # a tilted gantry's slices, stored as they were acquired
    for each in [*source.glob("imagesTr/synth_000_*.nii.gz"), source / "labelsTr" / "synth_000.nii.gz"]:
        tilted = nib.Nifti1Image(np.asarray(nib.load(each).dataobj), sheared)
        tilted.header["pixdim"][1:4] = scan.header.get_zooms()[:3]  # the slices' own spacing, not the tilted axis's
        nib.save(tilted, each)
    with pytest.raises(SystemExit):
        cli.data_main(["import", "--source", str(source), "--out", str(tmp_path / "out")])
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"mper-data: error: {path}: its affine is sheared (its voxel axes are not at right angles, as a CT acquired "
        "with a tilted gantry is stored): mper, as nnU-Net, reads grids of right angles; resample it onto one "
        "(e.g. dcm2niix's gantry tilt correction) and save it"
    )


def test_a_header_fix_of_nibabels_is_said_once_naming_the_first_file(raw, tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setattr(raw_scans, "_HEADER_FIXES_SAID", set())
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    for path in sorted(source.glob("*/*.nii.gz")):  # pixdim[1] < 0, as old ANALYZE conversions write it
        scan = nib.load(path)
        image = nib.Nifti1Image(np.asarray(scan.dataobj), None, scan.header)
        image.header["pixdim"][1] *= -1
        nib.save(image, path)
    capsys.readouterr()
    with caplog.at_level("WARNING", logger="mper"):
        cli.data_main(["import", "--source", str(source), "--out", str(tmp_path / "out")])
    said = [record.getMessage() for record in caplog.records if "pixdim" in record.getMessage()]
    assert said == [
        f"{source / 'imagesTr' / 'synth_000_0000.nii.gz'}: pixdim[1,2,3] should be positive; setting to abs of "
        "pixdim values (nibabel reading its header; said once, for the first such file)"
    ]
    assert "pixdim" not in capsys.readouterr().err.replace(said[0], "")


def _import_error(source, out, capsys, *options):
    """The one line ``mper-data import`` refuses ``source`` with; nothing written to ``out``."""
    with pytest.raises(SystemExit) as stop:
        cli.data_main(["import", "--source", str(source), "--out", str(out), *options])
    error = capsys.readouterr().err
    assert stop.value.code == cli.USER_ERROR_EXIT_CODE and "Traceback" not in error, error
    assert not out.exists()
    return error.splitlines()[-1]


@pytest.mark.parametrize("spacing", [["0", "1", "1"], ["nan", "1", "1"], ["1", "inf", "1"]])
def test_a_spacing_that_is_not_three_positive_numbers_is_refused(raw, tmp_path, capsys, spacing):
    line = _import_error(raw[NNUNET], tmp_path / "out", capsys, "--spacing", *spacing)
    shown = [float(value) for value in spacing]
    assert line == f"mper-data: error: --spacing must be three positive numbers (mm), got {shown}"


@pytest.mark.parametrize("spacing", [["0.001", "0.001", "0.001"], ["1e-320", "1", "1"]])
def test_a_spacing_too_fine_for_the_memory_is_refused_before_resampling(raw, tmp_path, capsys, monkeypatch, spacing):
    from mper.datasets import scans

    line = _import_error(raw[NNUNET], tmp_path / "out", capsys, "--spacing", *spacing)
    shown = re.escape(str([float(value) for value in spacing]))
    size = r"(\d+|inf)"
    assert re.fullmatch(
        rf"mper-data: error: {re.escape(str(raw[NNUNET]))}: case \S+ resampled to the spacing {shown} "
        rf"mm becomes \[{size}, {size}, {size}\] voxels, about ({size}\.\d|inf) GiB to import, but only \d+\.\d "
        r"GiB of memory is free; check --spacing: millimetres per voxel, x y z as stored",
        line,
    ), line
    # the data's own spacing on a machine without the memory for its largest case
    monkeypatch.setattr(scans, "available_host_memory", lambda: 1000)
    line = _import_error(raw[NNUNET], tmp_path / "out", capsys)
    assert line.endswith("import on a machine with more memory, or pass a coarser --spacing"), line


def test_a_spacing_that_collapses_an_axis_to_one_voxel_is_refused(raw, tmp_path, capsys):
    """A slip such as 325 for 3.25 mm would turn every volume into a single slice (and the
    import into a 2D dataset) with exit status 0."""
    line = _import_error(raw[NNUNET], tmp_path / "out", capsys, "--spacing", "1", "1", "500")
    assert re.fullmatch(
        rf"mper-data: error: {re.escape(str(raw[NNUNET]))}: --spacing \[1\.0, 1\.0, 500\.0\] mm resamples case "
        r"\S+'s axis 2 from \d+ voxels of [0-9.]+ mm to a single voxel; check --spacing: millimetres per voxel, "
        r"x y z as stored \(the data's own would be \[[0-9.]+, [0-9.]+, [0-9.]+\]\)",
        line,
    ), line
    # a coarser spacing that keeps every axis imports
    cli.data_main(
        ["import", "--source", str(raw[NNUNET]), "--out", str(tmp_path / "coarse"), "--spacing", "2", "2", "6"]
    )
    assert (tmp_path / "coarse" / "plan.toml").is_file()


def test_a_spacing_finer_than_a_2d_images_slice_keeps_it_one_slice(raw, tmp_path):
    """A 2D (x, y) file holds no slice thickness (read as 1 mm): resampling its single slice
    to a finer third spacing would turn 2D images into 3D volumes of copies."""
    flat = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    for path in sorted(flat.glob("*/*.nii.gz")):
        scan = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(scan.dataobj)[:, :, 2], scan.affine), path)
    cli.data_main(["import", "--source", str(flat), "--out", str(tmp_path / "out"), "--spacing", "0.8", "0.8", "0.4"])
    plan = read_plan(tmp_path / "out")
    assert plan.dims == "2d" and plan.median_shape[2] == 1, plan


@pytest.mark.parametrize(
    "name, planned",
    [("My Liver Data (2024)", "My_Liver_Data_2024"), ("  Leber/Läsion ", "Leber_L_sion"), ("(((", "scans")],
)
def test_a_free_text_dataset_name_becomes_a_name_training_accepts(raw, tmp_path, caplog, name, planned):
    """dataset.json's name is free text; the plan's names run folders, and a plan holding
    the name as written would be refused by mper-train after an import that said to train."""
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    document = json.loads((source / "dataset.json").read_text())
    (source / "dataset.json").write_text(json.dumps({**document, "name": name}))
    with caplog.at_level("WARNING"):
        cli.data_main(["import", "--source", str(source), "--out", str(tmp_path / "out")])
    assert read_plan(tmp_path / "out").name == planned
    assert f"the dataset's name {name!r} names run folders, so the plan names it {planned!r}" in caplog.text


def test_import_refuses_an_out_folder_that_holds_files_as_synth_does(raw, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as stop:
        cli.data_main(["import", "--source", str(raw[NNUNET]), "--out", str(out)])
    line = capsys.readouterr().err.splitlines()[-1]
    assert stop.value.code == cli.USER_ERROR_EXIT_CODE
    assert line == (
        f"mper-data: error: --out {out} is not empty (it holds notes.txt); choose a new or empty folder, "
        "or empty it first"
    )
    assert [path.name for path in out.iterdir()] == ["notes.txt"]


def _files_by_case(dataset):
    """Each case's role and the names of its image and label files."""
    return [
        (case.name, case.role, [path.name for path in case.images], case.label and case.label.name)
        for case in dataset.cases
    ]


@pytest.mark.parametrize("layout", [NNUNET, MSD])
def test_stray_files_are_ignored_as_nnunet_does_and_named_in_one_line_per_folder(raw, tmp_path, caplog, layout):
    source = shutil.copytree(raw[layout], tmp_path / "raw")
    strays = {"imagesTr": ["readme.txt", ".DS_Store", "notes.nii.gz.bak"], "labelsTs": [".DS_Store"]}
    if layout == NNUNET:  # the Decathlon's dataset.json lists its training labels and test images
        strays.update(labelsTr=["labels.csv"], imagesTs=["._synth_004_0000.nii.gz"])
    for folder, names in strays.items():
        for name in names:
            (source / folder / name).write_text("not a scan")
    with caplog.at_level("WARNING", logger="mper"):
        dataset = read_raw_dataset(source)
    assert _files_by_case(dataset) == _files_by_case(read_raw_dataset(raw[layout]))
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == len(strays), lines
    for folder, names in strays.items():
        (line,) = [line for line in lines if line.startswith(f"{source / folder}: ignored {len(names)} file(s)")]
        assert all(name in line for name in names), line
        assert ("dataset.json's file_ending '.nii.gz'" in line) == (layout == NNUNET), line


@pytest.mark.parametrize("layout", [NNUNET, MSD])
def test_a_num_training_that_disagrees_with_the_labeled_cases_found_is_named(raw, tmp_path, caplog, layout):
    """nnU-Net refuses such a dataset; here images without a label may be meant as unlabeled
    scans, so the import goes on and names both counts."""
    source = shutil.copytree(raw[layout], tmp_path / "raw")
    document = json.loads((source / "dataset.json").read_text())
    cases = read_raw_dataset(source).cases
    labeled = sum(case.role == LABELED for case in cases)
    unlabeled = sum(case.role == UNLABELED and case.images[0].parent.name == "imagesTr" for case in cases)
    for declared, warned in ((labeled, False), (labeled + 3, True), (str(labeled + 3), False)):
        (source / "dataset.json").write_text(json.dumps({**document, "numTraining": declared}))
        caplog.clear()
        with caplog.at_level("WARNING", logger="mper"):
            read_raw_dataset(source)
        lines = [record.getMessage() for record in caplog.records if "numTraining" in record.getMessage()]
        assert lines == (
            [
                f"{source / 'dataset.json'}: numTraining is {labeled + 3}, but {labeled} training case(s) have a label "
                f"({unlabeled} image(s) in imagesTr/ have none and train as unlabeled scans): check that no label or "
                "image is missing"
            ]
            if warned
            else []
        )


def test_a_blank_image_and_a_single_slice_among_volumes_are_named(raw, tmp_path, caplog):
    """Both import and train, but are likely a damaged file or a slip."""
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    blank = source / "imagesTr" / "synth_000_0001.nii.gz"
    _rewrite(blank, np.zeros(nib.load(blank).shape, np.float32))
    for path in [*source.glob("imagesTr/synth_001_*.nii.gz"), source / "labelsTr" / "synth_001.nii.gz"]:
        _rewrite(path, np.asarray(nib.load(path).dataobj)[:, :, 2])
    unlabeled = next(case for case in read_raw_dataset(source).cases if case.role == UNLABELED)
    for path in unlabeled.images:
        _rewrite(path, np.full(nib.load(path).shape, 7, np.float32))
    with caplog.at_level("WARNING", logger="mper"):
        cli.data_main(["import", "--source", str(source), "--out", str(tmp_path / "out")])
    assert (
        f"{source / 'imagesTr'}: channel(s) MRI of case synth_000 hold one value everywhere, yet its label marks "
        in caplog.text
    )
    assert (
        f"{unlabeled.images[0].parent}: the image of unlabeled case {unlabeled.name} holds one value everywhere (7): "
        "a blank or damaged image file? It is imported, but teaches self-training nothing" in caplog.messages
    )
    assert (
        f"{source}: 1 case(s) are a single slice among 3D volumes, and train as volumes of one slice: synth_001 "
        "(give their whole volumes, or leave them out)" in caplog.messages
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="mper"):
        cli.data_main(["import", "--source", str(raw[NNUNET]), "--out", str(tmp_path / "plain")])
    assert not [
        message for message in caplog.messages if "one value everywhere" in message or "single slice" in message
    ]


@pytest.mark.parametrize("layout", [NNUNET, MSD])
def test_test_images_without_a_label_are_named_as_not_scored(raw, tmp_path, caplog, layout):
    source = shutil.copytree(raw[layout], tmp_path / "raw")
    labels = sorted((source / "labelsTs").iterdir())
    labels[0].unlink()
    with caplog.at_level("WARNING", logger="mper"):
        dataset = read_raw_dataset(source)
    case = labels[0].name.removesuffix(".nii.gz")
    assert [c.label for c in dataset.cases if c.name == case] == [None]
    assert caplog.messages == [
        f"{source / 'imagesTs'}: 1 of {len(labels)} test image(s) have no label in labelsTs/ and are not imported, "
        f"so not scored: {case} (mper-predict segments them)"
    ]


def test_an_nnunet_reader_choice_is_named_as_not_used(raw, tmp_path, caplog):
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    document = json.loads((source / "dataset.json").read_text())
    document["overwrite_image_reader_writer"] = "NibabelIOWithReorient"
    (source / "dataset.json").write_text(json.dumps(document))
    with caplog.at_level("WARNING", logger="mper"):
        dataset = read_raw_dataset(source)
    assert _files_by_case(dataset) == _files_by_case(read_raw_dataset(raw[NNUNET]))
    (line,) = caplog.messages
    assert line.startswith(
        f"{source / 'dataset.json'}: overwrite_image_reader_writer 'NibabelIOWithReorient' is not used: mper reads NIfTI"
    )


def _uncompress(folder):
    for path in folder.glob("*.nii.gz"):
        nib.save(nib.load(path), path.with_name(path.name[: -len(".gz")]))
        path.unlink()


def test_files_that_do_not_end_with_file_ending_are_refused_naming_it(raw, tmp_path, capsys):
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    _uncompress(source / "labelsTr")
    line = _import_error(source, tmp_path / "imported", capsys)
    assert line == (
        f"mper-data: error: {source / 'labelsTr'}: no file ends with dataset.json's file_ending '.nii.gz', but 3 "
        f'end with \'.nii\' (e.g. synth_000.nii); set "file_ending": ".nii" in {source / "dataset.json"} to read them'
    )
    for folder in ("imagesTr", "imagesTs", "labelsTs"):
        _uncompress(source / folder)
    assert "imagesTr: no file ends with dataset.json's file_ending '.nii.gz', but 8 end" in _import_error(
        source, tmp_path / "imported", capsys
    )
    document = json.loads((source / "dataset.json").read_text())
    (source / "dataset.json").write_text(json.dumps({**document, "file_ending": ".nii"}))
    expected = [
        (name, role, [image.replace(".nii.gz", ".nii") for image in images], label and label[: -len(".gz")])
        for name, role, images, label in _files_by_case(read_raw_dataset(raw[NNUNET]))
    ]
    assert _files_by_case(read_raw_dataset(source)) == expected


def test_a_raw_folder_that_does_not_exist_is_named_with_what_writes_one(tmp_path, capsys):
    missing = tmp_path / "Dataset001_Mine"
    line = _import_error(missing, tmp_path / "imported", capsys)
    assert line == (
        f"mper-data: error: raw dataset folder {missing} does not exist: pass the folder that holds dataset.json, "
        f"imagesTr/ and labelsTr/ (mper-data synth --format nnunet --out {missing} writes a synthetic one)"
    )


def test_too_few_cases_for_the_chosen_network_are_refused_naming_what_to_change(raw, tmp_path, capsys):
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    for path in (source / "imagesTr").glob("synth_003_*"):  # the unlabeled case: 3 labeled cases remain
        path.unlink()
    line = _import_error(source, tmp_path / "imported", capsys, "--dims", "3d")
    assert line == (
        f"mper-data: error: {source}: 3 labeled training cases and 0 unlabeled are too few for a 3d network: the "
        "validation fold takes 1, leaving 2, and a run needs 2 to label (one labeled batch) and 1 more to leave "
        "unlabeled for self-training; add unlabeled scans (imagesUnlabeled/ or mper-data import --unlabeled DIR) "
        "or labeled cases, or import with --dims 2d"
    )
    cli.data_main(["import", "--source", str(source), "--out", str(tmp_path / "imported"), "--dims", "2d"])
    plan = read_plan(tmp_path / "imported")
    assert plan.dims == "2d" and plan.presets["paper"]["labeled"] == 1 and plan.settings["3d"] == {}


def test_too_few_labeled_cases_are_not_told_to_add_unlabeled_scans(raw, tmp_path, capsys):
    source = shutil.copytree(raw[NNUNET], tmp_path / "raw")
    labeled = sorted((source / "labelsTr").iterdir())[0]  # 2 labeled cases and 1 unlabeled remain
    labeled.unlink()
    for path in (source / "imagesTr").glob(labeled.name.replace(".nii.gz", "_*")):
        path.unlink()
    line = _import_error(source, tmp_path / "imported", capsys, "--dims", "3d")
    assert "2 labeled training cases and 1 unlabeled are too few for a 3d network" in line, line
    assert "; add labeled cases" in line and "unlabeled scans (" not in line, line


# --- preprocessing --------------------------------------------------------------------------


def _labels(shape, spacing, seed):
    """A label map of four classes: nested and touching ellipsoids in millimetres."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*((np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)), indexing="ij")
    extent = [n * s for n, s in zip(shape, spacing)]
    label = np.zeros(shape, np.uint8)
    for value in range(1, 5):
        centre = rng.uniform(-0.15, 0.15, 3) * extent
        axes = rng.uniform(0.15, 0.35, 3) * extent
        label[sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, axes)) <= 1] = value
    return label


def _boundary(label):
    """Voxels within one voxel (26-neighbourhood) of a change of class."""
    high = ndimage.maximum_filter(label, size=3, mode="nearest")
    low = ndimage.minimum_filter(label, size=3, mode="nearest")
    return high != low


@pytest.mark.parametrize("spacing, target", [((0.8, 0.8, 3.0), (1.1, 1.1, 2.2)), ((1.0, 1.2, 1.1), (1.3, 0.9, 1.4))])
def test_resampling_a_label_map_and_back_recovers_it_within_one_voxel_at_boundaries(spacing, target):
    label = _labels((40, 36, 14), spacing, seed=1)
    shape = resampled_shape(label.shape, spacing, target)
    axis = anisotropic_axis(spacing, target)
    assert axis == (2 if spacing[2] / spacing[0] > 3 else None)
    there = resample_labels(label, shape, axis)
    back = resample_labels(there, label.shape, axis)
    wrong = back != label
    assert wrong.any() and not (wrong & ~_boundary(label)).any()
    # the way predictions go back: class probabilities, resampled one class at a time, argmax, un-cropped
    geometry = CaseGeometry(
        shape=(44, 40, 14),
        spacing=spacing,
        affine=tuple(map(tuple, np.eye(4))),
        crop=((2, 42), (1, 37), (0, 14)),
        resampled_shape=tuple(shape),
    )
    probabilities = np.eye(5, dtype=np.float32)[there].transpose(3, 0, 1, 2)
    restored = restore_labels(probabilities, geometry, target)
    assert restored.shape == (44, 40, 14)
    assert (
        not restored[:2].any() and not restored[42:].any() and not restored[:, :1].any() and not restored[:, 37:].any()
    )
    wrong = restored[2:42, 1:37] != label
    assert not (wrong & ~_boundary(label)).any()


def test_the_rules_a_case_was_preprocessed_with_are_told_from_edited_ones():
    image = np.random.default_rng(0).uniform(1, 100, (2, 30, 30, 10)).astype(np.float32)
    rules = ScanRules(("ct", "z-score"), (ChannelStatistics(50.0, 20.0, 5.0, 95.0), None), False, (1.0, 1.0, 3.0))
    _, _, geometry = preprocess_scan(image, None, (1.0, 1.0, 2.5), np.eye(4), rules)
    channels = ("CT", "MRI")
    assert rules_difference(rules, channels, geometry) == ""
    edits = {
        "channel 0 (CT) has mean = 51.0, but the case was normalised with mean = 50.0": dataclasses.replace(
            rules, statistics=(ChannelStatistics(51.0, 20.0, 5.0, 95.0), None)
        ),
        "channel 1 (MRI) has normalization = 'rescale', but the case was normalised by 'z-score'": dataclasses.replace(
            rules, schemes=("ct", "rescale")
        ),
        "spacing = [1.0, 1.0, 3.1], but the case was resampled to [1.0, 1.0, 3.0]": dataclasses.replace(
            rules, spacing=(1.0, 1.0, 3.1)
        ),
    }
    for said, edited in edits.items():
        assert rules_difference(edited, channels, geometry) == said
    # imports before the target spacing was recorded: told by the resampled shape, where it differs
    older = dataclasses.replace(geometry, target_spacing=None)
    assert rules_difference(dataclasses.replace(rules, spacing=(1.0, 1.0, 3.1)), channels, older) == ""
    assert rules_difference(dataclasses.replace(rules, spacing=(2.0, 1.0, 3.0)), channels, older) == (
        "spacing = [2.0, 1.0, 3.0], which resamples the case to [15, 30, 8] voxels, but it was resampled to [30, 30, 8]"
    )
    stored = json.loads(older.to_json())
    del stored["target_spacing"]  # as an older import wrote it
    assert CaseGeometry.from_json(json.dumps(stored)) == older
    # a single-slice case: older imports resampled its one voxel thick axis to several, now it stays one
    single = dataclasses.replace(older, crop=((0, 30), (0, 30), (0, 1)), resampled_shape=(30, 30, 4))
    assert rules_difference(rules, channels, single) == ""


def test_an_anisotropic_axis_is_resampled_by_nearest_slices():
    label = _labels((20, 20, 6), (1.0, 1.0, 4.0), seed=2)
    thinner = resample_labels(label, (20, 20, 12), anisotropic_axis((1.0, 1.0, 4.0), (1.0, 1.0, 2.0)))
    np.testing.assert_array_equal(thinner, np.repeat(label, 2, axis=2))


def test_the_anisotropy_rule():
    assert anisotropic_axis((1.0, 1.0, 3.5)) == 2 and anisotropic_axis((3.5, 1.0, 1.0)) == 0
    assert anisotropic_axis((1.0, 1.0, 2.9)) is None and anisotropic_axis((1.0, 1.0, 2.9), (0.5, 0.5, 2.9)) == 2
    assert anisotropic_axis((4.0, 4.0, 1.0)) is None  # two coarse axes: no single slice axis


def test_target_spacing_is_the_median_or_a_fine_coarse_axis_for_thick_slices():
    spacings = [(0.7, 0.7, 5.0), (0.8, 0.8, 2.5), (0.75, 0.75, 5.0), (0.9, 0.9, 6.0), (0.8, 0.8, 5.0)]
    thick = [(512, 512, 40)] * 5
    median_x = float(np.median([s[0] for s in spacings]))
    expected = (median_x, median_x, float(np.percentile([s[2] for s in spacings], 10)))
    assert target_spacing(spacings, thick) == pytest.approx(expected)
    many_slices = [(512, 512, 400)] * 5  # the coarse axis has as many voxels: the median stays
    assert target_spacing(spacings, many_slices) == pytest.approx((median_x, median_x, 5.0))
    assert target_spacing([(1, 1, 1), (2, 2, 2), (3, 3, 3)], [(9, 9, 9)] * 3) == pytest.approx((2, 2, 2))


def test_crop_to_nonzero_uses_every_channel():
    image = np.zeros((2, 10, 9, 8), np.float32)
    image[0, 2:5, 3:4, 1:7] = 1
    image[1, 6, 7, 2] = -3
    assert nonzero_box(image) == ((2, 7), (3, 8), (1, 7))
    assert nonzero_box(np.zeros((1, 3, 4, 5))) == ((0, 3), (0, 4), (0, 5))


def test_ct_channels_are_clipped_to_foreground_percentiles_and_z_scored():
    rng = np.random.default_rng(0)
    image = rng.normal(40, 30, (30, 30, 10)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[5:20, 5:25, 2:8] = 1
    foreground = image[label > 0].astype(np.float64)
    statistics = foreground_statistics(foreground)
    low, high = np.percentile(foreground, [0.5, 99.5])
    assert (statistics.mean, statistics.std, statistics.low, statistics.high) == pytest.approx(
        (foreground.mean(), foreground.std(), low, high)
    )
    normalized, used = normalize_channel(image.copy(), "ct", statistics, None)
    np.testing.assert_allclose(
        normalized, (np.clip(image, low, high) - foreground.mean()) / foreground.std(), rtol=1e-5, atol=1e-5
    )
    assert used == Normalization("ct", statistics.mean, statistics.std, (statistics.low, statistics.high))


def test_z_scores_inside_the_mask_leave_zero_outside():
    rng = np.random.default_rng(1)
    image = rng.uniform(100, 900, (12, 12, 4)).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[2:10, 3:11] = True
    normalized, used = normalize_channel(image.copy(), "z-score", None, mask)
    inside = normalized[mask].astype(np.float64)
    assert inside.mean() == pytest.approx(0, abs=1e-5) and inside.std() == pytest.approx(1, abs=1e-5)
    assert not normalized[~mask].any() and used.masked
    whole, _ = normalize_channel(image.copy(), "z-score", None, None)
    assert whole.astype(np.float64).std() == pytest.approx(1, abs=1e-5)


def test_a_case_keeps_what_it_needs_to_go_back(raw):
    dataset = read_raw_dataset(raw[NNUNET])
    case = dataset.with_role(LABELED)[0]
    scan = read_case(case, dataset)
    rules = ScanRules(("ct", "z-score"), (ChannelStatistics(50.0, 40.0, -20.0, 170.0), None), True, (2.0, 2.0, 4.0))
    image, label, geometry = preprocess_scan(scan.image.copy(), scan.label, scan.spacing, scan.affine, rules)
    assert geometry.shape == scan.image.shape[1:] and geometry.spacing == scan.spacing
    np.testing.assert_allclose(np.asarray(geometry.affine), scan.affine)
    assert geometry.crop == nonzero_box(scan.image) and geometry.crop != tuple((0, n) for n in scan.image.shape[1:])
    assert image.shape == (2, *geometry.resampled_shape) and label.shape == geometry.resampled_shape
    assert geometry.resampled_shape == resampled_shape(geometry.cropped_shape, scan.spacing, rules.spacing)
    assert [n.scheme for n in geometry.normalization] == ["ct", "z-score"] and geometry.normalization[1].masked
    assert CaseGeometry.from_json(geometry.to_json()) == geometry


# --- plan, folds, planning, items ------------------------------------------------------------


def _plan():
    rules = ScanRules(("ct", "z-score"), (ChannelStatistics(1.5, 2.5, -3.0, 4.25), None), False, (0.8, 0.8, 3.0))
    settings = {
        dims: {
            "paper": {
                "labeled": 3,
                "data": {"patch_size": [32] * size, "batch_size": 4},
                "eval": {"stride": [16] * size},
            }
        }
        for dims, size in (("2d", 2), ("3d", 3))
    }
    return ScanPlan(
        name="Liver-01",
        source="raw",
        layout=NNUNET,
        file_ending=".nii.gz",
        dims="3d",
        slice_axis=2,
        class_names=("background", "liver", "tumour"),
        channels=("CT", "T2"),
        rules=rules,
        median_shape=(120, 110, 40),
        settings=settings,
    )


def test_the_plan_file_reads_back_what_was_written():
    plan = _plan()
    assert parse_scan_plan(plan_text(plan, "data/liver"), "plan.toml") == plan


def test_an_edited_plan_changes_names_and_dims_and_a_broken_one_is_refused():
    text = plan_text(_plan(), "data/liver")
    edited = parse_scan_plan(text.replace('dims = "3d"', 'dims = "2d"').replace('"tumour"', '"lesion"'), "plan.toml")
    assert edited.dims == "2d" and edited.patch_size == (32, 32) and edited.class_names[-1] == "lesion"
    with pytest.raises(ConfigError, match="plan.toml: dims must be 2d or 3d; got '4d'"):
        parse_scan_plan(text.replace('dims = "3d"', 'dims = "4d"'), "plan.toml")
    with pytest.raises(ConfigError, match="plan.toml is not valid TOML"):
        parse_scan_plan(text.replace('dims = "3d"', "dims = "), "plan.toml")
    with pytest.raises(ConfigError, match="name 'my data' must be letters"):
        parse_scan_plan(text.replace('name = "Liver-01"', 'name = "my data"'), "plan.toml")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda text: text.replace("patch_size = [32, 32, 32]", "patch_sise = [32, 32, 32]"),
            "[3d.paper.data] patch_size must be 3 positive integers, it is missing; restore what the import wrote",
        ),
        (
            lambda text: text.replace("stride = [16, 16, 16]", "stride = [16, 0, 16]"),
            "[3d.paper.eval] stride must be 3 positive integers, got [16, 0, 16]",
        ),
        (lambda text: text.replace("labeled = 3", "labeled = 0", 2), "[3d.paper] labeled must be a positive integer"),
        (
            lambda text: text + "\n[3D.demo]\nlabeled = 2\n",
            "unknown table [3D]; a plan holds [dataset], [2d.*] and [3d.*]",
        ),
        (
            lambda text: text.replace("\n[dataset]\n", "\n[dataset]\nbogus = 1\n"),
            "unknown key bogus in [dataset]; its keys are",
        ),
    ],
)
def test_a_typo_in_an_edited_plan_is_named_not_ignored_or_a_traceback(edit, message):
    with pytest.raises(ConfigError, match=re.escape(f"plan.toml: {message}")):
        parse_scan_plan(edit(plan_text(_plan(), "data/liver")), "plan.toml")


def test_a_settings_table_named_nearly_as_a_preset_is_refused_and_one_of_its_own_is_a_preset(raw, tmp_path):
    cli.data_main(["import", "--source", str(raw[NNUNET]), "--out", str(tmp_path / "d")])
    plan = tmp_path / "d" / "plan.toml"
    text = plan.read_text()
    for typo in ("demoo", "Demo", "refrence"):
        plan.write_text(text.replace("[3d.demo]", f"[3d.{typo}]"))
        with pytest.raises(ConfigError, match=rf"plan\.toml: \[3d\.{typo}\] is not the preset '(demo|reference)', "):
            scans.register_plan(tmp_path / "d")
    for table, typo, message in (
        ("[3d.mine.data]", "patch_sise", "[3d.mine.data] patch_sise is not a setting; did you mean patch_size? "),
        ("[3d.mine]", "labled", "[3d.mine] labled is not a setting; did you mean labeled? "),
        ("[3d.mine]", "patch_size", "[3d.mine] patch_size is not a setting; it is a setting of [3d.mine.data]; "),
        ("[3d.demo.dta]", "patch_size", "[3d.demo.dta] is not a table of settings; did you mean [3d.demo.data]? "),
    ):
        plan.write_text(f"{text}\n{table}\n{typo} = 3\n")
        with pytest.raises(ConfigError, match=re.escape(f"{plan}: {message}")):
            scans.register_plan(tmp_path / "d")
    plan.write_text(text + "\n[3d.mine.selftrain]\niterations = 3\n\n[3d.mine.network]\nbase_filters = 4\n")
    config = load_config(scans.register_plan(tmp_path / "d").name, "demo+mine")
    assert (config.selftrain.iterations, config.network["base_filters"]) == (3, 4)


@pytest.mark.parametrize(
    ("damage", "lack", "by_import"),
    [
        (
            lambda text: text.replace("median_shape = ", "# median_shape = "),
            "lacks median_shape",
            "import the dataset again or restore the key",
        ),
        (
            lambda text: text.replace("[dataset]", "[data]").replace("[[dataset.", "[[data."),
            "has no [dataset] table",
            "import the dataset again",
        ),
        (
            lambda text: text.split("\n[3d.paper")[0],
            "has no [3d.paper] settings",
            "import the dataset again with --dims 3d",
        ),
    ],
)
def test_a_damaged_plan_is_mended_by_importing_again_and_a_run_folders_copy_from_the_roots_plan(
    tmp_path, damage, lack, by_import
):
    root, run = tmp_path / "liver", tmp_path / "run"
    for folder in (root, run):
        folder.mkdir()
        path = write_plan(_plan(), folder, root)
        path.write_text(damage(path.read_text()))
    with pytest.raises(ConfigError) as error:
        read_plan(root)
    assert str(error.value) == f"{root / 'plan.toml'} {lack}; {by_import}"
    with pytest.raises(ConfigError) as error:
        read_plan(run, copy_of=root)
    assert str(error.value) == f"{run / 'plan.toml'} {lack}; restore it from {root / 'plan.toml'} or train again"


def test_a_missing_root_of_an_imported_dataset_is_named_with_the_import_that_writes_it(tmp_path):
    plan = _plan()
    paper = {**plan.presets["paper"], "eval": {"stride": [16, 16, 16]}}
    name = register_imported(scan_spec(dataclasses.replace(plan, settings={plan.dims: {"paper": paper}}))).name
    missing = tmp_path / "liver"
    try:
        with pytest.raises(MissingFileError) as error:
            check_dataset_root(missing, name, "best.pt was trained on it")
    finally:
        del _REGISTRY[name]
    assert str(error.value) == (
        f"data folder {missing} does not exist: import your scans into it with mper-data import --source RAW "
        f"--out {missing}, or pass the folder that holds it (--data-root)"
    )


def test_folds_partition_the_cases():
    names = [f"case{index:02d}" for index in range(13)]
    folds = [fold_cases(names, 5, fold) for fold in range(5)]
    assert sorted(sum(folds, [])) == names
    assert {len(fold) for fold in folds} == {2, 3}
    assert folds[1] == fold_cases(list(reversed(names)), 5, 1)[::-1]  # the same cases whatever the order
    with pytest.raises(ValueError, match="need at least 5 cases"):
        fold_cases(names[:4], 5, 0)


def test_the_planned_patch_and_batch_fit_the_memory():
    median = (300.0, 280.0, 90.0)
    voxel_bytes = 1000.0
    patch, batch = patch_and_batch(median, voxel_bytes, 16.0, training_voxels=1e12)
    assert all(side % 16 == 0 and side >= MIN_PATCH_SIDE for side in patch)
    assert batch % 4 == 0 and batch * voxel_bytes * np.prod(patch) <= 16 * 2**30
    small, small_batch = patch_and_batch(median, voxel_bytes, 2.0, training_voxels=1e12)
    assert np.prod(small) < np.prod(patch) and small_batch == 4
    assert 4 * voxel_bytes * np.prod(small) <= 2 * 2**30
    _, capped = patch_and_batch((40.0, 40.0, 40.0), voxel_bytes, 64.0, training_voxels=10 * 48**3)
    assert capped == 4  # the batch holds at most 5% of the training voxels (at least four images)


def _trainable(count, labeled_cases, unlabeled_cases, folds, items_per_case):
    """Whether labeling ``count`` cases trains with every validation fold, by the rules
    training applies (a labeled batch of 2 items at least, an unlabeled item for
    self-training), the folds dealt by :func:`fold_cases` itself."""
    names = [f"case{index:02d}" for index in range(labeled_cases)]
    for fold in range(folds):
        outside = labeled_cases - len(fold_cases(names, folds, fold))
        if not (count <= outside and count * items_per_case >= 2 and outside - count + unlabeled_cases > 0):
            return False
    return True


@pytest.mark.parametrize("labeled_cases, unlabeled_cases", [(2, 0), (3, 0), (4, 0), (13, 0), (2, 1), (3, 1), (3, 400)])
@pytest.mark.parametrize("dims, slices", [("3d", 32), ("2d", 32), ("2d", 1)])
def test_the_planned_split_trains_or_the_data_is_refused(monkeypatch, labeled_cases, unlabeled_cases, dims, slices):
    monkeypatch.setattr(scans, "bytes_per_voxel", lambda *_: 1.0)  # any batch fits: only the data limits it
    shape = (64, 64, slices)
    summary = DataSummary(
        shape, shape, (1.0, 1.0, 3.0), labeled_cases + unlabeled_cases, labeled_cases, unlabeled_cases, 2, 3
    )
    folds = min(5, labeled_cases)
    items_per_case = 1 if dims == "3d" else slices
    if not any(_trainable(n, labeled_cases, unlabeled_cases, folds, items_per_case) for n in range(1, labeled_cases)):
        assert not labeled_range(summary, dims)
        return
    assert labeled_range(summary, dims)
    presets = plan_settings(summary, dims, memory_gb=8.0)
    labeled = presets["paper"]["labeled"]
    assert presets["demo"]["labeled"] == labeled and presets["paper"]["data"]["folds"] == folds
    assert _trainable(labeled, labeled_cases, unlabeled_cases, folds, items_per_case)
    for preset in ("paper", "demo"):
        data = presets[preset]["data"]
        assert 2 <= data["labeled_batch_size"] <= labeled * items_per_case, (preset, data, labeled)
        assert data["batch_size"] == 2 * data["labeled_batch_size"] and data["batch_size"] % 4 == 0
    if (labeled_cases, unlabeled_cases) == (13, 0):
        assert labeled == 2  # a fifth of the 10 cases outside the largest fold
    if (labeled_cases, unlabeled_cases) == (3, 400):
        assert labeled == 2  # every case outside the fold, its batch no larger than they fill


def test_training_items_carry_every_channel_in_3d_and_in_2d(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 20, 18, 6)).astype(np.float32)
    label = np.zeros((20, 18, 6), np.uint8)
    label[3:7, 12:16, 1:5] = 3
    geometry = CaseGeometry(
        (20, 18, 6), (1.0, 1.0, 3.0), tuple(map(tuple, np.eye(4))), ((0, 20), (0, 18), (0, 6)), (20, 18, 6)
    )
    write_scan_case(tmp_path, "a", image, label, label, geometry)
    write_scan_case(tmp_path, "b", image, None, None, geometry)
    write_scan_lists(tmp_path, {"labeled": ["a"], "unlabeled": ["b"]})
    flat = ImportedLayout(slice_axis=2)
    assert flat.list_cases(tmp_path, "train") == [f"{case}/{index}" for case in "ab" for index in range(6)]
    slice_image, slice_label = flat.load_item(tmp_path, "a/3")
    np.testing.assert_array_equal(slice_image, image[:, :, :, 3])
    np.testing.assert_array_equal(slice_label, label[:, :, 3])
    assert not flat.load_item(tmp_path, "b/0")[1].any()
    for layout, patch, item in ((ImportedLayout(), (16, 16, 16), "a"), (flat, (16, 16), "a/2")):
        items = scan_items(patch, layout)(tmp_path, [item], augment=False, seed=0)
        sample = items[0]
        assert sample["image"].shape == (2, *patch) and sample["label"].shape == patch
        assert int((sample["label"] == 3).sum()) == int((np.asarray(layout.load_item(tmp_path, item)[1]) == 3).sum())
        augmented = scan_items(patch, layout)(tmp_path, [item], augment=True, seed=0)
        assert augmented[(1, 0)]["image"].shape == (2, *patch)


def test_an_import_interrupted_half_way_leaves_no_dataset_behind(raw, tmp_path, monkeypatch):
    imported, original = [], scans._import_case

    def interrupted_at_the_third_case(case, *arguments):
        if len(imported) == 2:
            raise KeyboardInterrupt
        found = original(case, *arguments)
        imported.append(case.name)
        return found

    monkeypatch.setattr(scans, "_import_case", interrupted_at_the_third_case)
    with pytest.raises(KeyboardInterrupt):
        scans.import_scans(raw[NNUNET], tmp_path / "Dataset", progress=False)
    assert len(imported) == 2 and not (tmp_path / "Dataset").exists()


def test_the_command_the_import_suggests_runs_as_printed_when_the_folder_has_a_space(raw, tmp_path, capsys):
    out = tmp_path / "my data"
    cli.data_main(["import", "--source", str(raw[NNUNET]), "--out", str(out)])
    printed = capsys.readouterr().out.splitlines()
    imported, suggested = printed[-3:-1] if printed[-1].startswith("(no GPU here") else printed[-2:]
    assert suggested == f"train with: mper-train --data-root '{out}'"
    assert printed[-1].startswith("(no GPU here") != torch.cuda.is_available()
    dims = read_plan(out).dims
    planned = "a 3D V-Net" if dims == "3d" else "a 2D U-Net on slices across axis"
    assert imported.startswith(f"imported {raw[NNUNET]} into {out} for {planned}"), imported
    assert imported.endswith(f"; its plan: {out / 'plan.toml'}")
