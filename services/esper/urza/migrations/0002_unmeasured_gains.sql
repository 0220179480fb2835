-- A seed that germinated before its run's first validation pass (or ended in a run that
-- never validated) has no measured accuracy gain. Its report still counts as a use and a
-- fate; its gain is NULL and stays out of the mean and the estimate, which now divide by
-- gains_measured rather than times_used.
ALTER TABLE field_reports ALTER COLUMN accuracy_gain DROP NOT NULL;
ALTER TABLE blueprint_outcomes ADD COLUMN gains_measured bigint NOT NULL DEFAULT 0;
-- Every report folded in before this migration had a measured gain.
UPDATE blueprint_outcomes SET gains_measured = times_used;
