"""The per-tenant viewer cap (delivery.Viewers) on its own: refusal at the cap, counting from
a response's first part to its close, nothing held by a response that never started."""

from __future__ import annotations

import asyncio

import pytest

from qvg_serve.serve.delivery import Viewers
from qvg_serve.serve.errors import ApiError


async def parts(n: int):
    for i in range(n):
        yield i


def test_cap_refuses_with_429_and_retry_after():
    v = Viewers(cap=1)

    async def scenario():
        v.check("acme")
        gen = v.counted("acme", parts(3))
        assert await gen.__anext__() == 0  # started: counted
        assert v.by_tenant["acme"] == 1
        with pytest.raises(ApiError) as err:
            v.check("acme")
        assert err.value.status == 429 and err.value.code == "too_many_viewers"
        assert err.value.headers["Retry-After"]
        v.check("globex")  # another tenant is not held back
        await gen.aclose()  # the client went away
        assert "acme" not in v.by_tenant
        v.check("acme")

    asyncio.run(scenario())


def test_a_response_that_never_started_holds_nothing():
    v = Viewers(cap=1)
    gen = v.counted("acme", parts(3))
    assert v.by_tenant["acme"] == 0
    del gen
    v.check("acme")


def test_a_finished_response_is_released():
    v = Viewers(cap=2)

    async def drain():
        return [p async for p in v.counted("acme", parts(2))]

    assert asyncio.run(drain()) == [0, 1]
    assert not v.by_tenant
