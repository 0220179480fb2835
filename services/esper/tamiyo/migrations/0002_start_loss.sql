-- The loss a run started from (esper.policy.context.RunHistory.start_loss): the training
-- loss of its first snapshot, from which the heuristic paces the residual stream's growth.
-- NaN until known; a run stored before this column resumes without it, as before.
ALTER TABLE tamiyo.runs ADD COLUMN start_loss float8 NOT NULL DEFAULT 'NaN';
