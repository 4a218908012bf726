"""Command-line entry points: ``mper-train``, ``mper-eval``, ``mper-predict``, ``mper-data``,
``mper-experiment``.

Each parses its arguments and calls one function of :mod:`mper.pipeline` (or
:mod:`mper.experiment`).
"""

from __future__ import annotations

import argparse
import errno
import logging
import re
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from mper import experiment, pipeline
from mper.data.raw_scans import RAW_LAYOUTS
from mper.data.scan_plan import PLAN_FILE, ScanPlan, read_plan
from mper.data.synth_scans import SYNTH_SCAN_CASES, SYNTH_SCAN_SIZE
from mper.datasets import dataset_names, get_dataset
from mper.datasets.scans import DEFAULT_MEMORY_GB
from mper.errors import ConfigError, UserError
from mper.eval.folders import DEFAULT_EMPTY_PREDICTION, EMPTY_PREDICTION_OPTION
from mper.eval.predict import expected_layouts
from mper.eval.protocol import EMPTY_PREDICTION_RULES
from mper.eval.report import MARKDOWN_FILE
from mper.experiment import SweepInterrupted
from mper.host import Terminated, sigterm_as_interrupt
from mper.train.checkpoint import LAST_CHECKPOINT
from mper.train.config import AMP_MODES, BASELINES, OPS_MODULES, TrainConfig
from mper.train.distributed import is_main_process, launched_world, processes_on_this_machine
from mper.train.prototypes import UPDATE_SOURCES
from mper.train.resume import RESUMABLE_SETTINGS
from mper.train.runtime import TrainingAborted, TrainingInterrupted, shown_on_console
from mper.versions import version_line

USER_ERROR_EXIT_CODE = 2
#: ``--out`` of the ``mper-data`` commands that refuse a folder holding files.
NEW_FOLDER_HELP = "folder to write the dataset into: a new one, or an empty one"
#: ``--labeled all``: every labeled case that may be labeled.
ALL_LABELED = "all"
#: System errors that the machine or the paths given cause rather than a fault of mper
#: (no permission, no space, a file where a folder should be, ...): reported in one line.
ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENAMETOOLONG,
    }
)


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, max_help_position=32)


class _PrintVersion(argparse.Action):
    """``--version``: one unwrapped line, worked out only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(version_line(parser.prog))
        parser.exit()


def _add_weights(
    parser: argparse.ArgumentParser, default: str | None = pipeline.WEIGHTS[0], of: str = "the checkpoint"
) -> None:
    parser.add_argument(
        "--weights",
        choices=pipeline.WEIGHTS,
        default=default,
        help=f"which network of {of} (default: student)",
    )


def _add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--version", action=_PrintVersion, help="print the versions of mper, torch, Python and CUDA, and exit"
    )


def _add_device(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    parser.add_argument(
        "--device", default=default, help="auto (CUDA when present, else CPU; the default), cpu, cuda or cuda:N"
    )


def _per_dataset(describe: Callable[[str], str]) -> str:
    """``describe(name)`` of every registered dataset, for a help text: ``LA: ...; ACDC: ...``."""
    return "; ".join(f"{get_dataset(name).title}: {describe(name)}" for name in dataset_names(imported=False))


def _label_budgets(name: str) -> str:
    spec = get_dataset(name)
    return f"{' or '.join(map(str, spec.label_budgets))} {spec.label_unit}"


def _interrupted_exit_code(signal_name: str) -> int:
    """The shell's convention: 128 + the signal number."""
    return 128 + signal.Signals[signal_name or "SIGINT"].value


def _continue_with(run_dir: Path) -> str:
    """The command that continues a stopped run: under torchrun on as many processes, with
    which a resumed run repeats an uninterrupted one (docs/distributed.md)."""
    resume = f"--resume --out {shlex.quote(str(run_dir))}"
    processes, on_this_machine = launched_world().size, processes_on_this_machine()
    if processes == 1:
        return f"continue with: mper-train {resume}"
    if processes == on_this_machine:
        return f'continue with: torchrun --standalone --nproc-per-node {processes} "$(command -v mper-train)" {resume}'
    return f"continue with: the same torchrun command on every machine, running mper-train {resume}"


