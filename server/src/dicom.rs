//! DICOM import: one series per modality (a zip, or a folder's files) becomes a NIfTI volume
//! through Debian's `dcm2niix`, run as a child process with a timeout. Each series is checked on
//! the way: a zip within limits (entries, unpacked size, compression ratio, no path leaving the
//! archive), only DICOM image files, one series, no missing slice. Every refusal names the
//! modality, the file or the problem, and what to send instead.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How the server converts DICOM: the converter and its limits.
#[derive(Clone, Debug)]
pub struct DicomSettings {
    /// The `dcm2niix` executable (a name looked up on PATH, or a path).
    pub dcm2niix: PathBuf,
    /// Longest one series may take to convert before the converter is stopped.
    pub convert_timeout: Duration,
    pub zip: ZipLimits,
}

impl Default for DicomSettings {
    fn default() -> Self {
        Self {
            dcm2niix: PathBuf::from("dcm2niix"),
            convert_timeout: Duration::from_secs(300),
            zip: ZipLimits::default(),
        }
    }
}

impl DicomSettings {
    pub fn with_converter(dcm2niix: PathBuf) -> Self {
        Self {
            dcm2niix,
            ..Self::default()
        }
    }

    /// Whether the converter can be started (checked once at start-up, for a warning).
    pub fn converter_found(&self) -> bool {
        std::process::Command::new(&self.dcm2niix)
            .arg("-v")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok()
    }
}

/// What a series zip may hold. The unpacked size is counted while unpacking too, so a zip that
/// lies about its sizes stops at the limit all the same.
#[derive(Clone, Copy, Debug)]
pub struct ZipLimits {
    pub max_entries: usize,
    pub max_unpacked_bytes: u64,
    /// Unpacked bytes per stored byte over the whole archive. DICOM slices of a skull-stripped
    /// volume compress about 10:1 (empty slices far more, which is why the ratio is not checked
    /// per entry); a zip bomb is 1000:1.
    pub max_ratio: u64,
}

impl Default for ZipLimits {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_unpacked_bytes: 4 * 1024 * 1024 * 1024,
            max_ratio: 100,
        }
    }
}

/// The converter could not be started: a fault of the installation, not of the upload.
#[derive(Debug, thiserror::Error)]
#[error("DICOM import needs dcm2niix, which could not be started ({path}: {source}): install it with scripts/setup-dicom.sh (Debian: apt-get install dcm2niix) or point --dcm2niix / CGGM_DCM2NIIX at it")]
pub struct ConverterMissing {
    path: String,
    source: std::io::Error,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The upload is unusable; the message says why (a 422).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Converter(#[from] ConverterMissing),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn refused(message: impl Into<String>) -> ImportError {
    ImportError::Refused(message.into())
}

pub fn is_zip(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"PK\x03\x04"
}

/// Files that archivers and file browsers add beside the data; skipped, not refused.
fn is_clutter(relative: &Path) -> bool {
    relative.components().any(|c| {
        let part = c.as_os_str().to_string_lossy();
        part.starts_with('.') || part == "__MACOSX" || part == "Thumbs.db"
    }) || relative.file_name().is_some_and(|n| n == "DICOMDIR")
}

/// Unpacks the zip `archive` (named `label` in messages) into `dest` within `limits`.
pub fn unpack_zip(
    archive: &Path,
    label: &str,
    dest: &Path,
    limits: ZipLimits,
) -> Result<usize, ImportError> {
    let file = std::fs::File::open(archive)?;
    let stored = file.metadata()?.len().max(1);
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| refused(format!("{label}: not a readable zip archive ({e})")))?;
    if zip.len() > limits.max_entries {
        return Err(refused(format!(
            "{label}: {} entries, more than the {} a series zip may hold; send one series per zip",
            zip.len(),
            limits.max_entries
        )));
    }
    let declared = check_entries(&mut zip, label)?;
    check_unpacked_size(label, declared, stored, limits)?;
    let mut unpacked: u64 = 0;
    let mut count = 0;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| refused(format!("{label}: entry {i} is unreadable ({e})")))?;
        let relative = entry.enclosed_name().expect("checked above");
        if entry.is_dir() || is_clutter(&relative) {
            continue;
        }
        let budget = limits.max_unpacked_bytes.saturating_sub(unpacked);
        unpacked += unpack_entry(&mut entry, &relative, label, dest, budget)?;
        check_unpacked_size(label, unpacked, stored, limits)?;
        count += 1;
    }
    Ok(count)
}

