"""What the command-line tools do, as Python functions.

* :func:`train` runs a whole experiment into a run folder: ``config.toml`` (and
  ``config.json``), ``train.log``, TensorBoard events under ``tensorboard/``, the
  checkpoints (``last.pt`` to resume, ``pretrain_best.pt``, ``best.pt``), then the
  evaluation of ``best.pt`` on the test split: ``metrics.json``, ``metrics.md`` and
  ``figures/``. :func:`resume` continues an interrupted run.
* :func:`evaluate` scores a checkpoint (SPEC 7), :func:`predict` segments image files.
* :func:`synthesize` and :func:`convert` prepare data (see :mod:`mper.data`).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.tensorboard import SummaryWriter

import mper.data
from mper.data.acdc import patient_id
from mper.eval.evaluate import evaluate_cases, mean_dice
from mper.eval.figures import add_figures
from mper.eval.predict import predict_path
from mper.nets import build_network
from mper.train.checkpoint import load_checkpoint
from mper.train.config import TrainConfig, to_toml
from mper.train.loaders import training_cases, validation_cases
from mper.train.loop import LAST_CHECKPOINT, Validator
from mper.train.runner import run_training
from mper.train.runtime import resolve_device
from mper.versions import device_line, version_line

log = logging.getLogger(__name__)

WEIGHTS = ("student", "teacher")
#: ``extra`` of log records meant for train.log only: the console prints them otherwise
#: (the metrics table) or they are too long for it (the settings).
RUN_LOG_ONLY = {"run_log_only": True}
NETWORK_NAMES = {"acdc": "U-Net", "la": "V-Net"}


def shown_on_console(record: logging.LogRecord) -> bool:
    """Log filter for console handlers: leaves out the :data:`RUN_LOG_ONLY` records."""
    return not getattr(record, "run_log_only", False)


def default_run_dir(config: TrainConfig) -> Path:
    """``runs/<dataset>-<preset>-<labeled>labeled`` (with ``-baseline`` for the baseline)."""
    suffix = "-baseline" if config.baseline == "labeled-only" else ""
    return Path("runs") / f"{config.dataset}-{config.preset}-{config.labeled}labeled{suffix}"


def inference_options(config: TrainConfig) -> dict[str, Any]:
    """How :func:`mper.eval.inference.predict_volume` should run for this config (SPEC 7)."""
    if config.dataset == "la":
        return {"patch_size": config.data.patch_size, "stride": config.eval.stride}
    return {"size": config.data.patch_size}


def validator(config: TrainConfig) -> Validator:
    """Mean foreground Dice of a network on the validation cases (see :mod:`mper.train.loaders`)."""
    cases = validation_cases(config)
    device = resolve_device(config.device)
    options = inference_options(config)

    def validate(net: nn.Module) -> float:
        return mean_dice(net, config.dataset, config.data_root, cases, device=str(device),
                         num_classes=config.num_classes, **options)

    return validate


@contextmanager
def _run_logging(run_dir: Path) -> Iterator[None]:
    """Send the package's log records to ``run_dir/train.log`` while training."""
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_log = logging.getLogger("mper")
    previous_level = package_log.level
    package_log.addHandler(handler)
    package_log.setLevel(logging.INFO)
    try:
        yield
    finally:
        package_log.removeHandler(handler)
        package_log.setLevel(previous_level)
        handler.close()


def _log_run_header(config: TrainConfig, resume: bool) -> None:
    """Versions, device and (in train.log only) the resolved settings of a run."""
    log.info("%s: %s", "resuming" if resume else "starting", version_line("mper"))
    log.info("device: %s", device_line(resolve_device(config.device)))
    log.info("settings:\n%s", to_toml(config.to_dict()).rstrip(), extra=RUN_LOG_ONLY)


def _write_config(config: TrainConfig, run_dir: Path) -> None:
    values = config.to_dict()
    (run_dir / "config.toml").write_text(to_toml(values))
    (run_dir / "config.json").write_text(json.dumps(values, indent=2) + "\n")


