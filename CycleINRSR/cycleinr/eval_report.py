"""Evaluation results as the paper reports them: a Table-1-shaped Markdown table, a CSV, a JSON.

Rows are collected per volume, scale and method; the table and the JSON hold the mean over
volumes. A metric that could not be computed is None (JSON null, "n/c" in tables) and its reason
travels with it, so a blank is never silent.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .evaluate import METRICS, THICK_METRICS, scale_label
from .output_files import write_text_atomically

HEADERS = {"psnr": "PSNR(↑)", "ssim": "SSIM(↑)", "lpips_alex": "LPIPS_alex(↓)",
           "lpips_vgg": "LPIPS_vgg(↓)", "lpips_squeeze": "LPIPS_squeeze(↓)", "snli": "SNLI(↓)",
           "cycle_psnr": "cycle PSNR(↑)", "cycle_mae": "cycle MAE(↓)"}
HIGHER_IS_BETTER = {"psnr", "ssim", "cycle_psnr"}


@dataclass
class Results:
    """Scores per (volume, scale, method), in the order they were added."""

    rows: list[tuple[str, float, str, dict]] = field(default_factory=list)

    def add(self, volume: str, scale: float, method: str, scores: dict) -> None:
        self.rows.append((volume, float(scale), method, scores))

    def metric_names(self) -> list[str]:
        present = {key for *_, scores in self.rows for key in scores if key != "notes"}
        return [name for name in dict.fromkeys(METRICS + THICK_METRICS) if name in present]

    def summary(self) -> dict[str, dict[str, dict]]:
        """{"x<scale>": {method: {metric: mean over volumes or None, "notes": {...}}}}."""
        grouped: dict[str, dict[str, list[dict]]] = {}
        for _volume, scale, method, scores in self.rows:
            grouped.setdefault(scale_label(scale), {}).setdefault(method, []).append(scores)
        names = self.metric_names()
        summary: dict[str, dict[str, dict]] = {}
        for label, methods in grouped.items():
            for method, entries in methods.items():
                notes: dict[str, str] = {}
                for entry in entries:
                    notes.update(entry.get("notes", {}))
                mean = {}
                for name in names:
                    values = [entry.get(name) for entry in entries]
                    if any(value is None for value in values):
                        mean[name] = None
                        notes.setdefault(name, "not computed for every volume")
                    else:
                        mean[name] = float(np.mean(values))
                mean["volumes"] = len(entries)
                mean["notes"] = notes
                summary.setdefault(label, {})[method] = mean
        return summary


def _format(value, name: str) -> str:
    if value is None:
        return "n/c"
    if math.isinf(value):
        return "inf"
    return f"{value:.4f}" if name != "cycle_mae" else f"{value:.2f}"


def markdown_table(results: Results, title: str = "") -> str:
    """Table 1's layout: one block of rows per scale; the best value of each column in bold."""
    summary = results.summary()
    names = results.metric_names()
    lines = [f"**{title}**", ""] if title else []
    lines.append("| Scale | Method | " + " | ".join(HEADERS[name] for name in names) + " |")
    lines.append("|---|---|" + "---:|" * len(names))
    reasons: dict[str, str] = {}
    for label, methods in summary.items():
        best = {}
        for name in names:
            values = [m[name] for m in methods.values() if m[name] is not None]
            if len(values) > 1:
                best[name] = max(values) if name in HIGHER_IS_BETTER else min(values)
        for row, (method, scores) in enumerate(methods.items()):
            cells = []
            for name in names:
                text = _format(scores[name], name)
                if scores[name] is not None and best.get(name) == scores[name]:
                    text = f"**{text}**"
                cells.append(text)
            lines.append(f"| {label if row == 0 else ''} | {method} | " + " | ".join(cells) + " |")
            for name, reason in scores["notes"].items():
                reasons.setdefault(reason, name)
    if reasons:
        lines.append("")
        lines.extend(f"n/c ({name}): {reason}" for reason, name in reasons.items())
    return "\n".join(lines) + "\n"


def write_csv(results: Results, path: str | Path) -> Path:
    """One row per volume, scale and method; empty cells where a metric was not computed."""
    names = results.metric_names()
    path = Path(path)
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow(["volume", "scale", "method"] + names + ["notes"])
    for volume, scale, method, scores in results.rows:
        values = ["" if scores.get(n) is None else repr(float(scores[n])) for n in names]
        notes = "; ".join(f"{k}: {v}" for k, v in scores.get("notes", {}).items())
        writer.writerow([volume, f"{scale:g}", method] + values + [notes])
    return write_text_atomically(handle.getvalue(), path)


def write_json(results: Results, path: str | Path) -> Path:
    """{"x<scale>": {"<method>": {"psnr": .., "ssim": .., "snli": .., "lpips_alex": .., "notes": {..}}}}."""
    summary = results.summary()
    for methods in summary.values():
        for scores in methods.values():
            for name, value in scores.items():
                if isinstance(value, float) and math.isinf(value):
                    scores[name] = None
                    scores["notes"][name] = "infinite: the result equals the reference"
    return write_text_atomically(json.dumps(summary, indent=2) + "\n", path)
