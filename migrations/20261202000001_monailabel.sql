-- The MONAI Label API (issue 21): image IDs that its clients chose for the studies they uploaded
-- (any other study is `study-<id>`), and labels saved for studies, every version kept.
CREATE TABLE monailabel_images (
    image_id    TEXT    PRIMARY KEY,
    study_id    INTEGER NOT NULL UNIQUE REFERENCES studies(id) ON DELETE CASCADE
);

CREATE TABLE study_labels (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id    INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
    -- MONAI Label's tag: 'final' for a corrected ground truth, anything else for drafts
    tag         TEXT    NOT NULL,
    -- 1, 2, ... per (study, tag): a new save never replaces an older file
    version     INTEGER NOT NULL,
    -- the file's name inside <study dir>/labels/
    file        TEXT    NOT NULL,
    -- who saved it (the client's `client_id`, when it sent one)
    client_id   TEXT,
    created_at  REAL    NOT NULL,
    UNIQUE (study_id, tag, version)
);
