//! The comparison's figure: the headline metric per arm as bars (mean), whiskers (95 % t
//! interval) and a dot per seed, laid out once and drawn as SVG (with its text) or PNG (without).

use super::aggregate::Aggregate;
use super::stats::Interval;

/// Colours of the figure's arms, in the arms' order (the page's table uses the same).
pub const COLOURS: [[u8; 3]; 8] = [
    [0x44, 0x77, 0xaa],
    [0xee, 0x66, 0x77],
    [0x22, 0x88, 0x33],
    [0xcc, 0xbb, 0x44],
    [0x66, 0xcc, 0xee],
    [0xaa, 0x33, 0x77],
    [0xbb, 0xbb, 0xbb],
    [0x00, 0x00, 0x00],
];

/// One arm of the figure: its bar (mean), whisker (95 % t interval) and seeds, in pixels.
struct FigureArm {
    name: String,
    colour: [u8; 3],
    x: f64,
    interval: Option<Interval>,
    /// (seed, value, x) of every run with a score.
    points: Vec<(i64, f64, f64)>,
}

/// Where everything of the figure goes; the SVG and the PNG draw the same layout.
struct Figure {
    title: String,
    metric: String,
    width: f64,
    height: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    decimals: usize,
    bar_width: f64,
    rotate_labels: bool,
    arms: Vec<FigureArm>,
}

/// Axis range and ticks: 0 to 1 in fifths for scores within [0, 1]; otherwise 1, 2, 2.5 or 5
/// times a power of ten, about five steps, from min(0, lowest) to the highest value.
fn axis(lo: f64, hi: f64) -> (f64, f64, Vec<f64>, usize) {
    if lo >= 0.0 && hi <= 1.0 {
        return (0.0, 1.0, (0..=5).map(|k| k as f64 * 0.2).collect(), 1);
    }
    let span = (hi - lo).max(1e-9);
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step + 1e-9).floor() as i64;
    let last = (hi / step - 1e-9).ceil() as i64;
    let ticks: Vec<f64> = (first..=last).map(|k| k as f64 * step).collect();
    let (start, end) = (first as f64 * step, last as f64 * step);
    let mut decimals = (-step.log10().floor()).max(0.0) as usize;
    if (step / magnitude - 2.5).abs() < 1e-9 {
        decimals += 1;
    }
    (start, end, ticks, decimals.min(6))
}

/// Where the arms, their seeds' dots and the axis of the headline metric go.
fn figure_layout(a: &Aggregate) -> Figure {
    let metric = a.headline.clone().unwrap_or_default();
    let longest = a
        .arms
        .iter()
        .map(|arm| arm.arm.chars().count())
        .max()
        .unwrap_or(0);
    let rotate_labels = longest > 14;
    let step = 110.0;
    let (left, right, top) = (78.0, 24.0, 58.0);
    let bottom_margin = if rotate_labels {
        40.0 + 6.5 * longest as f64 * 0.7
    } else {
        52.0
    };
    let width = (left + right + step * a.arms.len().max(1) as f64).max(480.0);
    let height = 300.0 + bottom_margin;
    let plot_width = width - left - right;
    let slot = plot_width / a.arms.len().max(1) as f64;
    // Every value drawn, for the axis's range.
    let mut values = Vec::new();
    let arms: Vec<FigureArm> = (0..a.arms.len())
        .map(|k| figure_arm(a, k, &metric, left + slot * (k as f64 + 0.5), &mut values))
        .collect();
    let lowest = values.iter().copied().fold(0.0f64, f64::min);
    let highest = values.iter().copied().fold(0.0f64, f64::max);
    let (lo, hi, ticks, decimals) = axis(lowest, highest);
    Figure {
        title: a.name.clone(),
        metric,
        width,
        height,
        left,
        right,
        top,
        bottom: height - bottom_margin,
        lo,
        hi,
        ticks,
        decimals,
        bar_width: (slot * 0.55).min(64.0),
        rotate_labels,
        arms,
    }
}

