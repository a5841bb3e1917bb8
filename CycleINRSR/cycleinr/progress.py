"""A terminal progress bar that is also a ``progress(fraction)`` callback."""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def progress_bar(label: str, enabled: bool = True):
    if not enabled:
        yield lambda fraction: None
        return
    from tqdm import tqdm

    with tqdm(total=1000, desc=label, unit="‰", leave=False, dynamic_ncols=True,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}") as bar:
        def update(fraction: float) -> None:
            bar.update(max(0, int(fraction * 1000) - bar.n))
        yield update
