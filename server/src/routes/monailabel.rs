//! A MONAI Label–compatible API under [`PREFIX`], so that 3D Slicer's MONAI Label module, OHIF's
//! MONAI Label extension and `monailabel.client.MONAILabelClient` can use this server's
//! segmentation checkpoints. Everything maps onto what the rest of the application stores:
//!
//! - an **image** is a study (`GET /api/studies`): its ID is the one a MONAI Label client chose
//!   when it uploaded it, `study-<id>` for every other study. One image is one file in MONAI Label:
//!   a study is sent and received as one 4-D NIfTI whose channels are, in this order, FLAIR, T1w,
//!   T1gd (T1ce), T2w (the MSD Task01 order, [`CHANNELS`]); an upload may also be the four 3-D
//!   files, named or sent as for `POST /api/studies`. Uploads pass the same checks as that route.
//! - a **model** is a finished segmentation training run, named `run-<job id>`;
//! - **inference** is a prediction job (`cggm infer`, exactly what `POST /api/predictions` runs),
//!   awaited and answered as the reference server answers;
//! - **training** is a training job with the configuration of the model's run;
//! - a **label** saved for an image is kept per tag, every version (`study_labels`);
//! - a **session** is a temporary image for inference, kept under the data directory until it
//!   expires (an hour unless `expiry` says otherwise) or is deleted.
//!
//! Security: the token rules of every route (a bearer header or the login page's session cookie).
//! MONAI Label's clients send neither `X-CGGM-Request` nor `Origin`, so instead of the former these
//! routes refuse any request that a browser marks as coming from another site or origin
//! (`Sec-Fetch-Site: cross-site` or `same-site`, or a foreign `Origin`), whatever its method (see
//! `crate::security::guard`).

use super::jobs::{job_task, job_view};
use super::save_upload;
use super::studies::{check_study_files, queue_prediction, store_study, StudyView};
use crate::db::{self, Job, JobKind, JobState, Study};
use crate::error::{Error, Result};
use crate::inspect::{nifti_extension, safe_name, UploadedFile};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cggm_core::data::{OutputLabels, LABEL_ENHANCING, LABEL_NCR, LABEL_OEDEMA};
use cggm_core::task::TaskKind;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

/// Where the API lives: a MONAI Label client's server URL is `http://HOST:PORT/monailabel`
/// (defined with the guard, which treats these routes apart).
pub use crate::security::MONAILABEL_PREFIX as PREFIX;

/// The channel order of an image as one 4-D NIfTI (MSD Task01): FLAIR, T1w, T1gd, T2w.
pub const CHANNELS: [&str; 4] = ["flair", "t1", "t1ce", "t2"];

/// The label tag of a corrected ground truth (an image with one is "labelled").
pub const FINAL_TAG: &str = "final";

/// How long a session lives after its last use unless its `expiry` says otherwise (seconds).
pub const SESSION_EXPIRY_SECS: u64 = 3600;

/// The longest a synchronous inference waits for its job.
const INFER_DEADLINE: Duration = Duration::from_secs(3600);

/// The active-learning strategies, with what they do.
const STRATEGIES: [(&str, &str); 2] = [
    ("random", "a random image without a final label"),
    (
        "disagreement",
        "the image without a final label whose stored segmentations by different models \
         disagree most: the share of voxels, among those any of them labels, where they differ \
         (needs predictions of at least two models for an image)",
    ),
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/info", get(info))
        .route("/info/", get(info))
        .route("/datastore", get(datastore).put(upload_image))
        .route("/datastore/", get(datastore).put(upload_image))
        .route("/datastore/image", get(download_image))
        .route("/datastore/label", get(download_label).put(save_label))
        .route("/session", put(create_session))
        .route("/session/", put(create_session))
        .route("/session/{id}", get(get_session).delete(remove_session))
        .route("/infer/{model}", post(infer))
        .route(
            "/train",
            get(train_status).post(train_latest).delete(train_stop),
        )
        .route(
            "/train/",
            get(train_status).post(train_latest).delete(train_stop),
        )
        .route("/train/{model}", post(train_model))
        .route("/activelearning/{strategy}", post(next_sample))
        .route("/logs", get(logs))
        .route("/logs/", get(logs))
}

