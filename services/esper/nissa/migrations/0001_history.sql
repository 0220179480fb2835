-- Nissa's run history. Every table is keyed by the id of the event it came from, so an
-- event delivered twice is stored once (ON CONFLICT DO NOTHING on ingest).

CREATE TABLE nissa.events (
    event_id    text        PRIMARY KEY,
    run_id      text        NOT NULL,
    kind        text        NOT NULL,
    source      text        NOT NULL,
    severity    integer     NOT NULL,
    time        timestamptz NOT NULL,
    step        bigint,
    epoch       integer,
    ingested_at timestamptz NOT NULL DEFAULT now(),
    body        bytea       NOT NULL  -- the serialized TelemetryEvent
);
CREATE INDEX events_run_time ON nissa.events (run_id, time);

CREATE TABLE nissa.runs (
    run_id        text        PRIMARY KEY,
    started_at    timestamptz NOT NULL,
    last_event_at timestamptz NOT NULL,
    last_step     bigint      NOT NULL DEFAULT 0,
    last_epoch    integer     NOT NULL DEFAULT 0,
    event_count   bigint      NOT NULL DEFAULT 0
);
CREATE INDEX runs_recent ON nissa.runs (last_event_at DESC, run_id);

CREATE TABLE nissa.epochs (
    event_id       text        PRIMARY KEY,
    run_id         text        NOT NULL,
    epoch          integer     NOT NULL,
    step           bigint      NOT NULL,
    train_loss     double precision NOT NULL,
    val_loss       double precision NOT NULL,
    train_accuracy double precision NOT NULL,
    val_accuracy   double precision NOT NULL,
    total_params   bigint      NOT NULL,
    seed_params    bigint      NOT NULL,
    live_seeds     integer     NOT NULL,
    time           timestamptz NOT NULL
);
CREATE INDEX epochs_run ON nissa.epochs (run_id, epoch, step);

CREATE TABLE nissa.seed_transitions (
    event_id      text        PRIMARY KEY,
    run_id        text        NOT NULL,
    seed_id       text        NOT NULL,
    slot_id       text        NOT NULL,
    from_stage    integer     NOT NULL,
    to_stage      integer     NOT NULL,
    step          bigint      NOT NULL,
    epoch         integer     NOT NULL,
    reason        text        NOT NULL,
    blueprint_ref text        NOT NULL,
    time          timestamptz NOT NULL,
    body          bytea       NOT NULL  -- the serialized SeedTransition
);
CREATE INDEX seed_transitions_run ON nissa.seed_transitions (run_id, step, time);

CREATE TABLE nissa.decisions (
    event_id       text        PRIMARY KEY,
    decision_id    text        NOT NULL,
    run_id         text        NOT NULL,
    action         text        NOT NULL,
    issued_at_step bigint      NOT NULL,
    time           timestamptz NOT NULL,
    body           bytea       NOT NULL  -- the serialized AdaptationDecision
);
CREATE INDEX decisions_run ON nissa.decisions (run_id, issued_at_step, time);
CREATE INDEX decisions_id ON nissa.decisions (decision_id);

CREATE TABLE nissa.acks (
    event_id    text        PRIMARY KEY,
    decision_id text        NOT NULL,
    run_id      text        NOT NULL,
    status      integer     NOT NULL,
    reason      text        NOT NULL,
    step        bigint      NOT NULL,
    time        timestamptz NOT NULL,
    body        bytea       NOT NULL  -- the serialized DecisionAck
);
CREATE INDEX acks_decision ON nissa.acks (decision_id);

CREATE TABLE nissa.field_reports (
    event_id      text        PRIMARY KEY,
    run_id        text        NOT NULL,
    seed_id       text        NOT NULL,
    blueprint_ref text        NOT NULL,
    final_stage   integer     NOT NULL,
    time          timestamptz NOT NULL,
    body          bytea       NOT NULL  -- the serialized FieldReport
);
CREATE INDEX field_reports_run ON nissa.field_reports (run_id, time);

CREATE TABLE nissa.alerts (
    alert_id        text        PRIMARY KEY,
    event_id        text        NOT NULL,
    rule            text        NOT NULL,
    severity        integer     NOT NULL,
    run_id          text        NOT NULL,
    service         text        NOT NULL,
    message         text        NOT NULL,
    fired_at        timestamptz NOT NULL,
    acknowledged    boolean     NOT NULL DEFAULT false,
    acknowledged_at timestamptz
);
CREATE INDEX alerts_recent ON nissa.alerts (fired_at DESC, alert_id);

CREATE TABLE nissa.heartbeats (
    service          text        NOT NULL,
    instance_id      text        NOT NULL,
    interval_seconds integer     NOT NULL,
    last_seen        timestamptz NOT NULL,
    PRIMARY KEY (service, instance_id)
);
