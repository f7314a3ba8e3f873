//! The DICOMweb client: QIDO-RS searches of studies and of a study's series, WADO-RS retrieval of
//! a series into a folder (one file per instance), STOW-RS of instances. Every error names the
//! PACS URL, the HTTP status when there was one, and what to check.

use super::model::{self, SeriesSummary, StudySummary};
use super::multipart;
use super::{PacsAuth, PacsSettings};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Most studies one search returns.
pub const MAX_STUDIES: usize = 500;

/// Largest QIDO or STOW answer read (DICOM JSON of 500 studies is well under 1 MiB).
const MAX_JSON_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PacsError {
    /// Nothing answered: a network problem or a wrong address (a 503).
    #[error("the PACS at {url} cannot be reached ({reason}); check that it runs and that --pacs gives its DICOMweb root")]
    Unreachable { url: String, reason: String },
    /// The PACS answered with an error status (a 502).
    #[error("the PACS answered {status} to {url}{detail}; {hint}")]
    Status {
        url: String,
        status: u16,
        detail: String,
        hint: &'static str,
    },
    /// The PACS answered something that is not what DICOMweb says (a 502).
    #[error("the PACS's answer to {url} is unusable: {reason}")]
    Invalid { url: String, reason: String },
    /// The request cannot be sent as asked (a 422).
    #[error("{0}")]
    Refused(String),
}

/// A QIDO-RS study search. Empty fields are not sent.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct StudyQuery {
    /// PatientName; a `*` is appended unless the text has a wildcard already.
    #[serde(default)]
    pub patient: String,
    #[serde(default)]
    pub patient_id: String,
    /// StudyDate: `YYYYMMDD` or a range `YYYYMMDD-YYYYMMDD` (dashes inside a date are dropped).
    #[serde(default)]
    pub date: String,
    /// ModalitiesInStudy, e.g. `MR`.
    #[serde(default)]
    pub modality: String,
    pub limit: Option<usize>,
}

impl StudyQuery {
    fn parameters(&self) -> Result<Vec<(&'static str, String)>, PacsError> {
        let mut out = vec![
            (
                "limit",
                self.limit.unwrap_or(100).clamp(1, MAX_STUDIES).to_string(),
            ),
            ("includefield", model::STUDY_DESCRIPTION.to_string()),
        ];
        let plain = |what: &str, value: &str| -> Result<String, PacsError> {
            let value = value.trim();
            if value.len() > 64 || value.chars().any(|c| c.is_control() || c == '\\') {
                return Err(PacsError::Refused(format!(
                    "{what} {value:?}: at most 64 characters, no backslash or control characters"
                )));
            }
            Ok(value.to_string())
        };
        let patient = plain("patient", &self.patient)?;
        if !patient.is_empty() {
            let wildcard = patient.contains(['*', '?']);
            out.push((
                "PatientName",
                if wildcard {
                    patient
                } else {
                    format!("{patient}*")
                },
            ));
        }
        let id = plain("patient id", &self.patient_id)?;
        if !id.is_empty() {
            out.push(("PatientID", id));
        }
        let date = normalize_date(&self.date)?;
        if !date.is_empty() {
            out.push(("StudyDate", date));
        }
        let modality = plain("modality", &self.modality)?.to_ascii_uppercase();
        if !modality.is_empty() {
            if !modality.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(PacsError::Refused(format!(
                    "modality {modality:?}: a DICOM modality code such as MR or SEG"
                )));
            }
            out.push(("ModalitiesInStudy", modality));
        }
        Ok(out)
    }
}

/// `2026-01-01` -> `20260101`; `20260101-20261231` kept; anything else refused.
fn normalize_date(text: &str) -> Result<String, PacsError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(String::new());
    }
    let eight = |d: &str| d.len() == 8 && d.chars().all(|c| c.is_ascii_digit());
    let iso = text.len() == 10 && text.as_bytes()[4] == b'-' && text.as_bytes()[7] == b'-';
    let dates: Option<String> = if iso {
        Some(text.replace('-', "")).filter(|d| eight(d))
    } else {
        let parts: Vec<&str> = text.split('-').collect();
        (parts.len() <= 2 && parts.iter().all(|p| eight(p))).then(|| parts.join("-"))
    };
    match dates {
        Some(d) => Ok(d),
        None => Err(PacsError::Refused(format!(
            "date {text:?}: give YYYYMMDD (or YYYY-MM-DD), or a range YYYYMMDD-YYYYMMDD"
        ))),
    }
}

