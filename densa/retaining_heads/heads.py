"""Locret retaining heads: per layer a small MLP [Q;K;V] -> hidden -> one score per KV head.

The heads never touch model code: forward hooks on each attention's hook points read Q, K and V, and
the head's score for the tokens of that forward is stored in `RetainingHeads.scores[layer]`
([B, n_kv_heads, T]). Locret feeds the projections *before* RoPE (so a score does not depend on the
absolute position, which keeps growing under eviction); hook_q/hook_k are after RoPE, so the hook
un-rotates them with the cos/sin the attention received. The concatenation order is Q's heads (query
head h belongs to KV group h // group_size, so Q is grouped per KV head), then K, then V.
The heads are registered as the submodule `model.retaining_heads`, so `model.state_dict()` carries them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from densa.models.activations import get_activation
from densa.models.config import ModelConfig, values_agree
from densa.models.rope import rotate_half
from densa.models.transformer import Transformer
from densa.retaining_heads.errors import RetainingHeadsError

HEADS_ATTR = "retaining_heads"


# Neither a weight's shape nor the function: where RoPE tables start, init, free-form metadata (an HF
# folder's import records its source there, a recipe run records other keys: the same weights either way).
NOT_FINGERPRINTED = ("extra", "max_seq_len", "init_std")


def fingerprint_fields(config: ModelConfig) -> dict[str, Any]:
    """The config fields heads depend on: every weight shape and every field that changes the function
    (norm_eps, rope_theta, rope_scaling, activation, activation_threshold, ...). Fields at their default
    value are left out, so a field added to ModelConfig later (with a default) keeps old heads loadable."""
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    return {
        k: v
        for k, v in config.to_dict().items()
        if k not in NOT_FINGERPRINTED and (k not in defaults or not values_agree(v, defaults[k]))
    }


def _rounded(value: Any) -> Any:
    """Floats to 6 significant digits: a float32 round trip (9.999999747e-06 for 1e-5) hashes the same."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def model_fingerprint(config: ModelConfig) -> str:
    """Short hash of `fingerprint_fields` (floats to 6 significant digits), shown in metadata and errors."""
    blob = json.dumps(_rounded(fingerprint_fields(config)), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _legacy_fingerprint(config: ModelConfig) -> str:
    """The hash heads files written before densa 0.2 carry: every field but those at their default,
    `extra` and `max_seq_len` included (so an HF folder's heads did not fit that folder re-imported)."""
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    blob = json.dumps(
        {k: v for k, v in config.to_dict().items() if k not in defaults or v != defaults[k]},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class RetainingHead(nn.Module):
    """R(x) = act(x W1) W2 without biases (Locret's fc1/fc2)."""

    def __init__(self, in_dim: int, hidden: int, n_kv_heads: int, activation: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, n_kv_heads, bias=False)
        self.act = get_activation(activation)

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        """qkv [B, T, in_dim] -> scores [B, n_kv_heads, T]."""
        return self.fc2(self.act(self.fc1(qkv))).transpose(1, 2)


def _unrotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Inverse of apply_rotary: rotate by -angle."""
    return x * cos - rotate_half(x) * sin


class RetainingHeads(nn.Module):
    """One RetainingHead per layer plus the hooks that feed them."""

    def __init__(self, config: ModelConfig, hidden: int = 1024, activation: str | None = None) -> None:
        super().__init__()
        head_dim = config.head_dim
        in_dim = (config.n_heads + 2 * config.n_kv_heads) * head_dim
        self.hidden = hidden
        self.activation = activation or config.activation
        self.fingerprint = model_fingerprint(config)
        self.model_fields = fingerprint_fields(config)
        self.n_kv_heads = config.n_kv_heads
        self.layers = nn.ModuleList(
            RetainingHead(in_dim, hidden, config.n_kv_heads, self.activation) for _ in range(config.n_layers)
        )
        for head in self.layers:
            # Small init: scores start near 0 instead of at the scale of raw logits.
            nn.init.normal_(head.fc1.weight, std=in_dim**-0.5)
            nn.init.normal_(head.fc2.weight, std=0.02)
        self.enabled = True
        self.last_stats: dict[str, float] = {}  # set by heads_loss, read by RetainingHeadsCallback
        self.scores: list[torch.Tensor | None] = [None] * config.n_layers
        self._scratch: list[dict[str, torch.Tensor]] = [{} for _ in range(config.n_layers)]
        self._handles: list[RemovableHandle] = []

    def metadata(self) -> dict[str, object]:
        return {
            "fingerprint": self.fingerprint,
            "model": self.model_fields,
            "hidden": self.hidden,
            "activation": self.activation,
            "n_layers": len(self.layers),
            "n_kv_heads": self.n_kv_heads,
        }

    def clear(self) -> None:
        self.scores = [None] * len(self.layers)
        self._scratch = [{} for _ in self.layers]

    # -- hooks -------------------------------------------------------------------------------------

    def _register(self, model: Transformer) -> None:
        for i, block in enumerate(model.layers):
            attn = block.attn
            self._handles += [
                attn.register_forward_pre_hook(self._rope_hook(i)),
                attn.hook_q.register_forward_hook(self._store_hook(i, "q")),
                attn.hook_k.register_forward_hook(self._store_hook(i, "k")),
                attn.hook_v.register_forward_hook(self._score_hook(i)),
            ]

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()

    def _rope_hook(self, layer: int):
        def hook(_m: nn.Module, args: tuple) -> None:
            if self.enabled:
                self._scratch[layer]["cos"], self._scratch[layer]["sin"] = args[1], args[2]

        return hook

    def _store_hook(self, layer: int, key: str):
        def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            if self.enabled:
                self._scratch[layer][key] = out

        return hook

    def _score_hook(self, layer: int):
        def hook(_m: nn.Module, _inp: tuple, v: torch.Tensor) -> None:
            if not self.enabled:
                return
            s = self._scratch[layer]
            q, k = _unrotate(s["q"], s["cos"], s["sin"]), _unrotate(s["k"], s["cos"], s["sin"])
            batch, seq = v.shape[0], v.shape[2]
            qkv = torch.cat([t.transpose(1, 2).reshape(batch, seq, -1) for t in (q, k, v)], dim=-1)
            head = self.layers[layer]
            self.scores[layer] = head(qkv.to(head.fc1.weight.dtype))
            self._scratch[layer] = {}

        return hook


def get_heads(model: nn.Module) -> RetainingHeads:
    """The heads attached to `model`; a clear error when there are none."""
    heads = getattr(model, HEADS_ATTR, None)
    if not isinstance(heads, RetainingHeads):
        raise RetainingHeadsError(
            f"{type(model).__name__} has no retaining heads: train them with a `retaining_heads:` recipe"
            " (densa train, see docs/locret.md) and give the heads file (densa generate --heads FILE);"
            " from Python: densa.retaining_heads.load_heads(model, path), or attach_heads(model) and train"
            " them"
        )
    return heads


def has_heads(model: nn.Module) -> bool:
    return isinstance(getattr(model, HEADS_ATTR, None), RetainingHeads)


def attach_heads(
    model: Transformer, heads: RetainingHeads | None = None, *, hidden: int = 1024
) -> RetainingHeads:
    """Attach (new or given) heads to `model` as `model.retaining_heads`; model outputs are unchanged."""
    if getattr(model, "tp_size", 1) != 1:
        raise RetainingHeadsError(f"retaining heads need tp_size 1 (model has tp_size {model.tp_size})")
    if has_heads(model):
        raise RetainingHeadsError("model already has retaining heads; detach_heads(model) first")
    if heads is None:
        heads = RetainingHeads(model.config, hidden)
        ref = next(model.parameters())
        heads.to(device=ref.device, dtype=ref.dtype)
    check_fits(heads.model_fields, model.config, what="heads")
    model.add_module(HEADS_ATTR, heads)
    heads._register(model)
    return heads


def detach_heads(model: Transformer) -> RetainingHeads:
    """Remove the heads and their hooks from `model`; returns them."""
    heads = get_heads(model)
    heads._remove()
    delattr(model, HEADS_ATTR)
    return heads


def check_fits(
    fields: dict[str, Any] | None, config: ModelConfig, what: str, fingerprint: str | None = None
) -> None:
    """Raise unless heads trained for a model with `fields` (`fingerprint_fields`) fit `config`: each
    differing field is named (floats agree to a relative 1e-6). `fields` None (a file written before the
    fields were recorded): its `fingerprint` must be this model's, new or pre-0.2 hash."""
    if fields is None:
        if fingerprint in (model_fingerprint(config), _legacy_fingerprint(config)):
            return
        raise RetainingHeadsError(
            f"{what} were trained for another model: fingerprint {fingerprint} != this model's"
            f" {model_fingerprint(config)} (an older heads file that records no config fields; retrain"
            " the heads for this model)"
        )
    ours = fingerprint_fields(config)
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    pairs = {
        k: (fields.get(k, defaults.get(k)), ours.get(k, defaults.get(k))) for k in sorted({*fields, *ours})
    }
    differ = {k: ab for k, ab in pairs.items() if not values_agree(_plain(ab[0]), _plain(ab[1]))}
    if differ:
        said = ", ".join(f"{k}={a!r} there, {k}={b!r} in this model" for k, (a, b) in differ.items())
        raise RetainingHeadsError(f"{what} were trained for another model: {said}")


def _plain(value: Any) -> Any:
    """JSON's view of a value (a tuple read back from metadata is a list; a dataclass is a dict)."""
    return json.loads(json.dumps(value, default=str))


def check_fingerprint(fingerprint: str, config: ModelConfig, what: str) -> None:
    """Pre-0.2 check by hash alone; `check_fits` names the differing fields."""
    check_fits(None, config, what, fingerprint)
