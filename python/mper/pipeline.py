"""What the command-line tools do, as Python functions.

* :func:`train` runs a whole experiment into a run folder: ``config.toml`` (and
  ``config.json``), ``train.log``, TensorBoard events under ``tensorboard/``, the
  checkpoints (``last.pt`` to resume, ``pretrain_best.pt``, ``best.pt``), then the
  evaluation of ``best.pt`` on the test split: ``metrics.json``, ``metrics.md`` and
  ``figures/``. :func:`resume` continues an interrupted run.

  Settings, device and every data file are checked before the run folder is made. While
  the run lasts the folder holds a lock (``train.lock``); a run refused by the lock leaves
  the folder to the run that holds it. A stop before the first checkpoint removes the
  folder if this run made it. A mistake found once training has started
  (:class:`~mper.errors.UserError`) keeps the folder, ``train.log`` saying why it
  stopped; any other error keeps it too, with its traceback in ``train.log``.
* :func:`evaluate` scores a checkpoint (docs/method.md, "Evaluation") into a folder of
  its own (:func:`check_eval_folder`), :func:`evaluate_folders` a folder of predicted label
  maps against one of ground-truth label maps, :func:`predict` segments image files.
* :func:`synthesize` and :func:`convert` prepare data (see :mod:`mper.datasets`);
  :func:`synthesize_scans` writes raw scans and :func:`import_scans` imports them
  (:mod:`mper.datasets.scans`): :func:`imported_dataset` names the dataset of such a
  root, and a run on it keeps a copy of its plan, from which :func:`evaluate`,
  :func:`predict` and :func:`resume` find the dataset again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

import mper.datasets
from mper.data.files import check_writable, listed_names
from mper.data.imported import SCAN_CASES_DIR
from mper.data.raw_scans import DATASET_JSON, RAW_FOLDERS
from mper.data.scan_plan import PLAN_FILE, ScanPlan, parse_scan_plan, plan_path, read_plan, write_plan
from mper.data.synth_scans import synthesize_scans as write_synthetic_scans
from mper.datasets import (
    DatasetSpec,
    check_data_folder,
    check_dataset_root,
    dataset_names,
    detect_dataset,
    get_dataset,
    has_plan,
    register_plan,
)
from mper.datasets.registry import register_imported
from mper.datasets.scans import check_plan_against_cases, scan_spec
from mper.errors import CheckpointError, ConfigError, DataFormatError, MissingFileError, RunFolderError, UserError
from mper.eval.evaluate import EVALUATION_OUTPUTS, evaluate_cases, mean_dice
from mper.eval.figures import ImageWriter, add_figures
from mper.eval.folders import evaluate_folders as score_folders
from mper.eval.inference import ensemble
from mper.eval.predict import predict_path
from mper.eval.protocol import check_protocol
from mper.eval.report import MARKDOWN_FILE, METRICS_FILE, SPLIT_NAMES
from mper.eval.run_size import size_warnings
from mper.eval.scans import predict_scans
from mper.eval.tsne import require_figure_packages, sample_embeddings, save_tsne_figure
from mper.train.checkpoint import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    PRETRAIN_CHECKPOINT,
    load_checkpoint,
    non_finite_tensors,
)
from mper.train.config import (
    SUPERVISED_BASELINES,
    TrainConfig,
    load_config,
    merge,
    parse_override,
    read_preset,
    to_toml,
    with_prototypes,
)
from mper.train.config_checks import check_fold_chosen
from mper.train.diagnostics import TRAINING_RECORD, with_class_names
from mper.train.distributed import is_main_process, lost_peer_failure, process_group, shared_mean
from mper.train.loaders import (
    check_split,
    first_trained_on,
    labeled_pool,
    test_cases,
    training_cases,
    validation_cases,
)
from mper.train.lock import LOCK_FILE, run_folder_lock
from mper.train.loop import Validator
from mper.train.resume import checkpoint_to_resume, resumed_config
from mper.train.runner import check_machine, check_network, check_run, run_training
from mper.train.runtime import RUN_LOG_ONLY, TrainingAborted, TrainingInterrupted, resolve_device
from mper.train.usage import USAGE_FILE
from mper.versions import device_line, version_line

log = logging.getLogger(__name__)

WEIGHTS = ("student", "teacher")
#: Case lists ``evaluate`` scores: the test list, or the cases that selected checkpoints.
EVAL_SPLITS = tuple(SPLIT_NAMES)
#: The run's log in its folder.
RUN_LOG = "train.log"
#: Cases whose voxels the t-SNE map samples.
TSNE_CASES = 4
#: The t-SNE map ``mper-eval --tsne`` draws into its output folder.
TSNE_FIGURE = "tsne.png"
#: What ``mper-eval`` writes into its output folder (an earlier evaluation's it replaces).
EVAL_OUTPUTS = frozenset({*EVALUATION_OUTPUTS, TSNE_FIGURE})


def default_run_dir(config: TrainConfig) -> Path:
    """``runs/<dataset>-<preset>-<labeled>labeled`` (with ``-baseline`` for the labeled-only
    baseline, ``-bcp`` for BCP alone; ``runs/<dataset>-<preset>-all-labeled`` for the fully
    supervised one)."""
    if config.baseline == "full":
        return Path("runs") / f"{config.dataset}-{config.preset}-all-labeled"
    suffix = {"labeled-only": "-baseline", "bcp": "-bcp"}.get(config.baseline, "")
    return Path("runs") / f"{config.dataset}-{config.preset}-{config.labeled}labeled{suffix}"


def inference_options(config: TrainConfig) -> dict[str, Any]:
    """How :func:`mper.eval.inference.predict_volume` should run for this config
    (docs/method.md, "Evaluation"): windows (or slices) of the training patch size."""
    return {"patch_size": config.data.patch_size, "stride": config.eval.stride}


def validator(config: TrainConfig) -> Validator:
    """Mean foreground Dice of a network on the validation cases (see :mod:`mper.train.loaders`),
    shared among the training processes under torch.distributed."""
    cases = validation_cases(config)
    device = resolve_device(config.device)
    options = inference_options(config)

    def validate(net: nn.Module) -> float:
        return shared_mean(
            cases,
            lambda share: mean_dice(
                net,
                config.dataset,
                config.data_root,
                share,
                device=str(device),
                num_classes=config.num_classes,
                **options,
            ),
        )

    return validate


@contextmanager
def _run_logging(run_dir: Path) -> Iterator[None]:
    """Send the package's log records to ``run_dir/train.log`` while training; a run
    that fails leaves its reason there (a traceback unless it is a user's mistake)."""
    handler = logging.FileHandler(run_dir / RUN_LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_log = logging.getLogger("mper")
    previous_level = package_log.level
    package_log.addHandler(handler)
    package_log.setLevel(logging.INFO)
    try:
        yield
    except UserError as error:
        _log_to_file(handler, str(error))
        raise
    except Exception as error:
        lost = lost_peer_failure(error)  # said in one line, as on the console
        _log_to_file(handler, str(lost) if lost else "training failed", None if lost else sys.exc_info())
        raise
    except TrainingInterrupted:  # the trainer logged where it stopped and what it saved
        raise
    except KeyboardInterrupt:
        kept = run_dir / LAST_CHECKPOINT
        saved = f"{kept} holds the last complete checkpoint" if kept.exists() else "no checkpoint was written yet"
        _log_to_file(handler, f"stopped at once (a second Ctrl-C or SIGTERM, or one after the last iteration); {saved}")
        raise
    finally:
        package_log.removeHandler(handler)
        package_log.setLevel(previous_level)
        handler.close()


def _log_to_file(handler: logging.Handler, message: str, exc_info: Any = None) -> None:
    """An error record for the log file only: the console reports the error itself."""
    handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, message, (), exc_info))


