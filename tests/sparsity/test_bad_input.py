import pytest
import torch
from torch import nn

from densa.sparsity import (
    CalibrationDataError,
    UnsupportedModelError,
    collect_ffn,
    make_sequences,
    ppl_p_sparsity,
    sparsify,
)
from densa.sparsity.errors import SparsityError


class NoHooks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(8, 4)

    def forward(self, x):
        return self.emb(x)


def test_model_without_ffn_hooks():
    with pytest.raises(UnsupportedModelError, match="NoHooks has no FFN hook points"):
        ppl_p_sparsity(NoHooks(), torch.zeros(2, 5, dtype=torch.long))


def test_tensor_parallel_model_is_refused(relu_model):
    relu_model.tp_size = 2
    try:
        with pytest.raises(UnsupportedModelError, match="tensor-parallel model"):
            collect_ffn(relu_model, torch.zeros(1, 5, dtype=torch.long))
    finally:
        relu_model.tp_size = 1


def test_short_calibration_data():
    with pytest.raises(
        CalibrationDataError,
        match="calibration data has 100 tokens, fewer than the 130 needed for num_tokens=128",
    ):
        make_sequences(torch.arange(100), seq_len=64, num_tokens=128)


def test_wrong_number_of_thresholds(relu_model):
    with (
        pytest.raises(SparsityError, match="got 3 thresholds for a model with 2 FFN layers"),
        sparsify(relu_model, [0.1, 0.2, 0.3]),
    ):
        pass


def test_out_of_vocab_tokens(relu_model):
    with pytest.raises(CalibrationDataError, match=r"token ids must lie in \[0, 32\)"):
        ppl_p_sparsity(relu_model, torch.full((2, 5), 40))
