"""Tezzeret's calls to Urza over gRPC, with deadlines, and errors translated: an
unreachable Urza is DependencyUnavailable; Urza's own refusals keep their status.

Kernel bytes go to Urza through its API (`upload_kernel`, UploadKernel): Tezzeret never
touches Urza's object store."""

from __future__ import annotations

import grpc

from esper.leyline.v1 import blueprint_pb2, kernel_pb2, urza_pb2, urza_pb2_grpc
from esper.rpc.channels import open_channel
from esper.tezzeret.errors import DependencyUnavailable

# Statuses that mean "Urza is not there right now", not "Urza refused".
_OUTAGE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# Bytes per UploadKernel message (well under the channel's message limit).
UPLOAD_CHUNK_BYTES = 1024 * 1024
# An upload's deadline grows with its size at this rate beyond the plain RPC timeout.
UPLOAD_BYTES_PER_S = 8 * 1024 * 1024


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
        self._channel = open_channel(address)
        self._stub = urza_pb2_grpc.UrzaServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method, request, timeout_s: float | None = None):
        try:
            return await method(request, timeout=timeout_s or self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _OUTAGE_CODES:
                raise DependencyUnavailable(
                    f"urza_address: Urza at {self.address} unavailable: {exc.details()}") from None
            raise UrzaRefused(exc.code(), exc.details() or "") from None

    async def create_blueprint(self, spec: blueprint_pb2.BlueprintSpec
                               ) -> tuple[blueprint_pb2.BlueprintRecord, bool]:
        response = await self._call(self._stub.CreateBlueprint,
                                    urza_pb2.CreateBlueprintRequest(spec=spec))
        return response.blueprint, response.created

    async def get_blueprint(self, ref: str) -> blueprint_pb2.BlueprintRecord:
        response = await self._call(self._stub.GetBlueprint,
                                    urza_pb2.GetBlueprintRequest(blueprint_ref=ref))
        return response.blueprint

    async def update_state(self, ref: str, state: int, reason: str = ""
                           ) -> blueprint_pb2.BlueprintRecord:
        response = await self._call(self._stub.UpdateBlueprintState, urza_pb2.UpdateBlueprintStateRequest(
            blueprint_ref=ref, state=state, reason=reason))
        return response.blueprint

    async def register_kernel(self, kernel: kernel_pb2.KernelArtifact
                              ) -> tuple[kernel_pb2.KernelArtifact, bool]:
        response = await self._call(self._stub.RegisterKernel,
                                    urza_pb2.RegisterKernelRequest(kernel=kernel))
        return response.kernel, response.created

    async def upload_kernel(self, kernel: kernel_pb2.KernelArtifact, data: bytes
                            ) -> tuple[kernel_pb2.KernelArtifact, bool]:
        """Hand `data`, the bytes `kernel` describes (sha256, size_bytes), to Urza, which
        verifies, stores and registers them; (the stored artifact, created)."""
        def messages():
            yield urza_pb2.UploadKernelRequest(kernel=kernel)
            for start in range(0, len(data), UPLOAD_CHUNK_BYTES):
                yield urza_pb2.UploadKernelRequest(chunk=data[start:start + UPLOAD_CHUNK_BYTES])

        timeout_s = self.timeout_s + len(data) / UPLOAD_BYTES_PER_S
        response = await self._call(self._stub.UploadKernel, messages(), timeout_s)
        return response.kernel, response.created