def _log_run_header(config: TrainConfig, resume: bool) -> None:
    """Versions, device and (in train.log only) the resolved settings of a run."""
    log.info("%s: %s", "resuming" if resume else "starting", version_line("mper"))
    log.info("device: %s", device_line(resolve_device(config.device)))
    log.info("settings:\n%s", to_toml(config.to_dict()).rstrip(), extra=RUN_LOG_ONLY)


#: A run's settings as TOML, the file to read and edit (``--print-config`` prints the same).
RUN_CONFIG = "config.toml"
#: The same settings as JSON, written beside :data:`RUN_CONFIG` for programs to read.
RUN_CONFIG_JSON = "config.json"
#: The names of the cases a run trains, validates and is tested on, by role, written when
#: it starts: ``--resume`` refuses a data folder whose cases differ (a resumed run repeats
#: the interrupted one only on the same data, and is scored on the same test cases).
RUN_CASES = "cases.json"
#: Files that only a training run's folder holds: its lock, log, settings and checkpoints.
RUN_FILES = frozenset({LOCK_FILE, RUN_LOG, RUN_CONFIG, LAST_CHECKPOINT, BEST_CHECKPOINT, PRETRAIN_CHECKPOINT})


def _write_config(config: TrainConfig, run_dir: Path) -> None:
    values = config.to_dict()
    (run_dir / RUN_CONFIG).write_text(to_toml(values))
    (run_dir / RUN_CONFIG_JSON).write_text(json.dumps(values, indent=2) + "\n")


def _run_cases(config: TrainConfig) -> dict[str, list[str]]:
    """The cases (LA: case names; ACDC: slices to train on, frames to validate and test on)
    that ``config`` trains, validates and is tested on, by role."""
    labeled, unlabeled = training_cases(config)
    roles = {"labeled": labeled, "unlabeled": unlabeled, "validation": validation_cases(config)}
    return {**roles, "test": test_cases(config)}


def _write_run_cases(config: TrainConfig, run_dir: Path) -> None:
    (run_dir / RUN_CASES).write_text(json.dumps(_run_cases(config), indent=1) + "\n")


