"""`SparsityReport`: the outcome of a PPL-p% measurement, as JSON and as a markdown table."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LayerSparsity:
    layer: int
    threshold: float
    """Layer threshold t on neuron output magnitude n_i = |a_i|·‖W_down[:, i]‖."""
    cett: float
    """CETT(t) on the cached calibration activations."""
    sparsity: float
    """Fraction of (token, neuron) pairs zeroed when the thresholds are applied."""

    @property
    def activation_ratio(self) -> float:
        return 1.0 - self.sparsity


@dataclass
class CurvePoint:
    """One evaluated setting: a CETT target (or baseline knob), the sparsity it gives, the resulting ppl."""

    knob: float
    sparsity: float
    ppl: float


@dataclass
class BaselineResult:
    method: str
    """`topk` (keep a fraction k per token) or `fat` (zero scores below ε)."""
    knob: float
    sparsity: float
    ppl: float
    ppl_ratio: float
    converged: bool
    curve: list[CurvePoint] = field(default_factory=list)


@dataclass
class SparsityReport:
    p: float
    """Allowed perplexity increase in percent (PPL-p%)."""
    cett_target: float
    """The shared CETT target c found by the outer bisection."""
    ppl_dense: float
    ppl_sparse: float
    converged: bool
    """True when ppl_sparse / ppl_dense is within the tolerance of 1 + p/100."""
    num_tokens: int
    layers: list[LayerSparsity]
    curve: list[CurvePoint] = field(default_factory=list)
    """Every (CETT target, sparsity, ppl) evaluated: the bisection steps and any sweep points."""
    baselines: list[BaselineResult] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    """Model name, activation, seq_len, tolerance… (free-form, for the reader)."""

    @property
    def ppl_ratio(self) -> float:
        return self.ppl_sparse / self.ppl_dense

    @property
    def sparsity(self) -> float:
        """Mean over layers (every layer has the same ffn_dim in a densa Transformer)."""
        return sum(layer.sparsity for layer in self.layers) / len(self.layers)

    @property
    def activation_ratio(self) -> float:
        return 1.0 - self.sparsity

    @property
    def thresholds(self) -> list[float]:
        """Layer thresholds t, as `densa.sparsity.sparsify(model, report.thresholds)` takes them."""
        return [layer.threshold for layer in self.layers]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(ppl_ratio=self.ppl_ratio, sparsity=self.sparsity, activation_ratio=self.activation_ratio)
        for layer in d["layers"]:
            layer["activation_ratio"] = 1.0 - layer["sparsity"]
        return d

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=True)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SparsityReport:
        def curve(points: list[dict]) -> list[CurvePoint]:
            return [CurvePoint(**p) for p in points]

        layers = [
            LayerSparsity(**{k: v for k, v in x.items() if k != "activation_ratio"}) for x in d["layers"]
        ]
        baselines = [
            BaselineResult(**{**b, "curve": curve(b.get("curve", []))}) for b in d.get("baselines", [])
        ]
        skip = {"layers", "curve", "baselines", "ppl_ratio", "sparsity", "activation_ratio"}
        rest = {k: v for k, v in d.items() if k not in skip}
        return cls(**rest, layers=layers, curve=curve(d.get("curve", [])), baselines=baselines)

    @classmethod
    def load(cls, path: str | Path) -> SparsityReport:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_markdown(self) -> str:
        name = self.meta.get("model", "model")
        lines = [
            f"# PPL-{self.p:g}% sparsity: {name}",
            "",
            f"- CETT target c = {self.cett_target:.6f} ({'' if self.converged else 'NOT '}converged)",
            f"- perplexity dense {self.ppl_dense:.4f} → sparse {self.ppl_sparse:.4f} "
            f"(ratio {self.ppl_ratio:.5f}, target {1 + self.p / 100:.5f})",
            f"- sparsity {_pct(self.sparsity)}, activation ratio {_pct(self.activation_ratio)} "
            f"over {self.num_tokens} tokens",
            "",
            "| layer | threshold t | CETT | sparsity | activation ratio |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for x in self.layers:
            lines.append(
                f"| {x.layer} | {x.threshold:.6g} | {x.cett:.4f} | {_pct(x.sparsity)} "
                f"| {_pct(x.activation_ratio)} |"
            )
        if self.baselines:
            lines += [
                "",
                "| baseline | knob | sparsity | ppl | ppl ratio | converged |",
                "| --- | ---: | ---: | ---: | ---: | --- |",
            ]
            for b in self.baselines:
                lines.append(
                    f"| {b.method} | {b.knob:.6g} | {_pct(b.sparsity)} | {b.ppl:.4f} "
                    f"| {b.ppl_ratio:.5f} | {b.converged} |"
                )
        return "\n".join(lines) + "\n"


def _pct(x: float) -> str:
    return "nan" if math.isnan(x) else f"{100 * x:.2f}%"
