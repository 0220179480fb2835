-- Urza's catalogue: blueprints, kernels, field-report aggregates and the change log.
-- Enum columns hold the short enum names ("MLP", "VALID") so psql output reads plainly.

CREATE TABLE blueprints (
    name            text        NOT NULL,
    version         text        NOT NULL,
    -- Zero-padded MAJOR.MINOR.PATCH so versions sort numerically ("1.10.0" after "1.2.0").
    version_key     text        NOT NULL,
    family          text        NOT NULL,
    slot_kinds      text[]      NOT NULL,
    -- The op graph and the metadata as protobuf JSON (field names as in the .proto).
    graph           jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    tags            text[]      NOT NULL DEFAULT '{}',
    requires_capability text[]  NOT NULL DEFAULT '{}',
    risk_score      double precision NOT NULL,
    graph_digest    text        NOT NULL,
    state           text        NOT NULL CHECK (state IN
                        ('SUBMITTED', 'COMPILING', 'VALIDATED', 'REJECTED', 'CHARACTERISED', 'RETIRED')),
    reason          text        NOT NULL DEFAULT '',
    -- The submitted BlueprintSpec, serialized; the source of truth for the record.
    spec            bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);
CREATE INDEX blueprints_list_order ON blueprints (name, version_key);
CREATE INDEX blueprints_family ON blueprints (family);

CREATE TABLE kernels (
    kernel_id       text        PRIMARY KEY,
    blueprint_name  text        NOT NULL,
    blueprint_version text      NOT NULL,
    device          text        NOT NULL,
    dtype           text        NOT NULL,
    slot_kind       text        NOT NULL,
    channels        integer     NOT NULL,
    length          integer     NOT NULL DEFAULT 0,
    height          integer     NOT NULL DEFAULT 0,
    width           integer     NOT NULL DEFAULT 0,
    torch_version   text        NOT NULL DEFAULT '',
    format          text        NOT NULL,
    uri             text        NOT NULL,
    sha256          text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes      bigint      NOT NULL CHECK (size_bytes > 0),
    params          bigint      NOT NULL DEFAULT 0,
    flops           bigint      NOT NULL DEFAULT 0,
    latency_p50_ms  double precision NOT NULL DEFAULT 0,
    latency_p99_ms  double precision NOT NULL DEFAULT 0,
    peak_memory_bytes bigint    NOT NULL DEFAULT 0,
    latency_samples integer     NOT NULL DEFAULT 0,
    -- The ValidationReport as protobuf JSON.
    validation      jsonb       NOT NULL,
    state           text        NOT NULL CHECK (state IN ('VALID', 'INVALID', 'RETIRED')),
    state_reason    text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (blueprint_name, blueprint_version) REFERENCES blueprints (name, version)
);
CREATE INDEX kernels_blueprint ON kernels (blueprint_name, blueprint_version);
CREATE INDEX kernels_search ON kernels (device, slot_kind, channels) WHERE state = 'VALID';

-- One row per blueprint that has field reports; past_accuracy_gain_estimate is derived.
CREATE TABLE blueprint_outcomes (
    blueprint_name  text        NOT NULL,
    blueprint_version text      NOT NULL,
    times_used      bigint      NOT NULL DEFAULT 0,
    fossilized_count bigint     NOT NULL DEFAULT 0,
    culled_count    bigint      NOT NULL DEFAULT 0,
    accuracy_gain_sum double precision NOT NULL DEFAULT 0,
    mean_accuracy_gain double precision NOT NULL DEFAULT 0,
    past_accuracy_gain_estimate double precision NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (blueprint_name, blueprint_version),
    FOREIGN KEY (blueprint_name, blueprint_version) REFERENCES blueprints (name, version)
);

-- Every field report folded in, so a redelivered report is recognised (idempotency).
CREATE TABLE field_reports (
    run_id          text        NOT NULL,
    seed_id         text        NOT NULL,
    blueprint_name  text        NOT NULL,
    blueprint_version text      NOT NULL,
    kernel_id       text        NOT NULL DEFAULT '',
    final_stage     text        NOT NULL,
    accuracy_gain   double precision NOT NULL,
    params_added    bigint      NOT NULL DEFAULT 0,
    received_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, seed_id)
);

-- The catalogue change log: WatchCatalog replays it; revisions commit in order.
CREATE TABLE catalog_events (
    revision        bigserial   PRIMARY KEY,
    change          text        NOT NULL,
    blueprint_ref   text        NOT NULL DEFAULT '',
    kernel_id       text        NOT NULL DEFAULT '',
    blueprint_state text        NOT NULL DEFAULT '',
    kernel_state    text        NOT NULL DEFAULT '',
    detail          text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now()
);
