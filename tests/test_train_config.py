"""Presets, overrides and checks of the run configuration; checkpoint files."""
from __future__ import annotations

import pytest
import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from mper.train.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from mper.train.config import TrainConfig, load_config, parse_override, read_preset, to_toml


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


def test_reference_presets_change_what_the_authors_code_does_differently():
    la, acdc = load_config("la", "reference"), load_config("acdc", "reference")
    for config in (la, acdc):
        assert config.selftrain.ema_decay == 0.99 and config.prototypes.momentum == 0.99
        assert config.selftrain.consistency_scale == 0.5
        assert not config.prototypes.update_background and config.prototypes.contrastive_ignore_row == 0
    assert (la.selftrain.ramp_weight, la.selftrain.rampup_epochs, la.selftrain.contrastive_weight) == (1.0, 40, 0.02)
    assert (acdc.selftrain.ramp_weight, acdc.selftrain.rampup_epochs, acdc.selftrain.contrastive_weight) == (0.5, 200, 0.001)
    assert la.data.batch_size == 8 and acdc.network["channels"] == [16, 32, 64, 128, 256]


def test_an_unknown_preset_lists_the_available_ones():
    with pytest.raises(ValueError, match="'tiny' is not defined for la; available: paper, reference"):
        read_preset("la", "tiny")
    with pytest.raises(ValueError, match="'tiny' is not defined"):
        read_preset("acdc", "reference+tiny")


def test_presets_stack_left_to_right_on_top_of_paper():
    stacked = read_preset("acdc", "reference+demo")
    assert stacked["preset"] == "reference+demo"
    assert stacked["selftrain"]["contrastive_weight"] == 0.001  # from reference
    assert stacked["selftrain"]["rampup_epochs"] == 16  # demo, applied last
    assert stacked["network"]["classifier_kernel"] == 3 and stacked["network"]["channels"] == [8, 16, 32, 64, 128]


def test_overrides_are_typed_by_toml_and_merged_into_sections():
    assert parse_override("selftrain.iterations=50") == {"selftrain": {"iterations": 50}}
    assert parse_override("prototypes.update_source=labeled") == {"prototypes": {"update_source": "labeled"}}
    assert parse_override("network.channels=[8, 16]") == {"network": {"channels": [8, 16]}}
    config = load_config(
        "acdc", "paper", {"labeled": 3},
        ["selftrain.iterations=50", "network.channels=[8,16,32,64,128]", "selftrain.pseudo_label_threshold=0.5",
         "optim.lr=1"],
    )
    assert config.labeled == 3 and config.selftrain.iterations == 50
    assert config.network == {"channels": [8, 16, 32, 64, 128], "dropout": [0.05, 0.1, 0.2, 0.3, 0.5],
                              "classifier_kernel": 1}
    assert config.selftrain.pseudo_label_threshold == 0.5 and config.optim.lr == 1.0
    assert isinstance(config.optim.lr, float)


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("selftrain.iteratons=5", "unknown setting selftrain.iteratons"),
        ("selftrain.iterations=many", "selftrain.iterations expects int"),
        ("data.patch_size=64", "data.patch_size expects tuple"),
        ("prototypes.update_source=all", "prototypes.update_source must be one of"),
        ("data.batch_size=6", "twice data.labeled_batch_size"),
        ("data.labeled_batch_size=3", "must be even"),
        ("selftrain.iterations=0", "selftrain.iterations must be a positive integer"),
        ("iterations", "must look like section.key=value"),
        ("selftrain.teacher_mode=student", "selftrain.teacher_mode must be one of train, eval"),
        ("losses.dice=cube", "losses.dice must be one of pooled-squared, per-sample-linear"),
        ("eval.postprocess=holes", "eval.postprocess must be one of none, largest-component"),
        ("selftrain.forward_passes=3", "selftrain.forward_passes must be 1 or 2"),
        ("prototypes.kmeans_max_voxels=-1", "kmeans_max_voxels must be 0"),
        ("losses.dice_smooth=-1", "losses.dice_smooth must be >= 0"),
    ],
)
def test_bad_overrides_say_what_is_wrong(assignment, message):
    with pytest.raises(ValueError, match=message):
        load_config("acdc", "paper", assignments=[assignment])


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
