//! Timeline charts of a [`Report`] as SVG: one panel per remedy with calls
//! ok and failed per second (left axis) and the TIME_WAIT count in the box
//! (right axis). Drawn with plotters' pure-Rust SVG backend; text is left to
//! the browser's sans-serif font, so no system fonts are needed here.

use std::path::Path;

use plotters::prelude::*;

use crate::error::LabError;
use crate::report::Report;

/// Width of the chart in pixels.
const WIDTH: u32 = 960;
/// Height of one remedy's panel in pixels.
const PANEL_HEIGHT: u32 = 240;

/// A tick label without a useless ".0".
fn tick(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

/// Checks, before the experiment starts, that the chart can be written to
/// `path`: not a directory, in a directory that exists and takes new files,
/// and writable if it exists already. Leaves nothing behind. The error
/// names `--chart`, the path and the reason.
pub fn check_target(path: &Path) -> Result<(), LabError> {
    let bad = |reason: String| LabError::BadArgument {
        flag: "--chart",
        value: path.display().to_string(),
        reason,
    };
    if path.as_os_str().is_empty() {
        return Err(bad("expected a file name".into()));
    }
    if path.is_dir() {
        return Err(bad(
            "is a directory; expected a file name such as repro.svg".into(),
        ));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad(format!("{} is not a directory", dir.display()))),
        Err(e) => return Err(bad(format!("directory {}: {e}", dir.display()))),
    }
    // Creating a file is the only check that holds for root, read-only
    // mounts and ACLs alike. Hand-written rather than with tempfile, whose
    // errors name its random probe file instead of just the OS error.
    let probe = dir.join(format!(".fivetuple-chart-probe-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| bad(format!("cannot create files in {}: {e}", dir.display())))?;
    let _ = std::fs::remove_file(&probe);
    if path.exists() {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| bad(format!("cannot write it: {e}")))?;
    }
    Ok(())
}

/// Draws `report` to an SVG file at `path`.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), LabError> {
    let mut svg = String::new();
    render(report, &mut svg)?;
    std::fs::write(path, svg).map_err(|e| LabError::chart(format!("writing {}", path.display()), e))
}

