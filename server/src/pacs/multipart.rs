//! `multipart/related` in both directions: WADO-RS answers a series as one part per instance
//! (each `application/dicom`), STOW-RS takes instances the same way. A response is parsed as it
//! streams in, each part written to its own file, within limits: a response that is too large,
//! has too many parts or ends before its closing delimiter is refused with the reason.

use futures_util::{Stream, StreamExt};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// What one retrieved series may hold.
#[derive(Clone, Copy, Debug)]
pub struct PartLimits {
    /// Instances (parts) at most: a series of 1,024 slices leaves room to spare at 4,096.
    pub max_parts: usize,
    /// Bytes of all parts together (the DICOM import's per-series limit).
    pub max_total_bytes: u64,
    /// Bytes of one part's headers.
    pub max_header_bytes: usize,
}

impl Default for PartLimits {
    fn default() -> Self {
        Self {
            max_parts: crate::limits::MAX_DICOM_PARTS,
            max_total_bytes: crate::dicom::ZipLimits::default().max_unpacked_bytes,
            max_header_bytes: 16 * 1024,
        }
    }
}

/// The `boundary` parameter of a `multipart/related` content type; `None` for any other type.
pub fn boundary_of(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let kind = params.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/related") {
        return None;
    }
    params.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_string())
            .filter(|b| !b.is_empty() && b.len() <= 200)
    })
}

/// A `multipart/related; type="application/dicom"` body of `instances`, and its content type.
pub fn dicom_body(instances: &[Vec<u8>], boundary: &str) -> (Vec<u8>, String) {
    let mut body = Vec::with_capacity(instances.iter().map(Vec::len).sum::<usize>() + 256);
    for instance in instances {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(instance);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let content_type =
        format!("multipart/related; type=\"application/dicom\"; boundary={boundary}");
    (body, content_type)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

enum State {
    /// Before the first delimiter (a preamble, if any, is skipped).
    Preamble,
    /// Just after a delimiter: `--` ends the body, else a part's headers follow.
    AfterDelimiter,
    Headers,
    Body(tokio::fs::File),
    Done,
}

/// Why a multipart answer was not saved: sentences for the user.
#[derive(Debug, thiserror::Error)]
pub enum PartsError {
    #[error("cannot create {}: {error}", dir.display())]
    CreateDir { dir: PathBuf, error: std::io::Error },
    #[error("no multipart delimiter in the first {0} bytes")]
    NoDelimiterWithin(usize),
    #[error("part {part} has more than {max} bytes of headers")]
    Headers { part: usize, max: usize },
    #[error("more than {0} instances in one series, the most a series may hold")]
    TooManyParts(usize),
    #[error("cannot write {}: {error}", path.display())]
    Create {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the series is larger than {0} MiB, the most one series may hold")]
    TooLarge(u64),
    #[error("cannot write an instance: {0}")]
    Write(std::io::Error),
    #[error("the answer holds no multipart delimiter (an empty or cut-off answer)")]
    NoDelimiter,
    #[error(
        "the answer ended after {0} instance(s) without its closing delimiter: cut \
         off (a timeout or a dropped connection on the way)"
    )]
    CutOff(usize),
    #[error("the answer broke off after {after} instance(s): {error}")]
    BrokeOff { after: usize, error: String },
    #[error("part {part} is {found}, not application/dicom")]
    NotDicom { part: usize, found: String },
}

/// Writes each `application/dicom` part of the body streamed by `chunks` into `dir`
/// (`000000.dcm`, `000001.dcm`, ...); the files written. Errors are sentences for the user.
pub async fn save_parts<S, E>(
    mut chunks: S,
    boundary: &str,
    dir: &Path,
    limits: PartLimits,
) -> Result<Vec<PathBuf>, PartsError>
where
    S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|error| PartsError::CreateDir {
            dir: dir.to_path_buf(),
            error,
        })?;
    let mut parts = Parts::new(boundary, dir, limits);
    loop {
        if let State::Done = parts.state {
            return Ok(parts.files);
        }
        // Consume what the buffer allows; read more only when nothing can be consumed.
        if parts.consume().await? {
            continue;
        }
        if parts.ended {
            return Err(match parts.state {
                State::Preamble if parts.files.is_empty() => PartsError::NoDelimiter,
                _ => PartsError::CutOff(parts.files.len()),
            });
        }
        match chunks.next().await {
            Some(Ok(chunk)) => parts.buffer.extend_from_slice(&chunk),
            Some(Err(e)) => {
                return Err(PartsError::BrokeOff {
                    after: parts.files.len(),
                    error: e.to_string(),
                })
            }
            None => parts.ended = true,
        }
    }
}

