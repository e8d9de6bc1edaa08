"""Native CPU row-gather kernels (csrc/sparse_ffn_cpu.c), built on first use with the system C compiler.

Why C: torch has no fused gather + matrix-vector op. index_select copies the rows before the product, and
embedding_bag reads one row at a time. Both reach about a third of the 1/(1−s) bound. Reading 8 rows at
once without a copy reaches 0.57–0.73 of it at s = 0.95–0.8 (docs/kernels.md).

Build: `cc -O3 -march=native -fopenmp -shared` (without -fopenmp when the compiler lacks it). The library
goes to `$DENSA_CACHE/kernels` (default ~/.cache/densa/kernels), keyed by source, flags and host CPU, and is
written to a temp file then renamed, so concurrent processes never load half a file. No compiler, a failed
build or DENSA_NATIVE_KERNELS=0: `available()` is False, and the torch gather path runs instead (one
warning). It never gives a wrong result. The C code is only loaded through ctypes, so torch headers and
ninja are not needed. A build takes well under a second.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "sparse_ffn_cpu.c"
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC")
LIBS = ("-lm",)
# Activations the fused threshold FFN computes in C (same formulas as reference.ACTIVATIONS).
FUSED_ACTIVATIONS = {"relu": 0, "relu2": 1, "silu": 2}
ENV_SWITCH = "DENSA_NATIVE_KERNELS"

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_switched_off = 0


class NativeKernelWarning(UserWarning):
    """The native CPU kernels could not be built or loaded; the torch gather path is used."""


def cache_dir() -> Path:
    root = os.environ.get("DENSA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "densa")
    return Path(root) / "kernels"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _cpu_id() -> str:
    """The host CPU's identity: -march=native code may not run on another CPU sharing the cache."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = []
    return platform.machine() + platform.processor() + "".join(lines)


def _build(cc: str) -> Path:
    source = SOURCE.read_bytes()
    for extra in (("-fopenmp",), ()):
        flags = (*FLAGS, *extra)
        key = hashlib.sha256(source + " ".join((cc, *flags)).encode() + _cpu_id().encode()).hexdigest()[:16]
        lib = cache_dir() / f"densa_sparse_ffn_cpu-{key}.so"
        if lib.exists():
            return lib
        lib.parent.mkdir(parents=True, exist_ok=True)
        tmp = lib.with_name(f".{lib.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        result = subprocess.run(
            [cc, *flags, "-o", str(tmp), str(SOURCE), *LIBS], capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            tmp.replace(lib)
            return lib
        tmp.unlink(missing_ok=True)
        error = result.stderr.strip().splitlines()[-1:] or ["(no output)"]
    raise RuntimeError(f"{cc} could not build {SOURCE.name}: {error[0]}")


def _load() -> ctypes.CDLL:
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc/clang)")
    lib = ctypes.CDLL(str(_build(cc)))
    ptr, i64, cint = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for name in ("densa_gather_dot_f32", "densa_gather_axpy_f32"):
        fn = getattr(lib, name)
        fn.argtypes = [ptr, i64, ptr, i64, ptr, i64, i64, ptr, cint]
        fn.restype = None
    fused = lib.densa_threshold_ffn_f32
    fused.argtypes = [
        ptr, ptr, i64, ptr, i64, i64, i64,  # gate, up, ld, down_t, ld_down, ffn_dim, dim
        ptr, ptr, cint, ptr,                # x, t, activation, out
        ptr, ptr, cint,                     # idx, h work buffers, threads
    ]  # fmt: skip
    fused.restype = i64
    predicted = lib.densa_predicted_ffn_f32
    predicted.argtypes = [
        ptr, ptr, i64,                      # predictor down [rank, dim], up [ffn_dim, rank], rank
        ptr, ptr, i64, ptr, i64, i64, i64,  # gate, up, ld, down_t, ld_down, ffn_dim, dim
        ptr, ptr, cint, ptr,                # x, t, activation, out
        ptr, ptr, ptr, ptr, cint,           # idx, h, z, n_read work buffers, threads
    ]  # fmt: skip
    predicted.restype = i64
    expert = lib.densa_expert_ffn_f32
    expert.argtypes = [
        ptr, ptr, i64, ptr, i64,            # gate, up, ld, down_t, ld_down
        i64, i64, i64, ptr, i64, ptr, i64,  # experts, expert size, dim, x, tokens, sel, k
        cint, ptr, ptr, ptr, ptr, ptr,      # activation, out, slot_tok, h, starts, used work buffers
        cint,                               # threads
    ]  # fmt: skip
    expert.restype = i64
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them on first call; None when disabled or unavailable (warned once)."""
    global _lib, _tried
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            if os.environ.get(ENV_SWITCH, "1") != "0":
                try:
                    _lib = _load()
                except (OSError, RuntimeError) as err:
                    warnings.warn(
                        f"native CPU sparse-FFN kernels unavailable ({err}); using the torch gather path",
                        NativeKernelWarning,
                        stacklevel=3,
                    )
            _tried = True
    return _lib


def available() -> bool:
    return _switched_off == 0 and library() is not None


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block the torch gather path runs instead (for side-by-side measurements)."""
    global _switched_off
    _switched_off += 1
    try:
        yield
    finally:
        _switched_off -= 1


