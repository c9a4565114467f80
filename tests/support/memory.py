"""The peak of traced allocations while a function runs (tracemalloc), for the bounded-memory tests."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def traced_peak(fn: Callable[[], T]) -> tuple[T, int]:
    """``(fn(), the peak of the bytes allocated while it ran)``; garbage is collected first."""
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def peak_of(fn: Callable[[], object]) -> int:
    """The peak of the bytes allocated while ``fn()`` ran."""
    return traced_peak(fn)[1]