/// The labels in value order, as `cggm infer` writes them (BraTS 2021 numbering).
fn labels_in_order() -> [(&'static str, u8); 3] {
    [
        ("necrotic tumour core", LABEL_NCR),
        ("peritumoral oedema", LABEL_OEDEMA),
        ("enhancing tumour", LABEL_ENHANCING),
    ]
    .map(|(name, class)| (name, OutputLabels::Brats2021.value_of(class)))
}

/// Label name -> value (a JSON object: its keys come out sorted).
fn label_names() -> Map<String, Value> {
    labels_in_order()
        .into_iter()
        .map(|(name, value)| (name.to_string(), value.into()))
        .collect()
}

/// `labels` of `/info/`, written in value order: Slicer makes its segments in the order of these
/// keys and numbers them 1, 2, 3 when it saves a label (a sorted object would swap them).
struct OrderedLabels;

impl Serialize for OrderedLabels {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let labels = labels_in_order();
        let mut map = serializer.serialize_map(Some(labels.len()))?;
        for (name, value) in labels {
            map.serialize_entry(name, &value)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct ModelInfo {
    r#type: &'static str,
    dimension: u8,
    labels: OrderedLabels,
    description: String,
    config: Value,
    job_id: i64,
}

#[derive(Serialize)]
struct Info {
    name: &'static str,
    description: &'static str,
    version: &'static str,
    labels: OrderedLabels,
    models: BTreeMap<String, ModelInfo>,
    trainers: Value,
    strategies: Value,
    scoring: Value,
    train_stats: Value,
    datastore: Value,
}

fn model_name(job_id: i64) -> String {
    format!("run-{job_id}")
}

/// Every finished segmentation run that left a checkpoint, newest first.
async fn models(state: &AppState) -> Result<Vec<Job>> {
    Ok(db::jobs(&state.pool, Some(JobKind::Train))
        .await?
        .into_iter()
        .filter(|job| {
            job.state == JobState::Succeeded
                && job_task(&job.params_json()) == TaskKind::Segmentation
                && job.run_dir().best_or_last().is_some()
        })
        .collect())
}

async fn model(state: &AppState, name: &str) -> Result<Job> {
    models(state)
        .await?
        .into_iter()
        .find(|job| model_name(job.id) == name)
        .ok_or_else(|| Error::NotFound(format!("model {name:?} (GET {PREFIX}/info/ lists them)")))
}

fn describe_model(job: &Job) -> ModelInfo {
    let params = job.params_json();
    let text = |key: &str| params[key].as_str().unwrap_or_default().to_string();
    ModelInfo {
        r#type: "segmentation",
        dimension: 3,
        labels: OrderedLabels,
        description: format!(
            "CGGM Studio run {}: {} ({} preset) trained on {}; input: FLAIR, T1w, T1gd, T2w as one \
             4-D image in that order",
            job.id,
            text("method"),
            text("preset"),
            text("dataset")
        ),
        config: json!({ "device": "cpu or cuda (default: the server's choice)" }),
        job_id: job.id,
    }
}

// ---- images and labels ----

/// The studies as MONAI Label images: (image ID, study), oldest first.
async fn images(state: &AppState) -> Result<Vec<(String, Study)>> {
    let chosen: HashMap<i64, String> =
        sqlx::query_as::<_, (i64, String)>("SELECT study_id, image_id FROM monailabel_images")
            .fetch_all(&state.pool)
            .await?
            .into_iter()
            .collect();
    let mut out: Vec<(String, Study)> = db::studies(&state.pool)
        .await?
        .into_iter()
        .map(|study| {
            let id = chosen
                .get(&study.id)
                .cloned()
                .unwrap_or_else(|| format!("study-{}", study.id));
            (id, study)
        })
        .collect();
    out.sort_by_key(|(_, study)| study.id);
    Ok(out)
}

/// The study behind an image ID.
async fn image(state: &AppState, id: &str) -> Result<Study> {
    let chosen: Option<(i64,)> =
        sqlx::query_as("SELECT study_id FROM monailabel_images WHERE image_id = ?")
            .bind(id)
            .fetch_optional(&state.pool)
            .await?;
    let study_id = match chosen {
        Some((study_id,)) => Some(study_id),
        None => match default_study_id(id) {
            // A study a client named has no `study-<id>` alias.
            Some(study_id) => {
                let named: Option<(String,)> =
                    sqlx::query_as("SELECT image_id FROM monailabel_images WHERE study_id = ?")
                        .bind(study_id)
                        .fetch_optional(&state.pool)
                        .await?;
                named.is_none().then_some(study_id)
            }
            None => None,
        },
    };
    match study_id {
        Some(study_id) => db::study(&state.pool, study_id)
            .await
            .map_err(|_| Error::NotFound(format!("image {id:?}"))),
        None => Err(Error::NotFound(format!(
            "image {id:?} (GET {PREFIX}/datastore/?output=all lists them)"
        ))),
    }
}

fn default_study_id(id: &str) -> Option<i64> {
    let digits = id.strip_prefix("study-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
struct StoredLabel {
    #[serde(skip)]
    study_id: i64,
    tag: String,
    version: i64,
    #[serde(skip)]
    file: String,
    client_id: Option<String>,
    #[serde(rename = "ts")]
    created_at: f64,
}

async fn stored_labels(state: &AppState) -> Result<Vec<StoredLabel>> {
    Ok(sqlx::query_as(
        "SELECT study_id, tag, version, file, client_id, created_at FROM study_labels
         ORDER BY study_id, tag, version",
    )
    .fetch_all(&state.pool)
    .await?)
}

/// The newest version of each tag of each study: study -> tag -> (label, versions).
fn latest_labels(labels: Vec<StoredLabel>) -> HashMap<i64, BTreeMap<String, (StoredLabel, i64)>> {
    let mut out: HashMap<i64, BTreeMap<String, (StoredLabel, i64)>> = HashMap::new();
    for label in labels {
        let tags = out.entry(label.study_id).or_default();
        let count = tags.get(&label.tag).map_or(0, |(_, n)| *n) + 1;
        tags.insert(label.tag.clone(), (label, count));
    }
    out
}

fn image_url(id: &str) -> String {
    format!("{PREFIX}/datastore/image?image={}", query_escape(id))
}

fn label_url(id: &str, tag: &str) -> String {
    format!(
        "{PREFIX}/datastore/label?label={}&tag={}",
        query_escape(id),
        query_escape(tag)
    )
}

/// Image IDs and tags are safe names already; only `.` `-` `_` and alphanumerics remain.
fn query_escape(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c.to_string()
            } else {
                format!("%{:02X}", c as u32)
            }
        })
        .collect()
}

/// `GET /info/`: the application, its labels, models, strategies and datastore counts.
async fn info(State(state): State<AppState>) -> Result<Json<Info>> {
    let models = models(&state).await?;
    let described = models
        .iter()
        .map(|job| (model_name(job.id), describe_model(job)))
        .collect();
    let trainers: Map<String, Value> = models
        .iter()
        .map(|job| {
            let description = format!(
                "a new CGGM Studio training run with run {}'s configuration and dataset",
                job.id
            );
            (
                model_name(job.id),
                json!({ "description": description, "config": job.params_json()["options"] }),
            )
        })
        .collect();
    let strategies: Map<String, Value> = STRATEGIES
        .iter()
        .map(|(name, what)| (name.to_string(), json!({ "description": what })))
        .collect();
    Ok(Json(Info {
        name: "CGGM Studio",
        description: "Brain tumour segmentation (BraTS labels) by CGGM Studio's trained runs; an \
                      image is a study's four MRI modalities as one 4-D NIfTI, channels FLAIR, \
                      T1w, T1gd, T2w",
        version: env!("CARGO_PKG_VERSION"),
        labels: OrderedLabels,
        models: described,
        trainers: Value::Object(trainers),
        strategies: Value::Object(strategies),
        scoring: json!({}),
        train_stats: json!({}),
        datastore: datastore_status(&state).await?,
    }))
}

async fn datastore_status(state: &AppState) -> Result<Value> {
    let images = images(state).await?;
    let latest = latest_labels(stored_labels(state).await?);
    let mut tags: BTreeMap<String, usize> = BTreeMap::new();
    for tagged in latest.values() {
        for tag in tagged.keys() {
            *tags.entry(tag.clone()).or_default() += 1;
        }
    }
    Ok(json!({
        "total": images.len(),
        "completed": labelled(&images, &latest).count(),
        "label_tags": tags,
        "train": datalist(&images, &latest),
    }))
}

fn labelled<'a>(
    images: &'a [(String, Study)],
    latest: &'a HashMap<i64, BTreeMap<String, (StoredLabel, i64)>>,
) -> impl Iterator<Item = &'a (String, Study)> {
    images.iter().filter(|(_, study)| {
        latest
            .get(&study.id)
            .is_some_and(|tags| tags.contains_key(FINAL_TAG))
    })
}

