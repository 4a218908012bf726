"""Presets, overrides and checks of the run configuration; checkpoint files."""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import stat
import typing

import numpy as np
import pytest
import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from mper import ops, pipeline, reference
from mper.datasets import dataset_names, get_dataset
from mper.errors import ConfigError, RunFolderError
from mper.eval.protocol import score_case
from mper.nn import PrototypeHead
from mper.train import checkpoint
from mper.train.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from mper.train.config import RANGE_RULES, TrainConfig, load_config, parse_override, preset_tables, read_preset, to_toml
from mper.train.config_checks import ignored_holdout


def test_paper_presets_hold_the_published_hyper_parameters():
    la, acdc = load_config("la"), load_config("acdc")
    assert (la.selftrain.contrastive_weight, acdc.selftrain.contrastive_weight) == (0.02, 0.1)
    assert (la.data.batch_size, acdc.data.batch_size) == (8, 24)
    assert (la.pretrain.iterations, acdc.pretrain.iterations) == (2000, 10000)
    assert (la.selftrain.iterations, acdc.selftrain.iterations) == (15000, 30000)
    assert la.data.patch_size == (112, 112, 80) and acdc.data.patch_size == (256, 256)
    assert la.optim.lr_step == 2500 and acdc.optim.lr_step == 0
    for config in (la, acdc):
        assert config.selftrain.ema_decay == 0.999 and config.prototypes.momentum == 0.9
        assert (config.prototypes.tau, config.prototypes.nce_tau, config.prototypes.per_class) == (0.1, 0.1, 3)
        assert not config.prototypes.update_background and config.prototypes.contrastive_ignore_row is None
        assert config.selftrain.consistency_scale == 1.0 and config.ops == "mper"
    assert la.selftrain.pseudo_label_threshold == 0.5 and acdc.selftrain.pseudo_label_threshold is None


@pytest.mark.parametrize("dataset", ["la", "acdc"])
def test_the_specs_inference_defaults_are_the_paper_presets(dataset):
    """A spec's patch size and stride (what inference takes when a caller gives none) are
    written apart from the preset file, a layer below it: they must not drift from [paper]."""
    spec, paper = get_dataset(dataset), load_config(dataset)
    assert spec.patch_size == paper.data.patch_size
    assert spec.stride == (paper.eval.stride or ())


def test_the_temperature_defaults_of_the_ops_and_the_head_are_the_papers():
    """tau1 and tau2 default to the [paper] presets' values wherever a function takes them."""
    taus = {load_config(dataset).prototypes.tau for dataset in ("la", "acdc")}
    taus |= {load_config(dataset).prototypes.nce_tau for dataset in ("la", "acdc")}
    defaults = {
        parameter.default
        for function in (
            ops.proto_classify,
            ops.proto_infonce,
            ops.proto_classify_infonce,
            reference.proto_classify,
            reference.proto_infonce,
            reference.proto_classify_infonce,
            PrototypeHead.__init__,
        )
        for name, parameter in inspect.signature(function).parameters.items()
        if name in ("tau", "nce_tau")
    }
    assert defaults == taus


def test_reference_presets_change_what_the_authors_code_does_differently():
    la, acdc = load_config("la", "reference"), load_config("acdc", "reference")
    for config in (la, acdc):
        assert config.selftrain.ema_decay == 0.99 and config.prototypes.momentum == 0.99
        assert config.selftrain.consistency_scale == 0.5
        assert not config.prototypes.update_background and config.prototypes.contrastive_ignore_row == 0
    assert (la.selftrain.ramp_weight, la.selftrain.rampup_epochs, la.selftrain.contrastive_weight) == (1.0, 40, 0.02)
    assert (acdc.selftrain.ramp_weight, acdc.selftrain.rampup_epochs, acdc.selftrain.contrastive_weight) == (
        0.5,
        200,
        0.001,
    )
    assert la.data.batch_size == 8 and acdc.network["channels"] == [16, 32, 64, 128, 256]


def test_an_unknown_preset_lists_the_available_ones():
    with pytest.raises(ValueError, match="'tiny' is not defined for la; available: paper, reference"):
        read_preset("la", "tiny")
    with pytest.raises(ValueError, match="'tiny' is not defined"):
        read_preset("acdc", "reference+tiny")
    for stacked in ("demo+", "+demo", "reference++demo"):
        with pytest.raises(
            ValueError, match=rf"^preset '{re.escape(stacked)}' has an empty name between its \+ signs; name presets"
        ):
            read_preset("la", stacked)


