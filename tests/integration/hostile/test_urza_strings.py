"""What PostgreSQL cannot store never reaches it: a NUL character (or an oversized string)
in any string field Urza keeps is refused with INVALID_ARGUMENT naming the field, never
UNKNOWN with the database driver's text, and the server keeps serving."""

from __future__ import annotations

import uuid

import grpc
import pytest

from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1 import lifecycle_pb2 as lc
from esper.leyline.v1 import telemetry_pb2 as tm
from esper.leyline.v1 import urza_pb2
from tests.integration.test_urza import (  # noqa: F401 — `urza` is the fixture
    Urza,
    artifact,
    custom_spec,
    expect_error,
    urza,
)

pytestmark = pytest.mark.integration

NUL = "a\x00b"
REF = "BP-LORA-R8@1.0.0"


def _spec_with_nul_tag() -> bp.BlueprintSpec:
    spec = custom_spec(name="BP-NUL-TAG")
    spec.metadata.tags.append(NUL)
    return spec


def _spec_with_nul_description() -> bp.BlueprintSpec:
    spec = custom_spec(name="BP-NUL-DESC")
    spec.metadata.description = NUL
    return spec


def _report(**change) -> urza_pb2.RecordFieldReportRequest:
    fields = {"run_id": "run-nul", "seed_id": "s1", "blueprint_ref": REF,
              "final_stage": lc.SEED_STAGE_FOSSILIZED, "val_accuracy_before": 0.5,
              "val_accuracy_after": 0.6, **change}
    return urza_pb2.RecordFieldReportRequest(report=tm.FieldReport(**fields))


CASES = [
    ("CreateBlueprint", lambda u: urza_pb2.CreateBlueprintRequest(spec=_spec_with_nul_tag()),
     "spec.metadata.tags[1]"),
    ("CreateBlueprint", lambda u: urza_pb2.CreateBlueprintRequest(spec=_spec_with_nul_description()),
     "spec.metadata.description"),
    ("RetireBlueprint", lambda u: urza_pb2.RetireBlueprintRequest(blueprint_ref=REF, reason=NUL), "reason"),
    ("UpdateBlueprintState", lambda u: urza_pb2.UpdateBlueprintStateRequest(
        blueprint_ref=REF, state=bp.BLUEPRINT_STATE_VALIDATED, reason=NUL), "reason"),
    ("RecordFieldReport", lambda u: _report(seed_id=NUL), "report.seed_id"),
    ("RecordFieldReport", lambda u: _report(run_id=NUL), "report.run_id"),
    ("RegisterKernel", lambda u: urza_pb2.RegisterKernelRequest(kernel=_kernel_with(u, torch_version=NUL)),
     "kernel.target.torch_version"),
    ("ListBlueprints", lambda u: urza_pb2.ListBlueprintsRequest(tags=[NUL]), "tags[0]"),
    ("ListKernels", lambda u: urza_pb2.ListKernelsRequest(device=NUL), "device"),
]


def _kernel_with(server: Urza, **target):
    kernel = artifact(REF, uuid.uuid4().bytes * 8, server.store)
    for name, value in target.items():
        setattr(kernel.target, name, value)
    return kernel


@pytest.mark.parametrize(("rpc", "build", "field"), CASES, ids=[f"{c[0]}:{c[2]}" for c in CASES])
async def test_nul_in_a_stored_string_is_invalid_argument_naming_the_field(urza: Urza, rpc, build, field):  # noqa: F811
    details = await expect_error(getattr(urza.stub, rpc)(build(urza)), grpc.StatusCode.INVALID_ARGUMENT, field)
    assert "NUL" in details or "nul" in details.lower(), details
    assert "0x00" not in details and "asyncpg" not in details  # the driver's text never leaks
    # Still serving, and nothing of it was stored.
    got = await urza.stub.GetBlueprint(urza_pb2.GetBlueprintRequest(blueprint_ref=REF))
    assert got.blueprint.spec.name == "BP-LORA-R8"
    assert got.blueprint.state == bp.BLUEPRINT_STATE_SUBMITTED
