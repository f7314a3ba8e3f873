//! The error a request body gives when its client stops sending, and how to find it again inside
//! an extractor's error: the limits layer makes it (`crate::limits`), the error type answers it as
//! 408 (`crate::error`).

use std::time::Duration;

/// The error a body's stream gives when nothing arrived for `idle`: extractors report it as their
/// own failure to read, and [`stalled_body`] finds it in their error's sources.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled: nothing received for {} s; send it again", .0.as_secs_f64())]
pub struct BodyStalled(pub Duration);

/// The stall inside an extractor's error, if that is what it is.
pub fn stalled_body(error: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(stalled) = e.downcast_ref::<BodyStalled>() {
            return Some(stalled.0);
        }
        current = e.source();
    }
    None
}
