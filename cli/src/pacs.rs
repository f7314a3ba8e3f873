//! `cggm pacs`: the PACS page from the command line, through a running `cggm serve --pacs URL`
//! (its `/api/pacs` routes): search the PACS's studies, import one (four series, each modality's
//! series guessed from its description unless given), and send a prediction back as a DICOM SEG.

use crate::api::Api;
use anyhow::{bail, Context};

#[derive(Clone, Debug, clap::Args)]
pub struct PacsArgs {
    /// The server's address (a `cggm serve` started with `--pacs`).
    #[arg(long, env = "CGGM_URL", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    #[command(subcommand)]
    pub command: PacsCommand,
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum PacsCommand {
    /// List the PACS's studies (QIDO-RS), one line each: study UID, patient, date, description.
    Search {
        /// Patient name (DICOM wildcards `*` and `?` allowed).
        #[arg(long, default_value = "")]
        patient: String,
        /// Patient ID.
        #[arg(long, default_value = "")]
        patient_id: String,
        /// Study date, `YYYYMMDD` or a range `YYYYMMDD-YYYYMMDD`.
        #[arg(long, default_value = "")]
        date: String,
        /// A modality the study holds (e.g. MR).
        #[arg(long, default_value = "")]
        modality: String,
        /// At most this many studies.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// List a study's series with the modality guessed from each description.
    Series {
        /// The study's Study Instance UID (from `cggm pacs search`).
        study_uid: String,
    },
    /// Import a study's four series as a study of this server (the same checks and conversion as
    /// a DICOM upload); prints the new study's id.
    Import {
        /// The study's Study Instance UID.
        study_uid: String,
        /// The FLAIR series' UID (default: the series whose description says FLAIR).
        #[arg(long)]
        flair: Option<String>,
        /// The contrast-enhanced T1 series' UID (default: guessed from the descriptions).
        #[arg(long)]
        t1ce: Option<String>,
        /// The native T1 series' UID (default: guessed from the descriptions).
        #[arg(long)]
        t1: Option<String>,
        /// The T2 series' UID (default: guessed from the descriptions).
        #[arg(long)]
        t2: Option<String>,
        /// The new study's name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Store prediction N back at the PACS as a DICOM Segmentation object (STOW-RS).
    Send {
        /// The prediction's id (the number in /predictions/N).
        prediction: i64,
    },
}

pub fn run(args: PacsArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server)?;
    match args.command {
        PacsCommand::Search {
            patient,
            patient_id,
            date,
            modality,
            limit,
        } => search(
            &api,
            &[
                ("patient", patient),
                ("patient_id", patient_id),
                ("date", date),
                ("modality", modality),
                ("limit", limit.map(|n| n.to_string()).unwrap_or_default()),
            ],
        ),
        PacsCommand::Series { study_uid } => series(&api, &study_uid),
        PacsCommand::Import {
            study_uid,
            flair,
            t1ce,
            t1,
            t2,
            name,
        } => import(&api, &study_uid, [flair, t1ce, t1, t2], name),
        PacsCommand::Send { prediction } => send(&api, prediction),
    }
}

/// `cggm pacs search`: one line per study found.
fn search(api: &Api, fields: &[(&str, String)]) -> anyhow::Result<()> {
    let studies = api.get(&format!("/api/pacs/studies{}", url_query(fields)))?;
    for s in studies.as_array().into_iter().flatten() {
        println!(
            "{}\t{}\t{}\t{}\t{}",
            text(&s["study_uid"]),
            text(&s["patient_name"]),
            text(&s["date"]),
            text(&s["description"]),
            s["modalities"]
                .as_array()
                .map(|m| m.iter().map(text).collect::<Vec<_>>().join(","))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// `cggm pacs series`: one line per series of the study, with the modality guessed.
fn series(api: &Api, study_uid: &str) -> anyhow::Result<()> {
    for s in series_of(api, study_uid)? {
        println!(
            "{}\t{}\t{}\t{}",
            text(&s["series_uid"]),
            text(&s["modality"]),
            text(&s["description"]),
            s["guess"].as_str().unwrap_or("-")
        );
    }
    Ok(())
}

/// `cggm pacs import`: the given series UIDs (flair, t1ce, t1, t2), each guessed from the
/// descriptions where not given.
fn import(
    api: &Api,
    study_uid: &str,
    given: [Option<String>; 4],
    name: Option<String>,
) -> anyhow::Result<()> {
    let series = series_of(api, study_uid)?;
    let mut chosen = serde_json::Map::new();
    for (modality, given) in ["flair", "t1ce", "t1", "t2"].into_iter().zip(given) {
        let uid = match given {
            Some(uid) => uid,
            None => guessed(&series, modality).with_context(|| {
                format!(
                    "no series of study {study_uid} names {modality} in its description: \
                     give --{modality} SERIES_UID (`cggm pacs series {study_uid}` lists them)"
                )
            })?,
        };
        chosen.insert(modality.into(), uid.into());
    }
    let imported = api.post(
        &format!("/api/pacs/studies/{study_uid}/import"),
        &serde_json::json!({ "series": chosen, "name": name }),
    )?;
    println!(
        "study {}: imported from {} (study {study_uid}); segment it at {}/segment?study={}",
        imported["study_id"],
        text(&imported["pacs_url"]),
        api.base,
        imported["study_id"]
    );
    Ok(())
}

/// `cggm pacs send`: a prediction back to the PACS as DICOM SEG.
fn send(api: &Api, prediction: i64) -> anyhow::Result<()> {
    let sent = api.post(
        &format!("/api/predictions/{prediction}/pacs"),
        &serde_json::json!({}),
    )?;
    println!(
        "prediction {prediction}: stored at {} as DICOM SEG {}",
        text(&sent["pacs_url"]),
        text(&sent["sop_instance_uid"])
    );
    Ok(())
}

fn series_of(api: &Api, study_uid: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let series = api.get(&format!("/api/pacs/studies/{study_uid}/series"))?;
    match series.as_array() {
        Some(list) => Ok(list.clone()),
        None => bail!("the server answered no series list for study {study_uid}: {series}"),
    }
}

/// The one series guessed as `modality`; none when no series or several do.
fn guessed(series: &[serde_json::Value], modality: &str) -> Option<String> {
    let mut matching = series.iter().filter(|s| s["guess"] == modality);
    let first = matching.next()?;
    if matching.next().is_some() {
        return None;
    }
    first["series_uid"].as_str().map(str::to_string)
}

fn text(v: &serde_json::Value) -> String {
    v.as_str().map(str::to_string).unwrap_or_default()
}

/// `?key=value&…` of the non-empty fields, form-encoded by the HTTP client's own URL type.
fn url_query(fields: &[(&str, String)]) -> String {
    let mut url = reqwest::Url::parse("http://server/").expect("a fixed URL parses");
    {
        let mut pairs = url.query_pairs_mut();
        for (key, value) in fields.iter().filter(|(_, v)| !v.is_empty()) {
            pairs.append_pair(key, value);
        }
    }
    url.query()
        .filter(|q| !q.is_empty())
        .map(|q| format!("?{q}"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_keeps_only_the_given_fields_percent_encoded() {
        let q = url_query(&[
            ("patient", "DOE^J*".into()),
            ("patient_id", String::new()),
            ("date", "20260101-20261231".into()),
        ]);
        assert_eq!(q, "?patient=DOE%5EJ*&date=20260101-20261231");
        assert_eq!(url_query(&[("patient", String::new())]), "");
    }

    #[test]
    fn a_modality_is_guessed_only_when_one_series_names_it() {
        let series = vec![
            serde_json::json!({ "series_uid": "1.2.1", "guess": "flair" }),
            serde_json::json!({ "series_uid": "1.2.2", "guess": "t1" }),
            serde_json::json!({ "series_uid": "1.2.3", "guess": "t1" }),
        ];
        assert_eq!(guessed(&series, "flair").as_deref(), Some("1.2.1"));
        assert_eq!(guessed(&series, "t1"), None, "two series say T1");
        assert_eq!(guessed(&series, "t2"), None);
    }

    #[test]
    fn every_pacs_option_has_help() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            pacs: PacsArgs,
        }
        let cmd = Cli::command();
        for sub in cmd.get_subcommands() {
            for arg in sub.get_arguments() {
                assert!(
                    arg.get_help()
                        .is_some_and(|h| !h.to_string().trim().is_empty()),
                    "pacs {} --{} has no help",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
    }
}