def test_presets_stack_left_to_right_on_top_of_paper():
    stacked = read_preset("acdc", "reference+demo")
    assert stacked["preset"] == "reference+demo"
    assert stacked["selftrain"]["contrastive_weight"] == 0.001  # from reference
    demo = preset_tables("acdc")["demo"]["selftrain"]["rampup_epochs"]
    assert demo != read_preset("acdc", "reference")["selftrain"]["rampup_epochs"]
    assert stacked["selftrain"]["rampup_epochs"] == demo  # demo, applied last
    assert stacked["network"]["classifier_kernel"] == 3 and stacked["network"]["channels"] == [8, 16, 32, 64, 128]


def test_overrides_are_typed_by_toml_and_merged_into_sections():
    assert parse_override("selftrain.iterations=50") == {"selftrain": {"iterations": 50}}
    assert parse_override("prototypes.update_source=labeled") == {"prototypes": {"update_source": "labeled"}}
    assert parse_override("network.channels=[8, 16]") == {"network": {"channels": [8, 16]}}
    config = load_config(
        "acdc",
        "paper",
        {"labeled": 3},
        [
            "selftrain.iterations=50",
            "network.channels=[8,16,32,64,128]",
            "prototypes.contrastive_ignore_row=0",
            "optim.lr=1",
        ],
    )
    assert config.labeled == 3 and config.selftrain.iterations == 50
    assert config.network == {
        "channels": [8, 16, 32, 64, 128],
        "dropout": [0.05, 0.1, 0.2, 0.3, 0.5],
        "classifier_kernel": 1,
    }
    assert config.prototypes.contrastive_ignore_row == 0 and config.optim.lr == 1.0
    assert isinstance(config.optim.lr, float)


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("selftrain.iteratons=5", "unknown setting selftrain.iteratons"),
        ("selftrain.iterations=many", "setting selftrain.iterations expects a whole number, e.g. "),
        ("data.patch_size=64", "data.patch_size expects a list of whole numbers in brackets"),
        ("prototypes.update_source=all", "prototypes.update_source must be one of"),
        ("data.batch_size=6", "twice data.labeled_batch_size"),
        ("data.labeled_batch_size=3", "must be even"),
        ("selftrain.iterations=0", "selftrain.iterations must be a positive integer"),
        ("iterations", "must look like section.key=value"),
        (
            "data.patch_size=64,64",
            r"expects a list of whole numbers in brackets, without spaces, e.g. data.patch_size=\[64,64\]; got 64,64$",
        ),
        (
            "data.patch_size=[32,32,abc]",
            r"setting data.patch_size expects a list of whole numbers in brackets, without spaces, "
            r"e.g. data.patch_size=\[32,32,32\]; got \[32,32,abc\] \(abc is not a whole number\)$",
        ),
        ("data.patch_size=[64,64.5]", r"got \[64, 64.5\] \(64.5 is not a whole number\)$"),
        ("eval.stride=[16,x]", r"eval.stride expects none or a list of whole numbers .*; got \[16,x\] \(x is not a"),
        ("data.batch_size=1.5", r"setting data.batch_size expects a whole number, e.g. data.batch_size=3; got 1.5$"),
        ("optim.lr=fast", r"setting optim.lr expects a number, e.g. optim.lr=0.5; got fast$"),
        ("selftrain.pseudo_label_threshold=high", r"expects none or a number, e.g. .*; got high$"),
        ("data.val_split=3", r"data.val_split expects one of val, holdout, test, fold, e.g. .*; got 3$"),
        ("selftrain.teacher_mode=student", "selftrain.teacher_mode must be one of train, eval"),
        ("losses.dice=cube", "losses.dice must be one of pooled-squared, per-sample-linear"),
        ("selftrain.forward_passes=3", "selftrain.forward_passes must be 1 or 2"),
        ("prototypes.kmeans_max_voxels=-1", "kmeans_max_voxels must be 0"),
        ("losses.dice_smooth=-1", "losses.dice_smooth must be a finite number >= 0"),
        ("network.classifier_kernel=2", "network.classifier_kernel must be a positive odd integer"),
        ("compile=yes", "setting compile expects true or false, e.g. compile=true; got yes$"),
        ("channels_last=1", "setting channels_last expects true or false"),
        ("distributed.force_group=on", "setting distributed.force_group expects true or false"),
    ],
)
def test_bad_overrides_say_what_is_wrong(assignment, message):
    with pytest.raises(ValueError, match=message):
        load_config("acdc", "paper", assignments=[assignment])