def _report_stop(stop: KeyboardInterrupt) -> int:
    """Say what a stopped run left behind and how to go on; returns the exit code."""
    if isinstance(stop, SweepInterrupted):
        print(
            f"\nsweep stopped ({stop.signal_name}): {stop.finished} of {stop.total} runs finished in {stop.out}; "
            "run the same command again to continue (finished runs are kept, interrupted ones resume)",
            file=sys.stderr,
        )
        return _interrupted_exit_code(stop.signal_name)
    if isinstance(stop, TrainingInterrupted):
        if is_main_process():  # one report for all the processes of a torchrun group
            print(
                f"\ninterrupted ({stop.signal_name}); state saved to {stop.checkpoint}\n"
                f"{_continue_with(stop.checkpoint.parent)}",
                file=sys.stderr,
            )
        return _interrupted_exit_code(stop.signal_name)
    if isinstance(stop, TrainingAborted):
        if (stop.run_dir / LAST_CHECKPOINT).exists():
            print(
                f"\nstopped at once; {stop.run_dir / LAST_CHECKPOINT} holds the last complete checkpoint\n"
                f"{_continue_with(stop.run_dir)}",
                file=sys.stderr,
            )
        else:
            print("\nstopped at once, before the first checkpoint: nothing to resume", file=sys.stderr)
        # SIGTERM outside the training loop (during the final evaluation, say) aborts too
        return _interrupted_exit_code("SIGTERM" if isinstance(stop.__cause__, Terminated) else "SIGINT")
    if isinstance(stop, Terminated):
        print("\nterminated (SIGTERM)", file=sys.stderr)
        return _interrupted_exit_code("SIGTERM")
    print("\ninterrupted", file=sys.stderr)
    return _interrupted_exit_code("SIGINT")


#: What HDF5 puts into the text of a failed write (h5py raises it with the errno but no file
#: name): "file write failed: time = ..., filename = '...', ..., error message = '...', ...".
_HDF5_WRITE_FAILURE = re.compile(r"filename = '(?P<file>[^']*)'.*error message = '(?P<reason>[^']*)'", re.DOTALL)


def _system_error_parts(error: OSError) -> tuple[str | None, str]:
    """(the file, the reason) of a system error, in one line: HDF5's many-line report of a
    failed write read for the two."""
    text = str(error.strerror or error)
    found = _HDF5_WRITE_FAILURE.search(text)
    if found and not error.filename:
        return found["file"], found["reason"]
    return (str(error.filename) if error.filename else None), " ".join(text.split())


def _run(parser: argparse.ArgumentParser, action: Callable[[], None]) -> None:
    """Run ``action`` with console logging.

    A :class:`~mper.errors.UserError`, or a system error caused by the paths or the
    machine (no permission, no space left), ends in one line and exit status 2; Ctrl-C
    and SIGTERM in a message saying what was kept (SIGTERM outside training: one line,
    exit status 143). Anything else keeps its traceback.
    """
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    console.addFilter(shown_on_console)
    package_log = logging.getLogger("mper")
    package_log.addHandler(console)
    package_log.setLevel(logging.INFO)
    try:
        # SIGTERM outside the training loop (which handles its own) ends the command as Ctrl-C does
        with sigterm_as_interrupt(), logging_redirect_tqdm(loggers=[package_log]):
            action()
    except KeyboardInterrupt as stop:
        sys.exit(_report_stop(stop))
    except UserError as error:
        parser.exit(USER_ERROR_EXIT_CODE, f"{parser.prog}: error: {error}\n")
    except OSError as error:
        if error.errno not in ENVIRONMENT_ERRNOS:
            raise
        filename, reason = _system_error_parts(error)
        where = f"{filename}: " if filename else ""
        parser.exit(
            USER_ERROR_EXIT_CODE,
            f"{parser.prog}: error: {where}{reason}; check the path, its permissions and the free space\n",
        )
    finally:
        package_log.removeHandler(console)


