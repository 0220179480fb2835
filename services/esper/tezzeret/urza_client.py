"""Tezzeret's calls to Urza, through the client layer's UrzaClient (esper.rpc.clients: one
channel from open_channel, deadlines), with its errors in Tezzeret's terms: an unreachable
Urza is DependencyUnavailable (the worker retries later, RPCs answer UNAVAILABLE); Urza's
own refusals are UrzaRefused and keep their status.

Kernel bytes go to Urza through its API (`upload_kernel`, UploadKernel): Tezzeret never
touches Urza's object store."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc

from esper.leyline.v1 import blueprint_pb2, kernel_pb2
from esper.rpc.clients import UrzaClient as _UrzaClient
from esper.rpc.errors import ServiceError
from esper.tezzeret.errors import DependencyUnavailable

T = TypeVar("T")


class UrzaRefused(Exception):
    """Urza answered with an error status; `code` and `details` say which and why."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"Urza: {code.name}: {details}")
        self.code = code
        self.details = details


class UrzaClient:
    def __init__(self, address: str, timeout_s: float) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._client = _UrzaClient(address, timeout_s=timeout_s)

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except ServiceError as exc:
            if exc.unreachable:
                raise DependencyUnavailable(
                    f"urza_address: Urza at {self.address} unavailable: {exc.details}") from None
            raise UrzaRefused(exc.code, exc.details) from None

    async def create_blueprint(self, spec: blueprint_pb2.BlueprintSpec
                               ) -> tuple[blueprint_pb2.BlueprintRecord, bool]:
        return await self._call(self._client.create_blueprint(spec))

    async def get_blueprint(self, ref: str) -> blueprint_pb2.BlueprintRecord:
        return await self._call(self._client.get_blueprint(ref))

    async def update_state(self, ref: str, state: int, reason: str = ""
                           ) -> blueprint_pb2.BlueprintRecord:
        return await self._call(self._client.update_blueprint_state(ref, state, reason))

    async def upload_kernel(self, kernel: kernel_pb2.KernelArtifact, data: bytes
                            ) -> tuple[kernel_pb2.KernelArtifact, bool]:
        """Hand `data`, the bytes `kernel` describes (sha256, size_bytes), to Urza, which
        verifies, stores and registers them; (the stored artifact, created). The deadline
        grows with the size."""
        return await self._call(self._client.upload_kernel(kernel, data))
