-- How fast a run's training loss still fell at the end of its first epoch
-- (esper.policy.context.RunHistory.first_epoch_pace), from which the heuristic's opt-in
-- seed_first_epoch_pace signal fires. NaN until known; a run stored before this column
-- resumes without it (that signal then stays silent, as before).
ALTER TABLE tamiyo.runs ADD COLUMN first_epoch_pace float8 NOT NULL DEFAULT 'NaN';
