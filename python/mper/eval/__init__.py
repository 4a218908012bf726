"""Evaluation: whole-volume inference, metrics, reports, figures and file prediction.

* :mod:`~mper.eval.inference`: sliding window (LA) and slice-wise (ACDC) prediction;
* :mod:`~mper.eval.metrics`: Dice, Jaccard, 95HD and ASD as medpy computes them;
* :mod:`~mper.eval.report`: summaries, the paper's Markdown table, ``metrics.json``;
* :mod:`~mper.eval.figures`: image | ground truth | prediction PNGs of the worst and median cases;
* :mod:`~mper.eval.evaluate`: a network on a data set's test cases, end to end;
* :mod:`~mper.eval.predict`: NIfTI / HDF5 files in, NIfTI label maps out.
"""

from __future__ import annotations

from .evaluate import evaluate_cases, mean_dice
from .figures import save_figures, save_overlay
from .inference import predict_volume, slicewise_predict, sliding_window_predict
from .metrics import binary_metrics, case_metrics, dice_score
from .predict import predict_file, predict_path
from .report import markdown_table, summarize, write_report

__all__ = [
    "binary_metrics",
    "case_metrics",
    "dice_score",
    "evaluate_cases",
    "markdown_table",
    "mean_dice",
    "predict_file",
    "predict_path",
    "predict_volume",
    "save_figures",
    "save_overlay",
    "sliding_window_predict",
    "slicewise_predict",
    "summarize",
    "write_report",
]
