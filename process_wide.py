"""Process-wide helpers shared by the pipeline, face finding and the ONNX runtime: giving freed memory
back to the OS, and values built once per process (thread-safe)."""
from __future__ import annotations

import functools
import threading
from typing import Callable, TypeVar

T = TypeVar("T")


# Held while torchvision, timm or facenet-pytorch may be imported for the first time from a thread that
# runs beside another (the face finder is built beside the engine, pipeline.load_engine). Two threads
# importing torchvision at once can meet in its circular imports, and Python then hands one of them a
# partially initialised module ("cannot import name 'InterpolationMode' from partially initialized
# module 'torchvision.transforms'"): a model then failed to load at random, under load (CI, session 7).
heavy_imports = threading.RLock()


def release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc malloc_trim; a no-op elsewhere).

    Exporting, loading and each analysis (MTCNN's large temporaries) leave freed memory in the heap
    that glibc keeps: trimmed, RSS after a 100-frame video fell from 2.2 GB to 1.4-1.8 GB."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def once(build: Callable[[], T]) -> Callable[[], T]:
    """`build()` runs at most once per process, on the first call; every call returns its value.
    Threads calling at the same time wait for the first one (a lock), so nothing is built twice."""
    lock = threading.Lock()
    done: list[T] = []

    @functools.wraps(build)
    def get() -> T:
        with lock:
            if not done:
                done.append(build())
            return done[0]

    return get


__all__ = ["release_free_memory", "once"]