/// A DICOM UID as it may appear in a URL: digits and dots, at most 64 characters.
pub fn check_uid(what: &str, uid: &str) -> Result<(), PacsError> {
    let ok = !uid.is_empty()
        && uid.len() <= 64
        && uid.chars().all(|c| c.is_ascii_digit() || c == '.')
        && !uid.starts_with('.')
        && !uid.ends_with('.');
    if ok {
        Ok(())
    } else {
        Err(PacsError::Refused(format!(
            "{what} {uid:?} is not a DICOM UID (digits and dots, at most 64 characters)"
        )))
    }
}

pub struct DicomWebClient {
    settings: PacsSettings,
    http: reqwest::Client,
}

impl DicomWebClient {
    pub fn new(settings: PacsSettings) -> Result<Self, PacsError> {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(settings.timeout)
            .build()
            .map_err(|e| PacsError::Unreachable {
                url: settings.root.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self { settings, http })
    }

    pub fn root(&self) -> &str {
        &self.settings.root
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.root)
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, url);
        match &self.settings.auth {
            PacsAuth::None => builder,
            PacsAuth::Basic { user, password } => builder.basic_auth(user, Some(password)),
            PacsAuth::Bearer(token) => builder.bearer_auth(token),
        }
    }

    /// Sends `builder`; an answer with a success status, or the error that says why not.
    async fn send(
        &self,
        builder: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, PacsError> {
        let response = builder.send().await.map_err(|e| PacsError::Unreachable {
            url: url.to_string(),
            reason: describe(&e),
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let hint = match status.as_u16() {
            401 | 403 => "check the PACS user and password (--pacs-user, CGGM_PACS_PASSWORD) or token (CGGM_PACS_TOKEN)",
            404 => "check that --pacs gives the DICOMweb root (Orthanc: http://HOST:8042/dicom-web, with the DICOMweb plugin loaded) and that the study is still there",
            _ => "see the PACS's log",
        };
        let body = response.text().await.unwrap_or_default();
        let detail: String = body.trim().chars().take(200).collect();
        Err(PacsError::Status {
            url: url.to_string(),
            status: status.as_u16(),
            detail: if detail.is_empty() {
                String::new()
            } else {
                format!(" ({detail})")
            },
            hint,
        })
    }

    /// A DICOM JSON answer (a list for QIDO, one dataset for STOW), read within a size limit.
    async fn json(&self, response: reqwest::Response, url: &str) -> Result<Value, PacsError> {
        use futures_util::StreamExt;
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Array(Vec::new()));
        }
        let mut bytes = Vec::new();
        let mut stream = Box::pin(response.bytes_stream());
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| PacsError::Unreachable {
                url: url.to_string(),
                reason: describe(&e),
            })?;
            if bytes.len() + chunk.len() > MAX_JSON_BYTES {
                return Err(PacsError::Invalid {
                    url: url.to_string(),
                    reason: format!("more than {} MiB of JSON", MAX_JSON_BYTES / (1024 * 1024)),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Array(Vec::new()));
        }
        serde_json::from_slice(&bytes).map_err(|e| PacsError::Invalid {
            url: url.to_string(),
            reason: format!("not DICOM JSON ({e})"),
        })
    }

    async fn qido(&self, path: &str, query: &[(&str, String)]) -> Result<Vec<Value>, PacsError> {
        let url = self.url(path);
        let builder = self
            .request(reqwest::Method::GET, &url)
            .query(query)
            .header(reqwest::header::ACCEPT, "application/dicom+json")
            .timeout(self.settings.timeout);
        let response = self.send(builder, &url).await?;
        match self.json(response, &url).await? {
            Value::Array(items) => Ok(items),
            _ => Err(PacsError::Invalid {
                url,
                reason: "a QIDO-RS answer must be a JSON list".into(),
            }),
        }
    }

    /// QIDO-RS `GET {root}/studies?...`.
    pub async fn studies(&self, query: &StudyQuery) -> Result<Vec<StudySummary>, PacsError> {
        let parameters = query.parameters()?;
        let items = self.qido("/studies", &parameters).await?;
        Ok(items.iter().filter_map(StudySummary::from_json).collect())
    }

    /// QIDO-RS `GET {root}/studies/{uid}/series`, in series-number order.
    pub async fn series(&self, study_uid: &str) -> Result<Vec<SeriesSummary>, PacsError> {
        check_uid("study", study_uid)?;
        let items = self
            .qido(
                &format!("/studies/{study_uid}/series"),
                &[
                    ("includefield", model::SERIES_DESCRIPTION.to_string()),
                    (
                        "includefield",
                        model::NUMBER_OF_SERIES_INSTANCES.to_string(),
                    ),
                ],
            )
            .await?;
        let mut series: Vec<SeriesSummary> =
            items.iter().filter_map(SeriesSummary::from_json).collect();
        series.sort_by_key(|s| (s.number.unwrap_or(i64::MAX), s.series_uid.clone()));
        Ok(series)
    }

    /// WADO-RS `GET {root}/studies/{s}/series/{r}`: each instance into `dir`; the files written.
    pub async fn retrieve_series(
        &self,
        study_uid: &str,
        series_uid: &str,
        dir: &Path,
    ) -> Result<Vec<PathBuf>, PacsError> {
        check_uid("study", study_uid)?;
        check_uid("series", series_uid)?;
        let url = self.url(&format!("/studies/{study_uid}/series/{series_uid}"));
        let builder = self
            .request(reqwest::Method::GET, &url)
            .header(
                reqwest::header::ACCEPT,
                "multipart/related; type=\"application/dicom\"",
            )
            .timeout(self.settings.retrieve_timeout);
        let response = self.send(builder, &url).await?;
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let boundary = multipart::boundary_of(&content_type).ok_or_else(|| PacsError::Invalid {
            url: url.clone(),
            reason: format!("answered {content_type:?}, not multipart/related with a boundary"),
        })?;
        if let Some(length) = response.content_length() {
            if length > self.settings.limits.max_total_bytes + 1024 * 1024 {
                return Err(PacsError::Refused(format!(
                    "series {series_uid} is {} MiB, more than the {} MiB one series may hold",
                    length / (1024 * 1024),
                    self.settings.limits.max_total_bytes / (1024 * 1024)
                )));
            }
        }
        let files = multipart::save_parts(
            Box::pin(response.bytes_stream()),
            &boundary,
            dir,
            self.settings.limits,
        )
        .await
        .map_err(|e| PacsError::Invalid {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        if files.is_empty() {
            return Err(PacsError::Invalid {
                url,
                reason: "the series holds no instance".into(),
            });
        }
        Ok(files)
    }

    /// STOW-RS `POST {root}/studies` of `instances` (DICOM Part 10 files); the SOP Instance UIDs
    /// the PACS says it stored. Refused when the PACS lists a failure or stores nothing.
    pub async fn store(&self, instances: &[Vec<u8>]) -> Result<Vec<String>, PacsError> {
        let url = self.url("/studies");
        let boundary = format!("cggm-{:016x}", rand_u64());
        let (body, content_type) = multipart::dicom_body(instances, &boundary);
        let builder = self
            .request(reqwest::Method::POST, &url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(reqwest::header::ACCEPT, "application/dicom+json")
            .timeout(self.settings.retrieve_timeout)
            .body(body);
        let response = self.send(builder, &url).await?;
        let answer = self.json(response, &url).await?;
        let failed = model::items(&answer, model::FAILED_SOP_SEQUENCE);
        if !failed.is_empty() {
            let reasons: Vec<String> = failed
                .iter()
                .map(|f| {
                    format!(
                        "{} (failure reason {})",
                        model::text(f, "00081155"),
                        model::text(f, model::FAILURE_REASON)
                    )
                })
                .collect();
            return Err(PacsError::Invalid {
                url,
                reason: format!(
                    "the PACS refused {} instance(s): {}; see the PACS's log",
                    failed.len(),
                    reasons.join(", ")
                ),
            });
        }
        let stored: Vec<String> = model::items(&answer, model::REFERENCED_SOP_SEQUENCE)
            .iter()
            .map(|item| model::text(item, model::REFERENCED_SOP_INSTANCE_UID))
            .filter(|uid| !uid.is_empty())
            .collect();
        if stored.len() < instances.len() {
            return Err(PacsError::Invalid {
                url,
                reason: format!(
                    "the PACS stored {} of {} instance(s) and named no failure; see the PACS's log",
                    stored.len(),
                    instances.len()
                ),
            });
        }
        Ok(stored)
    }
}

/// reqwest's error with its causes (a bare "error sending request" says nothing).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if error.is_timeout() {
        text.push_str(" (timed out: --pacs-timeout-secs)");
    }
    text
}

/// A boundary that no DICOM payload will contain by chance.
fn rand_u64() -> u64 {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    u64::from_le_bytes(bytes) ^ std::process::id() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_become_qido_parameters() {
        let q = StudyQuery {
            patient: "Doe".into(),
            date: "2026-01-01".into(),
            modality: "mr".into(),
            ..StudyQuery::default()
        };
        let p = q.parameters().unwrap();
        assert!(p.contains(&("PatientName", "Doe*".to_string())));
        assert!(p.contains(&("StudyDate", "20260101".to_string())));
        assert!(p.contains(&("ModalitiesInStudy", "MR".to_string())));
        assert_eq!(
            normalize_date("20260101-20261231").unwrap(),
            "20260101-20261231"
        );
        assert!(normalize_date("yesterday").is_err());
        assert!(check_uid("study", "1.2.840.10008").is_ok());
        assert!(check_uid("study", "../../system").is_err());
    }
}
