//! `loadgen compare DIR...`: runs side by side, with ratios to the first, and an SVG of their
//! latency distributions on HdrHistogram's percentile axis.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::summary::Summary;

pub struct Run {
    pub name: String,
    pub summary: Summary,
    /// (latency ms, percentile) points from latency.hgrm.
    pub latency: Vec<(f64, f64)>,
}

pub fn load(dir: &Path) -> anyhow::Result<Run> {
    let text = std::fs::read_to_string(dir.join("summary.json"))
        .with_context(|| format!("reading {}", dir.join("summary.json").display()))?;
    let summary: Summary = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}/summary.json", dir.display()))?;
    let latency = std::fs::read_to_string(dir.join("latency.hgrm"))
        .map(|t| crate::hgrm::read(&t))
        .unwrap_or_default();
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| dir.display().to_string());
    Ok(Run {
        name,
        summary,
        latency,
    })
}

/// A row of the table: its label and how to read its value from a summary.
type Row = (&'static str, Box<dyn Fn(&Summary) -> f64>);

/// The side-by-side table: a row a figure, a column a run (with its ratio to the first), then
/// a line a run saying what it ran.
pub fn table(runs: &[Run]) -> String {
    let mut out = String::new();
    let width = runs.iter().map(|r| r.name.len()).max().unwrap_or(0).max(12);
    let _ = write!(out, "{:<20}", "");
    for (i, run) in runs.iter().enumerate() {
        let _ = write!(out, " {:>width$}", run.name);
        if i > 0 {
            let _ = write!(out, " {:>7}", "ratio");
        }
    }
    out.push('\n');
    for (label, value) in &rows() {
        let _ = write!(out, "{label:<20}");
        let base = value(&runs[0].summary);
        for (i, run) in runs.iter().enumerate() {
            let v = value(&run.summary);
            let _ = write!(out, " {:>width$}", format_value(v));
            if i > 0 {
                let ratio = if base != 0.0 {
                    format!("{:.2}x", v / base)
                } else {
                    "-".into()
                };
                let _ = write!(out, " {ratio:>7}");
            }
        }
        out.push('\n');
    }
    for run in runs {
        out.push_str(&scenario_line(run));
    }
    out
}

/// The table's figures, in order.
fn rows() -> Vec<Row> {
    vec![
        ("latency p50 (ms)", Box::new(|s| s.latency_ms.p50)),
        ("latency p90 (ms)", Box::new(|s| s.latency_ms.p90)),
        ("latency p99 (ms)", Box::new(|s| s.latency_ms.p99)),
        ("latency p99.9 (ms)", Box::new(|s| s.latency_ms.p999)),
        ("latency max (ms)", Box::new(|s| s.latency_ms.max)),
        ("join p50 (ms)", Box::new(|s| s.join_ms.p50)),
        ("join p99 (ms)", Box::new(|s| s.join_ms.p99)),
        ("jitter mean (ms)", Box::new(|s| s.jitter_ms_mean)),
        ("loss (%)", Box::new(|s| s.totals.loss_percent)),
        (
            "video loss left (%)",
            Box::new(|s| s.repair.video_residual_loss_percent),
        ),
        (
            "repaired packets",
            Box::new(|s| s.repair.repaired_packets as f64),
        ),
        (
            "rtx overhead (%)",
            Box::new(|s| s.repair.retransmission_overhead_percent),
        ),
        ("frozen frames (%)", Box::new(|s| s.frames.frozen_percent)),
        (
            "received packets",
            Box::new(|s| s.totals.received_packets as f64),
        ),
        ("players joined", Box::new(|s| s.players.joined as f64)),
        ("loadgen CPU (%)", Box::new(|s| s.loadgen.cpu_percent)),
        (
            "relay fwd pkt/s",
            Box::new(|s| s.relay.as_ref().map_or(0.0, |r| r.forwarded_pps.round())),
        ),
        (
            "relay CPU ns/pkt",
            Box::new(|s| {
                s.relay
                    .as_ref()
                    .map_or(0.0, |r| r.cpu_ns_per_forwarded_packet.round())
            }),
        ),
        (
            "relay p99 (us)",
            Box::new(|s| {
                s.relay
                    .as_ref()
                    .and_then(|r| r.latency_p99_us)
                    .unwrap_or(0.0)
            }),
        ),
    ]
}

/// What one run ran: streams, players, transport, media and impairment, and its note.
fn scenario_line(run: &Run) -> String {
    let s = &run.summary.scenario;
    let r = &run.summary.repair;
    let mut impairment = String::new();
    if r.injected_loss_percent > 0.0 {
        let _ = write!(impairment, ", {}% loss", r.injected_loss_percent);
    }
    if r.injected_publish_loss_percent > 0.0 {
        let _ = write!(
            impairment,
            ", {}% publish loss",
            r.injected_publish_loss_percent
        );
    }
    // (Runs recorded before loadgen repaired loss had none injected: nothing to say.)
    if !impairment.is_empty() && !r.repair_offered {
        impairment.push_str(" unrepaired");
    }
    format!(
        "{}: {} streams x {} players over {}, {} kbit/s at {} fps, {} B packets{impairment}{}\n",
        run.name,
        s.streams,
        s.players_per_stream,
        s.transport,
        s.video_kbps,
        s.fps,
        s.packet_size,
        run.summary
            .loadgen
            .bottleneck
            .as_deref()
            .map(|b| format!("; note: {b}"))
            .unwrap_or_default()
    )
}

fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// Latency by percentile for every run, on HdrHistogram's axis: x is 1/(1-percentile) on a
/// log scale (0%, 90%, 99%, 99.9%, ...), y the latency in ms. (89 lines: one SVG document
/// written top to bottom, its pieces sharing the scale closures `px` and `py`.)
pub fn plot(runs: &[Run]) -> String {
    const W: f64 = 900.0;
    const H: f64 = 500.0;
    const LEFT: f64 = 70.0;
    const BOTTOM: f64 = 50.0;
    const TOP: f64 = 30.0;
    const RIGHT: f64 = 200.0;
    const COLORS: [&str; 6] = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let x_of = |p: f64| (1.0 / (1.0 - p.min(0.999_999))).log10();
    let x_max = runs
        .iter()
        .flat_map(|r| r.latency.iter().map(|(_, p)| x_of(*p)))
        .fold(1.0f64, f64::max)
        .ceil();
    let y_max = runs
        .iter()
        .flat_map(|r| r.latency.iter().map(|(v, _)| *v))
        .fold(0.001f64, f64::max)
        * 1.1;
    let px = |x: f64| LEFT + x / x_max * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - y / y_max * (H - BOTTOM - TOP);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">Latency by percentile</text>\n",
        (W - RIGHT + LEFT) / 2.0
    );
    // Axes, ticks and grid.
    for i in 0..=(x_max as usize) {
        let x = px(i as f64);
        let label = match i {
            0 => "0%".to_string(),
            n => format!("{}%", 100.0 - 100.0 / 10f64.powi(n as i32)),
        };
        let _ = writeln!(
            svg,
            "<line x1=\"{x}\" y1=\"{TOP}\" x2=\"{x}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            H - BOTTOM,
            H - BOTTOM + 18.0
        );
    }
    for i in 0..=5 {
        let v = y_max * i as f64 / 5.0;
        let y = py(v);
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.2}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">percentile</text>\
         <text x=\"18\" y=\"{}\" transform=\"rotate(-90 18 {})\" text-anchor=\"middle\">latency (ms)</text>",
        (W - RIGHT + LEFT) / 2.0,
        H - 10.0,
        H / 2.0,
        H / 2.0
    );
    for (i, run) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = run
            .latency
            .iter()
            .map(|(v, p)| format!("{:.1},{:.1}", px(x_of(*p)), py(*v)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        let ly = TOP + 20.0 + i as f64 * 20.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{}\">{}</text>",
            W - RIGHT + 15.0,
            W - RIGHT + 40.0,
            W - RIGHT + 46.0,
            ly + 4.0,
            escape(&run.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn compare(dirs: &[PathBuf], plot_to: Option<&Path>) -> anyhow::Result<String> {
    if dirs.is_empty() {
        anyhow::bail!("compare needs at least one run directory");
    }
    let runs = dirs
        .iter()
        .map(|d| load(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(path) = plot_to {
        std::fs::write(path, plot(&runs)).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(table(&runs))
}