def train_parser() -> argparse.ArgumentParser:
    """Arguments of ``mper-train``."""
    parser = argparse.ArgumentParser(
        prog="mper-train",
        formatter_class=_formatter,
        description=(
            "Train MPER (copy-paste pre-training, k-means prototype init, Mean Teacher "
            "self-training with bidirectional copy-paste), evaluate the best checkpoint on "
            "the test split and write everything into a run folder."
        ),
        epilog=(
            "Every hyper-parameter lives in the preset file mper/presets/<dataset>.toml and "
            "can be changed with --set section.key=value, e.g. --set selftrain.iterations=5000 "
            "--set data.num_workers=8. LA has no validation list: the paper and reference "
            "presets select checkpoints on the test cases, as the authors do; --preset strict "
            "selects on held-out training cases instead."
        ),
    )
    parser.add_argument(
        "--dataset",
        choices=dataset_names(imported=False),
        help="benchmark (required unless --resume, or --data-root holds scans imported by mper-data import)",
    )
    parser.add_argument(
        "--data-root",
        metavar="DIR",
        help="dataset folder in the public layout, or imported by mper-data import (see mper-data)",
    )
    parser.add_argument(
        "--labeled",
        type=_labeled_count,
        metavar="N|all",
        help=f"labeled cases or patients, e.g. {_per_dataset(_label_budgets)}, or all; "
        "default: the preset's (an imported dataset's: its plan's)",
    )
    parser.add_argument(
        "--fold",
        type=int,
        metavar="K",
        help="the cross-validation fold of the labeled cases that selects checkpoints, for "
        "imported datasets (default: 0); refused for LA and ACDC, which have no folds",
    )
    parser.add_argument(
        "--preset",
        metavar="NAME",
        help="paper (default: the paper's values, the authors' code where it is silent), "
        "reference (what the authors' code trains), strict (checkpoints not selected on "
        "the test cases, a missed structure scored as a miss) or demo (a small CPU run "
        "on synthetic data); presets stack with '+', applied left to right on top of "
        "paper, e.g. reference+demo or reference+strict",
    )
    parser.add_argument(
        "--ops",
        choices=tuple(OPS_MODULES),
        help="prototype ops: fused kernels (mper, the default) or eager PyTorch (reference)",
    )
    _add_device(parser, default=None)
    parser.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<dataset>-<preset>-<N>labeled)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last.pt, with the settings saved there; "
        "only " + ", ".join(RESUMABLE_SETTINGS) + " may change",
    )
    parser.add_argument("--seed", type=int, help="random seed (default: the preset's)")
    parser.add_argument(
        "--baseline",
        choices=BASELINES[1:],
        help="train instead the plain supervised U-Net / V-Net on the labeled cases "
        "(labeled-only) or on every training case, all labeled (full: the upper bound), "
        "or self-train without the prototype head (bcp: bidirectional copy-paste alone)",
    )
    parser.add_argument(
        "--update-source", choices=UPDATE_SOURCES, help="voxels that update the prototypes (default: both)"
    )
    parser.add_argument("--amp", choices=AMP_MODES, help="bf16 autocast, CUDA only (default: off)")
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset value, e.g. selftrain.iterations=5000; repeatable",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the settings these options give (preset, options and --set applied) as "
        "TOML and exit, after the checks a run makes on this machine before training (device, amp, "
        "memory; with --data-root, its lists); a run folder keeps its own in config.toml",
    )
    _add_version(parser)
    return parser


def _labeled_count(text: str) -> int | str:
    """``--labeled``: a positive count, or ``all``."""
    if text == ALL_LABELED:
        return text
    try:
        return int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a number of cases or 'all', got {text!r}") from error


