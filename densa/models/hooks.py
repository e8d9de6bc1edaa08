"""Named hook points: identity modules where analysis code reads or rewrites activations.

Register ordinary forward hooks on them (`model.layers[i].ffn.hook_act.register_forward_hook(fn)`);
a hook that returns a tensor replaces the activation, which is how sparsity and SSD interventions plug in.
`capture` collects activations for a block of code without leaving hooks behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class HookPoint(nn.Identity):
    """An identity whose only purpose is to carry forward hooks at a named place in the model."""


@contextlib.contextmanager
def capture(
    model: nn.Module, name_suffix: str, detach: bool = True
) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the output of every HookPoint whose qualified name ends with `name_suffix`.

    Yields {module_name: [tensor per forward call]}. Example: `capture(model, "ffn.hook_act")`.
    """
    records: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, HookPoint) and name.endswith(name_suffix):
            records[name] = []

            def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor, key: str = name) -> None:
                records[key].append(out.detach() if detach else out)

            handles.append(module.register_forward_hook(hook))
    if not handles:
        raise ValueError(f"no hook point ends with {name_suffix!r} in {type(model).__name__}")
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()
