"""The demo's picture: coronal and sagittal views of input, trilinear and CycleINR side by side."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .volumes import write_png_atomically

_WINDOW = (-1000.0, 600.0)  # a wide chest window in HU: lung, soft tissue and bone all visible


def _to_grey(values: np.ndarray) -> np.ndarray:
    low, high = _WINDOW
    return (np.clip((values.astype(np.float32) - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def _views(array: np.ndarray, aspect: float) -> list[np.ndarray]:
    """Coronal (k, i) at the middle row and sagittal (k, j) at the middle column, superior up,
    stretched along k so that pixels are square in mm."""
    from PIL import Image

    coronal = array[::-1, array.shape[1] // 2, :]
    sagittal = array[::-1, :, array.shape[2] // 2]
    views = []
    for view in (coronal, sagittal):
        height = max(1, int(round(view.shape[0] * aspect)))
        picture = Image.fromarray(_to_grey(view)).resize((view.shape[1], height), Image.NEAREST)
        views.append(np.asarray(picture))
    return views


def comparison_png(image, linear, ours, scale: float, path: Path, title_model: str = "") -> Path:
    """Columns: input (thick slices as a viewer shows them), trilinear, CycleINR; rows: coronal, sagittal."""
    import SimpleITK as sitk
    from PIL import Image, ImageDraw

    columns = []
    labels = [f"input {image.GetSpacing()[2]:.2g} mm", "trilinear", f"CycleINR x{scale:g}"]
    for volume in (image, linear, ours):
        array = sitk.GetArrayFromImage(volume)
        aspect = volume.GetSpacing()[2] / volume.GetSpacing()[0]
        columns.append(_views(array, aspect))
    gap = 4
    rows = []
    for row in range(2):
        height = max(column[row].shape[0] for column in columns)
        padded = [np.pad(column[row], ((0, height - column[row].shape[0]), (0, gap))) for column in columns]
        rows.append(np.concatenate(padded, axis=1))
    width = max(r.shape[1] for r in rows)
    canvas = np.concatenate([np.pad(r, ((0, gap), (0, width - r.shape[1]))) for r in rows], axis=0)
    header = 18
    picture = Image.new("L", (canvas.shape[1], canvas.shape[0] + header), 0)
    picture.paste(Image.fromarray(canvas), (0, header))
    draw = ImageDraw.Draw(picture)
    column_width = columns[0][0].shape[1] + gap
    for index, label in enumerate(labels):
        draw.text((index * column_width + 4, 3), label, fill=255)
    write_png_atomically(picture, path)
    return path