def _train_overrides(args: argparse.Namespace) -> dict:
    """The command-line options that were given, as config overrides (``--labeled all`` is
    worked out once the dataset is known, see :func:`_train_config`)."""
    labeled = None if args.labeled == ALL_LABELED else args.labeled
    flat = {
        "data_root": args.data_root,
        "labeled": labeled,
        "ops": args.ops,
        "out": args.out,
        "seed": args.seed,
        "baseline": args.baseline,
        "amp": args.amp,
        "device": args.device,
    }
    overrides = {key: value for key, value in flat.items() if value is not None}
    if args.update_source is not None:
        overrides["prototypes"] = {"update_source": args.update_source}
    if args.fold is not None:
        overrides["data"] = {"fold": args.fold}
    return overrides


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The settings of a new run: the preset, the options and ``--set``."""
    return pipeline.train_config(
        args.dataset,
        args.preset or "paper",
        _train_overrides(args),
        args.assignments,
        labeled_all=args.labeled == ALL_LABELED,
    )


def _print_metrics(run_dir: Path) -> None:
    print(f"\n{(run_dir / MARKDOWN_FILE).read_text()}\nrun folder: {run_dir}")


def train_main(argv: Sequence[str] | None = None) -> None:
    """``mper-train``: train, evaluate, print the metrics table."""
    parser = train_parser()
    args = parser.parse_args(argv)

    def action() -> None:
        if args.print_config:
            if args.dataset is None and args.data_root is None:
                raise ConfigError(
                    "--print-config needs --dataset, or --data-root of imported scans "
                    f"(a run folder keeps its settings in {pipeline.RUN_CONFIG})"
                )
            print(pipeline.settings_toml(_train_config(args)), end="")
            return
        if args.resume:
            if not args.out:
                raise ConfigError("--resume needs --out RUN_DIR, the folder of the run to continue")
            if args.labeled == ALL_LABELED:
                raise ConfigError("--labeled all chooses the labeled cases of a new run; a resumed run keeps its own")
            given = {"dataset": args.dataset, "preset": args.preset}
            overrides = {**_train_overrides(args), **{k: v for k, v in given.items() if v is not None}}
            run_dir = pipeline.resume(args.out, overrides=overrides, assignments=args.assignments)
        else:
            if args.data_root is None:
                raise ConfigError(
                    f"--data-root is required (unless --resume): the folder of the {args.dataset} data"
                    if args.dataset
                    else "--dataset and --data-root are required (unless --resume); --data-root alone "
                    "for scans imported by mper-data import"
                )
            run_dir = pipeline.train(_train_config(args))
        if is_main_process():  # the other processes of a torchrun group print nothing
            _print_metrics(run_dir)

    _run(parser, action)


#: mper-eval's options that score a checkpoint, and those that score a folder of predictions.
CHECKPOINT_OPTIONS = ("data_root", "split", "device", "weights", "figures", "tsne")
FOLDER_OPTIONS = ("labels", "dataset_json", "empty_prediction")


def eval_parser() -> argparse.ArgumentParser:
    """``mper-eval``'s options: a checkpoint to score, or a folder of predictions."""
    parser = argparse.ArgumentParser(
        prog="mper-eval",
        formatter_class=_formatter,
        description="Evaluate a checkpoint (Dice, Jaccard, 95HD, ASD per case and mean) and draw overlays; or, "
        "with --predictions and --labels, score a folder of predicted label maps against a folder of "
        "ground-truth label maps (NIfTI, NRRD, MetaImage, GIPL, PNG, BMP or TIFF, paired by case name; distances "
        "in mm), without a checkpoint.",
    )
    scored = parser.add_mutually_exclusive_group(required=True)
    scored.add_argument("--checkpoint", metavar="FILE", help="a .pt file written by mper-train, e.g. RUN_DIR/best.pt")
    scored.add_argument(
        "--predictions",
        metavar="DIR",
        help="a folder of predicted label maps to score against --labels: <case>.nii.gz, <case>.nii, <case>.nrrd, "
        "<case>.mha, <case>.png, ... or <case>_pred.nii.gz (mper-predict's, or another tool's)",
    )
    parser.add_argument(
        "--labels", metavar="DIR", help="with --predictions: the folder of ground-truth label maps <case>.nii.gz, ..."
    )
    parser.add_argument(
        "--dataset-json",
        metavar="FILE",
        help="with --predictions: the dataset.json naming the classes (nnU-Net v2 or Decathlon labels; default: "
        "the one beside --labels, else the classes 1 .. the largest value found)",
    )
    parser.add_argument(
        EMPTY_PREDICTION_OPTION,
        choices=EMPTY_PREDICTION_RULES,
        help="with --predictions: how a class predicted nowhere that the label holds scores (zero: all four "
        "metrics 0, as the presets; undefined: Dice 0, distances left out of the means; default: "
        f"{DEFAULT_EMPTY_PREDICTION})",
    )
    parser.add_argument(
        "--data-root", metavar="DIR", help="dataset folder (default: the one the checkpoint was trained on)"
    )
    parser.add_argument(
        "--split",
        choices=pipeline.EVAL_SPLITS,
        help="test (default): the test cases; val: the cases that selected the best "
        "checkpoint in training (ACDC val.list, LA the held-out end of train.list, imported "
        "scans the run's validation fold)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="folder for metrics.json, metrics.md and figures/ (default: eval-<split> beside the checkpoint; "
        "with --predictions, <predictions>-metrics beside that folder)",
    )
    _add_device(parser, default=None)
    _add_weights(parser, default=None)
    parser.add_argument(
        "--figures",
        type=int,
        metavar="N",
        help="cases drawn as PNG overlays, from the worst to the median by Dice (default: the run's eval.num_figures)",
    )
    _add_version(parser)
    parser.add_argument(
        "--tsne",
        action="store_true",
        help="also draw tsne.png: a t-SNE map of voxel embeddings by class with the prototypes "
        "marked (needs pip install 'mper[figures]')",
    )
    return parser


def _check_eval_options(args: argparse.Namespace) -> None:
    """Refuse the options of the other way of scoring than the one chosen."""
    mode, others = (
        ("--predictions", CHECKPOINT_OPTIONS) if args.predictions is not None else ("--checkpoint", FOLDER_OPTIONS)
    )
    given = [f"--{name.replace('_', '-')}" for name in others if getattr(args, name) not in (None, False)]
    if given:
        raise ConfigError(f"{', '.join(given)} cannot be used with {mode}")
    if args.predictions is not None and args.labels is None:
        raise ConfigError("--predictions needs --labels DIR, the folder of the ground-truth label maps")


def eval_main(argv: Sequence[str] | None = None) -> None:
    """``mper-eval``: score a checkpoint (or a folder of predictions), write metrics and figures, print the table."""
    parser = eval_parser()
    args = parser.parse_args(argv)

    def action() -> None:
        _check_eval_options(args)
        if args.predictions is not None:
            rule = {"empty_prediction": args.empty_prediction} if args.empty_prediction else {}
            result = pipeline.evaluate_folders(
                args.predictions, args.labels, args.out, dataset_json=args.dataset_json, **rule
            )
            print(f"\n{result['markdown']}\nwritten to {result['out']}")
            return
        split = args.split or "test"
        device, weights = args.device or "auto", args.weights or pipeline.WEIGHTS[0]
        out = Path(args.out) if args.out else pipeline.default_eval_folder(Path(args.checkpoint).parent, split)
        result = pipeline.evaluate(args.checkpoint, args.data_root, split, out, device, weights, args.figures)
        print(f"\n{result['markdown']}\nwritten to {out}")
        if args.tsne:
            path = pipeline.tsne(
                args.checkpoint,
                out / pipeline.TSNE_FIGURE,
                args.data_root,
                split,
                device=device,
                weights=weights,
            )
            print(f"t-SNE map: {path}")

    _run(parser, action)


def predict_main(argv: Sequence[str] | None = None) -> None:
    """``mper-predict``: segment image files into label maps (imported scans' models: in the
    input's format; LA and ACDC models: NIfTI/HDF5 in, NIfTI out)."""
    parser = argparse.ArgumentParser(
        prog="mper-predict",
        formatter_class=_formatter,
        description=(
            "Segment an image file, or every such file under a folder, into label maps; a file that "
            "cannot be segmented is reported and skipped, and the exit status is then 2. "
            "A model trained on scans imported by mper-data import takes raw scans named as in the raw "
            "dataset (e.g. RAW/imagesTs): each case is cropped, normalised and resampled as the import did, "
            "segmented, brought back to its own voxel grid and written in its format (<case>.nii.gz with its header, "
            "<case>.nrrd, <case>.mha, <case>.png, ...). "
            "A model trained on LA or ACDC takes NIfTI (.nii, .nii.gz) or preprocessed HDF5 (.h5) volumes "
            "and writes <case>_pred.nii.gz with the input's header; they are not resampled or reoriented: "
            "give them in the axis order the model takes (H, W in-plane, S slices, D depth): "
            + _per_dataset(lambda name: expected_layouts(get_dataset(name)))
            + "; a volume whose slice or depth axis is far longer than another axis is refused as out of "
            "order (see --force)."
        ),
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        nargs="+",
        metavar="FILE",
        help="a .pt file written by mper-train; several (e.g. the best.pt of each fold of a cross-validation) are "
        "ensembled as nnU-Net's folds are: the label is the most probable class of the mean of their softmax "
        "probabilities over each window. They must be models of one dataset (for imported scans, one plan) with "
        "the same classes, patch size, eval.stride and eval.postprocess",
    )
    parser.add_argument("--input", required=True, metavar="FILE_OR_DIR", help="an image file or a folder of them")
    parser.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help="folder for the label maps, outside the folder of the --input scans",
    )
    _add_device(parser)
    _add_weights(parser, of="every checkpoint")
    parser.add_argument(
        "--force",
        action="store_true",
        help="segment, with a warning: a volume whose axis order looks wrong as it is; files named as one "
        "case's nnU-Net channel files (<case>_0000, <case>_0001) each as a scan of its own (LA, ACDC); a case "
        "with more channel files than the model takes from the model's channels (imported scans)",
    )
    parser.add_argument(
        "--mirror",
        action="store_true",
        help="test-time mirroring: average the softmax probabilities over the input flipped along every "
        "combination of the axes training flips (LA, ACDC: the in-plane axes H and W, 4 passes; imported scans: "
        "every axis of the patch, 8 passes in 3D, 4 in 2D), as nnU-Net does by default. Off by default: "
        "mper-eval scores predictions without it, as the authors' evaluation does",
    )
    _add_version(parser)
    args = parser.parse_args(argv)

    def action() -> None:
        written = pipeline.predict(
            args.checkpoint, args.input, args.output, args.device, args.weights, args.force, args.mirror
        )
        print(f"wrote {len(written)} label map(s) to {args.output}")

    _run(parser, action)