/// The declared sizes and the names of every entry, read before a byte is unpacked so that a
/// bomb or a name the file system cannot hold is refused first; the declared total.
fn check_entries<R: Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    label: &str,
) -> Result<u64, ImportError> {
    let mut declared: u64 = 0;
    let mut names = EntryNames::default();
    for i in 0..zip.len() {
        let entry = zip
            .by_index(i)
            .map_err(|e| refused(format!("{label}: entry {i} is unreadable ({e})")))?;
        let name = entry.name().map(|n| n.to_string()).unwrap_or_default();
        let Some(relative) = entry.enclosed_name() else {
            return Err(refused(format!(
                "{label}: entry {} points outside the archive (absolute path or '..'); \
                 zip the series folder itself",
                shown(&name)
            )));
        };
        if entry.is_symlink() {
            return Err(refused(format!(
                "{label}: entry {} is a symbolic link; zip the files themselves",
                shown(&name)
            )));
        }
        if !is_clutter(&relative) {
            names.add(label, &relative, entry.is_dir())?;
        }
        declared = declared.saturating_add(entry.size());
    }
    Ok(declared)
}

/// Unpacks one entry to `dest/relative`, reading at most one byte more than `budget` (what the
/// series may still grow by); the bytes written. Refused at once when its first bytes are not a
/// DICOM file's.
fn unpack_entry(
    entry: &mut impl Read,
    relative: &Path,
    label: &str,
    dest: &Path,
    budget: u64,
) -> Result<u64, ImportError> {
    let damaged =
        |e: std::io::Error| refused(format!("{label}: {} is damaged ({e})", relative.display()));
    // The signature from the entry's first bytes: a file that is not DICOM is refused before
    // the rest of it (or of the archive) is unpacked.
    let mut head = Vec::with_capacity(DICOM_HEAD);
    (&mut *entry)
        .take(DICOM_HEAD as u64)
        .read_to_end(&mut head)
        .map_err(damaged)?;
    if !has_dicom_signature(&head) {
        return Err(refused(format!(
            "{label}: {} is not a DICOM file (no DICM signature); send only the series' \
             DICOM images",
            relative.display()
        )));
    }
    let target = dest.join(relative);
    let unwritable = |e: std::io::Error| {
        refused(format!(
            "{label}: entry {} cannot be unpacked ({e}); rename it and zip the series again",
            relative.display()
        ))
    };
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(unwritable)?;
    }
    let mut out = std::fs::File::create(&target).map_err(unwritable)?;
    std::io::Write::write_all(&mut out, &head)?;
    let budget = budget.saturating_sub(head.len() as u64);
    let written = std::io::copy(&mut (&mut *entry).take(budget + 1), &mut out).map_err(damaged)?;
    Ok(head.len() as u64 + written)
}

/// Bytes of a DICOM Part 10 file's start: a 128-byte preamble, then `DICM`.
const DICOM_HEAD: usize = 132;

fn has_dicom_signature(head: &[u8]) -> bool {
    head.len() >= DICOM_HEAD && &head[128..DICOM_HEAD] == b"DICM"
}

/// Longest entry name part (most file systems' limit) and whole entry name, in bytes.
const MAX_NAME_PART_BYTES: usize = 255;
const MAX_ENTRY_NAME_BYTES: usize = 1024;

