"""The figures a benchmark produces, and the table that prints them."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib


@dataclasses.dataclass
class Figure:
    """One measured figure, its baseline and the target it is held to.

    ``ratio`` is the figure divided by the baseline, or None without a
    baseline. The target applies to the ratio when ``target_on_ratio`` is
    set, else to the figure itself. ``higher_is_better`` selects which side
    of ``target`` passes.
    """

    name: str
    value: float
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    target: float | None = None
    target_on_ratio: bool = True
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    @property
    def passed(self) -> bool | None:
        """Whether the figure meets its target; None without a target."""
        if self.target is None:
            return None
        measured = self.ratio if self.target_on_ratio else self.value
        if measured is None or not math.isfinite(measured):
            return False
        if self.higher_is_better:
            return measured >= self.target
        return measured < self.target

    def target_text(self) -> str:
        if self.target is None:
            return "reference"
        side = ">=" if self.higher_is_better else "<"
        what = "ratio" if self.target_on_ratio else self.unit
        if self.target_on_ratio:
            return f"{what} {side} {self.target:g}"
        return f"{side} {self.target:g} {what}"

    def to_json(self) -> dict[str, object]:
        data = dataclasses.asdict(self)
        data["ratio"] = self.ratio
        data["passed"] = self.passed
        return data


def format_number(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def format_table(figures: list[Figure]) -> str:
    """Return the figures as a Markdown table."""
    header = (
        "| figure | editstore | unit | baseline | baseline value | ratio "
        "| target | result |"
    )
    lines = [header, "|---|---:|---|---|---:|---:|---|---|"]
    for figure in figures:
        result = {True: "PASS", False: "FAIL", None: "-"}[figure.passed]
        lines.append(
            f"| {figure.name} | {format_number(figure.value)} | {figure.unit} "
            f"| {figure.baseline_name or '-'} | {format_number(figure.baseline)} "
            f"| {format_number(figure.ratio)} | {figure.target_text()} | {result} |"
        )
    notes = [f"- {figure.name}: {figure.note}" for figure in figures if figure.note]
    if notes:
        lines.extend(["", *notes])
    return "\n".join(lines)


def write_json(figures: list[Figure], path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([figure.to_json() for figure in figures], indent=2))