/// The labelled images as MONAI Label's training list (download paths on this server).
fn datalist(
    images: &[(String, Study)],
    latest: &HashMap<i64, BTreeMap<String, (StoredLabel, i64)>>,
) -> Vec<Value> {
    labelled(images, latest)
        .map(|(id, _)| json!({ "image": image_url(id), "label": label_url(id, FINAL_TAG) }))
        .collect()
}

#[derive(Debug, Deserialize)]
struct DatastoreQuery {
    /// `stats` (the default), `all` (every image and label) or `train` (the labelled pairs).
    output: Option<String>,
}

/// `GET /datastore/`: MONAI Label's datastore in its three shapes.
async fn datastore(
    State(state): State<AppState>,
    Query(q): Query<DatastoreQuery>,
) -> Result<Json<Value>> {
    match q.output.as_deref().unwrap_or("stats") {
        "stats" => Ok(Json(datastore_status(&state).await?)),
        "train" => {
            let images = images(&state).await?;
            let latest = latest_labels(stored_labels(&state).await?);
            Ok(Json(Value::Array(datalist(&images, &latest))))
        }
        "all" => {
            let images = images(&state).await?;
            let latest = latest_labels(stored_labels(&state).await?);
            let mut objects = Map::new();
            for (id, study) in &images {
                let view = StudyView::from(study.clone());
                let ext = view
                    .files
                    .get("4d")
                    .map_or(".nii.gz", |f| nifti_extension(f));
                let labels: Map<String, Value> = latest
                    .get(&study.id)
                    .into_iter()
                    .flatten()
                    .map(|(tag, (label, versions))| {
                        let mut info = serde_json::to_value(label).unwrap_or_default();
                        info["versions"] = (*versions).into();
                        (
                            tag.clone(),
                            json!({ "ext": nifti_extension(&label.file), "info": info }),
                        )
                    })
                    .collect();
                objects.insert(
                    id.clone(),
                    json!({
                        "image": { "ext": ext, "info": {
                            "name": study.name, "study_id": study.id, "shape": view.shape,
                            "channels": CHANNELS, "ts": study.created_at,
                        }},
                        "labels": labels,
                    }),
                );
            }
            Ok(Json(json!({
                "name": "CGGM Studio",
                "description": "the studies of this server",
                "objects": objects,
            })))
        }
        other => Err(Error::BadRequest(format!(
            "output={other:?}: use stats, all or train"
        ))),
    }
}

#[derive(Debug, Deserialize)]
struct ImageQuery {
    image: Option<String>,
    /// Only this modality (flair, t1ce, t1, t2) as a 3-D file, instead of the 4-D image.
    modality: Option<String>,
}

/// The image ID a client asks for: a safe name, not of the reserved form `study-<number>`.
fn chosen_image_id(id: &str) -> Result<String> {
    let id = safe_name(id).map_err(|e| Error::BadRequest(format!("image: {e}")))?;
    if default_study_id(&id).is_some() {
        return Err(Error::Unprocessable(format!(
            "image {id:?}: IDs of the form study-<number> are the server's own; choose another"
        )));
    }
    Ok(id)
}

/// Without an ID, the reference server names an image after its file.
fn file_stem(name: &str) -> &str {
    let lower = name.to_ascii_lowercase();
    let cut = if lower.ends_with(".nii.gz") {
        7
    } else if lower.ends_with(".nii") {
        4
    } else {
        0
    };
    &name[..name.len() - cut]
}

/// The image parts of an upload (not a `label`, MONAI Label's scribbles or label input).
fn image_files(files: &[UploadedFile]) -> Vec<UploadedFile> {
    files
        .iter()
        .filter(|f| f.field != "label")
        .cloned()
        .collect()
}

/// `PUT /datastore/?image=ID`: a new image (one 4-D NIfTI, channels FLAIR, T1w, T1gd, T2w, or the
/// four modality files), checked as `POST /api/studies` checks a study, stored as a study named ID.
async fn upload_image(
    State(state): State<AppState>,
    Query(q): Query<ImageQuery>,
    multipart: Multipart,
) -> Result<Json<Value>> {
    let upload = save_upload(&state, multipart).await?;
    let files = image_files(&upload.files);
    let id = match q.image.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(id) => id.to_string(),
        None => file_stem(
            &files
                .first()
                .map(|f| f.file_name.clone())
                .unwrap_or_default(),
        )
        .to_string(),
    };
    let id = chosen_image_id(&id)?;
    let id = crate::limits::check_name("image", &id)?;
    if image(&state, &id).await.is_ok() {
        return Err(Error::Conflict(format!(
            "image {id:?} exists already: choose another ID"
        )));
    }
    let checked = check_study_files(&state, files).await?;
    let staged = upload.dir.keep();
    let study_id = store_study(&state, &id, &checked, staged).await?;
    let named = sqlx::query("INSERT INTO monailabel_images (image_id, study_id) VALUES (?, ?)")
        .bind(&id)
        .bind(study_id)
        .execute(&state.pool)
        .await;
    if let Err(e) = named {
        // Taken meanwhile by a concurrent upload: this one's study goes again.
        super::deletion::remove_study(&state, study_id).await?;
        return Err(Error::Conflict(format!(
            "image {id:?} exists already ({e}): choose another ID"
        )));
    }
    tracing::info!(image = %id, study = study_id, "MONAI Label image stored");
    Ok(Json(json!({ "image": id, "study_id": study_id })))
}

