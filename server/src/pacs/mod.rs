//! A PACS reached through DICOMweb (QIDO-RS to search, WADO-RS to retrieve, STOW-RS to store):
//! where it is and how to sign in (`cggm serve --pacs URL`), the client, the DICOM JSON model and
//! the multipart bodies, and the guess of each series' modality.

pub mod client;
pub mod mapping;
pub mod model;
pub mod multipart;

pub use client::{DicomWebClient, PacsError, StudyQuery};

use std::time::Duration;

/// `cggm serve`'s PACS flags (flattened into [`crate::config::ServeArgs`]).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct PacsArgs {
    /// DICOMweb root of a PACS to browse, import studies from and send segmentations to, e.g.
    /// `http://127.0.0.1:8042/dicom-web` (Orthanc with its DICOMweb plugin). Unset: no PACS.
    #[arg(long = "pacs", env = "CGGM_PACS_URL")]
    pub pacs_url: Option<String>,
    /// User name for HTTP basic authentication at the PACS (the password in CGGM_PACS_PASSWORD).
    #[arg(long = "pacs-user", env = "CGGM_PACS_USER", requires = "pacs_url")]
    pub pacs_user: Option<String>,
    #[arg(
        long = "pacs-password",
        env = "CGGM_PACS_PASSWORD",
        hide_env_values = true,
        hide = true
    )]
    pub pacs_password: Option<String>,
    /// Bearer token for the PACS instead of a user (prefer the variable: a flag shows in `ps`).
    #[arg(
        long = "pacs-token",
        env = "CGGM_PACS_TOKEN",
        hide_env_values = true,
        conflicts_with = "pacs_user",
        requires = "pacs_url"
    )]
    pub pacs_token: Option<String>,
    /// Longest a search or a store may take at the PACS, in seconds (a series' retrieval gets ten
    /// times as long).
    #[arg(
        long = "pacs-timeout-secs",
        env = "CGGM_PACS_TIMEOUT_SECS",
        default_value_t = 30.0
    )]
    pub pacs_timeout_secs: f64,
}

/// How the server signs in at the PACS.
#[derive(Clone, Debug, Default)]
pub enum PacsAuth {
    #[default]
    None,
    Basic {
        user: String,
        password: String,
    },
    Bearer(String),
}

/// A PACS flag `cggm serve` refuses.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "--pacs {root:?} is not a URL ({error}); give the DICOMweb root, e.g. \
         http://127.0.0.1:8042/dicom-web"
    )]
    NotUrl {
        root: String,
        /// The URL parser's words.
        error: String,
    },
    #[error(
        "--pacs {0:?}: only http:// PACS URLs are supported (this build has no TLS \
         client); reach an https PACS through a local TLS proxy or an SSH tunnel"
    )]
    NotHttp(String),
    #[error(
        "--pacs {0:?}: give the DICOMweb root without a query, e.g. \
         http://127.0.0.1:8042/dicom-web"
    )]
    Query(String),
    #[error("--pacs-user needs its password in CGGM_PACS_PASSWORD (or --pacs-password)")]
    NoPassword,
    #[error("--pacs-timeout-secs must be more than 0 and at most 3600, got {0}")]
    Timeout(f64),
}

/// A configured PACS.
#[derive(Clone, Debug)]
pub struct PacsSettings {
    /// The DICOMweb root, without a trailing slash.
    pub root: String,
    pub auth: PacsAuth,
    /// Searches and stores.
    pub timeout: Duration,
    /// One series' retrieval.
    pub retrieve_timeout: Duration,
    pub limits: multipart::PartLimits,
}

impl PacsSettings {
    /// A PACS at `root` (an `http://` URL) without authentication and with the default limits.
    pub fn new(root: &str) -> Result<Self, SettingsError> {
        let url = reqwest::Url::parse(root.trim()).map_err(|e| SettingsError::NotUrl {
            root: root.to_string(),
            error: e.to_string(),
        })?;
        if url.scheme() != "http" {
            return Err(SettingsError::NotHttp(root.to_string()));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(SettingsError::Query(root.to_string()));
        }
        Ok(Self {
            root: url.as_str().trim_end_matches('/').to_string(),
            auth: PacsAuth::None,
            timeout: Duration::from_secs(30),
            retrieve_timeout: Duration::from_secs(300),
            limits: Default::default(),
        })
    }

    /// The settings `args` ask for; `None` when no PACS is configured.
    pub fn from_args(args: &PacsArgs) -> Result<Option<Self>, SettingsError> {
        let Some(url) = args.pacs_url.as_deref().filter(|u| !u.trim().is_empty()) else {
            return Ok(None);
        };
        let mut settings = Self::new(url)?;
        settings.auth = match (&args.pacs_user, &args.pacs_password, &args.pacs_token) {
            (Some(user), Some(password), None) => PacsAuth::Basic {
                user: user.clone(),
                password: password.clone(),
            },
            (Some(_), None, _) => return Err(SettingsError::NoPassword),
            (None, _, Some(token)) => PacsAuth::Bearer(token.trim().to_string()),
            _ => PacsAuth::None,
        };
        if !(args.pacs_timeout_secs.is_finite()
            && args.pacs_timeout_secs > 0.0
            && args.pacs_timeout_secs <= 3600.0)
        {
            return Err(SettingsError::Timeout(args.pacs_timeout_secs));
        }
        settings.timeout = Duration::from_secs_f64(args.pacs_timeout_secs);
        settings.retrieve_timeout = settings.timeout * 10;
        Ok(Some(settings))
    }
}

/// What the routes answer when no PACS is configured (a 503).
pub const NOT_CONFIGURED: &str = "no PACS is configured: start the server with --pacs URL (or \
     CGGM_PACS_URL), the PACS's DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web for Orthanc \
     with its DICOMweb plugin (README: PACS (DICOMweb))";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_checked_and_its_trailing_slash_dropped() {
        let s = PacsSettings::new("http://127.0.0.1:8042/dicom-web/").unwrap();
        assert_eq!(s.root, "http://127.0.0.1:8042/dicom-web");
        assert!(PacsSettings::new("not a url")
            .unwrap_err()
            .to_string()
            .contains("not a URL"));
        assert!(PacsSettings::new("https://pacs/dicom-web")
            .unwrap_err()
            .to_string()
            .contains("only http://"));
        let none = PacsSettings::from_args(&PacsArgs::default()).unwrap();
        assert!(none.is_none());
        let args = PacsArgs {
            pacs_url: Some("http://pacs:8042/dicom-web".into()),
            pacs_user: Some("u".into()),
            pacs_timeout_secs: 30.0,
            ..PacsArgs::default()
        };
        assert!(PacsSettings::from_args(&args)
            .unwrap_err()
            .to_string()
            .contains("CGGM_PACS_PASSWORD"));
    }
}