/// An entry name for a message: at most 80 characters of it.
fn shown(name: &str) -> String {
    if name.chars().count() > 80 {
        format!("{:?}...", name.chars().take(80).collect::<String>())
    } else {
        format!("{name:?}")
    }
}

/// The names of a zip's entries so far: a file and a folder of the same name, the same file twice,
/// or a name too long for the file system are refused before anything is unpacked.
#[derive(Default)]
struct EntryNames {
    files: std::collections::HashSet<PathBuf>,
    folders: std::collections::HashSet<PathBuf>,
}

impl EntryNames {
    fn add(&mut self, label: &str, relative: &Path, is_dir: bool) -> Result<(), ImportError> {
        let text = relative.to_string_lossy();
        let too_long = text.len() > MAX_ENTRY_NAME_BYTES
            || relative
                .components()
                .any(|c| c.as_os_str().len() > MAX_NAME_PART_BYTES);
        if too_long {
            return Err(refused(format!(
                "{label}: entry {} has a name longer than the file system allows ({} bytes a \
                 part, {} in all); rename it and zip the series again",
                shown(&text),
                MAX_NAME_PART_BYTES,
                MAX_ENTRY_NAME_BYTES
            )));
        }
        let conflict = |other: &str| {
            refused(format!(
                "{label}: entry {} {other}; zip the series folder as it is on disk",
                shown(&text)
            ))
        };
        for ancestor in relative.ancestors().skip(1) {
            if ancestor.as_os_str().is_empty() {
                break;
            }
            if self.files.contains(ancestor) {
                return Err(conflict("lies inside an entry that is a file"));
            }
            self.folders.insert(ancestor.to_path_buf());
        }
        if is_dir {
            if self.files.contains(relative) {
                return Err(conflict("is both a file and a folder"));
            }
            self.folders.insert(relative.to_path_buf());
        } else if self.folders.contains(relative) {
            return Err(conflict("is both a file and a folder"));
        } else if !self.files.insert(relative.to_path_buf()) {
            return Err(conflict("appears twice"));
        }
        Ok(())
    }
}

fn check_unpacked_size(
    label: &str,
    unpacked: u64,
    stored: u64,
    limits: ZipLimits,
) -> Result<(), ImportError> {
    if unpacked > limits.max_unpacked_bytes {
        return Err(refused(format!(
            "{label}: unpacks to more than {} MiB, over the limit for one series",
            limits.max_unpacked_bytes / (1024 * 1024)
        )));
    }
    if unpacked / stored > limits.max_ratio {
        return Err(refused(format!(
            "{label}: compressed {}:1, more than the {}:1 real images reach (a zip bomb?); \
             send the series uncompressed or zipped normally",
            unpacked / stored,
            limits.max_ratio
        )));
    }
    Ok(())
}

/// A DICOM Part 10 file: 128 bytes of preamble, then `DICM`.
fn dicom_kind(path: &Path) -> std::io::Result<DicomKind> {
    let mut head = [0u8; 132];
    let mut file = std::fs::File::open(path)?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    if filled < 132 || &head[128..132] != b"DICM" {
        return Ok(DicomKind::NotDicom);
    }
    // Pixel Data (7FE0,0010), little endian, is what makes a DICOM file an image.
    let mut rest = Vec::new();
    file.read_to_end(&mut rest)?;
    let has_pixels = rest.windows(4).any(|w| w == [0xE0, 0x7F, 0x10, 0x00]);
    Ok(if has_pixels {
        DicomKind::Image
    } else {
        DicomKind::NoPixels
    })
}

enum DicomKind {
    Image,
    NoPixels,
    NotDicom,
}

