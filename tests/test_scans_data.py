"""Raw scans in the nnU-Net v2 and Decathlon layouts: the synthetic writer and the readers."""
from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from mper import cli
from mper.data.raw_scans import LABELED, MSD, NNUNET, TEST, UNLABELED, read_case, read_raw_dataset
from mper.data.synth_scans import SYNTH_SCAN_CHANNELS, SYNTH_SCAN_CLASSES, synthesize_scans

TINY = (16, 16, 5)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """A tiny synthetic raw dataset in each layout."""
    root = tmp_path_factory.mktemp("raw")
    return {layout: synthesize_scans(root / layout, layout, cases=6, seed=3, size=TINY, progress=False)
            for layout in (NNUNET, MSD)}


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
    cli.data_main(["synth", "--format", "msd", "--out", str(tmp_path / "msd"), "--cases", "5", "--size", "12", "12", "4"])
    assert "wrote synthetic msd scans" in capsys.readouterr().out
    assert read_raw_dataset(tmp_path / "msd").layout == MSD
    for options in ([], ["--format", "nnunet", "--dataset", "la"]):
        with pytest.raises(SystemExit):
            cli.data_main(["synth", "--out", str(tmp_path / "x"), *options])
        assert "needs one of --dataset (LA / ACDC layout) or --format (raw scans)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _rewrite(path, data=None, affine=None):
    scan = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(scan.dataobj) if data is None else data,
                             scan.affine if affine is None else affine), path)


def test_a_decathlon_image_with_the_wrong_channel_count_is_refused(raw, tmp_path):
    source = shutil.copytree(raw[MSD], tmp_path / "raw")
    path = source / "imagesTr" / "synth_001.nii.gz"
    _rewrite(path, np.asarray(nib.load(path).dataobj)[..., :1])
    dataset = read_raw_dataset(source)
    with pytest.raises(ValueError, match=r"synth_001.nii.gz: shape .* expected a 4D image \(x, y, z, 2 channels\)"):
        read_case(next(case for case in dataset.cases if case.name == "synth_001"), dataset)
