"""The four Esper servers by name. A service's implementation is `esper.<name>.service.SPEC`;
a service whose implementation has not landed yet is served by a spec that registers the
generated base servicer, which answers every RPC with UNIMPLEMENTED (it never pretends)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from esper.leyline.v1 import nissa_pb2_grpc, tamiyo_pb2_grpc, tezzeret_pb2_grpc, urza_pb2_grpc
from esper.runtime.config import ServerConfig, field_names
from esper.runtime.server import Closer, ServiceSpec, _no_close

LEYLINE = "esper.leyline.v1"


@dataclass(frozen=True)
class _Generated:
    grpc_service: str
    base_servicer: type
    add_to_server: Callable[[Any, grpc.aio.Server], None]


_GENERATED = {
    "urza": _Generated(
        f"{LEYLINE}.UrzaService", urza_pb2_grpc.UrzaServiceServicer,
        urza_pb2_grpc.add_UrzaServiceServicer_to_server,
    ),
    "tezzeret": _Generated(
        f"{LEYLINE}.TezzeretService", tezzeret_pb2_grpc.TezzeretServiceServicer,
        tezzeret_pb2_grpc.add_TezzeretServiceServicer_to_server,
    ),
    "tamiyo": _Generated(
        f"{LEYLINE}.TamiyoService", tamiyo_pb2_grpc.TamiyoServiceServicer,
        tamiyo_pb2_grpc.add_TamiyoServiceServicer_to_server,
    ),
    "nissa": _Generated(
        f"{LEYLINE}.NissaService", nissa_pb2_grpc.NissaServiceServicer,
        nissa_pb2_grpc.add_NissaServiceServicer_to_server,
    ),
}

SERVICE_NAMES = tuple(_GENERATED)


def grpc_service_name(name: str) -> str:
    return _GENERATED[name].grpc_service


def _unimplemented_spec(name: str) -> ServiceSpec:
    generated = _GENERATED[name]

    async def start(config: ServerConfig, server: grpc.aio.Server) -> Closer:
        generated.add_to_server(generated.base_servicer(), server)
        return _no_close

    return ServiceSpec(
        name=name, config_cls=ServerConfig, grpc_services=(generated.grpc_service,),
        start=start, description=f"{name} (not implemented yet: every RPC is UNIMPLEMENTED)",
    )


def load_spec(name: str) -> ServiceSpec:
    """The ServiceSpec of service `name` (KeyError for unknown names)."""
    if name not in _GENERATED:
        raise KeyError(f"unknown service {name!r}; known: {', '.join(SERVICE_NAMES)}")
    module_name = f"esper.{name}.service"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return _unimplemented_spec(name)
    return module.SPEC


def known_config_tables() -> dict[str, set[str]]:
    """Every service's config field names, for validating a shared TOML file."""
    return {name: field_names(load_spec(name).config_cls) for name in SERVICE_NAMES}