def check_same_cases(
    config: TrainConfig,
    run_dir: Path,
    trained_root: str,
    why: str = "a resumed run repeats the interrupted one only on the same data",
) -> None:
    """Refuse to resume the run in ``run_dir`` on ``config.data_root`` when its cases
    differ from those the run recorded when it started (a run started before the record
    was kept is not checked); ``mper-experiment`` refuses so a finished run it would count
    for a plan's other data folder."""
    record = run_dir / RUN_CASES
    try:
        trained = json.loads(record.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as error:
        raise RunFolderError(f"cannot resume in {run_dir}: {record} cannot be read ({error})") from error
    found = _run_cases(config)
    group_of = get_dataset(config.dataset).label_group
    differences = []
    for role, names in found.items():
        before = trained.get(role) if isinstance(trained, dict) else None
        if not isinstance(before, list) or before == names:
            continue
        gone, new = sorted(set(before) - set(names)), sorted(set(names) - set(before))
        parts = [f"{len(gone)} of its {len(before)} missing, e.g. {gone[0]}"] if gone else []
        parts += [f"{len(new)} new, e.g. {new[0]}"] if new else []
        # 2D networks train on slices (named apart from their case): counted as what they are
        sliced = role in ("labeled", "unlabeled") and any(group_of(name) != name for name in [*before, *names])
        unit = "slices" if sliced else "cases"
        differences.append(f"{role} {unit}: {', '.join(parts) or 'the same, in another order'}")
    if not differences:
        return
    found_here = f"({'; '.join(differences)}); {why}"
    if trained_root and Path(config.data_root).resolve() == Path(trained_root).resolve():  # changed in place
        raise ConfigError(
            f"{config.data_root} holds other cases than when the run in {run_dir} started on it {found_here}: "
            f"bring back the cases {record} lists (an earlier copy or import of the data) and give it as "
            "--data-root, or start a new run in another --out"
        )
    raise ConfigError(
        f"--data-root {config.data_root} holds other cases than the run in {run_dir} trained on {found_here}: give "
        f"--data-root the folder it trained on, {trained_root or 'its data root'}, or a copy of it"
    )


def _check_run_folder(run_dir: Path) -> None:
    """Refuse a ``run_dir`` that is a file, or a folder holding files but none a run writes
    (its lock, log, settings or checkpoints; a data folder given as ``--out``, say): the run would
    write among them, and over an imported dataset's ``plan.toml``. A run folder (one that
    failed early or is in use, too: the lock refuses the latter) is taken."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"--out {run_dir} is a file; choose a folder for the run")
    held = sorted(path.name for path in run_dir.iterdir()) if run_dir.is_dir() else []
    if held and not RUN_FILES & set(held):
        raise RunFolderError(
            f"--out {run_dir} holds files but no run (no {RUN_CONFIG}; it holds {listed_names(held)}): the run "
            "would write among them; choose a new or empty folder"
        )


def _make_run_dir(run_dir: Path) -> bool:
    """Create ``run_dir`` if needed; ``True`` if this call created it."""
    existed = run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunFolderError(
            f"cannot create the run folder {run_dir} ({error.strerror}); choose another --out"
        ) from error
    return not existed


def _remove_unstarted(run_dir: Path, created: bool) -> None:
    """Remove a run folder this run created, if it holds no checkpoint to resume from."""
    if created and not (run_dir / LAST_CHECKPOINT).exists():
        shutil.rmtree(run_dir, ignore_errors=True)


def check_settings(config: TrainConfig) -> None:
    """Raise :class:`~mper.errors.ConfigError` for the first invalid setting: those that
    :class:`~mper.train.config.TrainConfig` does not check when it is built, the evaluation
    protocol's (:func:`~mper.eval.protocol.check_protocol`, a layer above it)."""
    check_protocol(config.eval.postprocess, config.eval.empty_prediction)


def check_before_training(config: TrainConfig) -> None:
    """What :func:`train` refuses before it trains that neither the machine nor the contents
    of the data files decide: the settings (:func:`check_settings`), the network settings
    (:func:`~mper.train.runner.check_network`) and the data root's lists
    (:func:`~mper.train.loaders.check_split`: its dataset, ``labeled`` within range, the
    split). Reads the list files (and, for 2D imported scans, the case files' slice counts);
    ``mper-experiment`` runs it for every run of a plan before the first one trains."""
    check_settings(config)
    check_network(config)
    check_split(config)


def settings_toml(config: TrainConfig) -> str:
    """The settings of a run as ``mper-train --print-config`` prints them, checked as
    :func:`train` checks them before training, short of reading the data files: the
    device and the machine (:func:`~mper.train.runner.check_machine`), and, when a data
    folder is given, its lists (:func:`~mper.train.loaders.check_split`: ``labeled`` among them)."""
    check_settings(config)
    check_machine(config)
    if config.data_root:
        check_split(config)
    return to_toml(config.to_dict())


def train(config: TrainConfig, resume: bool = False) -> Path:
    """Train, evaluate the best checkpoint on the test split, and return the run folder.

    The run folder is ``config.out`` or :func:`default_run_dir`. A folder that already
    holds a run is only reused with ``resume`` (see :func:`resume`). A second Ctrl-C
    (or a first one while the final evaluation runs) raises
    :class:`~mper.train.runtime.TrainingAborted`.

    Started by ``torchrun`` on several processes, they train together
    (:mod:`mper.train.distributed`); process 0 alone writes the run folder and
    evaluates, the others return the folder once training is over.
    """
    check_settings(config)
    with process_group(config) as config:
        run_dir = Path(config.out) if config.out else default_run_dir(config)
        if not is_main_process():
            run_training(config, run_dir, validator(config), resume=resume)
            return run_dir
        return _train(config, run_dir, resume)


def _train(config: TrainConfig, run_dir: Path, resume: bool) -> Path:
    if (run_dir / LAST_CHECKPOINT).exists() and not resume:
        raise RunFolderError(
            f"{run_dir} already holds a training run; continue it with --resume or choose another --out"
        )
    _check_run_folder(run_dir)
    check_run(config)
    if not resume:
        config = dataclasses.replace(config, run_id=secrets.token_hex(8))
    created = _make_run_dir(run_dir)
    # a run refused by the lock leaves the folder alone: another run is using it
    with run_folder_lock(run_dir) as stale:
        try:
            _write_config(config, run_dir)
            _keep_plan(config, run_dir)
            if not resume:
                _write_run_cases(config, run_dir)
            # imported here: tensorboard's import takes half a second every other command would pay
            from torch.utils.tensorboard import SummaryWriter

            with _run_logging(run_dir), SummaryWriter(str(run_dir / "tensorboard")) as writer:
                _log_run_header(config, resume)
                if stale is not None:
                    log.warning(
                        "the session before (process %s on %s, started %s) ended without releasing %s: it was killed "
                        "or its machine stopped; the run goes on from its last complete checkpoint",
                        stale.get("pid"),
                        stale.get("host"),
                        stale.get("started"),
                        LOCK_FILE,
                    )
                for warning in size_warnings(config):
                    log.warning(warning)
                best = run_training(config, run_dir, validator(config), writer, resume=resume)
                _score_finished_run(config, run_dir, best, writer)
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt as interrupt:
            _remove_unstarted(run_dir, created)
            raise TrainingAborted(run_dir) from interrupt
    return run_dir


def _score_finished_run(config: TrainConfig, run_dir: Path, best: Path, writer: ImageWriter) -> None:
    """Evaluate the run's ``best`` checkpoint on :func:`final_split` into the run folder, its
    figures into TensorBoard and its metrics table into train.log."""
    split = final_split(config)
    log.info("evaluating %s on the %s split", best, split)
    result = _evaluate(
        best,
        data_root=None,
        split=split,
        out_dir=run_dir,
        device=config.device,
        weights="student",
        num_figures=config.eval.num_figures,
        report_extra=_run_record(run_dir, config),
    )
    add_figures(writer, result["figures"], split)
    log.info(
        "%s metrics (%s):\n%s",
        SPLIT_NAMES[split],
        run_dir / MARKDOWN_FILE,
        result["markdown"].rstrip(),
        extra=RUN_LOG_ONLY,
    )


def final_split(config: TrainConfig) -> str:
    """The split a finished run is scored on: the test cases, or the validation cases of a
    dataset without labeled test cases (an import whose ``imagesTs`` has no labels)."""
    if test_cases(config):
        return "test"
    log.warning("%s has no labeled test cases: the run is scored on its validation cases", config.data_root)
    return "val"


def _keep_plan(config: TrainConfig, run_dir: Path) -> None:
    """A run on an imported dataset keeps the plan it trained with (classes, channels,
    normalisation, spacing): evaluation and prediction read it from there."""
    plan = get_dataset(config.dataset).scans
    if plan is not None:
        write_plan(plan, run_dir, config.data_root)


def training_dataset(dataset: str | None, data_root: str | Path) -> str:
    """The dataset a new run on ``data_root`` trains on: ``dataset`` (a registered name), or,
    when ``None``, the one imported into ``data_root`` (registered from its plan)."""
    if dataset is not None:
        if has_plan(data_root):
            raise ConfigError(
                f"{data_root} holds a dataset imported by mper-data import (it has {PLAN_FILE}), not "
                f"{get_dataset(dataset).title} data: drop --dataset {dataset}, --data-root alone trains on it"
            )
        return dataset
    check_data_folder(data_root)
    if has_plan(data_root):
        return imported_dataset(data_root)
    above = Path(data_root).parent
    if has_plan(above):  # the import's cases/ folder, say
        raise ConfigError(
            f"{data_root} holds no {PLAN_FILE} of scans imported by mper-data import, but the folder above it "
            f"does: pass --data-root {above}"
        )
    raise ConfigError(f"--dataset is required: {data_root} holds no {PLAN_FILE} of scans imported by mper-data import")


def train_config(
    dataset: str | None,
    preset: str = "paper",
    overrides: Mapping[str, Any] | None = None,
    assignments: list[str] | tuple[str, ...] = (),
    labeled_all: bool = False,
) -> TrainConfig:
    """The settings of a new run, as ``mper-train`` makes them: ``preset`` of ``dataset``
    (``None``: the dataset imported into ``overrides["data_root"]``, see
    :func:`training_dataset`), then ``overrides`` (nested like the settings, e.g.
    ``{"data": {"fold": 2}}``), then the ``assignments`` of ``--set`` (``"optim.lr=0.02"``).
    ``labeled_all``: label every case that may be labeled (``--labeled all``)."""
    overrides = dict(overrides or {})
    data_root = overrides.get("data_root")
    if data_root is not None:
        dataset = training_dataset(dataset, data_root)
        _check_plan_preset(dataset, preset, data_root)
    elif dataset is None:
        raise ConfigError("a run needs a dataset, or the data root of scans imported by mper-data import")
    config = load_config(dataset, preset, overrides, assignments)
    if "fold" in overrides.get("data", {}):
        check_fold_chosen(config)
    if labeled_all:
        config = load_config(dataset, preset, {**overrides, "labeled": labeled_all_count(config)}, assignments)
    return config


def _check_plan_preset(dataset: str, preset: str, data_root: str | Path) -> None:
    """The settings an imported dataset's plan gives ``preset``, checked before the options
    and ``--set`` apply: a bad value in the plan is named with its file, not as if typed.
    Each table of the stack is checked as it applies, so a bad value that a later table
    overrides (``[3d.paper]``'s, under ``--preset demo``) is refused too."""
    plan = get_dataset(dataset).scans
    if plan is None:
        return
    names = list(dict.fromkeys(["paper", *preset.split("+")]))
    for count in range(1, len(names) + 1):
        # a preset name that does not exist is the option's mistake, raised by read_preset
        values = read_preset(dataset, "+".join(names[1:count]) or "paper")
        try:
            TrainConfig.from_dict(values)
        except ConfigError as error:
            tables = ", ".join(f"[{plan.dims}.{name}]" for name in names[:count])
            raise ConfigError(
                f"{Path(data_root) / PLAN_FILE}: a value of its settings tables ({tables}) is refused: {error}; "
                "fix it there"
            ) from error


def imported_dataset(data_root: str | Path) -> str:
    """The name of the dataset imported into ``data_root``, registered from its plan."""
    return register_plan(data_root).name


def _register_trained_dataset(state: dict[str, Any], checkpoint: Path) -> None:
    """Register the imported dataset that the checkpoint ``state`` (read from ``checkpoint``)
    trained on: from the plan its run folder kept beside it, else from its data root's,
    either refused when it reads scans otherwise than the plan the checkpoint recorded;
    built-in datasets need nothing. Raises :class:`~mper.errors.MissingFileError` when
    neither holds the plan of a dataset that is not registered."""
    values = state["config"]
    data_root, name = values.get("data_root"), values.get("dataset")
    for folder, copy_of in ((checkpoint.parent, data_root), (data_root, None)):
        plan = read_plan(folder, copy_of) if folder and has_plan(folder) else None
        if plan is not None and plan.name == name:
            restore = f"restore it from {plan_path(copy_of)}" if copy_of else "restore the values the import wrote"
            _check_recorded_plan(plan, state["scan_plan"], plan_path(folder), checkpoint, restore)
            register_imported(scan_spec(plan))
            return
    if name not in dataset_names():
        beside = checkpoint.parent / PLAN_FILE
        found = f"{beside} is the plan of another dataset" if beside.exists() else f"{beside} not found"
        raise MissingFileError(
            f"{found}: {checkpoint} was trained on the imported dataset {name}, whose plan a run keeps in its "
            f"folder, and its data folder {data_root or '(none)'} holds none of that name either; copy the "
            f"plan.toml of the run folder it came from next to it"
        )


#: What of an imported dataset's plan, beyond what the import fixed, the network and
#: prediction read scans by.
PLAN_READING = ("dims", "slice_axis", "layout", "file_ending")


def _check_recorded_plan(plan: ScanPlan, recorded: str | None, path: Path, checkpoint: Path, restore: str) -> None:
    """Refuse ``plan`` (read from ``path``; ``restore`` says how to mend it) when it reads
    scans otherwise than ``recorded``, the text of the plan ``checkpoint`` trained with
    (``None``: not recorded, nothing to check): a plan.toml edited after training made
    mper-predict preprocess raw scans otherwise than the network learnt, or read them with
    another network, with exit 0."""
    if recorded is None:
        return
    trained = parse_scan_plan(recorded, f"the plan recorded in {checkpoint}")
    read_otherwise = (  # how the network and prediction read scans, beyond what the import fixed
        f"{key} = {getattr(plan, key)!r}, where it trained with {key} = {getattr(trained, key)!r}"
        for key in PLAN_READING
        if getattr(plan, key) != getattr(trained, key)
    )
    difference = _import_difference(plan, trained) or next(read_otherwise, "")
    if difference:
        raise ConfigError(
            f"{path} differs from the plan {checkpoint} trained with (recorded in it): {difference}; the network "
            f"reads scans only as it trained: {restore}, or train again"
        )


def labeled_all_count(config: TrainConfig) -> int:
    """What ``--labeled all`` labels: every labeling unit (case, patient) of the training
    items that may be labeled (all but the validation fold or the held-out cases)."""
    return len(set(map(get_dataset(config.dataset).label_group, labeled_pool(config))))


def _run_record(run_dir: Path, config: TrainConfig) -> dict[str, Any]:
    """What a trained run's ``metrics.json`` holds besides its scores: ``"training"``, the
    record of its validations (``training.json``, see :mod:`mper.train.diagnostics`),
    ``"sessions"`` (who trained it, on what) and, when it has prototypes,
    ``"prototype_usage"`` (the self-training's usage summary)."""
    record = json.loads((run_dir / TRAINING_RECORD).read_text())
    found = {
        "training": with_class_names(record, get_dataset(config.dataset).class_names),
        "sessions": load_checkpoint(run_dir / LAST_CHECKPOINT)["sessions"],
    }
    usage_file = run_dir / USAGE_FILE
    if usage_file.exists():
        found["prototype_usage"] = json.loads(usage_file.read_text())
    return found


def resume(
    run_dir: str | Path,
    device: str | None = None,
    ops: str | None = None,
    overrides: dict[str, Any] | None = None,
    assignments: Sequence[str] = (),
) -> Path:
    """Continue the run in ``run_dir`` from its ``last.pt`` with the config saved there.

    ``device``, ``ops``, ``overrides`` (a nested dict) and ``assignments``
    (``"section.key=value"``) may change what a resumed run can change (see
    :mod:`mper.train.resume`: e.g. more iterations); anything else is refused with
    :class:`~mper.errors.ConfigError`. Returns the run folder.
    """
    run_dir = Path(run_dir)
    last = checkpoint_to_resume(run_dir)
    state = load_checkpoint(last)
    _check_one_run(run_dir, state["config"])
    _register_trained_dataset(state, last)
    changes = {key: value for key, value in (("device", device), ("ops", ops)) if value is not None}
    for change in [overrides or {}, *map(parse_override, assignments), {"out": str(run_dir)}]:
        changes = merge(changes, change)
    config = resumed_config(state, changes)
    trained_root = state["config"].get("data_root", "")
    _check_data_root(config.data_root, trained_root, config.dataset, "the run trains on")
    check_same_cases(config, run_dir, trained_root)
    return train(config, resume=True)


def _check_one_run(run_dir: Path, saved: dict[str, Any]) -> None:
    """Refuse to resume when ``run_dir/last.pt`` (whose settings are ``saved``) and the
    folder's ``config.toml`` or best checkpoints belong to different runs (their
    ``run_id`` differs): resuming would mix two runs in one folder."""
    readers = {run_dir / RUN_CONFIG_JSON: lambda path: json.loads(path.read_text())}  # written with RUN_CONFIG
    readers.update(
        {
            run_dir / name: lambda path: load_checkpoint(path)["config"]
            for name in (PRETRAIN_CHECKPOINT, BEST_CHECKPOINT)
        }
    )
    for path, read in readers.items():
        if not path.exists():
            continue
        try:
            other = read(path)
        except (UserError, ValueError, KeyError) as error:
            raise RunFolderError(f"cannot resume in {run_dir}: {path.name} cannot be read ({error})") from error
        if other.get("run_id", "") != saved.get("run_id", ""):
            raise RunFolderError(
                f"{run_dir / LAST_CHECKPOINT} belongs to another run than {path.name} there ({_run_name(saved)} "
                f"against {_run_name(other)}); resuming would mix two runs in one folder. Put back this run's "
                "last.pt, or resume the other run in a folder of its own"
            )


def _run_name(config: dict[str, Any]) -> str:
    return f"run {config.get('run_id') or 'without an id'} on {config.get('dataset', '?')}"


def load_network(
    checkpoint: str | Path, device: str = "auto", weights: str = "student"
) -> tuple[nn.Module, TrainConfig]:
    """The network of a checkpoint (its student or teacher weights) and its config."""
    net, config, _ = _load_network_and_state(checkpoint, device, weights)
    return net, config


def _load_network_and_state(
    checkpoint: str | Path, device: str, weights: str
) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """:func:`load_network`, and the checkpoint's whole state."""
    if weights not in WEIGHTS:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHTS)}; got {weights!r}")
    state = load_checkpoint(checkpoint)
    _register_trained_dataset(state, Path(checkpoint))
    if state[weights] is None:
        raise CheckpointError(
            f"{checkpoint} holds no {weights} weights (pre-training and baseline runs have no "
            "teacher); use weights='student'"
        )
    bad = non_finite_tensors(state[weights])
    if bad:
        raise CheckpointError(
            f"{checkpoint}: {len(bad)} tensor(s) of its {weights} weights hold NaN or infinite values "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); it cannot segment anything: use "
            "another checkpoint (mper-train never writes such weights; this file was changed or damaged)"
        )
    try:
        config = TrainConfig.from_dict(state["config"])
    except ConfigError as error:
        raise CheckpointError(f"{checkpoint} holds settings this mper cannot use: {error}") from error
    net = get_dataset(config.dataset).build_network(config.num_classes, **config.network)
    try:
        net.load_state_dict(state[weights])
    except RuntimeError as error:
        raise CheckpointError(
            f"{checkpoint}: its {weights} weights do not fit its own network settings ({error})"
        ) from error
    return net.to(resolve_device(device)).eval(), config, state


