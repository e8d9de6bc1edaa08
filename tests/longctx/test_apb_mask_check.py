"""benchmarks/apb/mask_check: the encoding mask of the §7.4 check, and the masked forward against the
model's own forward (no mask = one block) and against a block's tokens run on their own."""

from __future__ import annotations

import torch

from benchmarks.apb.mask_check import encoding_mask, masked_logits
from densa.config.schema import ModelConfig
from densa.models import Transformer


def test_encoding_mask_blocks_anchor_and_tail() -> None:
    m = encoding_mask(7, 6, 3, anchor=False)  # blocks {0,1} {2,3} {4,5}, tail {6}
    assert m.int().tolist() == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0, 0],
        [0, 0, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1],
    ]
    star = encoding_mask(7, 6, 3, anchor=True)
    assert star[4].int().tolist() == [1, 1, 0, 0, 1, 0, 0] and star[1].int().tolist() == m[1].int().tolist()


def test_masked_logits_match_the_model_and_a_block_on_its_own() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=32, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=64)
    model = Transformer(cfg).eval()
    ids = torch.randint(0, 32, (2, 13))
    with torch.no_grad():
        full = model(ids)
        torch.testing.assert_close(masked_logits(model, ids, 12, 1), full, rtol=0, atol=1e-5)
        local = masked_logits(model, ids, 12, 3)
        # block 0 is a prefix: unchanged; block 2 = tokens 8..11 alone, but at positions 8..11 (RoPE is
        # relative, so running them from position 0 gives the same logits)
        torch.testing.assert_close(local[:, :4], full[:, :4], rtol=0, atol=1e-5)
        torch.testing.assert_close(local[:, 8:12], model(ids[:, 8:12]), rtol=0, atol=1e-4)
        assert (local[:, 12] - full[:, 12]).abs().max() > 1e-3  # the tail sees changed context states
