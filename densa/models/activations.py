"""FFN activation functions by name. ReLU² (So et al., 2021; Zhang et al., 2024) is relu(x)**2."""

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F


def relu2(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "relu2": relu2,
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": gelu_tanh,
}


def fatrelu(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """FATReLU (ProSparse): x where x > threshold, else 0."""
    return torch.where(x > threshold, x, torch.zeros_like(x))


def get_activation(name: str, threshold: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation `name`; with threshold > 0 (relu only) FATReLU at that threshold."""
    if threshold:
        if name != "relu":
            raise ValueError(f"an activation threshold needs relu (FATReLU), got {name!r}")
        return functools.partial(fatrelu, threshold=float(threshold))
    try:
        return ACTIVATION_FUNCTIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATION_FUNCTIONS)}") from None
