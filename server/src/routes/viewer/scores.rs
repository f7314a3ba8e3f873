//! A case's Dice and HD95 against its ground truth, and PNG thumbnails of cases.

use super::*;

// ---------------------------------------------------------------------------- scores

/// Internal classes (0 background, 1 NCR, 2 ED, 3 ET) of a decoded label volume.
pub(super) fn internal_labels(
    labels: &volume::Volume,
    convention: LabelConvention,
) -> ndarray::Array3<u8> {
    let s = labels.shape3();
    ndarray::Array3::from_shape_fn((s[0], s[1], s[2]), |(x, y, z)| {
        let value = labels.data[ndarray::IxDyn(&[x, y, z])]
            .round()
            .clamp(0.0, 255.0) as u8;
        match convention.class_of(value) {
            Some(TumourClass::Ncr) => 1,
            Some(TumourClass::Ed) => 2,
            Some(TumourClass::Et) => 3,
            None => 0,
        }
    })
}

/// A prediction and a ground truth of different shapes: no voxel-wise score.
#[derive(Debug, thiserror::Error)]
#[error(
    "the prediction is {prediction:?} voxels but the ground truth is {truth:?}: they are not on \
     the same grid"
)]
pub struct NotOneGrid {
    pub prediction: [usize; 3],
    pub truth: [usize; 3],
}

/// Dice and the official HD95 of a prediction against a ground truth on the same voxel grid.
pub fn score_against_truth(
    prediction: &volume::Volume,
    truth: &volume::Volume,
    truth_convention: LabelConvention,
) -> Result<CaseScores, NotOneGrid> {
    if prediction.shape3() != truth.shape3() {
        return Err(NotOneGrid {
            prediction: prediction.shape3(),
            truth: truth.shape3(),
        });
    }
    let pred = internal_labels(prediction, LabelConvention::Brats);
    let truth = internal_labels(truth, truth_convention);
    let flat = |a: &ndarray::Array3<u8>| a.iter().copied().collect::<Vec<u8>>();
    let spacing = truth_spacing(prediction);
    Ok(CaseScores {
        dice: cggm_core::metrics::dice_scores(&flat(&pred), &flat(&truth)),
        hd95: cggm_core::metrics::hd95_scores(&pred.view(), &truth.view(), spacing),
    })
}

pub(super) fn truth_spacing(v: &volume::Volume) -> [f64; 3] {
    v.spacing.map(f64::from)
}

/// Scores of a prediction whose study came with a label: computed once, kept beside the
/// segmentation in `scores.json`.
pub(super) async fn prediction_scores(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<CaseScores>> {
    let job = db::job(&state.pool, id).await?;
    let seg = job.segmentation()?;
    let study: StudyView = db::study(&state.pool, job.study_id.unwrap_or_default())
        .await?
        .into();
    let truth = crate::labels::ground_truth(&state.pool, &study.study)
        .await?
        .ok_or_else(|| {
            Error::NotFound(format!(
                "a ground truth for prediction {id} (upload the study with its *_seg.nii.gz, or \
                 correct the prediction in the viewer and save it, to compare)"
            ))
        })?;
    let truth_path = truth.path.clone();
    // One score file per ground-truth version: a corrected label is scored afresh.
    let stored = match truth.source {
        crate::labels::TruthSource::Uploaded => seg.with_file_name("scores.json"),
        crate::labels::TruthSource::Version(_) => {
            seg.with_file_name(format!("scores-{}.json", truth.key()))
        }
    };
    if let Some(scores) = std::fs::read_to_string(&stored)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
    {
        return Ok(Json(scores));
    }
    let prediction = state
        .volumes
        .get(&seg)
        .await
        .map_err(|e| Error::Unprocessable(e.to_string()))?;
    let truth = state
        .volumes
        .get(&truth_path)
        .await
        .map_err(|e| Error::Unprocessable(e.to_string()))?;
    let scores = tokio::task::spawn_blocking(move || {
        score_against_truth(&prediction, &truth, LabelConvention::Brats)
    })
    .await
    .map_err(anyhow::Error::from)?
    .map_err(|e| Error::Unprocessable(e.to_string()))?;
    if let Ok(text) = serde_json::to_string(&scores) {
        let _ = std::fs::write(&stored, text);
    }
    Ok(Json(scores))
}

// ---------------------------------------------------------------------------- thumbnails

/// The FLAIR (or first) image of a case and its channel.
pub(super) fn thumbnail_image(case: &CaseSource) -> Option<(PathBuf, usize)> {
    match &case.files {
        CaseFiles::Separate { images, .. } => Some((images[0].clone(), 0)),
        CaseFiles::Msd4d {
            image, channels, ..
        } => Some((image.clone(), msd_frame(channels, Modality::Flair))),
    }
}

pub(super) async fn thumbnail(
    state: &AppState,
    image: (PathBuf, usize),
    labels: Option<(PathBuf, LabelConvention)>,
) -> Result<Response> {
    let volume = state
        .volumes
        .get(&image.0)
        .await
        .map_err(|e| Error::Unprocessable(e.to_string()))?;
    let labels = match labels {
        Some((path, convention)) => Some((
            state
                .volumes
                .get(&path)
                .await
                .map_err(|e| Error::Unprocessable(e.to_string()))?,
            convention,
        )),
        None => None,
    };
    let bytes = tokio::task::spawn_blocking(move || {
        let index = labels.as_ref().map_or(volume.shape3()[2] / 2, |(l, _)| {
            volume::most_labelled_axial_slice(l)
        });
        volume::render_thumbnail(
            &volume,
            image.1,
            labels.as_ref().map(|(l, c)| (l.as_ref(), *c)),
            index,
        )
    })
    .await
    .map_err(anyhow::Error::from)?
    .map_err(|e| Error::Unprocessable(e.to_string()))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response())
}

