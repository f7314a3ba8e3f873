-- A training run's name, notes and tags (issue 18): what the person calls the run, set when it
-- is launched and editable on its page. A row of its own so that a run without one needs none.
CREATE TABLE run_labels (
    job_id INTEGER PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    name   TEXT    NOT NULL DEFAULT '',
    notes  TEXT    NOT NULL DEFAULT '',
    -- a JSON array of strings
    tags   TEXT    NOT NULL DEFAULT '[]'
);
