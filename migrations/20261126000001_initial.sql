-- CGGM Studio: datasets, uploaded studies, jobs (training and inference) and their progress events.
-- Times are seconds since the Unix epoch (REAL). JSON columns hold serde_json text.

CREATE TABLE datasets (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    path        TEXT    NOT NULL,
    -- 'demo', 'registered' or 'uploaded'
    source      TEXT    NOT NULL,
    created_at  REAL    NOT NULL,
    -- the last validation report (layout, cases, problems)
    report      TEXT    NOT NULL DEFAULT '{}'
);

CREATE TABLE studies (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    dir         TEXT    NOT NULL,
    -- modality name -> stored file name, or {"4d": file} for one MSD 4-D file
    files       TEXT    NOT NULL,
    shape       TEXT    NOT NULL,
    created_at  REAL    NOT NULL
);

CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    -- 'train' or 'infer'
    kind          TEXT    NOT NULL,
    -- queued, running, succeeded, failed, cancelled, interrupted
    state         TEXT    NOT NULL,
    params        TEXT    NOT NULL,
    dataset_id    INTEGER REFERENCES datasets(id),
    study_id      INTEGER REFERENCES studies(id),
    checkpoint_job_id INTEGER REFERENCES jobs(id),
    -- run directory (train) or prediction directory (infer)
    out_dir       TEXT    NOT NULL,
    created_at    REAL    NOT NULL,
    started_at    REAL,
    finished_at   REAL,
    exit_code     INTEGER,
    error         TEXT
);

CREATE INDEX jobs_state ON jobs(state);

CREATE TABLE events (
    job_id  INTEGER NOT NULL REFERENCES jobs(id),
    seq     INTEGER NOT NULL,
    kind    TEXT    NOT NULL,
    time    REAL    NOT NULL,
    data    TEXT    NOT NULL,
    PRIMARY KEY (job_id, seq)
);
