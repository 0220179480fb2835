"""Field reports folded into per-blueprint aggregates (idempotent on run id + seed id).

past_accuracy_gain_estimate is a shrunk mean: the estimate submitted with the blueprint
acts as PRIOR_WEIGHT pseudo-reports, so one lucky seed does not make a blueprint the top
search hit, and a blueprint with many reports is judged by them:

    estimate = (PRIOR_WEIGHT * prior + sum of gains) / (PRIOR_WEIGHT + measured gains)

A report's gain is val_accuracy_after - val_accuracy_before, as reported (culled seeds
included: a cull that cost accuracy counts against the blueprint). An accuracy reported as
NaN was not measured (the seed germinated before its run's first validation pass): such a
report counts as a use and a fate, and its gain is unknown, so it moves neither the mean
nor the estimate.
"""

from __future__ import annotations

import math

from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1 import lifecycle_pb2 as lc
from esper.leyline.v1 import telemetry_pb2 as tm
from esper.urza import validate
from esper.urza.catalog import fetch_record, fetch_spec
from esper.urza.db import Database
from esper.urza.errors import InvalidArgument

# Pseudo-reports behind the submitted prior estimate.
PRIOR_WEIGHT = 3.0
FINAL_STAGES = {lc.SEED_STAGE_FOSSILIZED: "FOSSILIZED", lc.SEED_STAGE_CULLED: "CULLED"}

_INSERT_REPORT = """
INSERT INTO field_reports (run_id, seed_id, blueprint_name, blueprint_version, kernel_id,
                           final_stage, accuracy_gain, params_added)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (run_id, seed_id) DO NOTHING
RETURNING seed_id
"""

_UPSERT_OUTCOME = """
INSERT INTO blueprint_outcomes AS o (blueprint_name, blueprint_version, times_used,
    fossilized_count, culled_count, gains_measured, accuracy_gain_sum, mean_accuracy_gain,
    past_accuracy_gain_estimate)
VALUES ($1, $2, 1, $3, $4, $8::bigint, $5::float8, $5::float8 / GREATEST($8::bigint, 1),
        ($6::float8 * $7::float8 + $5::float8) / ($6::float8 + $8::bigint))
ON CONFLICT (blueprint_name, blueprint_version) DO UPDATE SET
    times_used = o.times_used + 1,
    fossilized_count = o.fossilized_count + EXCLUDED.fossilized_count,
    culled_count = o.culled_count + EXCLUDED.culled_count,
    gains_measured = o.gains_measured + EXCLUDED.gains_measured,
    accuracy_gain_sum = o.accuracy_gain_sum + EXCLUDED.accuracy_gain_sum,
    mean_accuracy_gain = (o.accuracy_gain_sum + EXCLUDED.accuracy_gain_sum)
        / GREATEST(o.gains_measured + EXCLUDED.gains_measured, 1),
    past_accuracy_gain_estimate =
        ($6::float8 * $7::float8 + o.accuracy_gain_sum + EXCLUDED.accuracy_gain_sum)
        / ($6::float8 + o.gains_measured + EXCLUDED.gains_measured),
    updated_at = now()
"""


def accuracy_gain(report: tm.FieldReport) -> float | None:
    """The report's accuracy gain; None when either accuracy was not measured (NaN)."""
    for name in ("val_accuracy_before", "val_accuracy_after"):
        value = getattr(report, name)
        if not math.isnan(value) and not 0 <= value <= 1:
            raise InvalidArgument(f"report.{name}", f"{value} is not an accuracy in [0, 1] (or NaN: not measured)")
    gain = report.val_accuracy_after - report.val_accuracy_before
    return None if math.isnan(gain) else gain


async def record_field_report(db: Database, report: tm.FieldReport) -> bp.BlueprintRecord:
    validate.client_id(report.seed_id, "report.seed_id", required=True)
    validate.client_id(report.run_id, "report.run_id", required=False)
    validate.client_id(report.kernel_id, "report.kernel_id", required=False)
    name, version = validate.blueprint_ref(report.blueprint_ref, "report.blueprint_ref")
    stage = FINAL_STAGES.get(report.final_stage)
    if stage is None:
        raise InvalidArgument("report.final_stage", "must be SEED_STAGE_FOSSILIZED or SEED_STAGE_CULLED")
    gain = accuracy_gain(report)
    validate.int64(report.params_added, "report.params_added")
    async with db.transaction() as conn:
        prior = (await fetch_spec(conn, name, version)).metadata.past_accuracy_gain_estimate
        fresh = await conn.fetchval(_INSERT_REPORT, report.run_id, report.seed_id, name, version,
                                    report.kernel_id, stage, gain, report.params_added)
        if fresh is not None:
            fossilized = int(stage == "FOSSILIZED")
            await conn.execute(_UPSERT_OUTCOME, name, version, fossilized, 1 - fossilized,
                               gain or 0.0, PRIOR_WEIGHT, prior, int(gain is not None))
        return await fetch_record(conn, name, version)
