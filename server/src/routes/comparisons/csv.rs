//! A comparison's aggregate as one CSV table, for a spreadsheet or a paper's supplement.

use super::aggregate::Aggregate;
use super::stats::Interval;

/// A field quoted the way RFC 4180 wants when it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// The aggregate as one CSV table: `section` is summary, paired_vs_joint, modality or run.
pub fn to_csv(a: &Aggregate) -> String {
    let mut out = String::from("section,arm,detail,metric,n,mean,ci95_half,ci95_low,ci95_high\n");
    let mut row = |section: &str, arm: &str, detail: &str, metric: &str, i: &Interval| {
        let (half, low, high) = match i.half {
            Some(h) => (
                format!("{h}"),
                format!("{}", i.mean - h),
                format!("{}", i.mean + h),
            ),
            None => Default::default(),
        };
        out.push_str(&format!(
            "{section},{},{},{},{},{},{half},{low},{high}\n",
            csv_field(arm),
            csv_field(detail),
            csv_field(metric),
            i.n,
            i.mean
        ));
    };
    for arm in &a.arms {
        for (metric, i) in &arm.metrics {
            row("summary", &arm.arm, "", metric, i);
        }
    }
    for p in &a.paired {
        row(
            "paired_vs_joint",
            &p.arm,
            &format!("above joint on {} of {}", p.above, p.interval.n),
            &p.metric,
            &p.interval,
        );
    }
    for m in &a.modality {
        row("modality", &m.arm, &m.modality, &m.metric, &m.interval);
    }
    for r in &a.runs {
        for (metric, value) in &r.test_metrics {
            let single = Interval {
                n: 1,
                mean: *value,
                half: None,
            };
            row(
                "run",
                &r.arm,
                &format!("seed {} job {}", r.seed, r.job_id),
                metric,
                &single,
            );
        }
    }
    out
}