/// The parser of one body between chunks: what is buffered, where it is, what it wrote.
struct Parts<'a> {
    dir: &'a Path,
    limits: PartLimits,
    /// The first delimiter.
    first: Vec<u8>,
    /// Inside the body a delimiter always follows a line break.
    delimiter: Vec<u8>,
    buffer: Vec<u8>,
    state: State,
    files: Vec<PathBuf>,
    /// Bytes of all parts so far.
    total: u64,
    /// The stream has ended.
    ended: bool,
}

impl<'a> Parts<'a> {
    fn new(boundary: &str, dir: &'a Path, limits: PartLimits) -> Self {
        Self {
            dir,
            limits,
            first: format!("--{boundary}").into_bytes(),
            delimiter: format!("\r\n--{boundary}").into_bytes(),
            buffer: Vec::new(),
            state: State::Preamble,
            files: Vec::new(),
            total: 0,
            ended: false,
        }
    }

    /// Consumes what the buffer allows in the current state; false when it needs more.
    async fn consume(&mut self) -> Result<bool, PartsError> {
        match self.state {
            State::Preamble => self.preamble(),
            State::AfterDelimiter => Ok(self.after_delimiter()),
            State::Headers => self.headers().await,
            State::Body(_) => self.body().await,
            State::Done => Ok(false),
        }
    }

    fn preamble(&mut self) -> Result<bool, PartsError> {
        match find(&self.buffer, &self.first) {
            Some(at) => {
                self.buffer.drain(..at + self.first.len());
                self.state = State::AfterDelimiter;
                Ok(true)
            }
            None if self.buffer.len() > self.limits.max_header_bytes => {
                Err(PartsError::NoDelimiterWithin(self.limits.max_header_bytes))
            }
            None => Ok(false),
        }
    }

    fn after_delimiter(&mut self) -> bool {
        if self.buffer.len() < 2 {
            return false;
        }
        self.state = if self.buffer.starts_with(b"--") {
            State::Done
        } else {
            State::Headers
        };
        true
    }

    /// A part's headers, once complete: checked, and its file created.
    async fn headers(&mut self) -> Result<bool, PartsError> {
        let Some(end) = find(&self.buffer, b"\r\n\r\n") else {
            if self.buffer.len() > self.limits.max_header_bytes {
                return Err(PartsError::Headers {
                    part: self.files.len() + 1,
                    max: self.limits.max_header_bytes,
                });
            }
            return Ok(false);
        };
        let headers = String::from_utf8_lossy(&self.buffer[..end]).to_string();
        self.buffer.drain(..end + 4);
        check_part_type(&headers, self.files.len())?;
        if self.files.len() == self.limits.max_parts {
            return Err(PartsError::TooManyParts(self.limits.max_parts));
        }
        let path = self.dir.join(format!("{:06}.dcm", self.files.len()));
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|error| PartsError::Create {
                path: path.clone(),
                error,
            })?;
        self.files.push(path);
        self.state = State::Body(file);
        Ok(true)
    }

    /// A part's bytes up to the next delimiter (or what cannot be the start of one).
    async fn body(&mut self) -> Result<bool, PartsError> {
        let State::Body(file) = &mut self.state else {
            unreachable!("body() is called in the Body state only");
        };
        let (take, found) = match find(&self.buffer, &self.delimiter) {
            Some(at) => (at, true),
            // Keep what could be the start of a delimiter split across chunks.
            None => (
                self.buffer.len().saturating_sub(self.delimiter.len() - 1),
                false,
            ),
        };
        self.total += take as u64;
        if self.total > self.limits.max_total_bytes {
            return Err(PartsError::TooLarge(
                self.limits.max_total_bytes / (1024 * 1024),
            ));
        }
        file.write_all(&self.buffer[..take])
            .await
            .map_err(PartsError::Write)?;
        self.buffer.drain(..take);
        if !found {
            return Ok(take > 0 && !self.ended);
        }
        file.flush().await.map_err(PartsError::Write)?;
        self.buffer.drain(..self.delimiter.len());
        self.state = State::AfterDelimiter;
        Ok(true)
    }
}