/// The study as one 4-D NIfTI: its own file when it came as one, else the four files stacked in
/// [`CHANNELS`] order (written once beside them, as float32 in the first file's geometry).
async fn four_d_file(state: &AppState, study: &Study) -> Result<PathBuf> {
    let view = StudyView::from(study.clone());
    let dir = PathBuf::from(&study.dir);
    if let Some(file) = view.files.get("4d") {
        return Ok(dir.join(file));
    }
    let target = dir.join("monailabel-4d.nii.gz");
    if target.is_file() {
        return Ok(target);
    }
    let sources: Vec<PathBuf> = CHANNELS
        .iter()
        .map(|m| view.source(m).map(|(path, _)| path))
        .collect::<Option<_>>()
        .ok_or_else(|| Error::NotFound(format!("the four modalities of study {}", study.id)))?;
    let _slot = state.volumes.decode_slot().await;
    let out = target.clone();
    tokio::task::spawn_blocking(move || stack_channels(&sources, &out))
        .await
        .map_err(anyhow::Error::from)??;
    Ok(target)
}

fn stack_channels(sources: &[PathBuf], out: &std::path::Path) -> Result<()> {
    let mut header = None;
    let mut volumes = Vec::new();
    for path in sources {
        let (h, data) = cggm_core::data::read_volume(path).map_err(anyhow::Error::from)?;
        let data = data
            .into_dimensionality::<ndarray::Ix3>()
            .map_err(anyhow::Error::from)?;
        header.get_or_insert(h);
        volumes.push(data);
    }
    let views: Vec<_> = volumes.iter().map(|v| v.view()).collect();
    let stacked = ndarray::stack(ndarray::Axis(3), &views).map_err(anyhow::Error::from)?;
    let header = header.ok_or_else(|| anyhow::anyhow!("no modality file"))?;
    // Written under a temporary name and renamed: a concurrent download never reads half a file.
    let partial = out.with_extension("partial.nii.gz");
    nifti::writer::WriterOptions::new(&partial)
        .reference_header(&header)
        .write_nifti(&stacked)
        .map_err(anyhow::Error::from)?;
    std::fs::rename(&partial, out)?;
    Ok(())
}

/// `GET /datastore/image?image=ID[&modality=M]`: the image as one 4-D NIfTI (or one modality).
async fn download_image(
    State(state): State<AppState>,
    Query(q): Query<ImageQuery>,
) -> Result<Response> {
    let id = q
        .image
        .ok_or_else(|| Error::BadRequest("image is missing: ?image=ID".into()))?;
    let study = image(&state, &id).await?;
    let path = match q.modality.as_deref() {
        Some(modality) => {
            let view = StudyView::from(study.clone());
            match view.source(modality) {
                Some((path, _)) if !view.files.contains_key("4d") => path,
                Some(_) => {
                    return Err(Error::NotFound(format!(
                        "a separate {modality} file: image {id:?} is one 4-D file"
                    )))
                }
                None => {
                    return Err(Error::BadRequest(format!(
                        "modality {modality:?}: use flair, t1ce, t1 or t2"
                    )))
                }
            }
        }
        None => four_d_file(&state, &study).await?,
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let suffix = match q.modality.as_deref() {
        Some(m) => format!("_{m}{}", nifti_extension(&*name)),
        None => nifti_extension(&*name).to_string(),
    };
    super::download_response(&path, &crate::security::download_name(&id, &suffix)).await
}

#[derive(Debug, Deserialize)]
struct LabelQuery {
    image: Option<String>,
    /// MONAI Label's name for the image ID when downloading.
    label: Option<String>,
    tag: Option<String>,
    /// A stored version (1, 2, ...); the newest without it.
    version: Option<i64>,
}

fn tag_of(q: &LabelQuery) -> Result<String> {
    let tag = q
        .tag
        .as_deref()
        .filter(|t| !t.is_empty())
        .unwrap_or(FINAL_TAG);
    safe_name(tag).map_err(|e| Error::BadRequest(format!("tag: {e}")))
}

/// The client's `client_id` from its `params` field (JSON text).
fn client_id(fields: &HashMap<String, String>) -> Option<String> {
    let params: Value = serde_json::from_str(fields.get("params")?).ok()?;
    params["client_id"]
        .as_str()
        .map(|s| s.chars().take(200).collect())
}

/// `PUT /datastore/label?image=ID&tag=final`: a label for the image, checked and stored as the
/// tag's next version (older versions stay).
async fn save_label(
    State(state): State<AppState>,
    Query(q): Query<LabelQuery>,
    multipart: Multipart,
) -> Result<Json<Value>> {
    let id = q
        .image
        .clone()
        .ok_or_else(|| Error::BadRequest("image is missing: ?image=ID".into()))?;
    let study = image(&state, &id).await?;
    let tag = tag_of(&q)?;
    let upload = save_upload(&state, multipart).await?;
    let file = crate::labels::the_label_file(&upload.files)?;
    // The same store the viewer's corrections use: a `final` label becomes the study's truth.
    let version = crate::labels::store(
        &state,
        &study,
        &tag,
        file,
        client_id(&upload.fields).as_deref(),
    )
    .await?;
    tracing::info!(image = %id, tag = %tag, version, "MONAI Label label saved");
    Ok(Json(json!({ "image": id, "tag": tag, "version": version })))
}

/// `GET /datastore/label?label=ID&tag=final[&version=N]`: a stored label (the newest version).
async fn download_label(
    State(state): State<AppState>,
    Query(q): Query<LabelQuery>,
) -> Result<Response> {
    let id = q
        .label
        .clone()
        .or_else(|| q.image.clone())
        .ok_or_else(|| Error::BadRequest("label is missing: ?label=ID&tag=TAG".into()))?;
    let study = image(&state, &id).await?;
    let tag = tag_of(&q)?;
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT file, version FROM study_labels WHERE study_id = ? AND tag = ?
           AND (? IS NULL OR version = ?) ORDER BY version DESC LIMIT 1",
    )
    .bind(study.id)
    .bind(&tag)
    .bind(q.version)
    .bind(q.version)
    .fetch_optional(&state.pool)
    .await?;
    let (file, _) = row.ok_or_else(|| Error::NotFound(format!("label {tag:?} of image {id:?}")))?;
    let path = PathBuf::from(&study.dir).join("labels").join(&file);
    let suffix = format!("_{tag}{}", nifti_extension(&file));
    super::download_response(&path, &crate::security::download_name(&id, &suffix)).await
}

