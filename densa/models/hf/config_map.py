"""HF `config.json` ↔ `ModelConfig`.

Import reads the raw JSON (no transformers needed) and accepts both the 4.x layout (`rope_theta`,
`rope_scaling` at top level) and the 5.x one (`rope_parameters`). Export writes both, so either
major version of transformers reads the file the same way.
"""

from __future__ import annotations

from typing import Any

from densa.errors import CheckpointError
from densa.models.config import ModelConfig, RopeScaling

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "densa")

# HF hidden_act -> densa activation. gelu_new is the tanh approximation written out in Python.
HF_TO_DENSA_ACT = {
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
    "relu2": "relu2",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
}
DENSA_TO_HF_ACT = {
    "silu": "silu",
    "relu": "relu",
    "relu2": "relu2",
    "gelu": "gelu",
    "gelu_tanh": "gelu_pytorch_tanh",
}

# Token ids and generation settings carried through densa checkpoints so export can write them back.
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _rope(hf: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    params = hf.get("rope_parameters") or {}
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    if not scaling:
        return float(theta), None
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return float(theta), None
    if kind == "linear":
        return float(theta), RopeScaling(type="linear", factor=float(scaling["factor"]))
    if kind == "llama3":
        return float(theta), RopeScaling(
            type="llama3",
            factor=float(scaling["factor"]),
            low_freq_factor=float(scaling["low_freq_factor"]),
            high_freq_factor=float(scaling["high_freq_factor"]),
            original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
        )
    raise CheckpointError(f"rope scaling type {kind!r} is not supported (densa has: linear, llama3)")


def _sliding_window(hf: dict[str, Any]) -> int | None:
    if hf["model_type"] == "qwen2" and not hf.get("use_sliding_window", False):
        return None
    return hf.get("sliding_window")


def config_from_hf(hf: dict[str, Any], *, max_seq_len: int | None = None) -> ModelConfig:
    """Map an HF config dict to a ModelConfig.

    `max_seq_len` overrides `max_position_embeddings`; it is how a Mistral-style sliding-window model is
    imported: densa attends to the full context, which equals sliding-window attention only while the
    sequence fits in the window, so the window must be ≥ max_seq_len.
    """
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"unsupported architecture: model_type={model_type!r}, architectures={hf.get('architectures')}; "
            f"densa imports {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    act = hf.get("hidden_act", "silu")
    if act not in HF_TO_DENSA_ACT:
        raise CheckpointError(f"hidden_act {act!r} is not supported (densa has: {sorted(HF_TO_DENSA_ACT)})")
    if hf.get("mlp_bias"):
        raise CheckpointError("mlp_bias=true is not supported: densa FFNs have no biases")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise CheckpointError("partial_rotary_factor != 1 is not supported")
    max_pos = int(hf.get("max_position_embeddings", 2048))
    seq_len = max_seq_len or max_pos
    window = _sliding_window(hf)
    if window is not None and window < seq_len:
        raise CheckpointError(
            f"sliding_window={window} < max sequence length {seq_len}: densa uses full attention, which "
            f"differs beyond the window; import with max_seq_len ≤ {window} (CLI: --max-seq-len {window})"
        )
    theta, scaling = _rope(hf)
    n_heads = int(hf["num_attention_heads"])
    qkv_bias = model_type == "qwen2" or bool(hf.get("attention_bias", False))
    extra: dict[str, Any] = {
        "hf_model_type": model_type,
        "hf_architectures": list(hf.get("architectures") or []),
        "hf_max_position_embeddings": max_pos,
    }
    extra.update({k: hf[k] for k in TOKEN_ID_KEYS if hf.get(k) is not None})
    return ModelConfig(
        vocab_size=int(hf["vocab_size"]),
        dim=int(hf["hidden_size"]),
        n_layers=int(hf["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        head_dim=hf.get("head_dim") or None,
        ffn_dim=int(hf["intermediate_size"]),
        activation=HF_TO_DENSA_ACT[act],
        gated=bool(hf.get("gated_ffn", True)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_seq_len=seq_len,
        qkv_bias=qkv_bias,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        # Only densa's remote code applies it; Llama/Qwen2 classes would ignore the key, so must we.
        activation_threshold=float(hf.get("activation_threshold") or 0.0) if model_type == "densa" else 0.0,
        extra=extra,
    )


def hf_flavour(config: ModelConfig) -> str:
    """Which HF class family an export uses: qwen2 (if it came from Qwen2), llama, or densa (remote code)."""
    if not config.gated:
        return "densa"  # no HF class has a plain (non-gated) FFN on a Llama body
    if config.activation_threshold:
        return "densa"  # nor FATReLU: hidden_act relu would silently drop the threshold
    if config.extra.get("hf_model_type") == "qwen2" and config.qkv_bias:
        return "qwen2"
    return "llama"


def _rope_fields(config: ModelConfig) -> dict[str, Any]:
    legacy: dict[str, Any] | None = None
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        s = config.rope_scaling
        legacy = {"rope_type": s.type, "factor": s.factor}
        if s.type == "llama3":
            legacy.update(
                low_freq_factor=s.low_freq_factor,
                high_freq_factor=s.high_freq_factor,
                original_max_position_embeddings=s.original_max_position_embeddings,
            )
        params = {**legacy, "rope_theta": config.rope_theta}
    return {"rope_theta": config.rope_theta, "rope_scaling": legacy, "rope_parameters": params}


def config_to_hf(config: ModelConfig, dtype: str) -> dict[str, Any]:
    """ModelConfig -> HF config dict for the family `hf_flavour` picks."""
    flavour = hf_flavour(config)
    max_pos = max(config.max_seq_len, int(config.extra.get("hf_max_position_embeddings", 0)))
    hf: dict[str, Any] = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": DENSA_TO_HF_ACT[config.activation],
        "max_position_embeddings": max_pos,
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.init_std,
        "attention_dropout": 0.0,
        "use_cache": True,
        "torch_dtype": dtype,
        **_rope_fields(config),
        # Explicit nulls: otherwise LlamaConfig defaults (bos=1, eos=2) would be invented.
        **{k: config.extra.get(k) for k in TOKEN_ID_KEYS},
    }
    if flavour == "qwen2":
        hf.update(
            model_type="qwen2",
            architectures=["Qwen2ForCausalLM"],
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=config.n_layers,
        )
    else:
        hf.update(attention_bias=config.qkv_bias, mlp_bias=False)
        if flavour == "llama":
            hf.update(model_type="llama", architectures=["LlamaForCausalLM"])
        else:
            hf.update(
                model_type="densa",
                architectures=["DensaForCausalLM"],
                gated_ffn=config.gated,
                **(
                    {"activation_threshold": config.activation_threshold}
                    if config.activation_threshold
                    else {}
                ),
                auto_map={
                    "AutoConfig": "configuration_densa.DensaConfig",
                    "AutoModelForCausalLM": "modeling_densa.DensaForCausalLM",
                },
            )
    return hf
