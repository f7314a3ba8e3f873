-- Studies imported from a PACS (issue 21): where each came from, so that its segmentation can be
-- sent back to the same study.
CREATE TABLE pacs_imports (
    study_id    INTEGER PRIMARY KEY REFERENCES studies(id) ON DELETE CASCADE,
    -- the DICOMweb root the study was retrieved from
    pacs_url    TEXT    NOT NULL,
    study_uid   TEXT    NOT NULL,
    -- {"flair": SERIES_UID, "t1ce": ..., "t1": ..., "t2": ...}
    series      TEXT    NOT NULL,
    imported_at REAL    NOT NULL
);