def _data_command(
    commands: argparse._SubParsersAction,
    name: str,
    summary: str,
    description: str,
    dataset_required: bool = True,
) -> argparse.ArgumentParser:
    """A ``mper-data`` command with the ``--dataset`` and ``--out`` that ``synth`` and ``convert`` take."""
    command = commands.add_parser(name, formatter_class=_formatter, help=summary, description=description)
    command.add_argument("--dataset", choices=dataset_names(imported=False), required=dataset_required)
    command.add_argument("--out", required=True, metavar="DIR", help=NEW_FOLDER_HELP)
    return command


def data_parser() -> argparse.ArgumentParser:
    """Arguments of ``mper-data`` and its ``synth`` / ``convert`` / ``import`` commands."""
    parser = argparse.ArgumentParser(
        prog="mper-data",
        formatter_class=_formatter,
        description="Prepare data in the public layouts that mper-train reads.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    synth = _data_command(
        commands,
        "synth",
        "write synthetic LA / ACDC data, lists included, or raw scans",
        "Write synthetic data in exactly the LA (UA-MT) or ACDC (SSL4MIS) layout (--dataset), or raw scans "
        "in the nnU-Net v2 or Medical Segmentation Decathlon layout (--format) to try mper-data import on: "
        "two channels (CT-like, MR-like), four foreground classes, varying shapes, anisotropic spacings and "
        "orientations, unlabeled training cases and labeled test cases.",
        dataset_required=False,
    )
    synth.add_argument("--format", choices=RAW_LAYOUTS, help="raw scans in this layout instead of --dataset")
    synth.add_argument(
        "--cases",
        type=int,
        metavar="N",
        help="cases or patients; default: "
        + _per_dataset(lambda name: f"{get_dataset(name).synth_cases} {get_dataset(name).label_unit}")
        + f"; raw scans: {SYNTH_SCAN_CASES} cases (a fifth test, a third of the rest unlabeled)",
    )
    synth.add_argument("--seed", type=int, default=0, help="the data is a function of the seed (default: 0)")
    synth.add_argument(
        "--size",
        type=int,
        nargs="+",
        metavar="N",
        help="image size; default: "
        + _per_dataset(lambda name: " ".join(map(str, get_dataset(name).synth_size)))
        + f"; raw scans: the median case's, {' '.join(map(str, SYNTH_SCAN_SIZE))}",
    )
    synth.add_argument(
        "--family",
        help="how the cases vary (default: the first); "
        + _per_dataset(
            lambda name: "; ".join(f"{family}: {text}" for family, text in get_dataset(name).synth_families.items())
        ),
    )
    convert = _data_command(
        commands,
        "convert",
        "turn a raw public download into the h5 layout",
        "Convert the raw LA 2018 challenge or ACDC download into the h5 layout, normalised.",
    )
    convert.add_argument("--source", required=True, metavar="RAW", help="folder of the raw download")
    convert.add_argument(
        "--split-from", metavar="DIR", help="a dataset folder whose .list files give the train/val/test split to reuse"
    )
    convert.add_argument(
        "--seed", type=int, default=0, help="seed of a new split when --split-from is not given (default: 0)"
    )
    _add_import_command(commands)
    _add_version(parser)
    return parser