/// Renders `report` as an SVG document into `out`.
pub fn render(report: &Report, out: &mut String) -> Result<(), LabError> {
    let n = report.remedies.len().max(1) as u32;
    let err = |e: &dyn std::fmt::Display| LabError::chart_msg(e.to_string());
    {
        let root = SVGBackend::with_string(out, (WIDTH, PANEL_HEIGHT * n)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let panels = root.split_evenly((n as usize, 1));
        let b = &report.box_info;
        let x_max = b.duration_s.ceil().max(1.0);
        // Headroom above the rate keeps the legend clear of the lines.
        let y_max = f64::from(b.rate_per_s) * 1.5;
        // Behind the NAT the sampled count is the node's NAT entries toward B.
        let (axis, series) = if b.nat.is_some() {
            ("NAT entries toward B", "NAT entries (right axis)")
        } else {
            ("TIME_WAIT sockets", "TIME_WAIT (right axis)")
        };
        for (panel, r) in panels.iter().zip(&report.remedies) {
            let tw_max = (r.peak_time_wait as f64 * 1.5).max(10.0);
            let budget = r
                .budget_per_s
                .map_or(String::new(), |v| format!("budget {v:.0}/s, "));
            let mut chart = ChartBuilder::on(panel)
                .caption(
                    format!(
                        "{}: {} ({budget}{} calls/s)",
                        r.name, r.verdict_text, b.rate_per_s
                    ),
                    ("sans-serif", 16),
                )
                .margin(8)
                .x_label_area_size(28)
                .y_label_area_size(52)
                .right_y_label_area_size(60)
                .build_cartesian_2d(0f64..x_max, 0f64..y_max)
                .map_err(|e| err(&e))?
                .set_secondary_coord(0f64..x_max, 0f64..tw_max);
            chart
                .configure_mesh()
                .x_desc("seconds")
                .y_desc("calls/s")
                .x_label_formatter(&|v| tick(*v))
                .y_label_formatter(&|v| tick(*v))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(|e| err(&e))?;
            chart
                .configure_secondary_axes()
                .y_desc(axis)
                .y_label_formatter(&|v| tick(*v))
                .draw()
                .map_err(|e| err(&e))?;
            // Each second's value is drawn at the middle of that second.
            let at = |i: usize| i as f64 + 0.5;
            let green = RGBColor(0x1a, 0x9e, 0x3f);
            let red = RGBColor(0xd6, 0x27, 0x28);
            let blue = RGBColor(0x1f, 0x5f, 0xbf);
            chart
                .draw_series(LineSeries::new(
                    r.timeline
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (at(i), s.ok as f64)),
                    green.stroke_width(2),
                ))
                .map_err(|e| err(&e))?
                .label("ok calls/s")
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], green.stroke_width(2))
                });
            chart
                .draw_series(LineSeries::new(
                    r.timeline
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (at(i), s.failed as f64)),
                    red.stroke_width(2),
                ))
                .map_err(|e| err(&e))?
                .label("failed calls/s")
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], red.stroke_width(2))
                });
            chart
                .draw_secondary_series(LineSeries::new(
                    r.timeline
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (at(i), s.time_wait as f64)),
                    blue.stroke_width(2),
                ))
                .map_err(|e| err(&e))?
                .label(series)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], blue.stroke_width(2))
                });
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .draw()
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Remedy, Topology};
    use crate::driver::Second;
    use crate::report::{BoxInfo, RemedyResult, RemedySettings, Verdict};

    #[test]
    fn renders_one_panel_per_remedy() {
        let timeline = (0..10)
            .map(|i| Second {
                ok: if i < 5 { 200 } else { 0 },
                failed: if i < 5 { 0 } else { 200 },
                time_wait: 200 * (i + 1).min(5),
            })
            .collect::<Vec<_>>();
        let result = |name| RemedyResult {
            name,
            calls: 2000,
            ok: 1000,
            failed: 1000,
            shed: 0,
            first_failure_s: Some(5.0),
            error: Some("Cannot assign requested address (os error 99)".into()),
            peak_time_wait: 1000,
            budget_per_s: Some(16.7),
            achieved_per_s: 200.0,
            error_free_s: 5.0,
            latency_ms_p50: 1.0,
            latency_ms_p99: 2.0,
            verdict: Verdict::Fails,
            verdict_text: "fails at 5.0 s".into(),
            settings: RemedySettings {
                port_range: [32768, 33767],
                tcp_tw_reuse: 0,
                sources: 1,
                client: "kernel".into(),
            },
            conntrack: None,
            timeline: timeline.clone(),
        };
        let report = Report {
            box_info: BoxInfo {
                topology: Topology::Loopback,
                namespace: "test".into(),
                kernel: "6.x".into(),
                ports: 1000,
                port_range: [32768, 33767],
                tcp_tw_reuse: 0,
                tcp_tw_reuse_delay_ms: Some(1000),
                tcp_timestamps: true,
                time_wait_s: 60.0,
                rate_per_s: 200,
                duration_s: 10.0,
                spread_sources: 16,
                nat: None,
            },
            remedies: vec![result(Remedy::Naive), result(Remedy::Auth)],
            interrupted: None,
        };
        let mut svg = String::new();
        render(&report, &mut svg).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("naive: fails at 5.0 s") && svg.contains("auth: fails at 5.0 s"));
        assert!(svg.contains("TIME_WAIT sockets"));
        for color in ["#1A9E3F", "#D62728", "#1F5FBF"] {
            // Per panel: the series and its legend mark.
            assert_eq!(svg.matches(color).count(), 4, "{color}");
        }
    }

    #[test]
    fn chart_targets_are_checked_before_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("repro.svg");
        check_target(&ok).unwrap();
        assert!(!ok.exists(), "the check creates nothing");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let file = dir.path().join("taken.svg");
        std::fs::write(&file, "x").unwrap();
        for (path, needle) in [
            (dir.path().to_path_buf(), "is a directory"),
            (dir.path().join("missing/repro.svg"), "No such file"),
            (file.join("under-a-file.svg"), "is not a directory"),
        ] {
            let e = check_target(&path).unwrap_err().to_string();
            assert!(
                e.contains("--chart")
                    && e.contains(&path.display().to_string())
                    && e.contains(needle),
                "{e}"
            );
        }
    }
}
