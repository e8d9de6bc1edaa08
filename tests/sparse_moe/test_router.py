import torch

from densa.models.ffn import FeedForward
from densa.sparse_moe import MLPRouter, cluster_ffn, expert_activation_mass, routing_coverage, train_router
from densa.sparse_moe.switching import permute_ffn_

from .conftest import tiny_config


def test_mlp_router_training_raises_activation_mass_coverage():
    ffn = FeedForward(tiny_config(False, "relu"))
    with torch.no_grad():
        for p in ffn.parameters():
            p.normal_(0.0, 0.3)
    clustering = cluster_ffn(ffn, 8)
    permute_ffn_(ffn, torch.sort(clustering.labels, stable=True).indices)  # experts contiguous
    x = torch.randn(2048, 32)
    mass = expert_activation_mass(ffn, x, 8)
    assert mass.shape == (2048, 8) and torch.all(mass >= 0)
    # Σ over experts of the mass is Σ |activation| over all neurons.
    assert torch.allclose(mass.sum(1), ffn.act_fn(ffn.up_proj(x)).abs().sum(1), rtol=1e-5)

    router = MLPRouter.from_clustering(clustering)
    assert torch.equal(router.mix.weight, torch.eye(8))
    stats = train_router(router, x, mass, top_k=2, epochs=5, batch_size=256)
    assert stats["coverage"] >= stats["coverage_before"]
    oracle = routing_coverage(mass, mass, 2)
    assert 2 / 8 < stats["coverage"] <= oracle
