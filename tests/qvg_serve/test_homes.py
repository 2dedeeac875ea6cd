"""Homes.cancel (serve/homes.py) without Ray: a DELETE racing a stream's own end."""

from __future__ import annotations

import asyncio

import pytest

from qvg_serve.serve import homes as homes_mod
from qvg_serve.serve.errors import ApiError
from qvg_serve.serve.homes import Homes

SID = "abcd1234-1"


class _Remote:
    def __init__(self, fn) -> None:
        self.fn = fn

    async def remote(self, *args, **kw):
        return self.fn(*args, **kw)


class FakeStore:
    """The store's answers to `route`, one state per call (the last one repeats)."""

    def __init__(self, *states: str) -> None:
        self.states = list(states)
        self.route = _Remote(self._route)
        self.cancel = _Remote(lambda sid, who: False)  # not re-homing: nothing to end here

    def _route(self, sid: str, who: str) -> dict:
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return {"state": state, "home": "abcd1234", "end_reason": "completed"}


class FakeEngine:  # the home no longer runs the stream
    cancel = _Remote(lambda sid, **kw: None)


def test_a_delete_racing_the_streams_end_answers_not_cancelled(monkeypatch):
    monkeypatch.setattr(homes_mod, "SETTLE_S", 0.001)
    store = FakeStore("live", "live", "live", "ended")  # its end reaches the store late
    got = asyncio.run(Homes(FakeEngine(), store).cancel(SID, "acme"))
    assert got == {"cancelled": False, "pages_held": 0}  # was a 503 "recovering"


def test_a_delete_while_the_stream_moves_is_still_503_recovering(monkeypatch):
    monkeypatch.setattr(homes_mod, "SETTLE_S", 0.001)
    store = FakeStore("live", "recovering")  # its home died under the call
    with pytest.raises(ApiError) as err:
        asyncio.run(Homes(FakeEngine(), store).cancel(SID, "acme"))
    assert err.value.status == 503 and err.value.code == "recovering"
