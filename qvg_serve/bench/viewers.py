"""Open viewers for `qvg-serve bench serve --scenario viewers`: SSE connections held open in a
separate process (asyncio + aiohttp), so the harness that times control requests does not share
its interpreter (and GIL) with 500 readers.

    harness --spawn--> viewer process: N SSE connections spread over the stream ids, each read
                       to its end; a connection that ends (stream finished) reopens at ?start=0
            <--state-- {"open": connections open now, "opened", "refused": {code: n},
                        "errors", "frames"}; stop when the harness sets `halt`
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter


async def _viewer(session, url: str, state: dict, halt) -> None:
    import aiohttp

    while not halt.is_set():
        try:
            async with session.get(url, params={"format": "sse"}) as r:
                if r.status != 200:
                    state["refused"][r.status] += 1
                    await asyncio.sleep(1.0)
                    continue
                state["opened"] += 1
                state["open"] += 1
                try:
                    async for line in r.content:
                        if line.startswith(b"event: frame"):
                            state["frames"] += 1
                        if halt.is_set():
                            return
                finally:
                    state["open"] -= 1
        except (TimeoutError, aiohttp.ClientError):
            state["errors"] += 1
            await asyncio.sleep(0.5)


async def _main(base: str, ids: list[str], n: int, shared, halt) -> None:
    import aiohttp

    state = {"open": 0, "opened": 0, "refused": Counter(), "errors": 0, "frames": 0}
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        urls = [f"{base}/v1/streams/{ids[i % len(ids)]}/frames" for i in range(n)]
        tasks = [asyncio.create_task(_viewer(session, u, state, halt)) for u in urls]
        while not halt.is_set():
            shared.value = json.dumps({**state, "refused": dict(state["refused"])}).encode()
            await asyncio.sleep(0.5)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    shared.value = json.dumps({**state, "refused": dict(state["refused"])}).encode()


def run_viewers(base: str, ids: list[str], n: int, shared, halt) -> None:
    """The viewer process's entry point (multiprocessing, spawn)."""
    asyncio.run(_main(base, ids, n, shared, halt))


class ViewerProcess:
    """`n` SSE viewers of `ids` in a child process; `state()` reads its latest counts."""

    def __init__(self, base: str, ids: list[str], n: int) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._shared = ctx.Array("c", 4096)
        self._halt = ctx.Event()
        self._proc = ctx.Process(
            target=run_viewers, args=(base, ids, n, self._shared, self._halt), daemon=True
        )
        self._proc.start()

    def state(self) -> dict:
        raw = self._shared.value
        return json.loads(raw) if raw else {"open": 0, "opened": 0, "refused": {}}

    def stop(self) -> dict:
        self._halt.set()
        self._proc.join(timeout=60)
        if self._proc.is_alive():
            self._proc.kill()
        return self.state()
