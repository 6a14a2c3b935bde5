"""asyncio front of the engine: ``stream = aengine.submit(ids, params)`` then ``async for out in stream: ...``.

The engine steps in its own thread; each request's outputs cross to the event loop through
``loop.call_soon_threadsafe`` into an ``asyncio.Queue``. ``submit`` raises at once for a request the engine
cannot take (so an HTTP handler can answer 4xx before it starts streaming). Leaving the iteration early (a client
that disconnected, a cancelled task) aborts the request, so its KV blocks are freed at the engine's next step.
``is_disconnected`` lets a non-streaming caller notice a client that went away while it waits (polled every
``poll_s``, also while tokens keep arriving), which aborts the request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from serve.engine import Engine, RequestOutput
from serve.sampling import SamplingParams


class RequestStream:
    """Outputs of one submitted request; iterate once."""

    def __init__(self, engine: Engine, prompt_ids: Sequence[int], params: SamplingParams, request_id: str | None,
                 adapter: str | None = None):
        loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[RequestOutput] = asyncio.Queue()

        def deliver(out: RequestOutput) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening any more
                loop.call_soon_threadsafe(self._queue.put_nowait, out)

        self.engine = engine
        self.request_id = engine.submit(prompt_ids, params, on_output=deliver, request_id=request_id, adapter=adapter)
        self.finished = False

    def abort(self) -> None:
        if not self.finished:
            self.engine.abort(self.request_id)
            self.finished = True

    async def outputs(self, is_disconnected: Callable[[], Awaitable[bool]] | None = None,
                      poll_s: float = 0.5) -> AsyncIterator[RequestOutput]:
        loop = asyncio.get_running_loop()
        checked = loop.time()
        try:
            while not self.finished:
                if is_disconnected is None:
                    out = await self._queue.get()
                else:
                    # Check every poll_s whether or not tokens arrive: a busy request must not outlive its client.
                    try:
                        out = await asyncio.wait_for(self._queue.get(), timeout=max(checked + poll_s - loop.time(), 0))
                    except asyncio.TimeoutError:
                        out = None
                    if loop.time() - checked >= poll_s:
                        checked = loop.time()
                        if await is_disconnected():
                            return
                    if out is None:
                        continue
                self.finished = out.finished
                yield out
        finally:
            self.abort()

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self.outputs()


class AsyncEngine:
    """Runs ``engine`` in a background thread while it is open (``start``/``shutdown``)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def start(self) -> None:
        self.engine.start()

    def shutdown(self) -> None:
        self.engine.shutdown()

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, *, request_id: str | None = None,
               adapter: str | None = None) -> RequestStream:
        """Queue a request (call from the event loop), under the LoRA adapter named ``adapter`` if given. Raises
        ContextLengthError, RequestTooLargeError, ServerBusyError or ConfigError at once for a request that cannot
        be taken."""
        return RequestStream(self.engine, prompt_ids, params, request_id, adapter)


async def merge(streams: Sequence[AsyncIterator[RequestOutput]]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave several output streams as (stream index, output); closing this closes them all."""
    queue: asyncio.Queue[tuple[int, RequestOutput | None]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for out in stream:
                await queue.put((i, out))
        finally:
            queue.put_nowait((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, out = await queue.get()
            if out is None:
                remaining -= 1
                continue
            yield i, out
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
