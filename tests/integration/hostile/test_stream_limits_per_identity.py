"""With authentication on, the per-client Session limit counts per identity, not per host:
two identities on the same machine each get their own share, and one of them at its limit
is refused while the other still opens."""

from __future__ import annotations

import grpc
import pytest

from tests.integration.test_runtime_security import as_identity, pki, server_tls, serving, stub_as  # noqa: F401
from tests.integration.test_tamiyo_server import Client, expect_abort, open_message

pytestmark = pytest.mark.integration


async def _open(stub, run_id: str) -> Client:
    client = Client(stub)
    await client.send(open=open_message(run_id))
    assert (await client.next("accept")).accept.run_id == run_id
    return client


async def test_the_per_client_stream_limit_counts_per_identity(pki) -> None:  # noqa: F811
    async with serving(**server_tls(pki, auth=True), max_sessions_per_client=1, tezzeret_address="") as running, \
            stub_as(running.address, as_identity(pki, "tolaria")) as (tolaria, _), \
            stub_as(running.address, as_identity(pki, "admin")) as (admin, _):
        first = await _open(tolaria, "run-id-1")
        over = Client(tolaria)
        await over.send(open=open_message("run-id-2"))
        await expect_abort(over, grpc.StatusCode.RESOURCE_EXHAUSTED, "limit per client")
        # Same host, another identity: its own share.
        other = await _open(admin, "run-id-3")
        await first.close()
        await other.close()
