//! A training run's name, notes and tags: set with `POST /api/jobs` (`"name"`, `"notes"`,
//! `"tags"` beside the run options), changed with `PATCH /api/jobs/N`, shown on the run page, the
//! dashboard and the models list (`migrations/20261204190000_run_labels.sql`). They are plain text
//! that the pages escape; the limits below keep them to what a person types.

use crate::error::{Error, Result};
use serde::Serialize;
use sqlx::{SqliteConnection, SqlitePool};
use std::collections::HashMap;

pub const MAX_NAME: usize = 200;
pub const MAX_NOTES: usize = 10_000;
pub const MAX_TAGS: usize = 20;
pub const MAX_TAG: usize = 50;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunLabels {
    pub name: String,
    pub notes: String,
    pub tags: Vec<String>,
}

impl RunLabels {
    /// What the dashboard's filter matches against: the name and the tags.
    pub fn search_text(&self) -> String {
        let mut text = self.name.clone();
        for t in &self.tags {
            text.push(' ');
            text.push_str(t);
        }
        text
    }

    /// The run's name or, without one, "run #N".
    pub fn title(&self, id: i64) -> String {
        if self.name.is_empty() {
            format!("run #{id}")
        } else {
            self.name.clone()
        }
    }

    /// Takes `name`, `notes` and `tags` out of a request object (the rest is the run's options)
    /// and applies those present to `self`; a 422 names the field and the limit it broke.
    pub fn take_from(
        &mut self,
        object: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        if let Some(v) = object.remove("name") {
            self.name = text_field("name", &v, MAX_NAME, false)?;
        }
        if let Some(v) = object.remove("notes") {
            self.notes = text_field("notes", &v, MAX_NOTES, true)?;
        }
        if let Some(v) = object.remove("tags") {
            self.tags = tags_field(&v)?;
        }
        Ok(())
    }
}

fn text_field(field: &str, v: &serde_json::Value, max: usize, lines: bool) -> Result<String> {
    let text = match v {
        serde_json::Value::Null => return Ok(String::new()),
        serde_json::Value::String(s) => s.trim().to_string(),
        other => {
            return Err(Error::Unprocessable(format!(
                "{field} must be text, got {other}"
            )))
        }
    };
    if text.chars().count() > max {
        return Err(Error::Unprocessable(format!(
            "{field} is {} characters long; at most {max} are kept: shorten it",
            text.chars().count()
        )));
    }
    if let Some(c) = text
        .chars()
        .find(|c| c.is_control() && !(lines && matches!(c, '\n' | '\r' | '\t')))
    {
        return Err(Error::Unprocessable(format!(
            "{field} holds the control character {:?}: remove it",
            c
        )));
    }
    Ok(text)
}

/// Tags as a JSON array of strings or one comma-separated string (what the form sends): trimmed,
/// empty ones dropped, duplicates dropped (first kept).
fn tags_field(v: &serde_json::Value) -> Result<Vec<String>> {
    let raw: Vec<String> = match v {
        serde_json::Value::Null => Vec::new(),
        serde_json::Value::String(s) => s.split(',').map(str::to_string).collect(),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str().map(str::to_string).ok_or_else(|| {
                    Error::Unprocessable(format!("tags must be text, got {i} among them"))
                })
            })
            .collect::<Result<_>>()?,
        other => {
            return Err(Error::Unprocessable(format!(
                "tags must be a list of words (or one comma-separated text), got {other}"
            )))
        }
    };
    let mut tags: Vec<String> = Vec::new();
    for tag in raw {
        let tag = text_field("a tag", &serde_json::Value::String(tag), MAX_TAG, false)?;
        if tag.contains(',') {
            return Err(Error::Unprocessable(format!(
                "the tag {tag:?} holds a comma, which separates tags: split it"
            )));
        }
        if !tag.is_empty() && !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(Error::Unprocessable(format!(
            "{} tags given; at most {MAX_TAGS} are kept: drop some",
            tags.len()
        )));
    }
    Ok(tags)
}

type Row = (i64, String, String, String);

fn from_row((_, name, notes, tags): Row) -> RunLabels {
    RunLabels {
        name,
        notes,
        tags: serde_json::from_str(&tags).unwrap_or_default(),
    }
}

/// The labels of run `job` (empty when it has none).
pub async fn load(pool: &SqlitePool, job: i64) -> Result<RunLabels> {
    let row: Option<Row> =
        sqlx::query_as("SELECT job_id, name, notes, tags FROM run_labels WHERE job_id = ?")
            .bind(job)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(from_row).unwrap_or_default())
}

/// Every run's labels, by job id (for the lists).
pub async fn load_all(pool: &SqlitePool) -> Result<HashMap<i64, RunLabels>> {
    let rows: Vec<Row> = sqlx::query_as("SELECT job_id, name, notes, tags FROM run_labels")
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|r| (r.0, from_row(r))).collect())
}

/// Stores the labels of run `job` (replacing any).
pub async fn save(conn: &mut SqliteConnection, job: i64, labels: &RunLabels) -> Result<()> {
    sqlx::query(
        "INSERT INTO run_labels (job_id, name, notes, tags) VALUES (?, ?, ?, ?)
         ON CONFLICT(job_id) DO UPDATE SET name = excluded.name, notes = excluded.notes,
         tags = excluded.tags",
    )
    .bind(job)
    .bind(&labels.name)
    .bind(&labels.notes)
    .bind(serde_json::to_string(&labels.tags).unwrap_or_else(|_| "[]".into()))
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(mut body: serde_json::Value) -> Result<RunLabels> {
        let mut labels = RunLabels::default();
        labels.take_from(body.as_object_mut().unwrap())?;
        Ok(labels)
    }

    #[test]
    fn labels_are_taken_out_of_the_request_and_the_rest_stays() {
        let mut body =
            serde_json::json!({"name": "  baseline ", "tags": "a, b,,a", "method": "cggm"});
        let mut labels = RunLabels::default();
        labels.take_from(body.as_object_mut().unwrap()).unwrap();
        assert_eq!(labels.name, "baseline");
        assert_eq!(labels.tags, ["a", "b"]);
        assert_eq!(body, serde_json::json!({"method": "cggm"}));
        assert_eq!(labels.search_text(), "baseline a b");
        assert_eq!(
            take(serde_json::json!({"tags": ["x", " y "], "notes": "two\nlines"})).unwrap(),
            RunLabels {
                name: String::new(),
                notes: "two\nlines".into(),
                tags: vec!["x".into(), "y".into()]
            }
        );
    }

    #[test]
    fn labels_out_of_bounds_are_refused_with_the_field_and_limit() {
        let long = "x".repeat(MAX_NAME + 1);
        let e = take(serde_json::json!({ "name": long })).unwrap_err();
        assert!(e.to_string().contains("name is 201 characters"), "{e}");
        let e = take(serde_json::json!({ "name": "a\u{7}b" })).unwrap_err();
        assert!(e.to_string().contains("control character"), "{e}");
        let e = take(serde_json::json!({ "tags": [1] })).unwrap_err();
        assert!(e.to_string().contains("tags must be text"), "{e}");
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| i.to_string()).collect();
        let e = take(serde_json::json!({ "tags": many })).unwrap_err();
        assert!(e.to_string().contains("at most 20"), "{e}");
        assert!(take(serde_json::json!({ "name": 3 })).is_err());
    }
}
