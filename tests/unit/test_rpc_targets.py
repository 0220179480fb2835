"""The channel factory's targets: one address, an address list of replicas (called round
robin), a DNS name; what cannot work is refused with the address in the message."""

from __future__ import annotations

import json

import pytest

from esper.rpc.channels import (
    ChannelConfigError,
    ChannelSecurity,
    open_channel,
    parse_target,
    service_config,
)


@pytest.mark.parametrize(("address", "target", "hosts"), [
    ("127.0.0.1:1", "127.0.0.1:1", ["127.0.0.1:1"]),
    ("localhost:1", "localhost:1", ["localhost:1"]),
    ("127.0.0.1:1, 127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2", ["127.0.0.1:1", "127.0.0.1:2"]),
    ("ipv4:127.0.0.1:1,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2", ["127.0.0.1:1", "127.0.0.1:2"]),
    ("[::1]:1,[::1]:2", "ipv6:[::1]:1,[::1]:2", ["[::1]:1", "[::1]:2"]),
    ("dns:///tamiyo:50051", "dns:///tamiyo:50051", ["tamiyo:50051"]),
])
def test_targets(address: str, target: str, hosts: list[str]) -> None:
    assert parse_target(address) == (target, hosts)


@pytest.mark.parametrize(("address", "words"), [
    ("nocolon", "HOST:PORT"),
    ("a:1,b:2", "all IPv4 or all IPv6"),
    ("127.0.0.1:1,[::1]:2", "all IPv4 or all IPv6"),
    ("127.0.0.1:1,", "'' is not HOST:PORT"),
    ("127.0.0.1:0", "is not HOST:PORT"),
    ("dns:///tamiyo", "is not HOST:PORT"),
])
def test_bad_targets_are_refused(address: str, words: str) -> None:
    with pytest.raises(ChannelConfigError, match=words):
        parse_target(address)


def test_a_token_is_only_sent_in_the_clear_when_every_replica_is_on_loopback() -> None:
    with pytest.raises(ChannelConfigError, match="in the clear to 10.0.0.2:1"):
        open_channel("127.0.0.1:1,10.0.0.2:1", security=ChannelSecurity(token="t"), aio=False)
    open_channel("127.0.0.1:1,127.0.0.1:2", security=ChannelSecurity(token="t"), aio=False).close()


def test_round_robin_only_where_there_are_several_addresses() -> None:
    assert json.loads(service_config(3, balanced=True))["loadBalancingConfig"] == [{"round_robin": {}}]
    assert "loadBalancingConfig" not in json.loads(service_config(3))
    assert json.loads(service_config(1, balanced=True))["methodConfig"] == [{"name": [{}]}]
