-- Keyset pages for ListRuns and ListAlerts (esper.runtime.pagination).
--
-- ListRuns pages on an immutable key: `listed`, the order in which Nissa first saw each run
-- (newest first). last_event_at moves whenever a run reports, and started_at can move back
-- with a late event, so a keyset on either would skip or repeat runs between two pages.
-- Existing runs are numbered in the order they started.
ALTER TABLE nissa.runs ADD COLUMN listed bigint;
UPDATE nissa.runs r SET listed = o.n
  FROM (SELECT run_id, row_number() OVER (ORDER BY started_at, run_id) AS n FROM nissa.runs) o
 WHERE r.run_id = o.run_id;
CREATE SEQUENCE nissa.runs_listed_seq OWNED BY nissa.runs.listed;
SELECT setval('nissa.runs_listed_seq', coalesce((SELECT max(listed) FROM nissa.runs), 0) + 1, false);
ALTER TABLE nissa.runs
  ALTER COLUMN listed SET DEFAULT nextval('nissa.runs_listed_seq'),
  ALTER COLUMN listed SET NOT NULL;
CREATE UNIQUE INDEX runs_listed ON nissa.runs (listed DESC);

-- ListAlerts: newest first, ties broken by alert_id in the same direction.
CREATE INDEX alerts_keyset ON nissa.alerts (fired_at DESC, alert_id DESC);