def _check_data_root(data_root: str, trained_root: str, dataset: str, trained_by: str) -> None:
    """Refuse ``data_root`` unless it holds ``dataset``, which a checkpoint or run trained on
    in ``trained_root``; ``trained_by`` says who expects it ("the run trains on").

    A folder other than ``trained_root`` must hold the same dataset: a built-in one in its
    layout, or an imported one whose files are the same import's (a moved or copied
    import: the same channels, preprocessing and number of classes, whatever the plan's
    editable name, dims and class names say). Raises :class:`~mper.errors.UserError`
    naming both datasets.
    """
    if data_root == trained_root and not Path(data_root).is_absolute() and not Path(data_root).is_dir():
        # a path given relative to where training ran, used from another folder
        raise MissingFileError(
            f"{trained_by} {dataset} in {data_root}, a path relative to the folder training ran in, and "
            f"{Path.cwd()} holds no {data_root}: run the command from that folder, or pass --data-root with the "
            "data folder's path from here"
        )
    check_dataset_root(data_root, dataset, f"{trained_by} {dataset}")
    spec = get_dataset(dataset)
    found = read_plan(data_root) if spec.scans is not None and has_plan(data_root) else None
    if found is not None:  # an edited fixed value, named as mper-train names it
        check_plan_against_cases(found, data_root)
    if trained_root and Path(data_root).resolve() == Path(trained_root).resolve():
        return
    if spec.scans is None:  # its layout was checked
        return
    advice = f"give --data-root the folder that {spec.name} was imported into (or a copy of it)"
    if found is None:
        raise ConfigError(
            f"{data_root} holds no {PLAN_FILE} of an imported dataset, but {trained_by} {_described(spec.scans)}; "
            f"{advice}"
        )
    difference = _import_difference(found, spec.scans)
    if difference:
        raise ConfigError(
            f"{data_root} holds the imported dataset {_described(found)}, but {trained_by} "
            f"{_described(spec.scans)}, {difference}; {advice}"
        )