@pytest.mark.parametrize(
    "dataset, assignment, message",
    [
        ("acdc", "prototypes.tau=-1", "prototypes.tau must be a positive finite number"),
        ("acdc", "prototypes.tau=1e-40", "prototypes.tau must be a positive finite number whose inverse is finite"),
        ("acdc", "prototypes.nce_tau=inf", "prototypes.nce_tau must be a positive"),
        ("acdc", "optim.lr=nan", "optim.lr must be a positive finite number"),
        ("acdc", "optim.lr=0", "optim.lr must be a positive finite number"),
        ("acdc", "optim.momentum=1.5", r"optim.momentum must be in \[0, 1\)"),
        ("acdc", "optim.weight_decay=-1e-4", "optim.weight_decay must be a finite number >= 0"),
        ("acdc", "optim.lr_gamma=nan", "optim.lr_gamma must be a positive finite number"),
        ("acdc", "selftrain.ema_decay=1.01", r"selftrain.ema_decay must be in \[0, 1\]"),
        ("acdc", "prototypes.momentum=-0.1", r"prototypes.momentum must be in \[0, 1\]"),
        ("acdc", "prototypes.confidence_threshold=2", r"prototypes.confidence_threshold must be in \[0, 1\]"),
        ("acdc", "selftrain.contrastive_weight=nan", "selftrain.contrastive_weight must be a finite number >= 0"),
        ("acdc", "pretrain.box_fraction=0", r"pretrain.box_fraction must be in \(0, 1\]"),
        (
            "acdc",
            "prototypes.kmeans_max_voxels=-1",
            "prototypes.kmeans_max_voxels must be 0 \\(every voxel\\) or a positive cap",
        ),
        (
            "acdc",
            "prototypes.kmeans_max_voxels=2",
            "kmeans_max_voxels must be 0 \\(every voxel\\) or at least prototypes.per_class",
        ),
        ("acdc", "prototypes.contrastive_ignore_row=12", "contrastive_ignore_row must name a row of the 12-row bank"),
        ("acdc", "num_classes=3", "num_classes must be 4 for acdc"),
        ("la", "num_classes=4", "num_classes must be 2 for la"),
        ("acdc", "eval.num_figures=-1", "eval.num_figures must be a non-negative integer"),
        ("la", "eval.stride=none", r"eval.stride must be 3 steps, none larger than data.patch_size .*; got none"),
        ("acdc", "data.patch_size=[250, 250]", r"data.patch_size must be 2 sizes, each a multiple of 16"),
        ("la", "data.patch_size=[112, 112]", r"data.patch_size must be 3 sizes"),
        ("la", "eval.stride=[18, 18, 96]", r"eval.stride must be 3 steps, none larger than data.patch_size"),
        ("la", "eval.stride=[0, 18, 4]", r"eval.stride must be none \(slice by slice\) or positive sizes"),
        ("acdc", "selftrain.pseudo_label_threshold=0.5", "pseudo_label_threshold applies to two-class tasks"),
        ("la", "selftrain.pseudo_label_threshold=1.5", r"pseudo_label_threshold must be none or in \[0, 1\]"),
        ("acdc", "seed=-1", "seed must be a non-negative integer"),
        ("acdc", "data.num_workers=-2", "data.num_workers must be a non-negative integer"),
        (
            "acdc",
            "data.val_split=holdout",
            "ACDC has no held-out training volumes; use data.val_split = 'val' or 'test'",
        ),
        ("la", "data.val_split=val", "LA has no val.list"),
        ("acdc", "device=gpu", "device must be auto, cpu, cuda or cuda:N"),
        ("acdc", "network.base_filters=8", "unknown setting network.base_filters; valid names here: network.channels"),
        ("la", "network.in_channels=2", "unknown setting network.in_channels"),
        (
            "acdc",
            "network.dropout=[0.05, nan, 0.2, 0.3, 0.5]",
            r"network.dropout must hold finite numbers, got \[0.05, nan",
        ),
    ],
)
def test_every_setting_is_checked_before_anything_runs(dataset, assignment, message):
    with pytest.raises(ConfigError, match=message):
        load_config(dataset, "paper", assignments=[assignment])