/// A part must be `application/dicom` (what the request's `Accept` asked for).
fn check_part_type(headers: &str, index: usize) -> Result<(), PartsError> {
    let content_type = headers.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-type")
            .then(|| value.trim().to_string())
    });
    match content_type {
        Some(t)
            if t.split(';')
                .next()
                .is_some_and(|k| k.trim().eq_ignore_ascii_case("application/dicom")) =>
        {
            Ok(())
        }
        other => Err(PartsError::NotDicom {
            part: index + 1,
            found: other.unwrap_or_else(|| "of no content type".into()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(
        body: &[u8],
        size: usize,
    ) -> impl Stream<Item = Result<bytes::Bytes, std::io::Error>> + Unpin {
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = body
            .chunks(size)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        futures_util::stream::iter(chunks)
    }

    #[test]
    fn the_boundary_comes_from_the_content_type() {
        assert_eq!(
            boundary_of("multipart/related; type=\"application/dicom\"; boundary=abc-1").as_deref(),
            Some("abc-1")
        );
        assert_eq!(
            boundary_of("Multipart/Related; boundary=\"q q\"").as_deref(),
            Some("q q")
        );
        assert_eq!(boundary_of("application/json; boundary=x"), None);
        assert_eq!(boundary_of("multipart/related; type=x"), None);
    }

    #[tokio::test]
    async fn parts_are_written_to_files_whatever_the_chunking() {
        let one = b"first instance \r\n-- not a delimiter".to_vec();
        let two = vec![7u8; 5000];
        let (body, _) = dicom_body(&[one.clone(), two.clone()], "B0UNDARY");
        for size in [1, 3, 7, 64, 100_000] {
            let dir = tempfile::tempdir().unwrap();
            let files = save_parts(
                chunked(&body, size),
                "B0UNDARY",
                dir.path(),
                PartLimits::default(),
            )
            .await
            .unwrap();
            assert_eq!(files.len(), 2, "chunks of {size}");
            assert_eq!(std::fs::read(&files[0]).unwrap(), one, "chunks of {size}");
            assert_eq!(std::fs::read(&files[1]).unwrap(), two, "chunks of {size}");
        }
    }

    #[tokio::test]
    async fn a_cut_off_answer_is_refused() {
        let (body, _) = dicom_body(&[vec![1u8; 300], vec![2u8; 300]], "b");
        let dir = tempfile::tempdir().unwrap();
        let error = save_parts(
            chunked(&body[..500], 64),
            "b",
            dir.path(),
            PartLimits::default(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(error.contains("without its closing delimiter"), "{error}");
        let error = save_parts(chunked(b"", 64), "b", dir.path(), PartLimits::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("no multipart delimiter"), "{error}");
    }

    #[tokio::test]
    async fn size_count_and_type_limits_hold() {
        let dir = tempfile::tempdir().unwrap();
        let (body, _) = dicom_body(&[vec![1u8; 3000], vec![2u8; 3000]], "b");
        let small = PartLimits {
            max_total_bytes: 4000,
            ..PartLimits::default()
        };
        let error = save_parts(chunked(&body, 512), "b", dir.path(), small)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("larger than"), "{error}");
        let few = PartLimits {
            max_parts: 1,
            ..PartLimits::default()
        };
        let error = save_parts(chunked(&body, 512), "b", dir.path(), few)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("more than 1 instances"), "{error}");
        let xml = b"--b\r\nContent-Type: application/dicom+xml\r\n\r\n<x/>\r\n--b--\r\n";
        let error = save_parts(chunked(xml, 512), "b", dir.path(), PartLimits::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("not application/dicom"), "{error}");
    }
}
