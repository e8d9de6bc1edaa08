"""LoRA adapters on densa's model against `peft` and `transformers` (HF parity tier: tiny fp32 models).

The LoRA model's logits must equal (fp32, max abs diff ≤ 1e-5) those of the merged densa model, of the
merged folder loaded by `transformers`, of the adapter folder loaded by `peft.PeftModel` on the base HF
folder, and of peft's own `merge_and_unload`; only the adapters may train.
"""

from __future__ import annotations

import json

import pytest
import torch

from densa.config.errors import ConfigError
from densa.config.load import load_recipe_dict
from densa.lora.adapters import apply_lora, merge_lora_state
from densa.lora.config import LoRAConfig
from densa.lora.export import ADAPTER_WEIGHTS, save_adapter
from densa.models.checkpoint_io import build_transformer
from densa.models.hf import load_hf_model, save_hf

TOL = 1e-5  # fp32 logits of a 2-layer dim-32 model; the observed differences are ~2e-7
LORA = LoRAConfig(enabled=True, rank=4, alpha=8.0)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("lora") / "base"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lora_model(base):
    """The base loaded into densa with adapters whose B is random (B = 0 would make every check trivial)."""
    model = apply_lora(load_hf_model(base), LORA).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return model


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(2))


def _logits(model, ids):
    with torch.no_grad():
        out = model(ids)
    return getattr(out, "logits", out)


def test_only_adapters_train(base):
    model = apply_lora(load_hf_model(base), LORA)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    # 2 layers x 4 targets (qkv_proj, o_proj, gate_up_proj, down_proj) x (A, B)
    assert len(trainable) == 16 and all(".lora_A.default." in n or ".lora_B.default." in n for n in trainable)
    a = model.layers[0].attn.qkv_proj.lora_A["default"].weight
    assert tuple(a.shape) == (4, 32) and model.layers[0].attn.qkv_proj.scaling["default"] == 2.0
    model(torch.randint(0, 64, (1, 8))).sum().backward()
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())


def test_merge_keeps_the_logits(lora_model, ids, base):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    ref = _logits(lora_model, ids)
    state = lora_model.state_dict()
    merged = merge_lora_state(state, LORA)
    assert set(merged) == set(load_hf_model(base).state_dict())  # plain densa names, no adapters
    torch.testing.assert_close(
        _logits(build_transformer(lora_model.config, merged), ids), ref, rtol=0, atol=TOL
    )
    # peft's own merge of the same adapters (written and read back as an adapter folder)
    folder = base.parent / "adapter_for_merge"
    folder.mkdir()
    save_adapter(folder, lora_model.config, state, LORA)
    peft_merged = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), folder).merge_and_unload()
    torch.testing.assert_close(_logits(peft_merged.eval(), ids), ref, rtol=0, atol=TOL)


def test_merged_folder_loads_in_transformers(lora_model, ids, tmp_path):
    from transformers import AutoModelForCausalLM

    save_hf(tmp_path / "merged", lora_model.config, merge_lora_state(lora_model.state_dict(), LORA))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    torch.testing.assert_close(_logits(hf, ids), _logits(lora_model, ids), rtol=0, atol=TOL)


def test_adapter_folder_loads_in_peft(lora_model, ids, base, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    save_adapter(tmp_path, lora_model.config, lora_model.state_dict(), LORA, base_model="org/base")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    assert (config["r"], config["lora_alpha"], config["base_model_name_or_path"]) == (4, 8.0, "org/base")
    tensors = load_file(tmp_path / ADAPTER_WEIGHTS)
    assert len(tensors) == 2 * 2 * 7  # layers x (A, B) x HF projections
    b_qkv = lora_model.layers[1].attn.qkv_proj.lora_B["default"].weight
    # the fused B splits by rows: q (4 heads x 8), k and v (2 heads x 8)
    assert torch.equal(
        tensors["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"], b_qkv[32:48]
    )
    hf = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(hf, tmp_path).eval()
    torch.testing.assert_close(_logits(peft_model, ids), _logits(lora_model, ids), rtol=0, atol=TOL)


RECIPE = {
    "init": {"from_path": "base"},
    "model": {"vocab_size": 64, "dim": 32, "n_layers": 2, "n_heads": 4, "ffn_dim": 64, "max_seq_len": 64},
    "data": {"seq_len": 32, "format": "sft", "train": [{"path": "sft.jsonl"}]},
    "batch": {"global_tokens": 128, "micro_batch": 2},
}


@pytest.mark.parametrize(
    ("lora", "message"),
    [
        ({"rnak": 4}, "lora.rnak: unknown key (did you mean 'rank'?)"),
        ({"target_modules": ["q_proj"]}, "lora.target_modules.0: 'q_proj' is not one of qkv_proj, o_proj"),
        ({"export": "merge"}, "lora.export: 'merge' is not one of merged, adapter (did you mean 'merged'?)"),
        ({"rank": 0}, "lora.rank: must be > 0, got 0"),
        ({"dropout": 1.0}, "lora.dropout: must be in [0, 1), got 1.0"),
        ({"enabled": True, "target_modules": ["up_proj"]}, "lora.target_modules: up_proj: this model"),
    ],
)
def test_recipe_section_is_strict(lora, message):
    with pytest.raises(ConfigError) as err:
        load_recipe_dict({**RECIPE, "lora": lora}, "recipe.yaml")
    assert f"recipe.yaml: {message}" in str(err.value)


def test_recipe_rules_across_sections():
    recipe = {**RECIPE, "init": {}, "lora": {"enabled": True}, "ssd": {"enabled": True, "num_experts": 4}}
    with pytest.raises(ConfigError) as err:
        load_recipe_dict(recipe, "recipe.yaml")
    text = str(err.value)
    assert "recipe.yaml: init.from_path: lora.enabled needs a model to load" in text
    assert "ssd.enabled: cannot be combined with lora.enabled (the model's weights are frozen)" in text
    cfg = load_recipe_dict({**RECIPE, "lora": {"enabled": True, "rank": 16}}, "recipe.yaml")
    assert cfg.lora == LoRAConfig(enabled=True, rank=16) and cfg.lora.scaling == 1.0
