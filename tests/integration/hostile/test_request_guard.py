"""Undecodable requests cost the server one log line per client per minute, not a traceback
per request: a flood of garbage bytes at a unary RPC and at a Session stream is answered
INVALID_ARGUMENT every time, and logged once."""

from __future__ import annotations

import asyncio
import gc
import logging

import grpc
import pytest

from esper.rpc.channels import ChannelSecurity, open_channel
from tests.integration.test_tamiyo_server import tamiyo

pytestmark = pytest.mark.integration

GARBAGE = b"\xff\xff\xff\xff garbage"
FLOOD = 40


def _raw(b: bytes) -> bytes:
    return b


async def test_a_garbage_flood_is_refused_every_time_and_logged_once(caplog):
    caplog.set_level(logging.INFO)
    # What earlier tests' servers left to finalize is logged before the flood, not in it.
    gc.collect()
    await asyncio.sleep(0.5)
    caplog.clear()
    async with tamiyo(publish_events=False, tezzeret_address="") as (running, _stub, _c):
        channel = open_channel(running.address, security=ChannelSecurity(), retry_attempts=1)
        decide = channel.unary_unary("/esper.leyline.v1.TamiyoService/Decide", _raw, _raw)
        session = channel.stream_stream("/esper.leyline.v1.TamiyoService/Session", _raw, _raw)
        try:
            for _ in range(FLOOD):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await decide(GARBAGE)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "not a valid esper.leyline.v1.DecideRequest" in info.value.details()
            for _ in range(FLOOD // 4):
                call = session()
                await call.write(GARBAGE)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    async for _ in call:
                        pass
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            await channel.close()
    undecodable = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(undecodable) == 1, [r.getMessage() for r in undecodable]
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, [r.getMessage()[:200] for r in tracebacks]