def _add_import_command(commands: argparse._SubParsersAction) -> None:
    """``mper-data import``: one's own scans, in the nnU-Net v2 or Decathlon layout."""
    command = commands.add_parser(
        "import",
        formatter_class=_formatter,
        help="import your own scans (nnU-Net v2 or Decathlon layout)",
        description=(
            "Import a raw dataset in the nnU-Net v2 layout (dataset.json, imagesTr/<case>_<XXXX>.nii.gz, "
            "labelsTr/, optional imagesTs/ and labelsTs/) or the Medical Segmentation Decathlon layout "
            "(dataset.json with modality and training, 4D images). Training images without a label, and "
            "those of imagesUnlabeled/ or --unlabeled, are the unlabeled scans. Every case is cropped to its "
            "nonzero region, normalised by its channel name as nnU-Net does (CT: clipped to the training set's "
            "foreground 0.5 and 99.5 percentiles and z-scored with their statistics; noNorm, rescale_to_0_1 "
            "and rgb_to_0_1 as named; any other name z-scored per image) and resampled to "
            "one spacing; OUT/plan.toml records the plan derived from the data (2D or 3D network, patch, "
            "batch, classes), which you may edit. Then: mper-train --data-root OUT."
        ),
    )
    command.add_argument("--source", required=True, metavar="RAW", help="the raw dataset folder (with dataset.json)")
    command.add_argument("--out", required=True, metavar="ROOT", help=NEW_FOLDER_HELP)
    command.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar="MM",
        help="the spacing to resample to, per array axis, three values even for 2D (x, y) images, whose "
        "single slice stays one whatever the third (default: the training cases' median, "
        "with the coarse axis of strongly anisotropic data kept fine)",
    )
    command.add_argument(
        "--dims",
        choices=("2d", "3d"),
        help="the network of the plan (default: 2d for strongly anisotropic data, else 3d)",
    )
    command.add_argument(
        "--memory",
        type=float,
        metavar="GB",
        help=f"training memory the planned batch fits (default: {DEFAULT_MEMORY_GB:g}); the plan's "
        "demo preset is CPU-sized",
    )
    command.add_argument("--unlabeled", metavar="DIR", help="a folder of further unlabeled scans, named as imagesTr")


