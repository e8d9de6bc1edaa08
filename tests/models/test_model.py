"""Decoder unit tests, each against an independent reference (closed forms, naive attention, HF RoPE)."""

from __future__ import annotations

import math

import pytest
import torch

from densa.models import KVCache, ModelConfig, RopeScaling, Transformer, capture, causal_lm_loss
from densa.models.attention import Attention
from densa.models.ffn import FeedForward
from densa.models.generation import generate
from densa.models.norm import RMSNorm
from densa.models.rope import RotaryEmbedding, rope_inverse_frequencies
from densa.testing import random_tokens, tiny_model_config

# ---------------------------------------------------------------------------------------------- norm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_closed_form(dtype: torch.dtype) -> None:
    norm = RMSNorm(32, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(2, 5, 32).to(dtype)
    xf = x.double()
    expected = xf / torch.sqrt((xf**2).mean(-1, keepdim=True) + 1e-5) * norm.weight.double()
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(norm.to(dtype)(x).double(), expected, atol=tol, rtol=tol)


# ---------------------------------------------------------------------------------------------- FFN

FORMULAS = {
    "relu": lambda x: torch.where(x > 0, x, torch.zeros_like(x)),
    "relu2": lambda x: torch.where(x > 0, x, torch.zeros_like(x)) ** 2,
    "silu": lambda x: x / (1 + torch.exp(-x)),
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
    "gelu_tanh": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
}


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("activation", list(FORMULAS))
def test_ffn_matches_formula(activation: str, gated: bool) -> None:
    config = tiny_model_config(activation=activation, gated=gated)
    ffn = FeedForward(config)
    x = torch.randn(2, 7, config.dim)
    act = FORMULAS[activation]
    if gated:
        w_gate, w_up = ffn.gate_up_proj.weight.chunk(2)  # fused layout [gate; up]
        hidden = act(x @ w_gate.T) * (x @ w_up.T)
    else:
        hidden = act(x @ ffn.up_proj.weight.T)
    torch.testing.assert_close(ffn(x), hidden @ ffn.down_proj.weight.T, atol=1e-6, rtol=1e-5)


def test_ffn_names() -> None:
    assert tiny_model_config(activation="silu").ffn_name == "SwiGLU"
    assert tiny_model_config(activation="relu2", gated=False).ffn_name == "ReLU²"


# ---------------------------------------------------------------------------------------------- RoPE


def _hf_inv_freq(scaling: dict | None, head_dim: int, theta: float) -> torch.Tensor:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    params = {"rope_type": "default", "rope_theta": theta, **(scaling or {})}
    hf = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, rope_parameters=params)
    if params["rope_type"] == "default":  # transformers 5 keeps the default on the model class
        return LlamaRotaryEmbedding.compute_default_rope_parameters(hf)[0]
    return ROPE_INIT_FUNCTIONS[params["rope_type"]](hf, "cpu")[0]


LLAMA3 = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64)


@pytest.mark.parametrize(
    "scaling",
    [None, {"rope_type": "linear", "factor": 4.0}, {"rope_type": "llama3", **LLAMA3}],
    ids=["default", "linear", "llama3"],
)
def test_rope_inverse_frequencies_match_transformers(scaling: dict | None) -> None:
    ours_scaling = None
    if scaling is not None:
        fields = {k: v for k, v in scaling.items() if k != "rope_type"}
        ours_scaling = RopeScaling(type=scaling["rope_type"], **fields)
    for head_dim, theta in [(16, 10000.0), (64, 500000.0)]:
        ours = rope_inverse_frequencies(head_dim, theta, ours_scaling)
        torch.testing.assert_close(ours, _hf_inv_freq(scaling, head_dim, theta).float(), atol=0, rtol=1e-6)