def _use_data_root(config: TrainConfig, data_root: str | Path | None, checkpoint: str | Path) -> None:
    """Point ``config``, a checkpoint's settings, at ``data_root`` (default: the folder it
    trained on), once :func:`_check_data_root` has found the checkpoint's dataset there."""
    trained_root, config.data_root = config.data_root, str(data_root or config.data_root)
    _check_data_root(config.data_root, trained_root, config.dataset, f"{checkpoint} was trained on")


def _import_difference(found: ScanPlan, trained: ScanPlan) -> str:
    """How the files of the import ``found`` differ from those of ``trained`` ("" when they
    are the same import's): what only importing again changes, not the editable name, dims
    and class names."""
    if found.channels != trained.channels:
        return f"another list of channels ({', '.join(found.channels)}, not {', '.join(trained.channels)})"
    if len(found.class_names) != len(trained.class_names):
        return f"another number of classes ({len(found.class_names)}, not {len(trained.class_names)})"
    ours, theirs = found.rules, trained.rules
    if ours.spacing != theirs.spacing:
        shown = _millimetres(ours.spacing, theirs.spacing), _millimetres(theirs.spacing, ours.spacing)
        return f"another target spacing ({shown[0]} mm, not {shown[1]} mm)"
    if ours.schemes != theirs.schemes:
        return f"another normalisation ({', '.join(ours.schemes)}, not {', '.join(theirs.schemes)})"
    if ours.mask_for_norm != theirs.mask_for_norm:
        return f"mask_for_norm = {str(ours.mask_for_norm).lower()}, not {str(theirs.mask_for_norm).lower()}"
    for index, (mine, theirs_statistics) in enumerate(zip(ours.statistics, theirs.statistics)):
        if mine is None or theirs_statistics is None or mine == theirs_statistics:
            continue
        for key, planned, was in (
            ("mean", mine.mean, theirs_statistics.mean),
            ("std", mine.std, theirs_statistics.std),
            ("clip", [mine.low, mine.high], [theirs_statistics.low, theirs_statistics.high]),
        ):
            if planned != was:
                return f"channel {index} ({found.channels[index]}) has {key} = {planned}, not {key} = {was}"
    return ""


def _millimetres(spacing: Sequence[float], other: Sequence[float]) -> str:
    """``spacing`` with as many digits as tell it from ``other`` (at least 4)."""
    for digits in range(4, 18):
        shown = [f"{value:.{digits}g}" for value in spacing]
        if shown != [f"{value:.{digits}g}" for value in other]:
            break
    return " x ".join(shown)


def _described(plan: ScanPlan) -> str:
    """What identifies an imported dataset: its name, dims, classes and channels."""
    return f"{plan.name} ({plan.dims}; classes {', '.join(plan.class_names)}; channels {', '.join(plan.channels)})"