/// Arm `k` of the figure centred at `x`: its interval of `metric` and its seeds' dots; the values
/// it draws are added to `values`.
fn figure_arm(a: &Aggregate, k: usize, metric: &str, x: f64, values: &mut Vec<f64>) -> FigureArm {
    let arm = &a.arms[k];
    let interval = arm.metrics.get(metric).cloned();
    if let Some(i) = &interval {
        values.push(i.mean);
        if let Some(h) = i.half {
            values.extend([i.mean - h, i.mean + h]);
        }
    }
    let mut scored: Vec<(i64, f64)> = a
        .runs
        .iter()
        .filter(|r| r.arm == arm.arm)
        .filter_map(|r| r.test_metrics.get(metric).map(|v| (r.seed, *v)))
        .filter(|(_, v)| v.is_finite())
        .collect();
    scored.sort_by_key(|(seed, _)| *seed);
    let n = scored.len().max(1) as f64;
    // Side by side across the bar's middle half, so that equal scores stay visible.
    let points = scored
        .into_iter()
        .enumerate()
        .map(|(j, (seed, v))| {
            values.push(v);
            let offset = if n > 1.0 {
                (j as f64 / (n - 1.0) - 0.5) * 30.0
            } else {
                0.0
            };
            (seed, v, x + offset)
        })
        .collect();
    FigureArm {
        name: arm.arm.clone(),
        colour: COLOURS[k % COLOURS.len()],
        x,
        interval,
        points,
    }
}

impl Figure {
    fn y(&self, v: f64) -> f64 {
        let t = ((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0);
        self.bottom - t * (self.bottom - self.top)
    }
}

/// Text escaped for SVG content and attributes.
fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// The headline metric per arm, for a report: a bar at the mean, the 95 % t interval as a
/// whisker, every seed's score as a dot, the y axis with ticks and the metric's name, the arms'
/// names (and how many seeds scored) below. SVG, so the text needs no font on the server.
pub fn render_svg(a: &Aggregate) -> String {
    let f = figure_layout(a);
    let mut s = svg_heading(&f);
    let base = svg_axes(&f, &mut s);
    for arm in &f.arms {
        svg_arm(&f, arm, base, &mut s);
    }
    s.push_str("</svg>\n");
    s
}

/// The SVG's opening, its background, the title and the line saying what is drawn.
fn svg_heading(f: &Figure) -> String {
    let mut s = String::new();
    let w = f.width;
    s.push_str(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"12\">\n\
         <rect width=\"{w}\" height=\"{h}\" fill=\"#ffffff\"/>\n",
        h = f.height
    ));
    s.push_str(&format!(
        "<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
        w / 2.0,
        xml(&f.title)
    ));
    let subtitle = if f.metric.is_empty() {
        "no run has a test score yet".to_string()
    } else {
        format!(
            "{} (test): bar = mean, whisker = 95 % t interval, dots = seeds",
            f.metric
        )
    };
    s.push_str(&format!(
        "<text x=\"{}\" y=\"38\" text-anchor=\"middle\" fill=\"#444444\">{}</text>\n",
        w / 2.0,
        xml(&subtitle)
    ));
    s
}

/// The grid lines and ticks, the y axis with the metric's name and the zero line; the zero
/// line's y (where the bars start).
fn svg_axes(f: &Figure, s: &mut String) -> f64 {
    let w = f.width;
    for tick in &f.ticks {
        let y = f.y(*tick);
        s.push_str(&format!(
            "<line x1=\"{}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e0e0e0\"/>\n\
             <line x1=\"{}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#404040\"/>\n\
             <text class=\"tick\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.*}</text>\n",
            f.left,
            w - f.right,
            f.left - 5.0,
            f.left,
            f.left - 8.0,
            y + 4.0,
            f.decimals,
            tick
        ));
    }
    s.push_str(&format!(
        "<line x1=\"{l}\" x2=\"{l}\" y1=\"{}\" y2=\"{}\" stroke=\"#404040\"/>\n\
         <text transform=\"translate(20 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
        f.top,
        f.bottom,
        (f.top + f.bottom) / 2.0,
        xml(&f.metric),
        l = f.left
    ));
    let base = f.y(0.0_f64.clamp(f.lo, f.hi));
    s.push_str(&format!(
        "<line x1=\"{}\" x2=\"{}\" y1=\"{base:.1}\" y2=\"{base:.1}\" stroke=\"#404040\"/>\n",
        f.left,
        w - f.right
    ));
    base
}