// ---- sessions ----

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SessionInfo {
    name: String,
    /// modality (or "4d") -> file name inside the session's `image` folder
    files: BTreeMap<String, String>,
    shape: Vec<usize>,
    create_ts: f64,
    last_access_ts: f64,
    /// Seconds after the last access at which the session is removed.
    expiry: u64,
    client_id: Option<String>,
}

impl SessionInfo {
    fn expired(&self) -> bool {
        db::now() > self.last_access_ts + self.expiry as f64
    }

    fn json(&self, id: &str) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        value["session_id"] = id.into();
        value["expiry_ts"] = (self.last_access_ts + self.expiry as f64).into();
        value
    }
}

fn sessions_dir(state: &AppState) -> PathBuf {
    state.data_dir().join("monailabel-sessions")
}

/// A session's folder, for an ID made of the letters and digits the server gives.
fn session_dir(state: &AppState, id: &str) -> Result<PathBuf> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Error::NotFound(format!("session {id:?}")));
    }
    Ok(sessions_dir(state).join(id))
}

fn read_session(dir: &std::path::Path) -> Option<SessionInfo> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("session.json")).ok()?).ok()
}

fn write_session(dir: &std::path::Path, info: &SessionInfo) -> Result<()> {
    let text = serde_json::to_string(info).map_err(anyhow::Error::from)?;
    let partial = dir.join("session.json.partial");
    std::fs::write(&partial, text)?;
    std::fs::rename(partial, dir.join("session.json"))?;
    Ok(())
}

