"""Concurrent serving: a small pool of pipeline replicas per pipeline, a thread budget, and warm-up.

A `Pipeline` is not safe to share between threads (torch Grad-CAM hooks its model), so the service used to
serialise analyses with one lock per pipeline. :class:`PipelinePool` instead holds ``size`` replicas
(`Pipeline.replicate`: ONNX Runtime sessions shared, torch models copied) and lends each to one thread at a
time, so up to ``size`` analyses of one pipeline run at once. :func:`serving_plan` sizes the pool to the
cores and gives each replica ``cores // workers`` model threads, so that the workers together use about as
many threads as there are cores instead of oversubscribing them. Objects without ``replicate`` (test
doubles) get a pool of one, which is the old lock. Waiting threads are served first come, first served (a
plain lock let one client of eight wait 30 s under load, BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingPlan:
    """How many analyses run at once per pipeline (``workers``) and model threads each uses (``threads``)."""

    workers: int
    threads: int


MAX_DEFAULT_WORKERS = 4  # each torch replica is a model copy: more are asked for explicitly


def serving_plan(workers: int | None = None, cores: int | None = None) -> ServingPlan:
    """``workers``: the argument, else the cores (at most :data:`MAX_DEFAULT_WORKERS`);
    ``threads = cores // workers`` (at least 1). ``cores``: the argument (the process's thread budget,
    ``ServerSettings.threads``), else ``os.cpu_count()``. The workers are the process's: the service runs at
    most that many analyses at once over all its pipelines."""
    cores = cores or os.cpu_count() or 1
    workers = max(1, workers or min(cores, MAX_DEFAULT_WORKERS))
    return ServingPlan(workers=workers, threads=max(1, cores // workers))


class PipelinePool:
    """``size`` interchangeable replicas of one pipeline, each used by one thread at a time.

    Args:
        pipeline: a `Pipeline` (replicated ``size - 1`` times) or any object with ``analyze`` (pool of one
            when it has no ``replicate``).
        size: replicas wanted.
    """

    def __init__(self, pipeline: Any, size: int = 1) -> None:
        n = max(1, size) if callable(getattr(pipeline, "replicate", None)) else 1
        self.replicas = [pipeline] + [pipeline.replicate() for _ in range(n - 1)]
        self._free: deque[Any] = deque(self.replicas)
        self._queue: deque[object] = deque()  # tickets of the waiting threads, first come first
        self._changed = threading.Condition()

    @property
    def size(self) -> int:
        return len(self.replicas)

    @property
    def waiting(self) -> int:
        """Threads waiting for a replica."""
        with self._changed:
            return len(self._queue)

    def _take(self) -> Any:
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            while not (self._free and self._queue[0] is ticket):
                self._changed.wait()
            self._queue.popleft()
            self._changed.notify_all()  # the next in line may take another free replica
            return self._free.popleft()

    def _give_back(self, replica: Any) -> None:
        with self._changed:
            self._free.append(replica)
            self._changed.notify_all()

    @contextmanager
    def acquire(self) -> Iterator[Any]:
        """A free replica for the ``with`` block (waits, in arrival order, until one is free)."""
        replica = self._take()
        try:
            yield replica
        finally:
            self._give_back(replica)

    def warm_up(self) -> float:
        """``warm_up()`` of every replica that has one, all at once (each holds its replica); returns ms."""
        t0 = time.perf_counter()
        held = [self._take() for _ in self.replicas]
        try:
            with ThreadPoolExecutor(max_workers=len(held)) as run:
                list(run.map(lambda r: r.warm_up() if callable(getattr(r, "warm_up", None)) else 0.0, held))
        finally:
            for replica in held:
                self._give_back(replica)
        return (time.perf_counter() - t0) * 1000.0
