"""Generation over exported checkpoints: dense, sparse-FFN (CETT thresholds through densa.kernels) and MoE
FFN paths, KV policies from densa.longctx, batching by prompt length; export to HF folders with a model card
and Hub upload. See docs/inference.md and docs/export.md.

engine = InferenceEngine.from_pretrained("./out/hf", sparsity="./out/hf/sparsity.json")
out = engine.generate(["Hello", "Once upon"], GenerationConfig(max_new_tokens=32), ffn="sparse")
"""

from densa.inference.engine import (
    Generation,
    GenerationConfig,
    GenerationOutput,
    GenerationStats,
    InferenceEngine,
)
from densa.inference.export import export_model, parse_dtype, write_tokenizer
from densa.inference.hub import UploadPlan, plan_upload, push_to_hub
from densa.inference.loading import LoadedModel, checkpoint_kind, load_for_inference
from densa.inference.model_card import CardInputs, build_model_card, data_rows, last_metrics
from densa.inference.sparse_path import SparseDecodeFFN, calibrate, sparse_ffn_installed

__all__ = [
    "CardInputs",
    "Generation",
    "GenerationConfig",
    "GenerationOutput",
    "GenerationStats",
    "InferenceEngine",
    "LoadedModel",
    "SparseDecodeFFN",
    "UploadPlan",
    "build_model_card",
    "calibrate",
    "checkpoint_kind",
    "data_rows",
    "export_model",
    "last_metrics",
    "load_for_inference",
    "parse_dtype",
    "plan_upload",
    "push_to_hub",
    "sparse_ffn_installed",
    "write_tokenizer",
]