def _networks_planned(plan: ScanPlan) -> str:
    """``a 3D V-Net (import with --dims 2d, ... for a 2D U-Net ...)``: the network the plan's
    dims trains, and how to train the other where the plan holds its settings too."""
    networks = {"3d": "a 3D V-Net", "2d": f"a 2D U-Net on slices across axis {plan.slice_axis}"}
    (other,) = set(networks) - {plan.dims}
    alternative = (
        f' (import with --dims {other}, or set dims = "{other}" in plan.toml, for {networks[other]})'
        if "paper" in plan.settings.get(other, {})
        else ""
    )
    return networks[plan.dims] + alternative


def data_main(argv: Sequence[str] | None = None) -> None:
    """``mper-data synth|convert|import``."""
    parser = data_parser()
    args = parser.parse_args(argv)

    def action() -> None:
        if args.command == "import":
            out = pipeline.import_scans(args.source, args.out, args.spacing, args.dims, args.memory, args.unlabeled)
            print(
                f"imported {args.source} into {out} for {_networks_planned(read_plan(out))}; its plan: "
                f"{out / PLAN_FILE}\ntrain with: mper-train --data-root {shlex.quote(str(out))}"
            )
            if not torch.cuda.is_available():  # the presets but demo are sized for a GPU
                print("(no GPU here: that trains for hours on a CPU; add --preset demo for a first run of minutes)")
            return
        if args.command == "convert":
            out = pipeline.convert(args.dataset, args.source, args.out, split_from=args.split_from, seed=args.seed)
            print(f"wrote {args.dataset} data to {out}")
            return
        if (args.format is None) == (args.dataset is None):
            raise ConfigError("mper-data synth needs one of --dataset (LA / ACDC layout) or --format (raw scans)")
        size = tuple(args.size) if args.size else None
        if args.format is not None:
            if args.family is not None:
                raise ConfigError(
                    "--family chooses how LA / ACDC data (--dataset) vary; raw scans (--format) have none: "
                    "leave --family out"
                )
            out = pipeline.synthesize_scans(args.out, args.format, cases=args.cases, seed=args.seed, size=size)
            print(f"wrote synthetic {args.format} scans to {out}")
            return
        out = pipeline.synthesize(
            args.dataset, args.out, cases=args.cases, seed=args.seed, size=size, family=args.family
        )
        print(f"wrote {args.dataset} data to {out}")

    _run(parser, action)


