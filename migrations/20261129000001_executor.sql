-- Where each attempt of a job runs (issue 11): the local executor (a child process of the server)
-- or Slurm (a batch job). One row per start: a resumed job gets a new row; the latest is current.
CREATE TABLE job_executions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id          INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    -- 'local' or 'slurm'
    executor        TEXT    NOT NULL,
    -- local: the child's process id and its start time (clock ticks after boot, field 22 of
    -- /proc/<pid>/stat), so that a recycled pid is never mistaken for the trainer
    pid             INTEGER,
    pid_start       INTEGER,
    -- slurm: the job id sbatch gave, and what squeue/scontrol/sacct said last
    slurm_job_id    TEXT,
    slurm_state     TEXT,
    slurm_node      TEXT,
    slurm_reason    TEXT,
    -- slurm: the events file and the batch output on the shared folder, and how far they were read
    events_path     TEXT,
    events_offset   INTEGER NOT NULL DEFAULT 0,
    output_path     TEXT,
    output_offset   INTEGER NOT NULL DEFAULT 0,
    -- 1 while Slurm says running but the events file has not grown for the stall period
    stalled         INTEGER NOT NULL DEFAULT 0,
    submitted_at    REAL    NOT NULL,
    first_event_at  REAL,
    last_event_at   REAL,
    updated_at      REAL
);

CREATE INDEX job_executions_job ON job_executions(job_id);

-- Studies in the sense of method comparisons (named `comparisons` here: `studies` already holds
-- uploaded patient scans): a grid of training runs (methods x seeds, optionally x rho/lambda) on
-- one dataset, aggregated on one page.
CREATE TABLE comparisons (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    dataset_id  INTEGER REFERENCES datasets(id),
    -- the request: methods, seeds, grid and the shared run options (JSON)
    spec        TEXT    NOT NULL,
    created_at  REAL    NOT NULL
);

CREATE TABLE comparison_runs (
    comparison_id INTEGER NOT NULL REFERENCES comparisons(id) ON DELETE CASCADE,
    job_id        INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    -- the row's label: the method, with its grid point when there is a grid ("cggm rho=1.2")
    arm           TEXT    NOT NULL,
    method        TEXT    NOT NULL,
    seed          INTEGER NOT NULL,
    PRIMARY KEY (comparison_id, job_id)
);
