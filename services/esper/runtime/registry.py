"""The four Esper servers by name. A service's implementation is `esper.<name>.service.SPEC`,
imported only when that service is needed (most import torch)."""

from __future__ import annotations

import importlib

from esper.runtime.config import field_names
from esper.runtime.server import ServiceSpec

# Short name -> the full name of the gRPC service it serves (proto/esper/leyline/v1/*.proto).
_GRPC_SERVICES = {
    "urza": "esper.leyline.v1.UrzaService",
    "tezzeret": "esper.leyline.v1.TezzeretService",
    "tamiyo": "esper.leyline.v1.TamiyoService",
    "nissa": "esper.leyline.v1.NissaService",
}

SERVICE_NAMES = tuple(_GRPC_SERVICES)


def grpc_service_name(name: str) -> str:
    return _GRPC_SERVICES[name]


def load_spec(name: str) -> ServiceSpec:
    """The ServiceSpec of service `name` (KeyError for unknown names)."""
    if name not in _GRPC_SERVICES:
        raise KeyError(f"unknown service {name!r}; known: {', '.join(SERVICE_NAMES)}")
    return importlib.import_module(f"esper.{name}.service").SPEC


def known_config_tables() -> dict[str, set[str]]:
    """Every service's config field names, for validating a shared TOML file."""
    return {name: field_names(load_spec(name).config_cls) for name in SERVICE_NAMES}