def experiment_parser() -> argparse.ArgumentParser:
    """Arguments of ``mper-experiment``."""
    parser = argparse.ArgumentParser(
        prog="mper-experiment",
        formatter_class=_formatter,
        description=(
            "Train every run of an experiment plan (variants x label budgets x seeds, each an ordinary "
            "mper-train run in its own folder) and write the results table, mean +- std over seeds, as "
            "results.md, results.csv and results.json with a plot. Finished runs are kept and "
            "interrupted ones resumed, so a stopped sweep continues when the command is run again."
        ),
        epilog="Shipped plans: "
        + ", ".join(sorted(path.stem for path in experiment.SHIPPED_PLANS.glob("*.toml")))
        + " (the experiments/ folder of the repository).",
    )
    parser.add_argument("plan", metavar="PLAN", help="a plan file (.toml) or the name of a shipped plan, e.g. tiny")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help=f"folder of the runs and results (default: {experiment.DEFAULT_OUT.as_posix()}/<plan>)",
    )
    parser.add_argument("--data-root", metavar="DIR", help="dataset folder (default: the plan's data_root)")
    parser.add_argument("--seeds", type=_integers, metavar="S,S,...", help="seeds instead of the plan's, e.g. 1,2,3")
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting in every run, e.g. data.num_workers=8; repeatable",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="check the runs as a sweep does before training, list them and where each stands; train nothing",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="write the results of the finished runs; train nothing"
    )
    runs = parser.add_argument_group("where the runs train")
    runs.add_argument(
        "--executor",
        choices=("local", "slurm", "submitit-local"),
        default="local",
        help="local: on this machine (default); slurm: one SLURM job per run through submitit; "
        "submitit-local: submitit's jobs as local processes (to try a cluster setup)",
    )
    runs.add_argument("--device", help="device of each run: auto (default), cpu, cuda or cuda:N")
    runs.add_argument(
        "--devices",
        type=_device_ids,
        metavar="ID,ID,...",
        help="local: one run per GPU at a time, each process seeing only its GPU, e.g. 0,1,2,3",
    )
    cluster = parser.add_argument_group("cluster jobs (--executor slurm; pip install 'mper[cluster]')")
    job = experiment.ClusterOptions()  # the defaults of a job's resources
    cluster.add_argument("--partition", help="SLURM partition")
    cluster.add_argument("--account", help="SLURM account")
    cluster.add_argument(
        "--time",
        type=int,
        default=job.time_minutes,
        metavar="MINUTES",
        help=f"time limit of each job; a job that reaches it is requeued and resumes (default: {job.time_minutes})",
    )
    cluster.add_argument(
        "--gpus-per-job",
        type=int,
        default=job.gpus_per_job,
        metavar="N",
        help=f"GPUs of each job (default: {job.gpus_per_job})",
    )
    cluster.add_argument(
        "--cpus-per-job",
        type=int,
        default=job.cpus_per_job,
        metavar="N",
        help=f"CPU cores of each job (default: {job.cpus_per_job})",
    )
    cluster.add_argument("--mem-gb", type=int, metavar="N", help="memory of each job in GB (default: the cluster's)")
    cluster.add_argument(
        "--no-wait",
        action="store_true",
        help="submit and return; run the command again with --report-only for the table",
    )
    _add_version(parser)
    return parser


def _integers(text: str) -> list[int]:
    try:
        return [int(item) for item in text.split(",")]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, e.g. 1,2,3; got {text!r}") from error


def _device_ids(text: str) -> list[str]:
    ids = [item.strip() for item in text.split(",")]
    if not all(item.isdigit() for item in ids):
        raise argparse.ArgumentTypeError(f"expected GPU ids separated by commas, e.g. 0,1,2,3; got {text!r}")
    return ids


def _executor(args: argparse.Namespace, out: Path) -> experiment.Executor:
    """The executor the options ask for."""
    if args.executor == "local":
        if args.devices:
            return experiment.DevicePoolExecutor(args.devices, out / "logs", device=args.device or "cuda")
        return experiment.LocalExecutor(args.device)
    if args.devices:
        raise ConfigError("--devices is for the local executor; a cluster job gets its GPUs from --gpus-per-job")
    options = experiment.ClusterOptions(
        partition=args.partition,
        time_minutes=args.time,
        gpus_per_job=args.gpus_per_job,
        cpus_per_job=args.cpus_per_job,
        memory_gb=args.mem_gb,
        account=args.account,
        wait=not args.no_wait,
    )
    cluster = "slurm" if args.executor == "slurm" else "local"
    return experiment.SubmititExecutor(out / "jobs", cluster, options, args.device)


def experiment_main(argv: Sequence[str] | None = None) -> None:
    """``mper-experiment``: train a plan's runs, print the results table."""
    parser = experiment_parser()
    args = parser.parse_args(argv)

    def action() -> None:
        plan, cells, out = experiment.prepare_plan(args.plan, args.out, args.data_root, args.seeds, args.assignments)
        if args.list:
            experiment.check_runs(plan, cells, getattr(_executor(args, out), "machine_device", None))
            for cell in cells:
                print(f"{experiment.run_state(cell.run_dir):<12} {cell.name:<50} {cell.run_dir}")
            return
        if args.report_only:
            written = experiment.write_report(plan, cells, out)
        else:
            written = experiment.run_plan(plan, out, _executor(args, out))
        print(f"\n{written['results.md'].read_text()}\nwritten to {out}")

    _run(parser, action)