/// Every file under `dir` must be a DICOM image; `display` gives a file's name as the client sent it.
pub fn check_dicom_files(
    modality: &str,
    dir: &Path,
    display: &dyn Fn(&Path) -> String,
) -> Result<usize, ImportError> {
    let mut count = 0;
    for path in files_under(dir)? {
        match dicom_kind(&path)? {
            DicomKind::Image => count += 1,
            DicomKind::NotDicom => {
                return Err(refused(format!(
                    "{modality}: {} is not a DICOM file (no DICM signature); send only the \
                     series' DICOM images",
                    display(&path)
                )))
            }
            DicomKind::NoPixels => {
                return Err(refused(format!(
                    "{modality}: {} is DICOM but holds no image (no Pixel Data); send only the \
                     series' images",
                    display(&path)
                )))
            }
        }
    }
    if count == 0 {
        return Err(refused(format!(
            "{modality}: no DICOM images in the upload; send the series as a zip or as its files"
        )));
    }
    Ok(count)
}

/// Every plain file under `dir`, sorted.
pub(crate) fn files_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Lines of dcm2niix's output that mean the volume is not the series as acquired.
const GAP_WARNINGS: [&str; 4] = [
    "Missing images",
    "Interslice distance varies",
    "missing slice",
    "Unable to equalize",
];

/// Converts the series in `input` to `<output>/<modality>.nii.gz` with dcm2niix, refusing a series
/// with missing slices and an input that holds several series.
pub async fn convert_series(
    settings: &DicomSettings,
    modality: &str,
    input: &Path,
    output: &Path,
) -> Result<PathBuf, ImportError> {
    std::fs::create_dir_all(output)?;
    let finished = run_dcm2niix(settings, modality, input, output).await?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&finished.stdout),
        String::from_utf8_lossy(&finished.stderr)
    );
    if let Some(line) = log
        .lines()
        .find(|l| GAP_WARNINGS.iter().any(|w| l.contains(w)))
    {
        return Err(refused(format!(
            "{modality}: slices are missing or unevenly spaced (dcm2niix: {}); send the complete \
             series",
            line.trim()
        )));
    }
    let mut volumes: Vec<PathBuf> = std::fs::read_dir(output)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| crate::inspect::is_nifti_name(&p.to_string_lossy()))
        .collect();
    volumes.sort();
    match volumes.len() {
        1 => {
            let target = output.join(format!("{modality}.nii.gz"));
            std::fs::rename(&volumes[0], &target)?;
            Ok(target)
        }
        0 => Err(no_volume(modality, &log, finished.status)),
        _ => Err(several_series(modality, &volumes)),
    }
}

/// dcm2niix on `input`, within the settings' time limit.
async fn run_dcm2niix(
    settings: &DicomSettings,
    modality: &str,
    input: &Path,
    output: &Path,
) -> Result<std::process::Output, ImportError> {
    let mut command = tokio::process::Command::new(&settings.dcm2niix);
    command
        .args(["-z", "y", "-b", "n", "-f", "series%s_%d", "-o"])
        .arg(output)
        .arg(input)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let child = command.output();
    Ok(tokio::time::timeout(settings.convert_timeout, child)
        .await
        .map_err(|_| {
            refused(format!(
                "{modality}: the conversion took longer than {} s and was stopped; send a smaller \
                 series",
                settings.convert_timeout.as_secs()
            ))
        })?
        .map_err(|source| ConverterMissing {
            path: settings.dcm2niix.display().to_string(),
            source,
        })?)
}

/// dcm2niix wrote nothing: its errors and warnings, or its exit status.
fn no_volume(modality: &str, log: &str, status: std::process::ExitStatus) -> ImportError {
    let reason: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Error") || l.contains("Warning"))
        .collect();
    refused(format!(
        "{modality}: dcm2niix made no volume from the series ({}); send an MR series of \
         axial slices",
        if reason.is_empty() {
            format!("exit status {status}")
        } else {
            reason.join("; ")
        }
    ))
}

