"""Encodes the latest user message of requests off the event loop, one batch at a time.

A contextual encoder (MiniLM) costs about 10 ms of CPU per message; run inline it stalls every
other request on the event loop for that long. Here a request hands its text over and waits;
one worker thread encodes whatever has queued up, as one batch. There is no timer: the first
request is encoded at once and requests arriving meanwhile form the next batch, so a quiet proxy
adds no delay. One thread (not one per request) keeps the encoder on one core and the event loop
on the other, instead of several encodings fighting over two cores.

Measured (BENCHMARKS.md): the forward pass is compute-bound, ~10 ms per short message alone or
in a batch of 16, so batching itself saves little; moving it off the loop raised throughput at
16 concurrent clients from 69 to 89 requests/s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[Any]
MAX_BATCH = 32


class QueryBatcher:
    def __init__(self, encode: Callable[[Sequence[str]], Vectors], max_batch: int = MAX_BATCH) -> None:
        self._encode = encode
        self._max_batch = max_batch
        self._pending: list[tuple[str, asyncio.Future[Vectors]]] = []
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0  # how many forward passes ran (for tests and diagnostics)

    async def vector(self, text: str) -> Vectors:
        """``text``'s vector, encoded in the next batch."""
        future: asyncio.Future[Vectors] = asyncio.get_running_loop().create_future()
        self._pending.append((text, future))
        if self._worker is None:
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        waiting: list[tuple[str, asyncio.Future[Vectors]]] = []
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                waiting = [(text, future) for text, future in batch if not future.cancelled()]
                if not waiting:
                    continue
                try:
                    vectors = await asyncio.to_thread(self._encode, [text for text, _ in waiting])
                except Exception as exc:  # every waiter gets the failure, none hangs
                    for _, future in waiting:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self.batches += 1
                for row, (_, future) in enumerate(waiting):
                    if not future.done():
                        future.set_result(np.asarray(vectors[row]))
        except asyncio.CancelledError:  # shutting down: nobody may wait forever
            for _, future in [*waiting, *self._pending]:
                future.cancel()
            self._pending.clear()
            raise
        finally:
            self._worker = None
