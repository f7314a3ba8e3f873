//! Progress of long CLI work (training, evaluation, dataset validation, inference) on stderr: a bar
//! with rate and ETA when stderr is a terminal (indicatif), otherwise one plain line per tenth of
//! the work and one at the end, so that logs and pipes stay short and greppable.
//!
//! Training and inference feed it from their progress events ([`EventProgress`], an observer of
//! the `EventSink` the CLI attaches); evaluation and validation count cases.

use crate::events::{Event, Observer, RegionScores};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Display {
    /// A redrawn bar (stderr is a terminal).
    Bar,
    /// A line per tenth of the work (stderr is a file or a pipe).
    Lines,
    /// Nothing.
    Hidden,
}

impl Display {
    /// A bar on a terminal, lines otherwise; `CGGM_PROGRESS=bar|lines|off` overrides.
    pub fn detect() -> Self {
        match std::env::var("CGGM_PROGRESS").as_deref() {
            Ok("bar") => Display::Bar,
            Ok("lines") => Display::Lines,
            Ok("off") => Display::Hidden,
            _ if std::io::stderr().is_terminal() => Display::Bar,
            _ => Display::Lines,
        }
    }
}

/// One piece of work of `total` units (steps, cases, percent).
pub struct Progress {
    label: String,
    unit: &'static str,
    total: u64,
    display: Display,
    bar: Option<ProgressBar>,
    state: Mutex<LineState>,
}

struct LineState {
    started: Instant,
    position: u64,
    /// The last tenth a line was printed for.
    tenth: u64,
    finished: bool,
}

impl Progress {
    pub fn new(label: &str, total: u64, unit: &'static str) -> Self {
        Self::with_display(label, total, unit, Display::detect())
    }

