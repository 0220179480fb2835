-- ListEvents: a run's (or every run's) stored events in pages that form one consistent
-- listing. Each event row records the transaction that stored it (`stored_by`); a listing
-- keeps the snapshot its first page was read in, and every later page shows only rows
-- visible in that snapshot (pg_visible_in_snapshot), so events stored meanwhile are neither
-- skipped nor repeated. Rows stored before this migration have NULL: visible to every
-- listing. Adding the column without a default and setting the default afterwards rewrites
-- nothing.
ALTER TABLE nissa.events ADD COLUMN stored_by xid8;
ALTER TABLE nissa.events ALTER COLUMN stored_by SET DEFAULT pg_current_xact_id();

-- The listing's order, a run's events by time and id, replaces the (run_id, time) index.
CREATE INDEX events_listing ON nissa.events (run_id, time, event_id);
DROP INDEX nissa.events_run_time;
