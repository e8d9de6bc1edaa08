"""Reading torch files without running code from them: `weights_only=True` plus a small allowlist.

A `.pt` file is a pickle, and plain `torch.load` executes whatever callable the pickle names: a crafted
checkpoint runs a command under `densa eval`, `generate`, `export`, `init.from_path` or a resume. Every
torch file densa reads goes through `load`: torch's weights-only unpickler builds tensors, primitive
containers and only the few classes named here; anything else is refused with a one-line
`CheckpointError` naming the file and the global. There is no fallback to `weights_only=False`.

`save` writes densa's own small state files (RNG, callback state) and checks first that they read back
this way, so a callback returning, say, a numpy scalar fails at save time rather than at resume.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from densa.errors import CheckpointError, CorruptFileError

_torch_load = torch.load  # the real one, also while densa.train.engine routes DeepSpeed's loads here

DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
)
"""Classes DeepSpeed 0.19 pickles into its ZeRO optimizer states (`[bf16_]zero_pp_rank_*_optim_states.pt`,
found by saving at ZeRO 1-3 in fp32 and bf16): the stage (an int Enum), the (start, numel) dataclass of
each parameter's slice, the loss scaler (the dynamic one with fp16, read from DeepSpeed's source: fp16
needs a GPU). Each is a plain value holder whose constructor and pickled state only store numbers.
Model-state files (`mp_rank_*`, ZeRO-3 `zero_pp_rank_*_model_states.pt`) need none of them. Resolved to
the real classes by densa.train.engine, the only module that imports deepspeed."""

_NUMPY_RECONSTRUCT = ("numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct")


def legacy_rng_globals() -> list[tuple[Any, str]]:
    """numpy array globals for `rng_rank*.pt` files of densa before weights-only loading: they held
    `np.random.get_state()`, a tuple with a uint32 array (now stored as a tensor). `_reconstruct` only
    calls `ndarray.__new__`; numpy 1.x spelled its module `numpy.core`. Used for RNG files only."""
    import numpy as np

    reconstruct = (
        np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    )
    dtype_class = type(np.dtype(np.uint32))  # what unpickling `numpy.dtype("u4")` builds; never named
    return [(reconstruct, name) for name in _NUMPY_RECONSTRUCT] + [
        (np.ndarray, "numpy.ndarray"),
        (np.dtype, "numpy.dtype"),
        (dtype_class, f"numpy.dtypes.{dtype_class.__name__}"),
    ]


_GLOBAL_RE = (
    re.compile(r"GLOBAL (\S+) was not an allowed global"),
    re.compile(r"unsupported GLOBAL (\S+) whose module"),
    re.compile(r"(unrecognized function .+?)(?: which belongs|$)", re.MULTILINE),
    re.compile(r"(Can only (?:build|create new object for) .+?)$", re.MULTILINE),
)


def _offender(message: str) -> str:
    """The global (or operation) torch's weights-only unpickler refused, from its error message."""
    for pattern in _GLOBAL_RE:
        m = pattern.search(message)
        if m:
            return m.group(1)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "unknown"


def refusal(path: str | os.PathLike, err: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{path}: contains pickled objects that densa refuses to execute ({_offender(str(err))});"
        " only tensors, plain containers and DeepSpeed's checkpoint classes are loaded."
        " Do not use files from an untrusted source"
    )


def load(
    path: str | os.PathLike,
    *,
    allow: Iterable[Any] = (),
    map_location: Any = "cpu",
    mmap: bool | None = None,
) -> Any:
    """`torch.load(path, weights_only=True)` with `allow` (safe_globals entries) added for this call."""
    try:
        with torch.serialization.safe_globals(list(allow)):
            return _torch_load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if not any(pattern.search(str(err)) for pattern in _GLOBAL_RE):
            raise unreadable(path, err) from None  # not a refused global: the bytes are not a pickle
        raise refusal(path, err) from None
    except Exception as err:  # garbage bytes fail anywhere in the unpickler: EOFError, IndexError, OSError...
        raise unreadable(path, err) from None


def unreadable(path: str | os.PathLike, err: BaseException) -> CorruptFileError:
    """The error for a truncated or garbage torch file (what torch says, in one short line)."""
    text = str(err)
    m = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    reason = m.group(1) if m else (text.strip().splitlines() or [""])[0].split(". ")[0]
    reason = f"{type(err).__name__}: {reason[:100]}" if reason else type(err).__name__
    return CorruptFileError(f"{path}: not a readable torch file, truncated or damaged ({reason})")


def save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save `obj` to `path` once it is known to load back with `load` (no allowlist)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    try:
        _torch_load(buf, weights_only=True)
    except pickle.UnpicklingError as err:
        raise TypeError(
            f"{path}: state holds {_offender(str(err))}, which weights-only loading refuses;"
            " keep checkpoint state to tensors, numbers, strings, None, lists, tuples and dicts"
        ) from None
    Path(path).write_bytes(buf.getbuffer())