def test_rope_rotates_pairs_i_and_i_plus_half() -> None:
    """rotate_half layout: (x_i, x_{i+d/2}) is the complex number rotated by pos * inv_freq_i."""
    head_dim, positions = 16, torch.tensor([0, 3, 17])
    rope = RotaryEmbedding(head_dim, 10000.0, None, max_seq_len=8)  # also grows the table past 8
    cos, sin = rope(positions, torch.float32)
    x = torch.randn(1, 1, 3, head_dim)
    from densa.models.rope import apply_rotary

    z = torch.complex(x[..., : head_dim // 2], x[..., head_dim // 2 :])
    angle = positions[:, None].float() * rope_inverse_frequencies(head_dim, 10000.0, None)
    rotated = z * torch.polar(torch.ones_like(angle), angle)
    torch.testing.assert_close(apply_rotary(x, cos, sin), torch.cat([rotated.real, rotated.imag], -1))


# ---------------------------------------------------------------------------------------------- attention


def _naive_attention(attn: Attention, config: ModelConfig, x: torch.Tensor, rope: RotaryEmbedding):
    """softmax(Q Kᵀ / √d + causal mask) V with KV heads repeated per group, written out."""
    batch, seq, _ = x.shape
    hd, nh, nkv = config.head_dim, config.n_heads, config.n_kv_heads
    qkv = x @ attn.qkv_proj.weight.T
    if attn.qkv_proj.bias is not None:
        qkv = qkv + attn.qkv_proj.bias
    q, k, v = qkv.split([nh * hd, nkv * hd, nkv * hd], dim=-1)
    q = q.view(batch, seq, nh, hd).transpose(1, 2)
    k = k.view(batch, seq, nkv, hd).transpose(1, 2)
    v = v.view(batch, seq, nkv, hd).transpose(1, 2)
    cos, sin = rope(torch.arange(seq), torch.float32)
    rot = lambda t: t * cos + torch.cat([-t[..., hd // 2 :], t[..., : hd // 2]], -1) * sin  # noqa: E731
    q, k = rot(q), rot(k)
    group = nh // nkv
    k = torch.stack([k[:, h // group] for h in range(nh)], dim=1)  # query head h reads KV head h // group
    v = torch.stack([v[:, h // group] for h in range(nh)], dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    scores = scores.masked_fill(torch.ones(seq, seq).triu(1).bool(), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, nh * hd)
    return out @ attn.o_proj.weight.T


@pytest.mark.parametrize(
    "overrides",
    [
        dict(n_heads=4, n_kv_heads=4),
        dict(n_heads=4, n_kv_heads=2, qkv_bias=True),
        dict(n_heads=4, n_kv_heads=1),
    ],
    ids=["mha", "gqa-bias", "mqa"],
)
def test_attention_matches_naive(overrides: dict) -> None:
    config = tiny_model_config(**overrides)
    attn = Attention(config, layer_idx=0)
    if config.qkv_bias:
        torch.nn.init.normal_(attn.qkv_proj.bias)
    rope = RotaryEmbedding(config.head_dim, config.rope_theta, None, 32)
    x = torch.randn(2, 12, config.dim)
    cos, sin = rope(torch.arange(12), torch.float32)
    torch.testing.assert_close(
        attn(x, cos, sin), _naive_attention(attn, config, x, rope), atol=1e-5, rtol=1e-5
    )


# ---------------------------------------------------------------------------------------------- KV cache


@pytest.fixture
def model() -> Transformer:
    return Transformer(tiny_model_config(qkv_bias=True)).eval()


def test_incremental_decode_equals_full_forward(model: Transformer) -> None:
    ids = random_tokens(model.config, batch=2, seq=12)
    full = model(ids)
    cache = model.new_kv_cache(initial_capacity=4)  # forces the buffers to grow while decoding
    steps = [model(ids[:, t : t + 1], kv_cache=cache) for t in range(12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.seen_tokens == 12 and cache.length(1) == 12


def test_chunked_prefill_equals_full_forward(model: Transformer) -> None:
    ids = random_tokens(model.config, batch=2, seq=16)
    full = model(ids)
    cache = model.new_kv_cache()
    chunks = [model(ids[:, a:b], kv_cache=cache) for a, b in [(0, 5), (5, 12), (12, 13), (13, 16)]]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=1e-5)


def test_greedy_generate_equals_argmax_of_full_forward(model: Transformer) -> None:
    ids = random_tokens(model.config, batch=2, seq=6)
    out = generate(model, ids, max_new_tokens=5)
    expected = ids
    for _ in range(5):
        expected = torch.cat([expected, model(expected)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, expected)


def test_kv_cache_keep_keeps_exactly_the_chosen_entries() -> None:
    cache = KVCache(n_layers=1, initial_capacity=2)
    keys = torch.arange(2 * 3 * 6 * 4, dtype=torch.float32).view(2, 3, 6, 4)  # [B, H, T, D]
    cache.update(0, keys, -keys)
    cache.keep(0, torch.tensor([0, 2, 5]))
    k, v = cache.get(0)
    assert torch.equal(k, keys[:, :, [0, 2, 5]]) and torch.equal(v, -keys[:, :, [0, 2, 5]])
    assert cache.length(0) == 3 and cache.seen_tokens == 6  # RoPE positions keep counting

    per_head = torch.tensor([[[1, 2], [0, 2], [0, 1]], [[0, 1], [0, 2], [1, 2]]])  # [B, H, K], sorted
    cache.keep(0, per_head)
    k, _ = cache.get(0)
    kept = keys[:, :, [0, 2, 5]]
    for b in range(2):
        for h in range(3):
            assert torch.equal(k[b, h], kept[b, h, per_head[b, h]])
    new = torch.full((2, 3, 1, 4), 7.0)
    k, _ = cache.update(0, new, new)  # appends right after the kept entries
    assert k.shape[2] == 3 and torch.equal(k[:, :, 2], new[:, :, 0])


def test_decode_after_keep_attends_only_to_kept_tokens() -> None:
    """After keep(), decoding equals a forward over just the kept tokens at their original positions.

    One layer: deeper layers' cached keys also depend on the evicted tokens, so no forward reproduces them.
    """
    model = Transformer(tiny_model_config(n_layers=1, qkv_bias=True)).eval()
    ids = random_tokens(model.config, batch=1, seq=10)
    kept = torch.tensor([0, 1, 4, 7, 8, 9])
    cache = model.new_kv_cache()
    model(ids, kv_cache=cache)
    for layer in range(model.config.n_layers):
        cache.keep(layer, kept)
    nxt = torch.tensor([[3]])
    out = model(nxt, kv_cache=cache)
    # Reference: the kept tokens plus the new one, at positions (kept, 10), without a cache.
    ref = model(torch.cat([ids[:, kept], nxt], 1), position_ids=torch.cat([kept, torch.tensor([10])]))
    torch.testing.assert_close(out[:, -1], ref[:, -1], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- hooks


def test_capture_ffn_act_reproduces_ffn_output(model: Transformer) -> None:
    ids = random_tokens(model.config, batch=2, seq=8)
    ffn_out: dict[int, torch.Tensor] = {}
    handles = [
        layer.ffn.register_forward_hook(lambda _m, _i, out, i=i: ffn_out.__setitem__(i, out))
        for i, layer in enumerate(model.layers)
    ]
    with capture(model, "ffn.hook_act") as acts:
        model(ids)
    for h in handles:
        h.remove()
    assert sorted(acts) == ["layers.0.ffn.hook_act", "layers.1.ffn.hook_act"]
    for i, layer in enumerate(model.layers):
        (act,) = acts[f"layers.{i}.ffn.hook_act"]
        assert act.shape == (2, 8, model.config.ffn_dim)
        torch.testing.assert_close(act @ layer.ffn.down_proj.weight.T, ffn_out[i], atol=1e-6, rtol=1e-5)
    assert not model.layers[0].ffn.hook_act._forward_hooks  # capture leaves no hooks behind


def test_hook_returning_a_tensor_replaces_the_activation(model: Transformer) -> None:
    ids = random_tokens(model.config, batch=1, seq=8)
    before = model(ids)
    handle = model.layers[0].ffn.hook_act.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))
    zeroed = model(ids)
    handle.remove()
    # Reference: the same model with layer 0's down_proj zeroed (its FFN then adds nothing).
    with torch.no_grad():
        model.layers[0].ffn.down_proj.weight.zero_()
    assert not torch.allclose(zeroed, before)
    torch.testing.assert_close(zeroed, model(ids))


def test_capture_unknown_hook_point_is_an_error(model: Transformer) -> None:
    with (
        pytest.raises(ValueError, match="no hook point ends with 'ffn.hook_nope'"),
        capture(model, "ffn.hook_nope"),
    ):
        pass


# ---------------------------------------------------------------------------------------------- params


@pytest.mark.parametrize(
    "overrides",
    [{}, dict(tie_embeddings=True), dict(qkv_bias=True, gated=False), dict(head_dim=16, n_kv_heads=1)],
    ids=["base", "tied", "bias-plain", "headdim-mqa"],
)
def test_num_params_closed_form(overrides: dict) -> None:
    config = tiny_model_config(**overrides)
    model = Transformer(config)
    counted = sum(p.numel() for p in model.parameters())  # parameters() de-duplicates tied weights
    assert config.num_params() == counted
    embed = model.embed_tokens.weight.numel() * (1 if config.tie_embeddings else 2)
    assert config.num_params(include_embeddings=False) == counted - embed


def test_tied_embeddings_share_storage() -> None:
    model = Transformer(tiny_model_config(tie_embeddings=True))
    assert model.output_weight.data_ptr() == model.embed_tokens.weight.data_ptr()
    assert not any(k.startswith("lm_head") for k in model.state_dict())
    logits = model(random_tokens(model.config, batch=1, seq=4))
    hidden = model.hidden_states(random_tokens(model.config, batch=1, seq=4))
    torch.testing.assert_close(logits, hidden @ model.embed_tokens.weight.T)


def test_init_scales_residual_projections() -> None:
    config = tiny_model_config(n_layers=8, dim=64, ffn_dim=256, n_heads=4, n_kv_heads=4)
    model = Transformer(config)
    out_std = config.init_std / math.sqrt(2 * config.n_layers)
    down = torch.cat([layer.ffn.down_proj.weight.flatten() for layer in model.layers])
    assert abs(down.std().item() - out_std) / out_std < 0.05
    assert abs(model.embed_tokens.weight.std().item() - config.init_std) / config.init_std < 0.05


# ---------------------------------------------------------------------------------------------- loss


def test_causal_lm_loss_mask_semantics() -> None:
    logits = torch.randn(2, 6, 11)
    labels = torch.randint(0, 11, (2, 6))
    labels[0, 1] = -100
    mask = torch.tensor([[1, 1, 0, 1, 1, 0], [0, 0, 1, 1, 1, 1]])
    logp = logits.log_softmax(-1)
    nll = -logp.gather(-1, labels.clamp_min(0)[..., None])[..., 0]
    counted = (labels != -100) & mask.bool()
    torch.testing.assert_close(causal_lm_loss(logits, labels, mask), nll[counted].mean())
    torch.testing.assert_close(causal_lm_loss(logits, labels), nll[labels != -100].mean())
    assert causal_lm_loss(logits, labels, torch.zeros_like(mask)).item() == 0.0
    # bf16 logits are upcast before the softmax
    torch.testing.assert_close(
        causal_lm_loss(logits.bfloat16(), labels, mask),
        causal_lm_loss(logits.bfloat16().float(), labels, mask),
    )


# ---------------------------------------------------------------------------------------------- training


def test_gradient_checkpointing_gives_same_grads() -> None:
    model = Transformer(tiny_model_config()).train()
    ids, labels = random_tokens(model.config, seq=16), random_tokens(model.config, seq=16, seed=1)

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        causal_lm_loss(model(ids), labels).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.gradient_checkpointing = True
    checkpointed = grads()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5, msg=name)


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(activation="swish"), r"activation: 'swish' is not one of \('relu', 'relu2'"),
        (dict(dim=30, n_heads=4), r"dim \(30\) must be divisible by n_heads \(4\)"),
        (dict(n_heads=4, n_kv_heads=3), r"n_heads \(4\) must be divisible by n_kv_heads \(3\)"),
        (dict(ffn_dim=0), r"ffn_dim must be > 0, got 0"),
        (dict(rope_scaling={"type": "yarn", "factor": 2.0}), r"rope_scaling.type: 'yarn' is not one of"),
    ],
)
def test_config_errors_are_clear(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_model_config(**overrides)


def test_tp_divisibility_error_names_the_sizes() -> None:
    with pytest.raises(ValueError, match=r"n_kv_heads \(2\) must be divisible by tp \(4\)"):
        Transformer(tiny_model_config(n_heads=4, n_kv_heads=2), tp_size=4)


def test_config_dict_round_trip_and_unknown_keys() -> None:
    config = tiny_model_config(rope_scaling={"type": "linear", "factor": 2.0})
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown ModelConfig keys: \['hidden'\]"):
        ModelConfig.from_dict({**config.to_dict(), "hidden": 3})