/// Removes expired sessions (and folders that never became one).
fn purge_sessions(state: &AppState) {
    let Ok(entries) = std::fs::read_dir(sessions_dir(state)) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let stale = match read_session(&dir) {
            Some(info) => info.expired(),
            // A folder being filled has its session.json within a moment of being made.
            None => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(600)),
        };
        if stale {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// A live session and its folder (its last access now), or 404.
fn open_session(state: &AppState, id: &str) -> Result<(SessionInfo, PathBuf)> {
    purge_sessions(state);
    let dir = session_dir(state, id)?;
    let mut info = read_session(&dir).ok_or_else(|| Error::NotFound(format!("session {id:?}")))?;
    info.last_access_ts = db::now();
    write_session(&dir, &info)?;
    Ok((info, dir))
}

#[derive(Debug, Deserialize)]
struct SessionQuery {
    /// Seconds the session lives after its last use (default [`SESSION_EXPIRY_SECS`]).
    expiry: Option<u64>,
}

/// `PUT /session/`: a temporary image (as for `PUT /datastore/`) for inference with
/// `session_id`; `{"session_id", "session_info"}`.
async fn create_session(
    State(state): State<AppState>,
    Query(q): Query<SessionQuery>,
    multipart: Multipart,
) -> Result<Json<Value>> {
    purge_sessions(&state);
    let upload = save_upload(&state, multipart).await?;
    let checked = check_study_files(&state, image_files(&upload.files)).await?;
    let root = sessions_dir(&state);
    std::fs::create_dir_all(&root)?;
    let holder = tempfile::Builder::new()
        .prefix("s")
        .rand_bytes(24)
        .tempdir_in(&root)?;
    let id = holder
        .path()
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    std::fs::rename(upload.dir.keep(), holder.path().join("image"))?;
    let now = db::now();
    let name = checked
        .files
        .first()
        .map(|f| f.file_name.clone())
        .unwrap_or_default();
    let info = SessionInfo {
        name,
        files: checked
            .roles
            .iter()
            .map(|(role, i)| (role.clone(), checked.files[*i].file_name.clone()))
            .collect(),
        shape: checked.shape.clone(),
        create_ts: now,
        last_access_ts: now,
        expiry: q
            .expiry
            .filter(|e| *e > 0)
            .unwrap_or(SESSION_EXPIRY_SECS)
            .min(7 * 24 * 3600),
        client_id: client_id(&upload.fields),
    };
    write_session(holder.path(), &info)?;
    let _kept = holder.keep();
    Ok(Json(
        json!({ "session_id": id, "session_info": info.json(&id) }),
    ))
}

async fn get_session(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>> {
    let (info, _) = open_session(&state, &id)?;
    Ok(Json(info.json(&id)))
}

async fn remove_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let (info, dir) = open_session(&state, &id)?;
    std::fs::remove_dir_all(&dir)?;
    Ok(Json(info.json(&id)))
}

/// A session's image as a study (not stored) for [`queue_prediction`].
fn session_study(id: &str, info: &SessionInfo, dir: &std::path::Path) -> StudyView {
    StudyView::from(Study {
        id: 0,
        name: format!("MONAI Label session {id}"),
        dir: dir.join("image").display().to_string(),
        files: serde_json::to_string(&info.files).unwrap_or_default(),
        shape: serde_json::to_string(&info.shape).unwrap_or_default(),
        created_at: info.create_ts,
    })
}

// ---- inference ----

#[derive(Debug, Deserialize)]
struct InferQuery {
    image: Option<String>,
    session_id: Option<String>,
    /// `json` (the result's parameters only), `image` (the label file only); by default both, as
    /// a multipart form.
    output: Option<String>,
}

/// Waits for a job to end (polling its row).
async fn job_ended(state: &AppState, id: i64) -> Result<Job> {
    let until = std::time::Instant::now() + INFER_DEADLINE;
    loop {
        let job = db::job(&state.pool, id).await?;
        if job.is_finished() {
            return Ok(job);
        }
        if std::time::Instant::now() > until {
            return Err(Error::Unavailable(format!(
                "inference job {id} is still {} after {} s: follow it at /api/predictions/{id}",
                job.state,
                INFER_DEADLINE.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A multipart/form-data body of a JSON part `params` and the file part `image` (what
/// `MONAILabelClient.infer` parses: text parts as the result, file parts as the label).
fn multipart_result(params: &Value, file_name: &str, bytes: Vec<u8>) -> Response {
    let mut boundary = String::from("cggm-monailabel-");
    // The label's bytes could hold any fixed boundary: one made of their own digest cannot be
    // guaranteed either, so a counter is appended until the body does not contain it.
    let mut n = 0u32;
    while contains(&bytes, format!("--{boundary}{n}").as_bytes()) {
        n += 1;
    }
    boundary.push_str(&n.to_string());
    let mut body = Vec::with_capacity(bytes.len() + 1024);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\nContent-Type: \
             application/json\r\n\r\n{params}\r\n--{boundary}\r\nContent-Disposition: form-data; \
             name=\"image\"; filename=\"{file_name}\"\r\nContent-Type: application/gzip\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (
        [(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )],
        body,
    )
        .into_response()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `POST /infer/{model}?image=ID[&session_id=S][&output=json|image]`: segments the image (or the
/// session's, or an image sent in the `file` part) with the model, through the same prediction
/// job as `POST /api/predictions` (`cggm infer`), and answers with the label and its parameters.
/// `params` (JSON) may set `device`.
async fn infer(
    State(state): State<AppState>,
    Path(model_id): Path<String>,
    Query(q): Query<InferQuery>,
    request: axum::extract::Request,
) -> Result<Response> {
    let run = model(&state, &model_id).await?;
    let (fields, sent) = sent_image(&state, request).await?;
    let params: Value = fields
        .get("params")
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_else(|| json!({}));
    let device = params["device"].as_str().map(str::to_string);
    let session = q.session_id.as_deref().filter(|s| !s.is_empty());
    // Held until the answer is made: an image sent with the request lives as long as that.
    let mut _sent_dir = None;
    let (view, study_id, image_id) = match (session, sent) {
        (Some(session), _) => {
            let (info, dir) = open_session(&state, session)?;
            (session_study(session, &info, &dir), None, None)
        }
        (None, Some((dir, files))) => {
            let view = sent_study(&state, &dir, files).await?;
            _sent_dir = Some(dir);
            (view, None, None)
        }
        (None, None) => {
            let id = q.image.clone().filter(|i| !i.is_empty()).ok_or_else(|| {
                Error::BadRequest("name the image (?image=ID), a session or send a file".into())
            })?;
            let study = image(&state, &id).await?;
            let study_id = study.id;
            (StudyView::from(study), Some(study_id), Some(id))
        }
    };
    let job_id = queue_prediction(&state, &view, study_id, run.id, device).await?;
    let out = succeeded_prediction(&state, job_id).await?;
    let result = infer_result(&out, &model_id, image_id.as_deref(), session, job_id);
    let stem = image_id.as_deref().or(session).unwrap_or("image");
    let file_name = crate::security::download_name(stem, "_seg.nii.gz");
    let seg = out.join("seg.nii.gz");
    match q.output.as_deref() {
        Some("json") => Ok(Json(result).into_response()),
        Some("image") => super::download_response(&seg, &file_name).await,
        None | Some("") => Ok(multipart_result(
            &result,
            &file_name,
            tokio::fs::read(&seg).await?,
        )),
        Some(other) => Err(Error::BadRequest(format!(
            "output={other:?}: use json or image, or leave it out"
        ))),
    }
}

/// An image sent with an infer request: its form's text fields, and its folder and files when
/// it holds any image (a request without a form sends none).
async fn sent_image(
    state: &AppState,
    request: axum::extract::Request,
) -> Result<(
    HashMap<String, String>,
    Option<(tempfile::TempDir, Vec<UploadedFile>)>,
)> {
    use axum::extract::FromRequest;
    let form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !form {
        return Ok((HashMap::new(), None));
    }
    let multipart = Multipart::from_request(request, state)
        .await
        .map_err(|e| Error::BadRequest(e.body_text()))?;
    let upload = save_upload(state, multipart).await?;
    let files = image_files(&upload.files);
    Ok((
        upload.fields,
        (!files.is_empty()).then_some((upload.dir, files)),
    ))
}

/// The study an image sent with the request makes, once checked like an upload.
async fn sent_study(
    state: &AppState,
    dir: &tempfile::TempDir,
    files: Vec<UploadedFile>,
) -> Result<StudyView> {
    let checked = check_study_files(state, files).await?;
    let files: BTreeMap<String, String> = checked
        .roles
        .iter()
        .map(|(role, i)| (role.clone(), checked.files[*i].file_name.clone()))
        .collect();
    let info = SessionInfo {
        name: "image sent with the request".into(),
        files,
        shape: checked.shape.clone(),
        create_ts: db::now(),
        last_access_ts: db::now(),
        expiry: 0,
        client_id: None,
    };
    Ok(StudyView::from(Study {
        dir: dir.path().display().to_string(),
        ..session_study("request", &info, dir.path()).study
    }))
}

/// The output folder of inference job `job_id` once it has succeeded; 422 naming its log
/// otherwise.
async fn succeeded_prediction(state: &AppState, job_id: i64) -> Result<PathBuf> {
    let job = job_ended(state, job_id).await?;
    if job.state != JobState::Succeeded {
        return Err(Error::Unprocessable(format!(
            "inference job {job_id} {}: {}; its log: /api/jobs/{job_id}/log",
            job.state,
            job.error.unwrap_or_default()
        )));
    }
    Ok(PathBuf::from(&job.out_dir))
}

/// The JSON part of an infer answer: labels, what was segmented, and the job's volumes and
/// latencies from its `summary.json`.
fn infer_result(
    out: &std::path::Path,
    model_id: &str,
    image_id: Option<&str>,
    session: Option<&str>,
    job_id: i64,
) -> Value {
    let summary: Value = std::fs::read_to_string(out.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    json!({
        "label_names": label_names(),
        "model": model_id,
        "image": image_id,
        "session_id": session,
        "job_id": job_id,
        "prediction": format!("/api/predictions/{job_id}"),
        "volumes_ml": summary["volumes_ml"],
        "latencies": {
            "pre": summary["seconds_load"], "infer": summary["seconds_predict"],
            "post": summary["seconds_write"], "total": summary["seconds_total"],
        },
    })
}

// ---- training ----

/// A training job as a MONAI Label task.
async fn task_view(state: &AppState, job: Job) -> Result<Value> {
    let status = match job.state {
        JobState::Queued | JobState::Running => "RUNNING",
        JobState::Succeeded => "DONE",
        JobState::Cancelled => "STOPPED",
        JobState::Failed | JobState::Interrupted => "ERROR",
    };
    let view = job_view(state, job).await?;
    Ok(json!({
        "id": view.job.id.to_string(),
        "type": "train",
        "name": model_name(view.job.id),
        "status": status,
        "state": view.job.state,
        "start_ts": view.job.started_at.unwrap_or(view.job.created_at),
        "end_ts": view.job.finished_at,
        "request": view.params,
        "result": view.best_validation,
        "error": view.job.error,
        // Slicer shows the last line of `details` when a task has no `result`.
        "details": [format!("CGGM Studio job {} is {}; its page: /jobs/{}", view.job.id,
                            view.job.state, view.job.id)],
    }))
}

/// Segmentation training jobs, newest first.
async fn training_jobs(state: &AppState) -> Result<Vec<Job>> {
    Ok(db::jobs(&state.pool, Some(JobKind::Train))
        .await?
        .into_iter()
        .filter(|job| job_task(&job.params_json()) == TaskKind::Segmentation)
        .collect())
}

/// A new training run with `run`'s options and dataset; the request's parameters (run options
/// under their JSON names, e.g. `epochs`) override them.
async fn start_training(state: AppState, run: Job, body: Bytes) -> Result<Json<Value>> {
    let overrides: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::BadRequest(format!("the request body is not JSON: {e}")))?
    };
    let mut request = match run.params_json()["options"].clone() {
        Value::Object(options) => options,
        _ => Map::new(),
    };
    if let Value::Object(overrides) = overrides {
        for (key, value) in overrides {
            // MONAI Label's own bookkeeping, not a run option.
            if !matches!(key.as_str(), "client_id" | "model" | "name") {
                request.insert(key, value);
            }
        }
    }
    let dataset = run.dataset_id.ok_or_else(|| {
        Error::Unprocessable(format!(
            "run {} has no dataset any more (deleted): train from the Runs page",
            run.id
        ))
    })?;
    request.insert("dataset_id".into(), dataset.into());
    let (_, Json(created)) =
        super::jobs::create(State(state.clone()), Json(Value::Object(request))).await?;
    Ok(Json(task_view(&state, created.job).await?))
}

/// `POST /train/{model}`: trains again with the model's configuration.
async fn train_model(
    State(state): State<AppState>,
    Path(model_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let run = model(&state, &model_id).await?;
    start_training(state, run, body).await
}

/// `POST /train/`: as `POST /train/{model}` with the newest model.
async fn train_latest(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>> {
    let run = models(&state).await?.into_iter().next().ok_or_else(|| {
        Error::NotFound("a finished segmentation run to train again (none yet)".into())
    })?;
    start_training(state, run, body).await
}

#[derive(Debug, Deserialize)]
struct TrainStatusQuery {
    #[serde(default)]
    check_if_running: bool,
    #[serde(default)]
    all: bool,
}

/// `GET /train/`: the newest training task (`{}` when none); `?all=true` every one;
/// `?check_if_running=true` 200 while one is queued or running, else 404.
async fn train_status(
    State(state): State<AppState>,
    Query(q): Query<TrainStatusQuery>,
) -> Result<Json<Value>> {
    let jobs = training_jobs(&state).await?;
    if q.check_if_running {
        return match jobs.into_iter().find(|job| !job.is_finished()) {
            Some(job) => Ok(Json(task_view(&state, job).await?)),
            None => Err(Error::NotFound("a running training task".into())),
        };
    }
    if q.all {
        let mut all = Vec::new();
        for job in jobs {
            all.push(task_view(&state, job).await?);
        }
        return Ok(Json(Value::Array(all)));
    }
    match jobs.into_iter().next() {
        Some(job) => Ok(Json(task_view(&state, job).await?)),
        None => Ok(Json(json!({}))),
    }
}

/// `DELETE /train/`: cancels every queued or running segmentation training job; the newest of
/// them as a task (`{}` when none ran).
async fn train_stop(State(state): State<AppState>) -> Result<Json<Value>> {
    let mut stopped = None;
    for job in training_jobs(&state).await? {
        if !job.is_finished() && state.runner.cancel(job.id).await? {
            stopped.get_or_insert(job.id);
        }
    }
    match stopped {
        Some(id) => Ok(Json(
            task_view(&state, db::job(&state.pool, id).await?).await?,
        )),
        None => Ok(Json(json!({}))),
    }
}

// ---- active learning ----

/// Voxels where the segmentations differ, over voxels any of them labels (0 when none does);
/// `None` when their grids differ.
fn disagreement(segs: &[std::sync::Arc<crate::volume::Volume>]) -> Option<f64> {
    let slices: Vec<&[f32]> = segs
        .iter()
        .map(|s| s.data.as_slice_memory_order())
        .collect::<Option<_>>()?;
    let first = slices.first()?;
    if segs.iter().any(|s| s.data.shape() != segs[0].data.shape()) {
        return None;
    }
    let (mut labelled, mut differ) = (0u64, 0u64);
    for (i, v) in first.iter().enumerate() {
        let any = slices.iter().any(|s| s[i] != 0.0);
        if any {
            labelled += 1;
            if slices.iter().any(|s| s[i] != *v) {
                differ += 1;
            }
        }
    }
    Some(if labelled == 0 {
        0.0
    } else {
        differ as f64 / labelled as f64
    })
}

/// The newest successful segmentation of `study` by each model.
async fn segmentations_by_model(state: &AppState, study: i64) -> Result<Vec<PathBuf>> {
    let jobs = crate::job_store::segmentations_of(&state.pool, study).await?;
    let mut seen = std::collections::HashSet::new();
    Ok(jobs
        .into_iter()
        .filter(|job| seen.insert(job.checkpoint_job_id))
        .map(|job| PathBuf::from(job.out_dir).join("seg.nii.gz"))
        .filter(|path| path.is_file())
        .collect())
}

/// One of `open` at random (`None` when there is none).
fn random_pick<'a>(open: &[&'a (String, Study)]) -> Option<&'a (String, Study)> {
    use std::hash::BuildHasher;
    let pick = std::collections::hash_map::RandomState::new().hash_one(db::now().to_bits());
    match open.len() {
        0 => None,
        n => Some(open[(pick % n as u64) as usize]),
    }
}

/// The image of `open` whose segmentations by different models disagree most, with that score;
/// images with fewer than two models' segmentations are passed over.
async fn most_disagreed<'a>(
    state: &AppState,
    open: &[&'a (String, Study)],
) -> Result<Option<(&'a (String, Study), f64)>> {
    let mut best: Option<(&(String, Study), f64)> = None;
    for entry in open {
        let paths = segmentations_by_model(state, entry.1.id).await?;
        if paths.len() < 2 {
            continue;
        }
        let mut segs = Vec::new();
        for path in &paths {
            segs.push(state.volumes.get(path).await.map_err(|e| {
                Error::Internal(anyhow::anyhow!("reading {}: {e}", path.display()))
            })?);
        }
        let score = tokio::task::spawn_blocking(move || disagreement(&segs))
            .await
            .map_err(anyhow::Error::from)?;
        if let Some(score) = score {
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((*entry, score));
            }
        }
    }
    Ok(best)
}

/// `POST /activelearning/{strategy}`: the next image to label (`{}` when every image has a
/// final label), by one of [`STRATEGIES`].
async fn next_sample(
    State(state): State<AppState>,
    Path(strategy): Path<String>,
) -> Result<Json<Value>> {
    let images = images(&state).await?;
    let latest = latest_labels(stored_labels(&state).await?);
    let open: Vec<&(String, Study)> = images
        .iter()
        .filter(|(_, study)| {
            !latest
                .get(&study.id)
                .is_some_and(|tags| tags.contains_key(FINAL_TAG))
        })
        .collect();
    let (chosen, score) = match strategy.as_str() {
        "random" => (random_pick(&open), None),
        "disagreement" => {
            let best = most_disagreed(&state, &open).await?;
            if best.is_none() && !open.is_empty() {
                return Err(Error::Unprocessable(
                    "no image without a final label has segmentations by two models yet: run \
                     inference of two models on the images (POST /infer/{model}?image=ID), or \
                     use the random strategy"
                        .into(),
                ));
            }
            (best.map(|(e, _)| e), best.map(|(_, s)| s))
        }
        other => {
            return Err(Error::NotFound(format!(
                "strategy {other:?} (use random or disagreement)"
            )))
        }
    };
    let Some((id, study)) = chosen else {
        return Ok(Json(json!({})));
    };
    // Slicer downloads `{server}/datastore/image?image=ID` and names the file `name`, whose
    // extension tells it the format.
    let view = StudyView::from(study.clone());
    let ext = view
        .files
        .get("4d")
        .map_or(".nii.gz", |f| nifti_extension(f));
    Ok(Json(json!({
        "id": id,
        "name": format!("{id}{ext}"),
        "study": study.name,
        "path": image_url(id),
        "ts": study.created_at,
        "strategy": strategy,
        "score": score,
    })))
}

// ---- logs ----

#[derive(Debug, Deserialize)]
struct LogsQuery {
    /// The last this many lines (default 300).
    lines: Option<usize>,
    /// This job's log; the newest job's by default.
    job: Option<i64>,
}

/// `GET /logs/`: the end of a job's log as text (the newest job's, or `?job=ID`'s): what the
/// server's jobs (inference and training for MONAI Label) printed.
async fn logs(State(state): State<AppState>, Query(q): Query<LogsQuery>) -> Result<Response> {
    let job = match q.job {
        Some(id) => Some(db::job(&state.pool, id).await?),
        None => db::jobs(&state.pool, None).await?.into_iter().next(),
    };
    let Some(job) = job else {
        return Ok("no job has run yet\n".into_response());
    };
    let tail = crate::jobs::read_tail(&state.runner.log_path(job.id), 512 * 1024).await?;
    let text = String::from_utf8_lossy(&tail);
    let lines: Vec<&str> = text.lines().collect();
    let keep = q.lines.unwrap_or(300).min(lines.len());
    let mut out = format!(
        "== job {} ({} {}) ==\n",
        job.id,
        job.kind,
        job.state.as_str()
    );
    for line in &lines[lines.len() - keep..] {
        out.push_str(line);
        out.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], out).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_image_ids_are_reserved() {
        assert_eq!(default_study_id("study-12"), Some(12));
        assert_eq!(default_study_id("study-"), None);
        assert_eq!(default_study_id("study-1a"), None);
        assert!(chosen_image_id("study-3").is_err());
        assert_eq!(chosen_image_id("BraTS_001").unwrap(), "BraTS_001");
        assert!(chosen_image_id("../x").is_err());
    }

    #[test]
    fn labels_follow_the_segmentation_numbering_in_value_order() {
        let text = serde_json::to_string(&OrderedLabels).unwrap();
        assert_eq!(
            text,
            r#"{"necrotic tumour core":1,"peritumoral oedema":2,"enhancing tumour":4}"#
        );
        assert_eq!(label_names()["enhancing tumour"], 4);
    }
}