/// One arm's group: bar and whisker, the seeds' dots and its label below.
fn svg_arm(f: &Figure, arm: &FigureArm, base: f64, s: &mut String) {
    s.push_str(&format!(
        "<g class=\"arm\" data-arm=\"{}\">\n",
        xml(&arm.name)
    ));
    if let Some(i) = &arm.interval {
        svg_bar(f, arm, i, base, s);
    }
    for (seed, v, x) in &arm.points {
        s.push_str(&format!(
            "<circle class=\"seed\" cx=\"{x:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"#ffffff\" stroke=\"#111111\">\
             <title>seed {seed}: {v:.4}</title></circle>\n",
            f.y(*v)
        ));
    }
    let n = arm.interval.as_ref().map_or(0, |i| i.n);
    let label_y = f.bottom + 18.0;
    if f.rotate_labels {
        s.push_str(&format!(
            "<text x=\"{x:.1}\" y=\"{label_y:.1}\" text-anchor=\"end\" transform=\"rotate(-35 {x:.1} {label_y:.1})\">{} (n = {n})</text>\n",
            xml(&arm.name),
            x = arm.x + 4.0
        ));
    } else {
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{label_y:.1}\" text-anchor=\"middle\">{}</text>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#666666\" font-size=\"11\">n = {n}</text>\n",
            arm.x,
            xml(&arm.name),
            arm.x,
            label_y + 15.0
        ));
    }
    s.push_str("</g>\n");
}

/// An arm's bar from the zero line to the mean, with its interval's whisker.
fn svg_bar(f: &Figure, arm: &FigureArm, i: &Interval, base: f64, s: &mut String) {
    let colour = hex(arm.colour);
    let y = f.y(i.mean);
    let (top, height) = if y < base {
        (y, base - y)
    } else {
        (base, y - base)
    };
    let ci = i.half.map_or(String::new(), |h| format!(" ± {h:.4}"));
    s.push_str(&format!(
        "<rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{height:.1}\" fill=\"{colour}\" \
         fill-opacity=\"0.8\"><title>{}: mean {:.4}{ci} (n = {})</title></rect>\n",
        arm.x - f.bar_width / 2.0,
        f.bar_width,
        xml(&arm.name),
        i.mean,
        i.n
    ));
    if let Some(h) = i.half {
        let (hi, lo) = (f.y(i.mean + h), f.y(i.mean - h));
        s.push_str(&format!(
            "<path class=\"whisker\" d=\"M{x:.1} {hi:.1}V{lo:.1}M{a:.1} {hi:.1}H{b:.1}M{a:.1} {lo:.1}H{b:.1}\" \
             stroke=\"#111111\" stroke-width=\"1.6\" fill=\"none\"/>\n",
            x = arm.x,
            a = arm.x - 10.0,
            b = arm.x + 10.0
        ));
    }
}

/// The same figure as a PNG without its text (the server has no font rasteriser): bars, whiskers,
/// seeds' dots, the y axis with a tick and a grid line at each tick of the SVG. The page's "PNG"
/// button rasterises the SVG in the browser instead, text included.
pub fn render_png(a: &Aggregate) -> std::result::Result<Vec<u8>, png::EncodingError> {
    let f = figure_layout(a);
    let mut canvas = Canvas::new(f.width.ceil() as usize, f.height.ceil() as usize);
    const AXIS: [u8; 3] = [0x40, 0x40, 0x40];
    for tick in &f.ticks {
        let y = f.y(*tick).round();
        canvas.hline(f.left, f.width - f.right, y, [0xe0, 0xe0, 0xe0]);
        canvas.hline(f.left - 5.0, f.left, y, AXIS);
    }
    canvas.vline(f.left, f.top, f.bottom, AXIS);
    let base = f.y(0.0_f64.clamp(f.lo, f.hi)).round();
    for arm in &f.arms {
        if let Some(i) = &arm.interval {
            png_bar(&mut canvas, &f, arm, i, base);
        }
        for (_, v, x) in &arm.points {
            canvas.dot(x.round(), f.y(*v).round());
        }
    }
    canvas.hline(f.left, f.width - f.right, base, AXIS);
    canvas.encode()
}

