"""PNG figures for the evaluation, drawn with Pillow (no plotting dependency).

- ``comparison_figure``: like the paper's Figure 3, one column per method (ground truth first)
  and one row per view: an axial slice that was *generated* (not one of the thick input slices,
  where every method is exact), and coronal and sagittal cuts, where slice-to-slice noise
  inconsistency shows as horizontal lines. Central crops, shown at their physical aspect ratio,
  pixels enlarged with nearest-neighbour so no display smoothing hides anything.
- ``metric_plot``: each metric against scale, one line per method.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from .output_files import write_png_atomically

PANEL_WIDTH = 240
MARGIN = 8
LABEL_HEIGHT = 22
ROW_LABEL_WIDTH = 78
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127)]


def _font(size: int = 14):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def display_window(volume: np.ndarray, modality: str) -> tuple[float, float]:
    """CT: a soft-tissue/brain window (-160..240 HU); MR: 1st..99.5th percentile."""
    if modality == "ct":
        return -160.0, 240.0
    low, high = np.percentile(volume[::2, ::2, ::2], [1.0, 99.5])
    return float(low), float(high if high > low else low + 1.0)


def _to_grey(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    scaled = (image.astype(np.float64) - low) / (high - low)
    return (np.clip(scaled, 0.0, 1.0) * 255).round().astype(np.uint8)


def _views(volume: np.ndarray, axial_index: int, crop: float) -> dict[str, np.ndarray]:
    """Axial, coronal and sagittal central crops of a volume with the slice axis first."""
    _, rows, cols = volume.shape
    r0, r1 = int(rows * (1 - crop) / 2), int(math.ceil(rows * (1 + crop) / 2))
    c0, c1 = int(cols * (1 - crop) / 2), int(math.ceil(cols * (1 + crop) / 2))
    return {"axial": volume[axial_index, r0:r1, c0:c1],
            "coronal": volume[::-1, rows // 2, c0:c1],  # last slice on top
            "sagittal": volume[::-1, r0:r1, cols // 2]}


def _panel_size(view: str, shape: tuple[int, int], spacing: Sequence[float]) -> tuple[int, int]:
    """Width and height in pixels for a panel PANEL_WIDTH wide at the physical aspect ratio."""
    along_slices, rows_mm, cols_mm = spacing
    height_mm = {"axial": rows_mm, "coronal": along_slices, "sagittal": along_slices}[view] * shape[0]
    width_mm = {"axial": cols_mm, "coronal": cols_mm, "sagittal": rows_mm}[view] * shape[1]
    return PANEL_WIDTH, max(1, int(round(PANEL_WIDTH * height_mm / width_mm)))


def comparison_figure(volumes: dict[str, np.ndarray], spacing: Sequence[float], slice_axis: int,
                      axial_index: int, window: tuple[float, float], path: str | Path,
                      title: str = "", crop: float = 0.5) -> Path:
    """Columns: the given volumes in order (same shape); rows: axial, coronal, sagittal crops."""
    names = list(volumes)
    moved = {name: np.moveaxis(v, slice_axis, 0) for name, v in volumes.items()}
    spacing_first = [spacing[slice_axis]] + [s for a, s in enumerate(spacing) if a != slice_axis]
    views = {name: _views(v, axial_index, crop) for name, v in moved.items()}
    sizes = {view: _panel_size(view, image.shape, spacing_first)
             for view, image in views[names[0]].items()}
    font = _font()
    title_height = LABEL_HEIGHT if title else 0
    width = ROW_LABEL_WIDTH + len(names) * (PANEL_WIDTH + MARGIN) + MARGIN
    height = title_height + LABEL_HEIGHT + sum(h + MARGIN for _, h in sizes.values()) + MARGIN
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((MARGIN, 3), title, fill="black", font=font)
    for column, name in enumerate(names):
        x = ROW_LABEL_WIDTH + column * (PANEL_WIDTH + MARGIN)
        draw.text((x, title_height + 3), name, fill="black", font=font)
    y = title_height + LABEL_HEIGHT
    for view, (panel_w, panel_h) in sizes.items():
        draw.text((MARGIN, y + panel_h // 2 - 7), view, fill="black", font=font)
        for column, name in enumerate(names):
            grey = _to_grey(views[name][view], window)
            tile = Image.fromarray(grey).resize((panel_w, panel_h), Image.NEAREST)
            canvas.paste(tile, (ROW_LABEL_WIDTH + column * (PANEL_WIDTH + MARGIN), y))
        y += panel_h + MARGIN
    path = Path(path)
    write_png_atomically(canvas, path)
    return path


def metric_plot(summary: dict[str, dict[str, dict]], metrics: Sequence[str], path: str | Path,
                title: str = "") -> Path:
    """Small multiples: one panel per metric, scale on x, one coloured line per method."""
    scales = sorted(summary, key=lambda label: float(label[1:]))
    methods = list(dict.fromkeys(m for label in scales for m in summary[label]))
    shown = [name for name in metrics
             if any(summary[s].get(m, {}).get(name) is not None for s in scales for m in methods)]
    font, small = _font(14), _font(11)
    panel_w, panel_h, left, bottom, top = 300, 220, 58, 34, 26
    legend_h = 20 * len(methods) + 10
    title_h = LABEL_HEIGHT if title else 0
    width = max(1, len(shown)) * (panel_w + MARGIN) + MARGIN
    canvas = Image.new("RGB", (width, title_h + panel_h + legend_h), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((MARGIN, 3), title, fill="black", font=font)
    xs = [float(label[1:]) for label in scales]
    for index, name in enumerate(shown):
        x0 = MARGIN + index * (panel_w + MARGIN) + left
        y0, x1, y1 = title_h + top, MARGIN + index * (panel_w + MARGIN) + panel_w - 10, title_h + panel_h - bottom
        values = [summary[s][m][name] for s in scales for m in methods
                  if summary[s].get(m, {}).get(name) is not None and math.isfinite(summary[s][m][name])]
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        pad = (high - low) * 0.08 or abs(high) * 0.05 or 1.0
        low, high = low - pad, high + pad
        x_low, x_high = (min(xs), max(xs)) if max(xs) > min(xs) else (xs[0] - 1, xs[0] + 1)

        def to_px(x, y):
            return (x0 + (x - x_low) / (x_high - x_low) * (x1 - x0),
                    y1 - (y - low) / (high - low) * (y1 - y0))

        draw.rectangle((x0, y0, x1, y1), outline="black")
        draw.text((x0, title_h + 4), name.upper() if name in ("psnr", "ssim", "snli") else name,
                  fill="black", font=font)
        for tick in np.linspace(low + pad, high - pad, 3) if values else []:
            _, ty = to_px(x_low, tick)
            draw.line((x0 - 4, ty, x0, ty), fill="black")
            draw.text((MARGIN + index * (panel_w + MARGIN), ty - 6), f"{tick:.4g}", fill="black", font=small)
        for x in xs:
            tx, _ = to_px(x, low)
            draw.line((tx, y1, tx, y1 + 4), fill="black")
            draw.text((tx - 8, y1 + 6), f"x{x:g}", fill="black", font=small)
        for colour, method in zip(_cycle(COLOURS, len(methods)), methods):
            points = [to_px(x, summary[s][method][name]) for x, s in zip(xs, scales)
                      if summary[s].get(method, {}).get(name) is not None
                      and math.isfinite(summary[s][method][name])]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            for px, py in points:
                draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)
    for row, (colour, method) in enumerate(zip(_cycle(COLOURS, len(methods)), methods)):
        y = title_h + panel_h + 5 + 20 * row
        draw.rectangle((MARGIN + left, y + 4, MARGIN + left + 14, y + 12), fill=colour)
        draw.text((MARGIN + left + 22, y), method, fill="black", font=font)
    path = Path(path)
    write_png_atomically(canvas, path)
    return path


def _cycle(items: list, count: int) -> list:
    return [items[i % len(items)] for i in range(count)]