def train(config: TrainConfig, resume: bool = False) -> Path:
    """Train, evaluate the best checkpoint on the test split, and return the run folder.

    The run folder is ``config.out`` or :func:`default_run_dir`. A folder that already
    holds a run is only reused with ``resume`` (see :func:`resume`).
    """
    run_dir = Path(config.out) if config.out else default_run_dir(config)
    if (run_dir / LAST_CHECKPOINT).exists() and not resume:
        raise FileExistsError(
            f"{run_dir} already holds a training run; continue it with --resume "
            "or choose another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_config(config, run_dir)
    with _run_logging(run_dir), SummaryWriter(str(run_dir / "tensorboard")) as writer:
        _log_run_header(config, resume)
        best = run_training(config, run_dir, validator(config), writer, resume=resume)
        log.info("evaluating %s on the test split", best)
        result = evaluate(best, split="test", out_dir=run_dir, device=config.device,
                          num_figures=config.eval.num_figures)
        add_figures(writer, result["figures"], "test")
        log.info("test metrics (%s):\n%s", run_dir / "metrics.md", result["markdown"].rstrip(), extra=RUN_LOG_ONLY)
    return run_dir


def resume(run_dir: str | Path, device: str | None = None, ops: str | None = None) -> Path:
    """Continue the run in ``run_dir`` from its ``last.pt`` with the config saved there
    (optionally on another ``device`` or with other ``ops``); returns the run folder."""
    run_dir = Path(run_dir)
    saved = load_checkpoint(run_dir / LAST_CHECKPOINT)["config"]
    changes = {key: value for key, value in (("device", device), ("ops", ops)) if value is not None}
    config = TrainConfig.from_dict({**saved, **changes, "out": str(run_dir)})
    return train(config, resume=True)


def load_network(
    checkpoint: str | Path, device: str = "auto", weights: str = "student"
) -> tuple[nn.Module, TrainConfig]:
    """The network of a checkpoint (its student or teacher weights) and its config."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}; got {weights!r}")
    state = load_checkpoint(checkpoint)
    if state.get(weights) is None:
        raise ValueError(
            f"{checkpoint} holds no {weights} weights (pre-training and baseline runs have no "
            "teacher); use weights='student'"
        )
    config = TrainConfig.from_dict(state["config"])
    net = build_network(config.dataset, config.num_classes, **config.network)
    net.load_state_dict(state[weights])
    return net.to(resolve_device(device)).eval(), config


def _table_columns(config: TrainConfig) -> tuple[str, str, str]:
    """Method, labeled and unlabeled counts for the results table (patients for ACDC)."""
    if config.baseline == "labeled-only":
        return NETWORK_NAMES[config.dataset], str(config.labeled), "0"
    labeled, unlabeled = training_cases(config)
    if config.dataset == "acdc":
        unlabeled = set(map(patient_id, unlabeled)) - set(map(patient_id, labeled))
    return "MPER", str(config.labeled), str(len(unlabeled))


def evaluate(
    checkpoint: str | Path,
    data_root: str | Path | None = None,
    split: str = "test",
    out_dir: str | Path | None = None,
    device: str = "auto",
    weights: str = "student",
    num_figures: int = 3,
) -> dict[str, Any]:
    """Score a checkpoint on ``split`` of ``data_root`` (default: the training data).

    With ``out_dir``, writes ``metrics.json``, ``metrics.md`` and ``figures/``. Returns
    ``{"per_case", "summary", "markdown"}`` (see :func:`mper.eval.evaluate.evaluate_cases`).
    """
    net, config = load_network(checkpoint, device, weights)
    if data_root is not None:
        config.data_root = str(data_root)
    method, labeled, unlabeled = _table_columns(config)
    return evaluate_cases(
        net, config.dataset, config.data_root, split=split, out_dir=out_dir,
        device=str(resolve_device(device)), num_figures=num_figures,
        method=method, labeled=labeled, unlabeled=unlabeled, num_classes=config.num_classes,
        **inference_options(config),
    )


def predict(
    checkpoint: str | Path, input_path: str | Path, output: str | Path,
    device: str = "auto", weights: str = "student",
) -> list[Path]:
    """Segment a NIfTI/HDF5 file or every such file under a folder; returns the written
    label maps (NIfTI, with the input's affine)."""
    net, config = load_network(checkpoint, device, weights)
    return predict_path(net, input_path, config.dataset, output, device=str(resolve_device(device)),
                        **inference_options(config))


def synthesize(dataset: str, out: str | Path, cases: int | None = None, seed: int = 0,
               size: tuple[int, ...] | None = None) -> Path:
    """Write synthetic data in the public layout of ``dataset`` (see :func:`mper.data.synthesize`)."""
    return mper.data.synthesize(dataset, out, cases=cases, seed=seed, size=size)


def convert(dataset: str, source: str | Path, out: str | Path, split_from: str | Path | None = None,
            seed: int = 0) -> Path:
    """Turn the raw public download into the h5 layout (see :func:`mper.data.convert`)."""
    return mper.data.convert(dataset, source, out, split_from=split_from, seed=seed)