def _table_columns(config: TrainConfig) -> tuple[str, str, str]:
    """Method, labeled and unlabeled counts for the results table, in the dataset's label
    unit (patients for ACDC); a count is ``-`` when the training lists are not at hand."""
    spec = get_dataset(config.dataset)
    supervised = config.baseline in SUPERVISED_BASELINES
    method = spec.network.display_name if supervised else "BCP" if config.baseline == "bcp" else "MPER"
    try:
        labeled, unlabeled = training_cases(config)
    except UserError:
        return method, "-" if config.baseline == "full" else str(config.labeled), "0" if supervised else "-"
    labeled_units = set(map(spec.label_group, labeled))
    unlabeled_units = set(map(spec.label_group, unlabeled)) - labeled_units
    return method, str(len(labeled_units)), str(0 if supervised else len(unlabeled_units))


def evaluate(
    checkpoint: str | Path,
    data_root: str | Path | None = None,
    split: str = "test",
    out_dir: str | Path | None = None,
    device: str = "auto",
    weights: str = "student",
    num_figures: int | None = None,
    report_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score a checkpoint on ``split`` of ``data_root`` (default: the training data).

    ``split`` is ``"test"`` (``test.list``; a root holding only that list and its
    volumes is enough) or ``"val"``: the cases that selected the best checkpoint
    during training (ACDC ``val.list``; LA the held-out end of ``train.list``, or
    ``test.list`` under ``data.val_split = "test"``). With ``out_dir``, writes
    ``metrics.json``, ``metrics.md`` and ``figures/`` (``num_figures`` cases drawn, by
    default the run's ``eval.num_figures``; ``metrics.json`` with the entries of
    ``report_extra`` besides the scores). Returns
    ``{"per_case", "summary", "markdown", "figures"}`` (see :func:`mper.eval.evaluate.evaluate_cases`).
    """
    _check_split(split)
    if num_figures is not None and num_figures < 0:
        raise ConfigError(f"the number of figures (mper-eval --figures) must be 0 or more, got {num_figures}")
    if out_dir is not None:
        check_eval_folder(out_dir, split)
    return _evaluate(checkpoint, data_root, split, out_dir, device, weights, num_figures, report_extra)


def _check_split(split: str) -> None:
    """Refuse a ``split`` that is none of :data:`EVAL_SPLITS`."""
    if split not in EVAL_SPLITS:
        raise ConfigError(f"split must be one of {', '.join(EVAL_SPLITS)}; got {split!r}")


def check_eval_folder(out_dir: str | Path, split: str = "test") -> None:
    """Refuse ``out_dir``, where :func:`evaluate` is to write, unless it is missing, empty or
    holds only what ``mper-eval`` writes (:data:`EVAL_OUTPUTS`: an earlier evaluation's,
    which is replaced): a training run's folder, whose ``metrics.json`` is the run's own
    score (and tells a sweep that the run is finished), a dataset's folder, or a folder
    holding any other file. Creates nothing.

    Raises:
        RunFolderError: ``out_dir`` is a file, or a folder holding files mper-eval does not write.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file; choose a folder for the evaluation (it is made if missing)")
    check_writable(out, "--out")
    _check_outside_dataset_folders(out, "--out", "the evaluation's files")
    held = sorted(path.name for path in out.iterdir()) if out.is_dir() else []
    others = [name for name in held if name not in EVAL_OUTPUTS and not name.startswith(".")]  # .DS_Store and such
    if not others:
        return
    advice = "choose a new or empty folder, or one an earlier mper-eval wrote"
    run_files = sorted(RUN_FILES & set(held))
    if run_files:
        raise RunFolderError(
            f"--out {out} holds a training run (it has {listed_names(run_files)}): the evaluation would replace the "
            f"run's own {METRICS_FILE} and figures; give the evaluation a folder of its own, e.g. "
            f"--out {default_eval_folder(out, split)}"
        )
    if _holds_dataset(out):
        raise RunFolderError(
            f"--out {out} is a dataset's folder (it holds {listed_names(held)}): the evaluation would write among "
            f"its data; {advice}"
        )
    raise RunFolderError(
        f"--out {out} holds files mper-eval does not write ({listed_names(others)}): the evaluation would write "
        f"among them; {advice}"
    )


def default_eval_folder(run_dir: str | Path, split: str) -> Path:
    """Where ``mper-eval`` scores a checkpoint of the run folder ``run_dir`` on ``split`` by
    default: ``eval-<split>`` inside it, apart from the run's own metrics."""
    return Path(run_dir) / f"eval-{split}"


#: The folder :func:`evaluate_folders` writes into by default, beside the predictions: ``<name>-metrics``.
FOLDER_METRICS_SUFFIX = "-metrics"


def default_folder_metrics(predictions: str | Path) -> Path:
    """Where :func:`evaluate_folders` writes by default: ``<predictions name>-metrics``
    beside the predictions folder."""
    folder = Path(predictions).resolve()
    return folder.parent / f"{folder.name}{FOLDER_METRICS_SUFFIX}"


def evaluate_folders(
    predictions: str | Path, labels: str | Path, out_dir: str | Path | None = None, **options: Any
) -> dict[str, Any]:
    """Score the label maps of the folder ``predictions`` against those of ``labels``
    (:func:`mper.eval.folders.evaluate_folders`, which takes ``options``: ``dataset_json``,
    ``empty_prediction``), writing ``metrics.json`` and ``metrics.md`` into ``out_dir``
    (default :func:`default_folder_metrics`): a folder outside both inputs, new, empty or
    an earlier evaluation's (:func:`check_eval_folder`), checked before anything is read.
    Returns ``{"per_case", "summary", "markdown", "out"}``."""
    out = Path(out_dir) if out_dir is not None else default_folder_metrics(predictions)
    for option, folder in (("--predictions", predictions), ("--labels", labels)):
        if out.resolve().is_relative_to(Path(folder).resolve()):
            given = f"--out {out}" if out_dir is not None else f"the default --out, {out} (beside the predictions),"
            raise RunFolderError(
                f"{given} lies in the {option} folder {folder}: the report would lie among the label maps; "
                f"{'choose' if out_dir is not None else 'give --out DIR,'} a folder outside both inputs"
            )
    check_eval_folder(out)
    return {**score_folders(predictions, labels, out, **options), "out": out}


def _evaluate(
    checkpoint: str | Path,
    data_root: str | Path | None,
    split: str,
    out_dir: str | Path | None,
    device: str,
    weights: str,
    num_figures: int | None,
    report_extra: dict[str, Any] | None,
) -> dict[str, Any]:
    """:func:`evaluate`, into any ``out_dir``: the run's own folder when training ends."""
    net, config, state = _load_network_and_state(checkpoint, device, weights)
    method, labeled, unlabeled = _table_columns(config)
    _use_data_root(config, data_root, checkpoint)
    if split == "test" and not test_cases(config):
        raise ConfigError(
            f"{config.data_root} has no labeled test cases (imagesTs with labelsTs when imported); "
            "score the validation cases with split 'val' (mper-eval --split val)"
        )
    cases = validation_cases(config) if split == "val" else None
    scored = cases if cases is not None else test_cases(config)
    _check_not_trained_on(config, Path(checkpoint), state["trained_cases"], scored, split)
    return evaluate_cases(
        net,
        config.dataset,
        config.data_root,
        cases=cases,
        split=split,
        out_dir=out_dir,
        device=str(resolve_device(device)),
        num_figures=config.eval.num_figures if num_figures is None else num_figures,
        method=method,
        labeled=labeled,
        unlabeled=unlabeled,
        num_classes=config.num_classes,
        postprocess=config.eval.postprocess,
        empty_prediction=config.eval.empty_prediction,
        ops=config.ops,
        report_extra=report_extra,
        **inference_options(config),
    )


def _check_not_trained_on(
    config: TrainConfig, checkpoint: Path, trained_cases: Any, scored: list[str], split: str
) -> None:
    """Refuse to score a case (for ACDC, a patient) ``checkpoint`` learnt from: one it
    records training on (``trained_cases``; ``None`` in older checkpoints), one its run
    recorded training on (:data:`RUN_CASES` beside it), or one the training list of the data
    folder holds (a folder whose lists were edited since, or another split of the data):
    its score would not measure the model on unseen data, with exit 0."""
    sources: list[tuple[list[str], str]] = []
    if isinstance(trained_cases, list):
        names = [name for name in trained_cases if isinstance(name, str)]
        sources.append((names, "the checkpoint lists it among the cases it trained on"))
    record = checkpoint.parent / RUN_CASES
    try:
        recorded = json.loads(record.read_text())
    except (OSError, ValueError):  # no record (an older run, a copied checkpoint): the lists alone tell
        recorded = None
    if isinstance(recorded, dict):
        roles = ("labeled", "unlabeled")
        names = [name for role in roles for name in recorded.get(role) or [] if isinstance(name, str)]
        sources.append((names, f"{record} lists it among the cases the run trained on"))
    try:
        labeled, unlabeled = training_cases(config)
        sources.append((labeled + unlabeled, f"the training list of {config.data_root} holds it"))
    except UserError:  # a folder of test cases alone, or too few cases for the run's labeled count
        pass
    for names, why in sources:
        found = first_trained_on(config, scored, names)
        if found is not None:
            raise DataFormatError(
                f"{config.data_root}: {split} case {found[0]} is one {checkpoint} was trained on ({why}); a scored "
                "case must be one the model never learnt from: remove it from the list, or score another checkpoint"
            )


def tsne(
    checkpoint: str | Path,
    out_path: str | Path,
    data_root: str | Path | None = None,
    split: str = "test",
    max_cases: int = TSNE_CASES,
    device: str = "auto",
    weights: str = "student",
    seed: int = 0,
    title: str | None = None,
) -> Path:
    """Draw the t-SNE map of a checkpoint's voxel embeddings and prototypes (see
    :mod:`mper.eval.tsne`) on the first ``max_cases`` cases of ``split``; returns the PNG.
    ``title`` names the model (default: the checkpoint's path)."""
    require_figure_packages()
    _check_split(split)
    net, config = load_network(checkpoint, device, weights)
    _use_data_root(config, data_root, checkpoint)
    cases = (validation_cases(config) if split == "val" else test_cases(config))[:max_cases]
    spec = get_dataset(config.dataset)
    volumes = [spec.load_volume(config.data_root, case) for case in cases]
    bank = load_checkpoint(checkpoint)["bank"]
    # BCP alone keeps an untouched (all-zero) bank: no prototypes to mark
    prototypes = bank["prototypes"].numpy() if bank is not None and with_prototypes(config) else None
    features, classes = sample_embeddings(
        net, volumes, spec, config.num_classes, config.data.patch_size, resolve_device(device), seed=seed
    )
    title = f"{title or checkpoint}\n{len(features)} voxels of {len(cases)} {split} case(s)"
    return save_tsne_figure(
        features, classes, prototypes, config.prototypes.per_class, spec.class_names, out_path, title, seed
    )


def _holds_dataset(folder: Path) -> bool:
    """Whether ``folder`` is a dataset's: LA/ACDC data or lists, an import (a run on one
    holds a copy of its plan too), or a raw dataset."""
    names = {path.name for path in folder.iterdir()} if folder.is_dir() else set()
    imported = PLAN_FILE in names and not RUN_FILES & names
    lists = any(name.endswith(".list") for name in names)
    return lists or imported or detect_dataset(folder) is not None or DATASET_JSON in names


def _is_dataset_root(folder: Path) -> bool:
    """Whether ``folder`` is the root of LA, ACDC or imported data: its case folder (with the
    plan, for an import) and its ``test.list``, which all three layouts hold. Stricter than :func:`_holds_dataset`, for
    the folders above an output: a project folder holding ``data/`` is none."""
    try:
        imported = (folder / PLAN_FILE).is_file() and (folder / SCAN_CASES_DIR).is_dir()
        return (folder / "test.list").is_file() and (imported or detect_dataset(folder) is not None)
    except OSError:  # a folder above that cannot be read holds nothing this check could name
        return False


def _check_output_outside_data(output: str | Path) -> None:
    """Refuse an ``output`` folder that is a dataset's folder or one of a raw dataset's
    (``labelsTs/``: its ground truth): label maps written there would replace its files or
    join them, and the next import or training would read them as data."""
    labels = Path(output).resolve()
    if labels.is_dir() and _holds_dataset(labels):
        raise RunFolderError(
            f"--output {output} is a dataset's folder: the label maps would lie among its data; choose a folder of "
            "their own"
        )
    _check_outside_dataset_folders(output, "--output", "the label maps")


def _check_outside_dataset_folders(output: str | Path, option: str, written: str) -> None:
    """Refuse an ``output`` folder (given as ``option``; ``written`` says what goes there)
    that is or lies in one of a raw dataset's folders, or lies inside the root of LA, ACDC
    or imported data."""
    resolved = Path(output).resolve()
    for folder in (resolved, *resolved.parents):
        if folder.name in RAW_FOLDERS and (folder.parent / DATASET_JSON).is_file():
            where = "is" if folder == resolved else "lies in"
            raise RunFolderError(
                f"{option} {output} {where} the {folder.name}/ folder of the raw dataset {folder.parent}: {written} "
                "would replace or join its files, read as data by the next import; choose a folder outside these"
            )
        if folder != resolved and _is_dataset_root(folder):
            raise RunFolderError(
                f"{option} {output} lies inside the dataset folder {folder}: {written} would lie among its data; "
                "choose a folder outside it"
            )


def _check_output_apart(input_path: str | Path, output: str | Path) -> None:
    """Refuse an ``output`` folder that is, or lies in, the folder of the scans: the
    ``input_path`` folder, or the one holding the ``input_path`` file. Label maps written
    among the scans would be read as scans by the next prediction or import."""
    scans = Path(input_path).resolve()
    if scans.is_file():
        scans, named = scans.parent, f"the folder of the --input {input_path}"
    else:
        named = f"the --input folder {input_path}"
    labels = Path(output).resolve()
    if labels == scans:
        relation = f"is {named}"
    elif labels.is_relative_to(scans):
        relation = f"is inside {named}"
    else:
        return
    raise RunFolderError(
        f"--output {output} {relation}: the label maps would lie among the scans, where a later mper-predict or "
        "mper-data import reads them as scans; choose an output folder outside it"
    )


def _ensemble_difference(first: tuple[TrainConfig, DatasetSpec], other: tuple[TrainConfig, DatasetSpec]) -> str:
    """What two checkpoints' models (their settings and dataset specs) differ in that an
    ensemble needs them to share ("" when nothing): the dataset, its classes and channels,
    the plan an imported dataset's scans are preprocessed by, the inference windows
    (patch size, stride) and the post-processing; the network's size may differ."""
    (config, spec), (other_config, other_spec) = first, other
    if config.dataset != other_config.dataset:
        return (
            f"the dataset ({config.dataset} of {config.num_classes} classes and {other_config.dataset} of "
            f"{other_config.num_classes})"
        )
    values: list[tuple[str, Any, Any]] = [
        ("the number of classes", config.num_classes, other_config.num_classes),
        ("the number of input channels", spec.in_channels, other_spec.in_channels),
    ]
    if spec.scans is not None and other_spec.scans is not None:
        difference = _import_difference(spec.scans, other_spec.scans)
        if difference:
            return f"the plan of the imported scans ({difference})"
        values += [
            (f"the plan's {key}", getattr(spec.scans, key), getattr(other_spec.scans, key)) for key in PLAN_READING
        ]
    values += [
        ("the patch size (the window of inference)", config.data.patch_size, other_config.data.patch_size),
        ("eval.stride", config.eval.stride, other_config.eval.stride),
        ("eval.postprocess", config.eval.postprocess, other_config.eval.postprocess),
    ]
    return next((f"{name} ({mine} and {theirs})" for name, mine, theirs in values if mine != theirs), "")


def load_ensemble(
    checkpoints: Sequence[str | Path], device: str = "auto", weights: str = "student", mirror: bool = False
) -> tuple[nn.Module, TrainConfig]:
    """The networks of ``checkpoints`` (each its ``weights``) as one model and the first's
    settings: the network itself for one checkpoint without ``mirror``, else an
    :class:`~mper.eval.inference.Ensemble` that averages their softmax probabilities, with
    ``mirror`` over the flips of the axes the dataset's training flips (``flip_axes`` of its
    spec). Checkpoints of another dataset, plan, class count, patch size, stride or
    post-processing than the first are refused with :class:`~mper.errors.CheckpointError`
    naming both and what differs."""
    if not checkpoints:
        raise ConfigError("give at least one checkpoint")
    nets: list[nn.Module] = []
    models: list[tuple[TrainConfig, DatasetSpec]] = []
    for checkpoint in checkpoints:
        net, config = load_network(checkpoint, device, weights)
        model = (config, get_dataset(config.dataset))  # the spec as this checkpoint registered it
        difference = _ensemble_difference(models[0], model) if models else ""
        if difference:
            raise CheckpointError(
                f"{checkpoints[0]} and {checkpoint} cannot be ensembled: they differ in {difference}; give "
                "checkpoints of one dataset, trained with one plan and patch size (e.g. the folds of one "
                "cross-validation)"
            )
        nets.append(net)
        models.append(model)
    config, spec = models[0]
    return ensemble(nets, spec.flip_axes if mirror else ()), config


def predict(
    checkpoint: str | Path | Sequence[str | Path],
    input_path: str | Path,
    output: str | Path,
    device: str = "auto",
    weights: str = "student",
    force: bool = False,
    mirror: bool = False,
) -> list[Path]:
    """Segment an image file or every such file under a folder; returns the written label
    maps (on the input's grid: NIfTI with its header for NIfTI/HDF5 inputs, an imported
    scans' model's in the input's format), post-processed by the checkpoint's
    ``eval.postprocess`` as :func:`evaluate` does; ``force`` segments volumes whose axis
    order looks wrong, and imported scans with more channel files than the model takes.
    ``output`` must lie outside the scans' folder (``input_path``, or the folder of an
    ``input_path`` file) and outside a dataset's folders, checked before the checkpoint
    is read. Several checkpoints (a sequence) of one dataset are ensembled: the label is
    the argmax of the mean of their softmax probabilities; ``mirror`` averages over the
    flips of the axes training flips as well (not what :func:`evaluate` scores); see
    :func:`load_ensemble`. See :func:`mper.eval.predict.predict_path`."""
    checkpoints = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
    if Path(output).exists() and not Path(output).is_dir():
        raise RunFolderError(f"the output {output} is a file; give a folder for the label maps (it is made if missing)")
    _check_output_apart(input_path, output)
    _check_output_outside_data(output)
    check_writable(output, "--output")
    net, config = load_ensemble(checkpoints, device, weights, mirror)
    if get_dataset(config.dataset).scans is not None:
        return predict_scans(
            net,
            input_path,
            config.dataset,
            output,
            config.num_classes,
            config.eval.postprocess,
            config.ops,
            force,
            device=str(resolve_device(device)),
            **inference_options(config),
        )
    return predict_path(
        net,
        input_path,
        config.dataset,
        output,
        device=str(resolve_device(device)),
        force=force,
        num_classes=config.num_classes,
        postprocess=config.eval.postprocess,
        ops=config.ops,
        **inference_options(config),
    )


def synthesize(
    dataset: str,
    out: str | Path,
    cases: int | None = None,
    seed: int = 0,
    size: tuple[int, ...] | None = None,
    family: str | None = None,
) -> Path:
    """Write synthetic data in the layout of ``dataset`` (see :func:`mper.datasets.synthesize`)."""
    return mper.datasets.synthesize(dataset, out, cases=cases, seed=seed, size=size, family=family)


def convert(
    dataset: str, source: str | Path, out: str | Path, split_from: str | Path | None = None, seed: int = 0
) -> Path:
    """Turn the raw public download into the h5 layout (see :func:`mper.datasets.convert`)."""
    return mper.datasets.convert(dataset, source, out, split_from=split_from, seed=seed)


def synthesize_scans(
    out: str | Path, layout: str, cases: int | None = None, seed: int = 0, size: tuple[int, ...] | None = None
) -> Path:
    """Write synthetic raw scans in the nnU-Net v2 or Decathlon layout (see
    :func:`mper.data.synth_scans.synthesize_scans`; ``None`` takes its defaults)."""
    options: dict[str, Any] = {key: value for key, value in (("cases", cases), ("size", size)) if value is not None}
    return write_synthetic_scans(out, layout, seed=seed, **options)


def import_scans(
    source: str | Path,
    out: str | Path,
    spacing: Sequence[float] | None = None,
    dims: str | None = None,
    memory_gb: float | None = None,
    unlabeled: str | Path | None = None,
) -> Path:
    """Import a raw dataset of one's own scans (see :func:`mper.datasets.import_scans`;
    ``None`` takes its defaults) and return the dataset root."""
    options: dict[str, Any] = {} if memory_gb is None else {"memory_gb": memory_gb}
    return mper.datasets.import_scans(source, out, spacing=spacing, dims=dims, unlabeled=unlabeled, **options)
