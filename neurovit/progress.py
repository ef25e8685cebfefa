"""Progress bars only where someone watches them: on a terminal, never in a log.

A tqdm bar redraws itself with carriage returns; in a Kubeflow task log, a CI log or a file, every redraw
becomes one more ``\\r`` fragment. So a bar is drawn only when its stream (stderr) is a terminal and
``CI`` is not set; elsewhere the long steps write their summary lines (one per epoch in training) and
nothing else.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TextIO

from tqdm.auto import tqdm

_TRUE = {"1", "true", "yes", "on"}


def on_terminal(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default stderr, where tqdm draws) is a terminal and ``CI`` is not set."""
    if os.environ.get("CI", "").strip().lower() in _TRUE:
        return False
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable: Iterable, *, enabled: bool = True, **options) -> tqdm:
    """``tqdm(iterable, **options)``, disabled unless ``enabled`` and stderr is a terminal (``on_terminal``).

    A disabled bar still iterates (and its ``set_postfix`` is a no-op), so callers need no second path.
    """
    return tqdm(iterable, disable=not (enabled and on_terminal()), **options)


__all__ = ["on_terminal", "progress_bar"]