def test_every_numeric_setting_has_a_range_rule():
    ruled = {name for name, _, _ in RANGE_RULES}
    numeric = set()
    for section, hint in typing.get_type_hints(TrainConfig).items():
        if dataclasses.is_dataclass(hint):
            numeric |= {
                f"{section}.{name}" for name, inner in typing.get_type_hints(hint).items() if inner not in (str, bool)
            }
        elif hint in (int, float):
            numeric.add(section)
    assert {"seed", "data.patch_size", "eval.stride", "selftrain.pseudo_label_threshold"} <= numeric
    assert numeric - ruled == set()


def test_the_evaluation_protocol_is_checked_once_before_training_starts(tmp_path):
    config = load_config("acdc", "paper", {"out": str(tmp_path / "run")}, ["eval.postprocess=holes"])
    with pytest.raises(ConfigError, match="eval.postprocess must be one of none, largest-component; got 'holes'"):
        pipeline.train(config)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="eval.empty_prediction must be one of zero, undefined"):
        score_case(np.zeros((2, 2)), np.zeros((2, 2)), 2, empty_prediction="never")


def test_the_shipped_presets_pass_every_check():
    checked = {(dataset, preset) for dataset in dataset_names() for preset in preset_tables(dataset)}
    assert {("la", "demo"), ("la", "strict"), ("acdc", "strict"), ("acdc", "demo")} <= checked
    for dataset, preset in sorted(checked):
        load_config(dataset, preset).check()
        load_config(dataset, f"reference+{preset}").check()


@pytest.mark.parametrize("dataset", ["acdc", "la"])
def test_how_the_steps_run_is_off_by_default_and_settable_in_every_preset(dataset):
    switches = ["compile=true", "channels_last=true", "distributed.force_group=true"]
    for preset in preset_tables(dataset):
        default = load_config(dataset, preset)
        assert (default.compile, default.channels_last, default.distributed.force_group) == (False, False, False)
        config = load_config(dataset, preset, assignments=switches)
        assert (config.compile, config.channels_last, config.distributed.force_group) == (True, True, True)
        assert "compile = true\nchannels_last = true\n" in to_toml(config.to_dict())
        assert TrainConfig.from_dict(tomllib.loads(to_toml(config.to_dict()))) == config


#: config.toml as runs before the TOML writer became tomli-w wrote it (arrays on one line,
#: ``"none"`` for no value; ACDC's unused stride written too), for preset reference.
OLD_WRITER_CONFIG = """\
dataset = "acdc"
data_root = "data/acdc"
labeled = 7
preset = "reference"
num_classes = 4
seed = 1337
device = "auto"
ops = "mper"
out = "runs/acdc"
baseline = "none"
amp = "off"
run_id = "0123456789abcdef"
compile = false
channels_last = false

[network]
channels = [16, 32, 64, 128, 256]
dropout = [0.05, 0.1, 0.2, 0.3, 0.5]
classifier_kernel = 3

[data]
patch_size = [256, 256]
batch_size = 24
labeled_batch_size = 12
num_workers = 4
val_split = "val"
holdout_cases = 0
image_interpolation = "nearest"
fold = 0
folds = 5

[optim]
lr = 0.01
momentum = 0.9
weight_decay = 0.0001
lr_step = 0
lr_gamma = 0.1
carry_over = true

[pretrain]
iterations = 10000
loss_scale = 0.5
box_fraction = 0.6666666666666666
loss = "per-region"

[selftrain]
iterations = 30000
ema_decay = 0.99
unlabeled_weight = 0.5
consistency_scale = 0.5
ramp_weight = 0.5
rampup_epochs = 200.0
ramp_epoch_length = 150
contrastive_weight = 0.001
pseudo_label_threshold = "none"
teacher_mode = "train"
ema_schedule = "constant"
ema_scope = "state"
forward_passes = 2
forward_order = "unlabeled-surround-first"
contrastive_reduction = "sum"
keep_better_stage = false

[prototypes]
per_class = 3
tau = 0.1
nce_tau = 0.1
momentum = 0.99
confidence_threshold = 0.9
update_source = "both"
update_background = false
contrastive_ignore_row = 0
kmeans_iterations = 20
kmeans_max_voxels = 0
update_steps = "region-wise"
kmeans = "minibatch"
kmeans_augment = true

[eval]
val_interval = 200
checkpoint_interval = 500
log_interval = 10
stride = [18, 18, 4]
num_figures = 3
postprocess = "none"
empty_prediction = "zero"
pseudo_label_dice = true
teacher_dice = true

[losses]
dice = "pooled-squared"
dice_background = "whole-image"
dice_smooth = 1e-10

[distributed]
sync_batchnorm = true
timeout = 1800
check_bank = false
force_group = false
"""


