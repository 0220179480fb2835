#!/usr/bin/env python
"""What transport security and per-RPC authorisation cost a call: one Tamiyo server per
mode, started through the runtime builder, answering sequential unary ListPolicies calls
from one client on loopback. Modes:

- plaintext:  no TLS, auth off (the local default);
- tls-token:  TLS, auth on, a bearer token looked up per call;
- mtls:       mutual TLS, auth on, the identity from the client certificate's CN.

Rounds interleave the modes (in a rotating order); each round times `--calls` calls per mode. Reported per mode:
median and quartiles of the per-call time over rounds, and the ratio of each median to
plaintext's measured in the same run. Connection set-up (the TLS handshake) is excluded:
every client makes one call before timing, as a long-lived channel would have.
Writes benchmarks/results/bench_security.json.

    .venv/bin/python benchmarks/bench_security.py [--rounds 7] [--calls 300]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

from esper.cli.numbers import positive_int
from esper.leyline.v1 import tamiyo_pb2
from esper.rpc.channels import ChannelSecurity
from esper.rpc.clients import TamiyoClient
from esper.runtime.auth import token_digest
from esper.runtime.certs import CA_CERT, cert_paths, make_dev_pki
from esper.runtime.server import start_server
from esper.tamiyo import service as tamiyo_service
from esper.tamiyo.config import TamiyoConfig

RESULTS = Path(__file__).resolve().parent / "results"
TOKEN = "bench-token"


def modes(pki: Path) -> dict[str, tuple[dict, ChannelSecurity]]:
    served, client = cert_paths(pki, "tamiyo"), cert_paths(pki, "admin")
    ca = str(pki / CA_CERT)
    tls = {"tls": True, "tls_cert": str(served.cert), "tls_key": str(served.key), "tls_ca": ca}
    (pki / "tokens").write_text(f"admin {token_digest(TOKEN)}\n")
    return {
        "plaintext": ({}, ChannelSecurity()),
        "tls-token": ({**tls, "tls_client_auth": False, "auth": True, "auth_tokens_file": str(pki / "tokens")},
                      ChannelSecurity(tls=True, ca_file=ca, token=TOKEN)),
        "mtls": ({**tls, "auth": True},
                 ChannelSecurity(tls=True, ca_file=ca, cert_file=str(client.cert), key_file=str(client.key))),
    }


async def timed_calls(stub, calls: int) -> float:
    request = tamiyo_pb2.ListPoliciesRequest()
    began = time.perf_counter()
    for _ in range(calls):
        await stub.ListPolicies(request, timeout=10)
    return (time.perf_counter() - began) / calls


async def main(rounds: int, calls: int) -> dict:
    base = TamiyoConfig(port=0, metrics_port=-1, urza_address="", tezzeret_address="", publish_events=False)
    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp)
        make_dev_pki(pki, servers=("tamiyo",), clients=("admin",))
        servers, clients = {}, {}
        for name, (settings, security) in modes(pki).items():
            servers[name] = await start_server(tamiyo_service.SPEC, dataclasses.replace(base, **settings))
            clients[name] = TamiyoClient(servers[name].address, security=security)
            await timed_calls(clients[name].stub, 5)  # handshake and warm-up, untimed
        per_call: dict[str, list[float]] = {name: [] for name in servers}
        try:
            names = list(servers)
            for round_ in range(rounds):
                # The order rotates each round, so no mode always runs first (or after the same one).
                for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                    per_call[name].append(await timed_calls(clients[name].stub, calls))
        finally:
            for name in servers:
                await clients[name].close()
                await servers[name].stop(0)
    baseline = statistics.median(per_call["plaintext"])
    report = {"rounds": rounds, "calls_per_round": calls, "modes": {}}
    for name, samples in per_call.items():
        q1, median, q3 = statistics.quantiles(samples, n=4) if len(samples) > 1 else (samples[0],) * 3
        median = statistics.median(samples)
        report["modes"][name] = {"median_us": round(median * 1e6, 1), "q1_us": round(q1 * 1e6, 1),
                                 "q3_us": round(q3 * 1e6, 1), "ratio_to_plaintext": round(median / baseline, 3)}
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive_int, default=7)
    parser.add_argument("--calls", type=positive_int, default=300)
    args = parser.parse_args()
    result = asyncio.run(main(args.rounds, args.calls))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_security.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, row in result["modes"].items():
        print(f"{name:10s} median {row['median_us']:8.1f} us/call  (q1 {row['q1_us']:.1f}, q3 {row['q3_us']:.1f})"
              f"  x{row['ratio_to_plaintext']:.3f} plaintext")