    pub fn with_display(label: &str, total: u64, unit: &'static str, display: Display) -> Self {
        let bar = (display == Display::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(&if unit == PERCENT {
                    "{prefix} [{bar:30}] {pos}% ETA {eta} {msg}".to_string()
                } else {
                    format!(
                        "{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}} {{msg}}"
                    )
                })
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        Self {
            label: label.to_string(),
            unit,
            total,
            display,
            bar,
            state: Mutex::new(LineState {
                started: Instant::now(),
                position: 0,
                tenth: 0,
                finished: false,
            }),
        }
    }

    pub fn inc(&self, units: u64) {
        let position = self.lock().position + units;
        self.set_position(position);
    }

    /// Moves forward to `position` (never back: workers may report out of order).
    pub fn set_position(&self, position: u64) {
        let mut state = self.lock();
        let position = position.min(self.total).max(state.position);
        if let Some(bar) = &self.bar {
            bar.set_position(position);
        }
        state.position = position;
        if self.display != Display::Lines || self.total == 0 {
            return;
        }
        let tenth = position * 10 / self.total;
        if tenth > state.tenth && position < self.total {
            state.tenth = tenth;
            eprintln!("{}", self.line(&state));
        }
    }

    /// A short note shown beside the bar (the current stage, the last loss).
    pub fn set_message(&self, message: impl Into<String>) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.into());
        }
    }

    /// A line that stays (above the bar on a terminal).
    pub fn println(&self, line: impl AsRef<str>) {
        match &self.bar {
            Some(bar) => bar.println(line.as_ref()),
            None if self.display == Display::Lines => eprintln!("{}", line.as_ref()),
            None => {}
        }
    }

    /// Ends the work: the bar stays with its final numbers; lines print a summary.
    pub fn finish(&self) {
        let mut state = self.lock();
        if state.finished {
            return;
        }
        state.finished = true;
        if let Some(bar) = &self.bar {
            bar.finish();
        } else if self.display == Display::Lines && self.unit == PERCENT {
            let seconds = state.started.elapsed().as_secs_f64();
            eprintln!("{}: done in {}", self.label, duration(seconds));
        } else if self.display == Display::Lines {
            let seconds = state.started.elapsed().as_secs_f64();
            eprintln!(
                "{}: {}/{} {} in {} ({})",
                self.label,
                state.position,
                self.total,
                self.unit,
                duration(seconds),
                rate(state.position, seconds, self.unit)
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LineState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `train: 40/100 steps (40%), 3.2 steps/s, ETA 19s`
    fn line(&self, state: &LineState) -> String {
        let seconds = state.started.elapsed().as_secs_f64();
        let done = state.position as f64 / self.total.max(1) as f64;
        let eta = if state.position > 0 {
            duration(seconds / done - seconds)
        } else {
            "?".into()
        };
        if self.unit == PERCENT {
            // A share of the work, not a count: "infer: 84%", not "infer: 84/100 % (84%)".
            return format!("{}: {:.0}%, ETA {eta}", self.label, 100.0 * done);
        }
        format!(
            "{}: {}/{} {} ({:.0}%), {}, ETA {eta}",
            self.label,
            state.position,
            self.total,
            self.unit,
            100.0 * done,
            rate(state.position, seconds, self.unit)
        )
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // An error ended the work: leave the bar where it stopped, without a summary line.
        if let Some(bar) = &self.bar {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

fn rate(units: u64, seconds: f64, unit: &str) -> String {
    if seconds <= 0.0 {
        return format!("? {unit}/s");
    }
    let per_second = units as f64 / seconds;
    if per_second >= 1.0 || per_second == 0.0 {
        format!("{per_second:.1} {unit}/s")
    } else {
        format!("{:.1} s/{}", 1.0 / per_second, unit.trim_end_matches('s'))
    }
}

fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Progress of a training run or an inference, read from the events they emit.
pub struct EventProgress {
    display: Display,
    current: Mutex<Option<Progress>>,
}

impl EventProgress {
    pub fn new(display: Display) -> Self {
        Self {
            display,
            current: Mutex::new(None),
        }
    }

    /// Progress on stderr, drawn as the terminal allows, to hand to `EventSink::with_observer`.
    pub fn on_stderr() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self::new(Display::detect()))
    }
}

impl Observer for EventProgress {
    fn observe(&self, event: &Event) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::RunStarted { total_steps, .. } => {
                *current = Some(Progress::with_display(
                    "train",
                    *total_steps as u64,
                    "steps",
                    self.display,
                ));
            }
            Event::Step {
                epoch, step, loss, ..
            } => {
                if let Some(p) = current.as_ref() {
                    // Events count epochs from 0; people count from 1.
                    p.set_message(format!("epoch {} loss {loss:.4}", epoch + 1));
                    p.set_position(*step as u64 + 1);
                }
            }
            Event::Validation {
                epoch,
                dice,
                metrics,
                ..
            } => {
                if let Some(p) = current.as_ref() {
                    let score = validation_score(dice, metrics);
                    p.println(format!("epoch {}: validation {score}", epoch + 1));
                }
            }
            Event::Progress {
                stage, fraction, ..
            } => {
                let p = current.get_or_insert_with(|| {
                    Progress::with_display("infer", 100, PERCENT, self.display)
                });
                p.set_message(stage.clone());
                p.set_position((fraction * 100.0).round() as u64);
                if *fraction >= 1.0 {
                    p.finish();
                }
            }
            Event::Finished { .. } => {
                if let Some(p) = current.as_ref() {
                    p.finish();
                }
            }
            Event::CheckpointSaved { .. }
            | Event::Failed { .. }
            | Event::BalanceDiagnostics { .. } => {}
        }
    }
}

/// A validation's scores in a line: segmentation's Dice by region, else the task's metrics.
fn validation_score(dice: &RegionScores, metrics: &BTreeMap<String, f64>) -> String {
    if metrics.is_empty() || metrics.contains_key("dice_mean") {
        format!(
            "mean Dice {:.4} (WT {:.4}, TC {:.4}, ET {:.4})",
            dice.mean, dice.wt, dice.tc, dice.et
        )
    } else {
        metrics
            .iter()
            .map(|(k, v)| format!("{k} {v:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The unit of a progress measured in per cent of the work.
pub const PERCENT: &str = "%";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_of_the_work_reads_as_a_percentage_not_a_count() {
        let p = Progress::with_display("infer", 100, PERCENT, Display::Hidden);
        p.set_position(84);
        let line = p.line(&p.lock());
        assert!(line.starts_with("infer: 84%, ETA "), "{line}");
        assert!(!line.contains("/100"), "{line}");
    }

    #[test]
    fn durations_and_rates_read_naturally() {
        assert_eq!(duration(5.2), "5s");
        assert_eq!(duration(75.0), "1m15s");
        assert_eq!(duration(7300.0), "2h01m");
        assert_eq!(rate(30, 10.0, "steps"), "3.0 steps/s");
        assert_eq!(rate(1, 4.0, "cases"), "4.0 s/case");
    }

    #[test]
    fn a_line_states_position_share_rate_and_eta() {
        let p = Progress::with_display("eval", 10, "cases", Display::Hidden);
        p.set_position(4);
        let line = p.line(&p.lock());
        assert!(line.starts_with("eval: 4/10 cases (40%), "), "{line}");
        assert!(line.contains("ETA "), "{line}");
    }
}
