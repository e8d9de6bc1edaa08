"""Locret retaining heads: per-layer MLPs that predict each cached token's causal importance (CIS),
trained on a frozen backbone and used by `densa.longctx`'s `locret` KV policy."""

from densa.retaining_heads.errors import RetainingHeadsError
from densa.retaining_heads.heads import (
    RetainingHead,
    RetainingHeads,
    attach_heads,
    detach_heads,
    fingerprint_fields,
    get_heads,
    has_heads,
    model_fingerprint,
)
from densa.retaining_heads.io import heads_metadata, heads_state_dict, load_heads, save_heads
from densa.retaining_heads.labels import capture_qk, cis_labels, default_context_mask
from densa.retaining_heads.loss import layer_loss, retaining_loss, topk_overlap
from densa.retaining_heads.training import (
    RetainingHeadsCallback,
    freeze_backbone,
    heads_loss,
    prepare_for_head_training,
    train_heads,
)

__all__ = [
    "RetainingHead",
    "RetainingHeads",
    "RetainingHeadsCallback",
    "RetainingHeadsError",
    "attach_heads",
    "capture_qk",
    "cis_labels",
    "default_context_mask",
    "detach_heads",
    "fingerprint_fields",
    "freeze_backbone",
    "get_heads",
    "has_heads",
    "heads_loss",
    "heads_metadata",
    "heads_state_dict",
    "layer_loss",
    "load_heads",
    "model_fingerprint",
    "prepare_for_head_training",
    "retaining_loss",
    "save_heads",
    "topk_overlap",
    "train_heads",
]
