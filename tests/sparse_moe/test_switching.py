import copy

import pytest
import torch
from torch import nn

from densa.sparse_moe import MoEError, MoEFeedForward, cluster_ffn, is_sparse, to_dense, to_sparse

from .conftest import adam_steps, tiny_model

MOMENTS = ("exp_avg", "exp_avg_sq")


def snapshot(model, optimizer):
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    by_id = {id(p): k for k, p in model.named_parameters()}
    state = {by_id[id(p)]: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    return params, state


def tokens(seed=5):
    return torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("gated", [True, False])
def test_round_trip_is_bit_identical_including_adam_moments(gated):
    model = tiny_model(gated, "silu" if gated else "relu")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    adam_steps(model, opt, 3)
    params, state = snapshot(model, opt)
    before = model(tokens())

    clusterings = [cluster_ffn(layer.ffn, 8) for layer in model.layers]
    perms = to_sparse(model, clusterings, top_k=8, optimizer=opt)
    assert is_sparse(model) and all(not torch.equal(p, torch.arange(64)) for p in perms)

    # Physically permuted: gate and up rows with one index, down columns, and the Adam moments alike.
    n = 64
    for i, perm in enumerate(perms):
        pre = f"layers.{i}.ffn."
        ffn = model.layers[i].ffn
        assert isinstance(ffn, MoEFeedForward)
        w_in = ffn.gate_up_proj.weight if gated else ffn.up_proj.weight
        name_in = pre + ("gate_up_proj.weight" if gated else "up_proj.weight")
        rows = torch.cat([perm, perm + n]) if gated else perm
        assert torch.equal(w_in, params[name_in][rows])
        assert torch.equal(ffn.down_proj.weight, params[pre + "down_proj.weight"][:, perm])
        for key in MOMENTS:
            assert torch.equal(opt.state[w_in][key], state[name_in][key][rows])
            assert torch.equal(
                opt.state[ffn.down_proj.weight][key], state[pre + "down_proj.weight"][key][:, perm]
            )
        assert opt.state[w_in]["step"] == state[name_in]["step"]
        # Experts are contiguous: labels in the new order are sorted.
        assert torch.equal(clusterings[i].labels[perm], torch.arange(n) // 8)
    assert (model(tokens()) - before).abs().max() <= 1e-5  # k = E: the dense function

    to_dense(model, optimizer=opt, restore=perms)
    assert not is_sparse(model)
    params2, state2 = snapshot(model, opt)
    assert params2.keys() == params.keys()
    assert all(torch.equal(params[k], params2[k]) for k in params)
    for k in state:
        for key in MOMENTS:
            assert torch.equal(state[k][key], state2[k][key])
    assert torch.equal(model(tokens()), before)


def test_training_through_a_switch_matches_an_explicitly_permuted_dense_reference():
    model = tiny_model(False, "relu")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    adam_steps(model, opt, 2)
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # (torch shares `step` tensors otherwise)

    perms = to_sparse(model, [cluster_ffn(layer.ffn, 4) for layer in model.layers], top_k=4, optimizer=opt)
    with torch.no_grad():  # the reference: the same permutation, written out by hand
        for layer, perm in zip(ref.layers, perms, strict=True):
            for w, idx in (
                (layer.ffn.up_proj.weight, (perm, slice(None))),
                (layer.ffn.down_proj.weight, (slice(None), perm)),
            ):
                w.copy_(w[idx])
                for key in MOMENTS:
                    ref_opt.state[w][key].copy_(ref_opt.state[w][key][idx])
    adam_steps(model, opt, 2, seed=7)
    adam_steps(ref, ref_opt, 2, seed=7)
    to_dense(model, optimizer=opt)
    for (name, a), b in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name
    for a, b in zip(opt.state.values(), ref_opt.state.values(), strict=True):
        for key in MOMENTS:
            assert torch.allclose(a[key], b[key], atol=1e-6, rtol=1e-4)


def test_switching_needs_ffn_hook_points_and_a_matching_optimizer():
    model = tiny_model()
    model.layers[1].ffn = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))
    with pytest.raises(
        MoEError, match=r"layer 1: Sequential has no FFN hook points \(ffn.hook_pre_act / ffn.hook_act\)"
    ):
        to_sparse(model, [], top_k=2)
    with pytest.raises(MoEError, match="has no `layers` ModuleList"):
        to_sparse(nn.Linear(2, 2), [], top_k=1)

    model = tiny_model()
    clusterings = [cluster_ffn(layer.ffn, 8) for layer in model.layers]
    with pytest.raises(MoEError, match=r"top_k must be between 1 and num_experts \(8\), got 9"):
        to_sparse(model, clusterings, top_k=9)
    assert not is_sparse(model)  # validated before anything changed
    other = torch.optim.AdamW(model.embed_tokens.parameters())
    message = (
        "layer 0: cannot permute ffn.gate_up_proj.weight with its training state: the optimizer does not"
    )
    with pytest.raises(MoEError, match=message):
        to_sparse(model, clusterings, top_k=2, optimizer=other)
    to_sparse(model, clusterings, top_k=2)
    with pytest.raises(MoEError, match="layer 0 is already sparse"):
        to_sparse(model, clusterings, top_k=2)
