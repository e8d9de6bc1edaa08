"""Activation sparsity: CETT, PPL-p% sparsity, baselines, predictivity, hardware affinity, ProSparse pieces.

Definitions follow the Sparsing Law / ReLU² Wins papers (docs/sparsity.md): neuron i's output magnitude is
n_i = |a_i|·‖W_down[:, i]‖ with a the activations at `layers.{i}.ffn.hook_act`.
"""

from densa.sparsity.apply import ActivationCounter, count_active, neuron_thresholds, sparsify
from densa.sparsity.calibration import collect_ffn, eval_loss, make_sequences
from densa.sparsity.cett import LayerCETT, cett, neuron_outputs, search_threshold
from densa.sparsity.errors import CalibrationDataError, SparsityError, UnsupportedModelError
from densa.sparsity.layers import FFNLayer, ffn_layers
from densa.sparsity.ppl import CETTSearch, ppl_p_sparsity
from densa.sparsity.predictor import LowRankPredictor, PredictorMetrics, fit_predictors
from densa.sparsity.predictor_io import load_predictors, save_predictors
from densa.sparsity.report import BaselineResult, CurvePoint, LayerSparsity, SparsityReport

__all__ = [
    "ActivationCounter",
    "BaselineResult",
    "CETTSearch",
    "CalibrationDataError",
    "CurvePoint",
    "FFNLayer",
    "LayerCETT",
    "LayerSparsity",
    "LowRankPredictor",
    "PredictorMetrics",
    "SparsityError",
    "SparsityReport",
    "UnsupportedModelError",
    "cett",
    "collect_ffn",
    "count_active",
    "eval_loss",
    "ffn_layers",
    "fit_predictors",
    "load_predictors",
    "make_sequences",
    "neuron_outputs",
    "neuron_thresholds",
    "ppl_p_sparsity",
    "save_predictors",
    "search_threshold",
    "sparsify",
]
