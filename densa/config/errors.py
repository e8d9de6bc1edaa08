"""`ConfigError`: every problem found in a recipe, raised once with all of them listed."""

from __future__ import annotations

from collections.abc import Iterable

from densa.errors import DensaError


class ConfigError(DensaError):
    """A recipe (or the recipe plus its launch settings) is invalid.

    `problems` holds one self-contained line per problem, e.g.
    `recipe.yaml: schedule.decay_fracton: unknown key (did you mean 'decay_fraction'?)`. Problems are
    collected and raised together so a user fixes a recipe in one round trip, not one error per run.
    """

    def __init__(self, problems: str | Iterable[str]) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"{len(self.problems)} problems:\n{lines}"