/// dcm2niix wrote several volumes: the upload held several series (named by their files).
fn several_series(modality: &str, volumes: &[PathBuf]) -> ImportError {
    let names: Vec<String> = volumes
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.trim_end_matches(".gz")
                .trim_end_matches(".nii")
                .to_string()
        })
        .collect();
    refused(format!(
        "{modality}: the upload holds {} series ({}); send one series per modality",
        volumes.len(),
        names.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_zip(path: &Path, entries: &[(&str, Vec<u8>)]) {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in entries {
            zip.start_file(*name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
    }

    fn refusal(result: Result<usize, ImportError>) -> String {
        match result {
            Err(ImportError::Refused(message)) => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_zip_bomb_is_refused_before_anything_is_unpacked() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("bomb.zip");
        write_zip(&archive, &[("zeros.dcm", vec![0u8; 8 * 1024 * 1024])]);
        let out = dir.path().join("out");
        let message = refusal(unpack_zip(&archive, "flair", &out, ZipLimits::default()));
        assert!(message.contains("zip bomb"), "{message}");
        assert!(!out.join("zeros.dcm").exists());
    }

    #[test]
    fn entries_that_leave_the_archive_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("escape.zip");
        write_zip(&archive, &[("../../etc/evil.dcm", vec![1, 2, 3])]);
        let message = refusal(unpack_zip(
            &archive,
            "t1",
            &dir.path().join("out"),
            ZipLimits::default(),
        ));
        assert!(message.contains("outside the archive"), "{message}");
        assert!(!dir.path().join("etc").exists());
    }

    #[test]
    fn entry_count_and_unpacked_size_have_limits() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("many.zip");
        let names: Vec<String> = (0..5).map(|i| format!("s/{i}.dcm")).collect();
        // Each entry a (tiny) DICOM file: the 128-byte preamble, then the DICM signature.
        let dicom = || {
            let mut bytes = vec![0u8; 128];
            bytes.extend_from_slice(b"DICM");
            bytes.resize(200, 7);
            bytes
        };
        let entries: Vec<(&str, Vec<u8>)> = names.iter().map(|n| (n.as_str(), dicom())).collect();
        write_zip(&archive, &entries);
        let few = ZipLimits {
            max_entries: 4,
            ..ZipLimits::default()
        };
        let message = refusal(unpack_zip(&archive, "t2", &dir.path().join("a"), few));
        assert!(message.contains("5 entries"), "{message}");
        let small = ZipLimits {
            max_unpacked_bytes: 300,
            ..ZipLimits::default()
        };
        let message = refusal(unpack_zip(&archive, "t2", &dir.path().join("b"), small));
        assert!(message.contains("unpacks to more than"), "{message}");
        let unpacked =
            unpack_zip(&archive, "t2", &dir.path().join("c"), ZipLimits::default()).unwrap();
        assert_eq!(unpacked, 5);
        assert_eq!(
            std::fs::read(dir.path().join("c/s/4.dcm")).unwrap().len(),
            200
        );
    }

    #[test]
    fn archiver_clutter_is_skipped_and_other_files_must_be_dicom_images() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("series.zip");
        let mut dicom = vec![0u8; 128];
        dicom.extend_from_slice(b"DICM");
        dicom.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, 0, 0, 0, 0]);
        let mut report = vec![0u8; 128];
        report.extend_from_slice(b"DICMno pixels here");
        write_zip(
            &archive,
            &[
                ("IM0001", dicom.clone()),
                ("__MACOSX/._IM0001", vec![1]),
                (".DS_Store", vec![1]),
            ],
        );
        let out = dir.path().join("out");
        assert_eq!(
            unpack_zip(&archive, "flair", &out, ZipLimits::default()).unwrap(),
            1
        );
        let name = |p: &Path| p.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(check_dicom_files("flair", &out, &name).unwrap(), 1);
        std::fs::write(out.join("notes.txt"), "hello").unwrap();
        let message = refusal(check_dicom_files("flair", &out, &name));
        assert!(
            message.contains("notes.txt is not a DICOM file"),
            "{message}"
        );
        std::fs::remove_file(out.join("notes.txt")).unwrap();
        std::fs::write(out.join("report.dcm"), report).unwrap();
        let message = refusal(check_dicom_files("flair", &out, &name));
        assert!(message.contains("holds no image"), "{message}");
    }
}