pub(super) async fn case_thumbnail(
    State(state): State<AppState>,
    Path((id, case)): Path<(i64, String)>,
) -> Result<Response> {
    let dataset = db::dataset(&state.pool, id).await?;
    let source = dataset_case(&dataset, &case)?;
    let image = thumbnail_image(&source)
        .ok_or_else(|| Error::NotFound(format!("an image of case {case}")))?;
    let labels = source
        .label_path()
        .map(|p| (p.clone(), case_convention(&source)));
    thumbnail(&state, image, labels).await
}

/// A test case with its saved prediction over the FLAIR (the ground truth when none was saved).
pub(super) async fn test_case_thumbnail(
    State(state): State<AppState>,
    Path((id, case)): Path<(i64, String)>,
) -> Result<Response> {
    let (job, dataset, test) = test_case(&state, id, &case).await?;
    let source = dataset_case(&dataset, &case)?;
    let image = thumbnail_image(&source)
        .ok_or_else(|| Error::NotFound(format!("an image of case {case}")))?;
    let labels = if test.prediction_saved {
        Some((
            RunDir::new(&job.out_dir).test_prediction(&case),
            LabelConvention::Brats,
        ))
    } else {
        source
            .label_path()
            .map(|p| (p.clone(), case_convention(&source)))
    };
    thumbnail(&state, image, labels).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    fn labels(shape: [usize; 3], f: impl Fn(usize, usize, usize) -> f32) -> volume::Volume {
        volume::Volume {
            data: ArrayD::from_shape_fn(IxDyn(&shape), |i| f(i[0], i[1], i[2])),
            spacing: [1.0, 1.0, 1.0],
            windows: vec![(0.0, 1.0)],
        }
    }

    #[test]
    fn a_prediction_equal_to_its_truth_scores_dice_one_and_hd95_zero() {
        let truth = labels([8, 8, 8], |x, y, z| {
            if (2..6).contains(&x) && (2..6).contains(&y) && (2..6).contains(&z) {
                if x < 4 {
                    4.0
                } else {
                    2.0
                }
            } else {
                0.0
            }
        });
        let same = labels([8, 8, 8], |x, y, z| truth.data[IxDyn(&[x, y, z])]);
        let scores = score_against_truth(&same, &truth, LabelConvention::Brats).unwrap();
        assert_eq!(scores.dice.wt, 1.0);
        assert_eq!(scores.dice.et, 1.0);
        assert_eq!(scores.hd95.wt, 0.0);
    }

    #[test]
    fn msd_truth_is_read_in_its_own_numbering() {
        // MSD 3 (enhancing) is BraTS 4; MSD 1 (oedema) is BraTS 2.
        let truth = labels([4, 4, 4], |x, _, _| [0.0, 3.0, 1.0, 0.0][x]);
        let prediction = labels([4, 4, 4], |x, _, _| [0.0, 4.0, 2.0, 0.0][x]);
        let scores = score_against_truth(&prediction, &truth, LabelConvention::Msd).unwrap();
        assert_eq!(scores.dice.et, 1.0);
        assert_eq!(scores.dice.wt, 1.0);
        let shifted = labels([4, 4, 4], |x, _, _| [0.0, 2.0, 4.0, 0.0][x]);
        let worse = score_against_truth(&shifted, &truth, LabelConvention::Msd).unwrap();
        assert_eq!(worse.dice.et, 0.0);
        assert!(score_against_truth(
            &labels([4, 4, 2], |_, _, _| 0.0),
            &truth,
            LabelConvention::Msd
        )
        .is_err());
    }

    #[test]
    fn volumes_over_the_limit_are_refused_with_the_reason() {
        assert!(too_large(&[240, 240, 155]).is_none());
        let message = too_large(&[1024, 1024, 512]).unwrap();
        assert!(message.contains("server-rendered slices"), "{message}");
    }
}
