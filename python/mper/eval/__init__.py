"""Evaluation: whole-volume inference, metrics, reports, figures and file prediction.

* :mod:`~mper.eval.inference`: sliding window (LA) and slice-wise (ACDC) prediction;
* :mod:`~mper.eval.metrics`: Dice, Jaccard, 95HD and ASD as medpy computes them;
* :mod:`~mper.eval.report`: summaries, the paper's Markdown table, ``metrics.json``;
* :mod:`~mper.eval.figures`: image | ground truth | prediction PNGs of the worst and median cases;
* :mod:`~mper.eval.evaluate`: a network on a data set's test cases, end to end;
* :mod:`~mper.eval.protocol`: the protocol's choices, post-processing and how a class
  predicted nowhere is scored;
* :mod:`~mper.eval.predict`: NIfTI / HDF5 files in, NIfTI label maps out;
* :mod:`~mper.eval.folders`: a folder of predicted label maps scored against a folder of
  ground-truth label maps, without a checkpoint;
* :mod:`~mper.eval.scans`: datasets imported from raw scans, segmented and scored on each
  scan's own grid;
* :mod:`~mper.eval.tsne`: the t-SNE map of voxel embeddings and prototypes;
* :mod:`~mper.eval.run_size`: warnings for data far larger than the preset is made for.
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
