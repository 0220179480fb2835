-- Tamiyo's run state shared by its replicas (esper.tamiyo.run_store): what a session
-- resumed on any replica needs to decide as one process would have. The graph, budget
-- and seed states are not kept: the client sends them again with every open.

CREATE TABLE tamiyo.runs (
    run_id             text        PRIMARY KEY,
    -- The identity that opened the run (esper.runtime.auth): only it may resume it.
    owner              text        NOT NULL,
    -- Bumped by every open: a replica writes only while it holds the newest generation,
    -- so a superseded stream on another replica can change nothing.
    generation         bigint      NOT NULL,
    session_id         text        NOT NULL,
    -- The session's position (the order checks of snapshots).
    last_step          bigint      NOT NULL DEFAULT -1,
    last_sequence      bigint      NOT NULL DEFAULT -1,
    last_was_epoch_end boolean     NOT NULL DEFAULT false,
    -- The policy's history: one validation loss per finished epoch (bounded in code).
    val_losses         float8[]    NOT NULL DEFAULT '{}',
    last_epoch         bigint      NOT NULL DEFAULT -1,
    decisions_sent     bigint      NOT NULL DEFAULT 0,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
-- Least recently used runs are forgotten first, per owner and over all owners.
CREATE INDEX runs_owner_updated ON tamiyo.runs (owner, updated_at);
CREATE INDEX runs_updated ON tamiyo.runs (updated_at);

-- Decisions issued on a run, in issue order, with the client's ack once it came.
CREATE TABLE tamiyo.decisions (
    run_id      text    NOT NULL REFERENCES tamiyo.runs ON DELETE CASCADE,
    seq         bigint  NOT NULL,
    decision_id text    NOT NULL,
    -- The serialized esper.leyline.v1.AdaptationDecision.
    decision    bytea   NOT NULL,
    -- esper.leyline.v1.AckStatus; NULL while outstanding.
    ack_status  integer,
    PRIMARY KEY (run_id, seq),
    UNIQUE (run_id, decision_id)
);