/// An arm's bar from the zero line to the mean, with its interval's whisker (two pixels wide).
fn png_bar(canvas: &mut Canvas, f: &Figure, arm: &FigureArm, i: &Interval, base: f64) {
    const WHISKER: [u8; 3] = [0x11, 0x11, 0x11];
    let top = f.y(i.mean).round();
    let (y0, y1) = if top < base { (top, base) } else { (base, top) };
    let mut y = y0;
    while y <= y1 {
        canvas.hline(
            (arm.x - f.bar_width / 2.0).round(),
            (arm.x + f.bar_width / 2.0).round(),
            y,
            arm.colour,
        );
        y += 1.0;
    }
    if let Some(h) = i.half {
        let (hi, lo) = (f.y(i.mean + h).round(), f.y(i.mean - h).round());
        canvas.vline(arm.x.round(), hi, lo, WHISKER);
        canvas.vline(arm.x.round() + 1.0, hi, lo, WHISKER);
        canvas.hline(arm.x - 10.0, arm.x + 10.0, hi, WHISKER);
        canvas.hline(arm.x - 10.0, arm.x + 10.0, lo, WHISKER);
    }
}

/// An RGB image drawn pixel by pixel; what falls outside is dropped.
struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    /// A white canvas.
    fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            pixels: vec![255u8; width * height * 3],
        }
    }

    fn put(&mut self, x: f64, y: f64, c: [u8; 3]) {
        if x >= 0.0 && y >= 0.0 {
            let (x, y) = (x as usize, y as usize);
            if x < self.width && y < self.height {
                let i = (y * self.width + x) * 3;
                self.pixels[i..i + 3].copy_from_slice(&c);
            }
        }
    }

    /// Pixels from `x0` to `x1` (inclusive, in steps of one) on row `y`.
    fn hline(&mut self, x0: f64, x1: f64, y: f64, c: [u8; 3]) {
        let mut x = x0;
        while x <= x1 {
            self.put(x, y, c);
            x += 1.0;
        }
    }

    /// Pixels from `y0` to `y1` (inclusive, in steps of one) in column `x`.
    fn vline(&mut self, x: f64, y0: f64, y1: f64, c: [u8; 3]) {
        let mut y = y0;
        while y <= y1 {
            self.put(x, y, c);
            y += 1.0;
        }
    }

    /// A seed's dot: white inside, a dark ring.
    fn dot(&mut self, cx: f64, cy: f64) {
        for dy in -4i32..=4 {
            for dx in -4i32..=4 {
                let d = ((dx * dx + dy * dy) as f64).sqrt();
                let c = if d <= 2.5 {
                    [0xff, 0xff, 0xff]
                } else if d <= 4.0 {
                    [0x11, 0x11, 0x11]
                } else {
                    continue;
                };
                self.put(cx + dx as f64, cy + dy as f64, c);
            }
        }
    }

    /// The image as an 8-bit RGB PNG.
    fn encode(&self) -> std::result::Result<Vec<u8>, png::EncodingError> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.pixels)?;
        writer.finish()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::comparisons::aggregate::{ArmSummary, RunResult};
    use crate::routes::comparisons::stats::interval;
    use std::collections::BTreeMap;

    fn aggregate_of(scores: &[(&str, i64, f64)]) -> Aggregate {
        let runs: Vec<RunResult> = scores
            .iter()
            .enumerate()
            .map(|(k, (arm, seed, v))| RunResult {
                job_id: k as i64 + 1,
                arm: arm.to_string(),
                method: arm.to_string(),
                seed: *seed,
                state: crate::db::JobState::Succeeded,
                test_metrics: BTreeMap::from([("dice_mean".to_string(), *v)]),
                modality_metrics: BTreeMap::new(),
            })
            .collect();
        let mut arms: Vec<ArmSummary> = Vec::new();
        for (arm, _, _) in scores {
            if arms.iter().any(|a| a.arm == *arm) {
                continue;
            }
            let values: Vec<f64> = scores
                .iter()
                .filter(|(a, _, _)| a == arm)
                .map(|(_, _, v)| *v)
                .collect();
            arms.push(ArmSummary {
                arm: arm.to_string(),
                runs: values.len(),
                finished: values.len(),
                metrics: BTreeMap::from([("dice_mean".to_string(), interval(&values).unwrap())]),
            });
        }
        Aggregate {
            id: 1,
            name: "joint <vs> cggm".into(),
            dataset_id: Some(1),
            spec: serde_json::Value::Null,
            headline: Some("dice_mean".into()),
            metrics: vec!["dice_mean".into()],
            done: true,
            runs,
            arms,
            paired: vec![],
            modality: vec![],
            warnings: vec![],
        }
    }

    #[test]
    fn the_svg_figure_names_the_methods_and_the_metric_and_draws_every_seed() {
        let a = aggregate_of(&[
            ("joint", 1, 0.40),
            ("joint", 2, 0.45),
            ("joint", 3, 0.50),
            ("cggm", 1, 0.30),
            ("cggm", 2, 0.35),
            ("cggm", 3, 0.37),
        ]);
        let svg = render_svg(&a);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(
            svg.contains(">joint</text>") && svg.contains(">cggm</text>"),
            "{svg}"
        );
        assert!(svg.contains("dice_mean (test)"), "{svg}");
        assert!(
            svg.contains("joint &lt;vs&gt; cggm"),
            "the title is escaped: {svg}"
        );
        assert_eq!(svg.matches("class=\"seed\"").count(), 6);
        assert_eq!(svg.matches("class=\"whisker\"").count(), 2);
        for tick in ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"] {
            assert!(
                svg.contains(&format!("text-anchor=\"end\">{tick}</text>")),
                "tick {tick}: {svg}"
            );
        }
        assert!(svg.contains("seed 2: 0.4500"));
        assert!(is_png_bytes(&render_png(&a).unwrap()));
    }

    #[test]
    fn long_arm_names_are_turned_so_that_they_do_not_overlap() {
        let a = aggregate_of(&[
            ("joint", 1, 0.4),
            ("joint", 2, 0.5),
            ("cggm rho=1.5 lambda=0.1", 1, 0.3),
            ("cggm rho=1.5 lambda=0.1", 2, 0.2),
        ]);
        let svg = render_svg(&a);
        assert_eq!(svg.matches("rotate(-35 ").count(), 2, "{svg}");
        assert!(
            svg.contains(">cggm rho=1.5 lambda=0.1 (n = 2)</text>"),
            "{svg}"
        );
    }

    fn is_png_bytes(bytes: &[u8]) -> bool {
        bytes.starts_with(&[0x89, b'P', b'N', b'G'])
    }

    #[test]
    fn the_axis_spans_zero_to_one_for_scores_and_round_steps_otherwise() {
        let (lo, hi, ticks, decimals) = axis(0.0, 0.7);
        assert_eq!((lo, hi, ticks.len(), decimals), (0.0, 1.0, 6, 1));
        let (lo, hi, ticks, decimals) = axis(0.0, 37.0);
        assert_eq!((lo, hi, decimals), (0.0, 40.0, 0));
        assert_eq!(ticks, vec![0.0, 10.0, 20.0, 30.0, 40.0]);
        let (lo, hi, ticks, _) = axis(-0.3, 0.2);
        assert!(lo <= -0.3 && hi >= 0.2 && ticks.contains(&0.0), "{ticks:?}");
    }
}