def test_a_config_toml_of_an_older_run_still_loads():
    config = TrainConfig.from_dict(tomllib.loads(OLD_WRITER_CONFIG))
    expected = load_config(
        "acdc",
        "reference",
        {"data_root": "data/acdc", "out": "runs/acdc", "run_id": "0123456789abcdef"},
        ["eval.stride=[18, 18, 4]"],
    )
    assert config == expected
    assert TrainConfig.from_dict(tomllib.loads(to_toml(config.to_dict()))) == config


def test_config_round_trips_through_toml_and_dict():
    config = load_config("la", "reference", {"data_root": "somewhere"})
    assert TrainConfig.from_dict(tomllib.loads(to_toml(config.to_dict()))) == config
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_checkpoint_write_is_atomic_and_loads_on_cpu(tmp_path):
    path = save_checkpoint(tmp_path / "run" / "state.pt", {"weights": torch.arange(3.0), "step": 7})
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.pt"]
    state = load_checkpoint(path)
    assert torch.equal(state["weights"], torch.arange(3.0)) and state["step"] == 7
    save_checkpoint(path, {"step": 8})
    assert load_checkpoint(path)["step"] == 8


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pt"):
        load_checkpoint(broken)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(ValueError, match="not an mper checkpoint"):
        load_checkpoint(foreign)


def test_rng_state_restores_the_dropout_stream():
    state = capture_rng_state()
    first = torch.rand(4)
    restore_rng_state(state)
    assert torch.equal(torch.rand(4), first)


def test_checkpoints_follow_the_umask_like_other_files(tmp_path):
    previous = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "state.pt", {"step": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_full_disk_leaves_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", {"step": 1})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(RunFolderError, match=r"cannot write checkpoint .*last.pt \(No space left on device\)"):
        save_checkpoint(path, {"step": 2})
    # a write in a handler of the caller's Ctrl-C: the full disk is this write's error
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        with pytest.raises(RunFolderError, match="No space left on device"):
            save_checkpoint(path, {"step": 2})

    def zip_writer_on_a_full_disk(state, stream):  # what torch's writer raises, the OSError behind it
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 659328 vs 659216") from None

    monkeypatch.setattr(checkpoint.torch, "save", zip_writer_on_a_full_disk)
    with pytest.raises(RunFolderError, match=r"cannot write checkpoint .*last.pt \(No space left on device\)"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_temporary_files_of_interrupted_writes_are_removed(tmp_path):
    save_checkpoint(tmp_path / "last.pt", {"step": 1})
    stale = [tmp_path / ".last.pt.abc123.tmp", tmp_path / ".best.pt.4242-00ff00ff.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    (tmp_path / "notes.tmp").write_text("not ours")
    assert checkpoint.remove_stale_temporaries(tmp_path) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "notes.tmp"]


def test_rng_states_are_restored_on_the_cpu_for_the_gpus_this_machine_has(monkeypatch):
    """A checkpoint from a 2-GPU machine resumed on a 1-GPU machine (CUDA simulated)."""
    state = capture_rng_state()
    saved_cuda = [torch.full((16,), index, dtype=torch.uint8) for index in (1, 2)]
    restored = {}

    def set_rng_state(new_state, device="cuda"):
        restored[device] = new_state

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.update(enumerate(states)))
    first = torch.rand(3)
    restore_rng_state({"torch": state["torch"], "cuda": saved_cuda})
    assert torch.equal(torch.rand(3), first)
    assert list(restored) == [0]
    assert restored[0].device.type == "cpu" and torch.equal(restored[0], saved_cuda[0])


def test_a_holdout_count_without_the_holdout_split_is_named_as_ignored():
    """Said at the start of the run (LA selects on its test cases by default): --set
    data.holdout_cases=3 alone was ignored without a word."""
    config = load_config("la", "paper", assignments=["data.holdout_cases=3"])
    assert ignored_holdout(config) == (
        "data.holdout_cases = 3 is ignored: it holds training cases out for validation only under data.val_split = "
        "'holdout', but it is 'test' (checkpoints are selected on its test cases); add --set data.val_split=holdout "
        "to hold them out"
    )
    assert (
        ignored_holdout(load_config("la", "paper", assignments=["data.val_split=holdout", "data.holdout_cases=3"]))
        == ""
    )
    assert ignored_holdout(load_config("la", "paper")) == ""