def supports(*tensors: torch.Tensor) -> bool:
    """Whether the native kernels take these tensors: fp32 on CPU, each row contiguous."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.stride(-1) == 1 for t in tensors)


def gather_dot(x: torch.Tensor, weight: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [N, dim] @ weight[idx].T -> [N, K], reading only rows idx of weight [rows, dim] (fp32, CPU)."""
    lib = library()
    assert lib is not None and supports(x, weight)
    x = x.contiguous()
    idx = idx.to(torch.int64).contiguous()
    out = x.new_empty(x.shape[0], idx.numel())
    lib.densa_gather_dot_f32(
        weight.data_ptr(), weight.stride(0), idx.data_ptr(), idx.numel(), x.data_ptr(), x.shape[0],
        weight.shape[1], out.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return out


def _fused_ffn_library(
    kind: str, gate: torch.Tensor, up: torch.Tensor | None, down_t: torch.Tensor, activation: str
):
    """The loaded library, after checking what a fused whole-FFN call needs of its weights."""
    lib = library()
    if lib is None:
        raise RuntimeError("the native CPU kernels are not available")
    if activation not in FUSED_ACTIVATIONS:
        raise ValueError(f"fused activations are {sorted(FUSED_ACTIVATIONS)}, got {activation!r}")
    if not (supports(gate, down_t) and (up is None or supports(up))):
        raise ValueError(f"{kind} needs fp32 CPU weights with contiguous rows")
    if up is not None and up.stride(0) != gate.stride(0):
        raise ValueError("gate and up rows must share one row stride")
    return lib


class ThresholdFFN:
    """One token's exact-threshold FFN as one native call, prepared once per layer: x [dim] -> out [dim].

    Everything but the input is bound at construction (weight pointers, fp32 per-neuron thresholds, work
    buffers), so a decode step costs one ctypes call: a small model's FFN is cheaper than a dozen torch ops.
    gate/up [ffn_dim, dim] rows (up None for a plain FFN) share one row stride; down_t [ffn_dim, dim];
    t [ffn_dim] thresholds on |act(gate)|; activation in FUSED_ACTIVATIONS; fp32 on CPU. Not re-entrant:
    one instance must not run in two threads at once (its work buffers are shared).
    """

    def __init__(
        self,
        gate: torch.Tensor,
        up: torch.Tensor | None,
        down_t: torch.Tensor,
        t: torch.Tensor,
        activation: str,
    ) -> None:
        lib = _fused_ffn_library(type(self).__name__, gate, up, down_t, activation)
        self.ffn_dim, self.dim = gate.shape
        self.last_active = 0
        self._lib = lib
        # references keep the memory behind the pointers alive
        self._tensors: tuple[torch.Tensor | None, ...] = (gate, up, down_t, t.to(torch.float32).contiguous())
        self._idx = torch.empty(self.ffn_dim, dtype=torch.int64)
        self._h = torch.empty(self.ffn_dim)
        self._weights = (
            gate.data_ptr(), None if up is None else up.data_ptr(), gate.stride(0), down_t.data_ptr(),
            down_t.stride(0), self.ffn_dim, self.dim,
        )  # fmt: skip
        self._t_ptr, self._act = self._tensors[3].data_ptr(), FUSED_ACTIVATIONS[activation]  # type: ignore[union-attr]

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape != (self.dim,) or not supports(x):
            raise ValueError(f"x must be an fp32 CPU vector of {self.dim}, got {tuple(x.shape)} {x.dtype}")
        return x.contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self._input(x)
        out = torch.empty(self.dim)
        self.last_active = self._lib.densa_threshold_ffn_f32(
            *self._weights, x.data_ptr(), self._t_ptr, self._act, out.data_ptr(), self._idx.data_ptr(),
            self._h.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        return out


class PredictedFFN(ThresholdFFN):
    """`ThresholdFFN` that reads only the rows a low-rank predictor selects, all in one native call.

    predictor_down [rank, dim] and predictor_up [ffn_dim, rank] are `LowRankPredictor.down/up.weight`: neuron
    i is read iff (predictor_up · predictor_down · x)_i ≥ 0, and kept iff also |act(gate_i)| > t_i, exactly
    the engine's predicted path. `last_read` counts the predicted neurons of the last call.
    """

    def __init__(
        self,
        predictor_down: torch.Tensor,
        predictor_up: torch.Tensor,
        gate: torch.Tensor,
        up: torch.Tensor | None,
        down_t: torch.Tensor,
        t: torch.Tensor,
        activation: str,
    ) -> None:
        super().__init__(gate, up, down_t, t, activation)
        rank = predictor_down.shape[0]
        if predictor_down.shape != (rank, self.dim) or predictor_up.shape != (self.ffn_dim, rank):
            raise ValueError(
                f"predictor weights must be [rank, {self.dim}] and [{self.ffn_dim}, rank], got "
                f"{tuple(predictor_down.shape)} and {tuple(predictor_up.shape)}"
            )
        p_down, p_up = predictor_down.detach().contiguous(), predictor_up.detach().contiguous()
        if not supports(p_down, p_up):
            raise ValueError("PredictedFFN needs fp32 CPU predictor weights")
        self.last_read = 0
        self._predictor = (p_down, p_up)
        self._z = torch.empty(rank)
        self._n_read = torch.zeros(1, dtype=torch.int64)
        self._predictor_args = (p_down.data_ptr(), p_up.data_ptr(), rank)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self._input(x)
        out = torch.empty(self.dim)
        self.last_active = self._lib.densa_predicted_ffn_f32(
            *self._predictor_args, *self._weights, x.data_ptr(), self._t_ptr, self._act, out.data_ptr(),
            self._idx.data_ptr(), self._h.data_ptr(), self._z.data_ptr(), self._n_read.data_ptr(),
            torch.get_num_threads(),
        )  # fmt: skip
        self.last_read = int(self._n_read[0])
        return out


def gather_axpy(h: torch.Tensor, idx: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """out[n] = sum_k h[n, k] * weight_t[idx[k]]: h [N, K], weight_t [rows, dim] -> [N, dim] (fp32, CPU)."""
    lib = library()
    assert lib is not None and supports(h, weight_t)
    h = h.contiguous()
    idx = idx.to(torch.int64).contiguous()
    out = h.new_zeros(h.shape[0], weight_t.shape[1])
    lib.densa_gather_axpy_f32(
        weight_t.data_ptr(), weight_t.stride(0), idx.data_ptr(), idx.numel(), h.data_ptr(), h.shape[0],
        weight_t.shape[1], out.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return out


class ExpertFFN:
    """Top-k MoE experts for a few tokens as one native call, prepared once per layer: x [N, dim] and
    experts [N, k] (expert ids) -> out [N, dim] = Σ_j expert_{experts[n, j]}(x[n]).

    Expert e is the contiguous neuron block [e·m, (e+1)·m) of gate/up/down_t (densa.sparse_moe's layout), so
    only the selected experts' rows are read, each once for all the tokens routed to it. The combine weight
    is 1, as in the forward of `densa.sparse_moe.MoEFeedForward`. gate/up [ffn_dim, dim] share one row stride
    (up None for a plain FFN); down_t [ffn_dim, dim]; fp32 on CPU; activation in FUSED_ACTIVATIONS. Not
    re-entrant (shared work buffers), like `ThresholdFFN`.
    """

    def __init__(
        self,
        gate: torch.Tensor,
        up: torch.Tensor | None,
        down_t: torch.Tensor,
        num_experts: int,
        activation: str,
    ) -> None:
        lib = _fused_ffn_library(type(self).__name__, gate, up, down_t, activation)
        self.ffn_dim, self.dim = gate.shape
        if num_experts < 1 or self.ffn_dim % num_experts:
            raise ValueError(f"{self.ffn_dim} neurons do not split into {num_experts} equal experts")
        self.num_experts, self.expert_size = num_experts, self.ffn_dim // num_experts
        self._lib = lib
        self._tensors = (gate, up, down_t)  # keeps the memory behind the pointers alive
        self._weights = (
            gate.data_ptr(), None if up is None else up.data_ptr(), gate.stride(0), down_t.data_ptr(),
            down_t.stride(0), num_experts, self.expert_size, self.dim,
        )  # fmt: skip
        self._act = FUSED_ACTIVATIONS[activation]
        self._starts = torch.empty(num_experts + 1, dtype=torch.int64)
        self._used = torch.empty(num_experts, dtype=torch.int64)

    def __call__(self, x: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim or not supports(x):
            raise ValueError(f"x must be fp32 CPU [tokens, {self.dim}], got {tuple(x.shape)} {x.dtype}")
        if experts.dim() != 2 or experts.shape[0] != x.shape[0]:
            raise ValueError(f"experts must be [{x.shape[0]}, k], got {tuple(experts.shape)}")
        x = x.contiguous()
        sel = experts.to(torch.int64).contiguous()
        n, k = sel.shape
        out = torch.empty(n, self.dim)
        slot_tok = torch.empty(n * k, dtype=torch.int64)
        h = torch.empty(n * k * self.expert_size)
        status = self._lib.densa_expert_ffn_f32(
            *self._weights, x.data_ptr(), n, sel.data_ptr(), k, self._act, out.data_ptr(),
            slot_tok.data_ptr(), h.data_ptr(), self._starts.data_ptr(), self._used.data_ptr(),
            torch.get_num_threads(),
        )  # fmt: skip
        if status != 0:
            raise ValueError(f"expert ids must lie in [0, {self.num_experts}), got {sel.min()}..{sel.max()}")
        return out
