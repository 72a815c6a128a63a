//! `fivetuple top`: a live terminal view of per-destination port headroom,
//! refreshed every second. A scan thread lives in the watched namespace
//! (DESIGN §5) and sends one analysis per second; the UI thread draws the
//! latest one with ratatui and handles keys. Exits 0 on `q`, and 2 with a
//! message when stdout is not a terminal.

use std::io::IsTerminal;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::table_args::{TableArgs, ThresholdArgs};
use anyhow::{Context, Result};
use fivetuple_scan::model::{Analysis, Destination, Severity, Thresholds};
use fivetuple_scan::netns::{self, Target};
use fivetuple_scan::{History, Reader, Settings};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table};
use ratatui::Frame;

/// Exit code when stdout is not a terminal.
pub const EXIT_NOT_A_TERMINAL: u8 = 2;
/// Time between two scans.
const REFRESH: Duration = Duration::from_secs(1);
/// Width of the utilization bar, in cells.
const BAR: usize = 20;

/// Raw `top` arguments, as typed.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    table: TableArgs,
    #[command(flatten)]
    thresholds: ThresholdArgs,
}

/// How the destinations are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sort {
    Utilization,
    Rate,
    Exhaustion,
}

impl Sort {
    fn next(self) -> Sort {
        match self {
            Sort::Utilization => Sort::Rate,
            Sort::Rate => Sort::Exhaustion,
            Sort::Exhaustion => Sort::Utilization,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Sort::Utilization => "utilization",
            Sort::Rate => "new connections/s",
            Sort::Exhaustion => "time to exhaustion",
        }
    }
}

/// One refresh: the analysis and the settings it was made with.
struct Scan {
    analysis: Analysis,
    settings: Settings,
}

/// Runs `top` until `q`; returns the exit code.
pub fn run(args: Args) -> Result<u8> {
    let thresholds = args.thresholds.thresholds()?;
    let target = args.table.target();
    netns::open(&target)?;
    if !std::io::stdout().is_terminal() {
        eprintln!(
            "fivetuple: top needs a terminal, and stdout is not one; use `fivetuple doctor` for a report or `fivetuple exporter` for monitoring"
        );
        return Ok(EXIT_NOT_A_TERMINAL);
    }
    let reader = args.table.reader();

    let (tx, rx) = mpsc::sync_channel::<Result<Scan, String>>(1);
    let scan_target = target.clone();
    std::thread::Builder::new()
        .name("fivetuple-top-scan".into())
        .spawn(move || {
            let errors = tx.clone();
            let r = netns::run_in(&scan_target, move || scan_loop(reader, thresholds, tx));
            if let Err(e) = r {
                let _ = errors.send(Err(format!("{:#}", anyhow::Error::from(e))));
            }
        })
        .context("cannot start the scan thread")?;

    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    let result = ui_loop(&mut terminal, &rx, &target);
    ratatui::restore();
    result
}

/// Scans once per [`REFRESH`] until the UI goes away.
fn scan_loop(reader: Reader, thresholds: Thresholds, tx: mpsc::SyncSender<Result<Scan, String>>) {
    let mut history = History::new(REFRESH.mul_f32(0.9));
    loop {
        let started = Instant::now();
        let scan = fivetuple_scan::snapshot(reader)
            .map(|snap| {
                let settings = snap.settings.clone();
                let analysis = history.analyze(snap, Instant::now(), thresholds);
                Scan { analysis, settings }
            })
            .map_err(|e| format!("{:#}", anyhow::Error::from(e)));
        if tx.send(scan).is_err() {
            return;
        }
        std::thread::sleep(REFRESH.saturating_sub(started.elapsed()));
    }
}

fn ui_loop(
    terminal: &mut ratatui::DefaultTerminal,
    rx: &mpsc::Receiver<Result<Scan, String>>,
    target: &Target,
) -> Result<u8> {
    let mut sort = Sort::Utilization;
    let mut scan: Option<Scan> = None;
    let mut error: Option<String> = None;
    loop {
        loop {
            match rx.try_recv() {
                Ok(Ok(s)) => {
                    scan = Some(s);
                    error = None;
                }
                Ok(Err(e)) => error = Some(e),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    anyhow::bail!(
                        "the scan thread stopped: {}",
                        error.unwrap_or_else(|| "no reason given".into())
                    )
                }
            }
        }
        terminal.draw(|f| draw(f, target, scan.as_ref(), error.as_deref(), sort))?;
        if event::poll(Duration::from_millis(200))? {
            if let Event::Key(k) = event::read()? {
                if k.kind != KeyEventKind::Press {
                    continue;
                }
                match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(0),
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(0)
                    }
                    KeyCode::Char('s') => sort = sort.next(),
                    KeyCode::Char('u') => sort = Sort::Utilization,
                    KeyCode::Char('r') => sort = Sort::Rate,
                    KeyCode::Char('t') => sort = Sort::Exhaustion,
                    _ => {}
                }
            }
        }
    }
}

/// Orders destinations; the analysis already lists them by utilization.
fn sorted(dests: &[Destination], sort: Sort) -> Vec<&Destination> {
    let mut v: Vec<&Destination> = dests.iter().collect();
    match sort {
        Sort::Utilization => {}
        Sort::Rate => v.sort_by(|a, b| {
            b.rate_per_s
                .unwrap_or(-1.0)
                .total_cmp(&a.rate_per_s.unwrap_or(-1.0))
        }),
        Sort::Exhaustion => v.sort_by(|a, b| {
            a.seconds_to_exhaustion
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.seconds_to_exhaustion.unwrap_or(f64::INFINITY))
        }),
    }
    v
}

fn color(s: Severity) -> Color {
    match s {
        Severity::Critical => Color::Red,
        Severity::Warning => Color::Yellow,
        Severity::Ok | Severity::Info => Color::Green,
    }
}

/// `████░░░░  42%`: the filled share of [`BAR`] cells, then the percentage.
fn bar(utilization: f64) -> String {
    let u = utilization.clamp(0.0, 1.0);
    let filled = (u * BAR as f64).round() as usize;
    format!(
        "{}{} {:>3.0}%",
        "█".repeat(filled),
        "░".repeat(BAR - filled),
        u * 100.0
    )
}

fn duration(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 60.0 => format!("{s:.0}s"),
        Some(s) if s < 3600.0 => format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64),
        Some(s) => format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        ),
    }
}

fn draw(f: &mut Frame, target: &Target, scan: Option<&Scan>, error: Option<&str>, sort: Sort) {
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let Some(Scan {
        analysis: a,
        settings: s,
    }) = scan
    else {
        f.render_widget(
            Paragraph::new(format!(
                "fivetuple top · {target} network namespace · scanning…"
            )),
            head,
        );
        return;
    };
    let (lo, hi) = s.ip_local_port_range;
    let t = &a.totals;
    let header = vec![
        Line::from(vec![
            Span::styled("fivetuple top", bold),
            Span::raw(format!(
                " · {target} network namespace · {} destinations · status ",
                a.destinations.len()
            )),
            Span::styled(
                format!("{:?}", a.status).to_uppercase(),
                Style::default().fg(color(a.status)).add_modifier(Modifier::BOLD),
            ),
        ]),
        Line::from(format!(
            "range {lo}-{hi} · {} usable ports per destination · tcp_tw_reuse {} · tcp_timestamps {} · TIME_WAIT {} · sockets {} · {}{}",
            t.usable_ports,
            s.tcp_tw_reuse,
            s.tcp_timestamps,
            t.time_wait,
            t.sockets,
            a.source,
            a.active_opens_per_s
                .map(|r| format!(" · {r:.0} connects/s"))
                .unwrap_or_default()
        )),
    ];
    f.render_widget(Paragraph::new(header), head);

    let rows = sorted(&a.destinations, sort).into_iter().map(|d| {
        let states = |k: &str| d.states.get(k).copied().unwrap_or(0).to_string();
        Row::new(vec![
            Cell::from(d.label()),
            Cell::from(bar(d.utilization)).style(Style::default().fg(color(d.severity))),
            Cell::from(format!("{}/{}", d.in_use, d.capacity)),
            Cell::from(states("TIME_WAIT")),
            Cell::from(states("ESTABLISHED")),
            Cell::from(
                d.rate_per_s
                    .map(|r| format!("{r:.1}"))
                    .unwrap_or_else(|| "-".into()),
            ),
            Cell::from(format!("{:.1}", d.sustainable_rate_per_s)),
            Cell::from(duration(d.seconds_to_exhaustion)),
        ])
    });
    let widths = [
        Constraint::Min(30),
        Constraint::Length(BAR as u16 + 5),
        Constraint::Length(13),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(11),
        Constraint::Length(9),
    ];
    let table = Table::new(rows, widths).header(
        Row::new(vec![
            "destination",
            "utilization",
            "in use/cap",
            "TIME_WAIT",
            "ESTAB",
            "new/s",
            "sustain/s",
            "exhaust",
        ])
        .style(bold),
    );
    f.render_widget(table, body);

    let footer = match error {
        Some(e) => Line::from(Span::styled(
            format!("scan failed: {e}"),
            Style::default().fg(Color::Red),
        )),
        None => Line::from(format!(
            "sort: {} · s: next sort · u/r/t: utilization/rate/exhaustion · q: quit",
            sort.name()
        )),
    };
    f.render_widget(Paragraph::new(footer), foot);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_and_duration_formatting() {
        assert_eq!(
            bar(0.6),
            format!("{}{}  60%", "█".repeat(12), "░".repeat(8))
        );
        assert_eq!(bar(1.7), format!("{} 100%", "█".repeat(20)));
        assert_eq!(duration(None), "-");
        assert_eq!(duration(Some(42.4)), "42s");
        assert_eq!(duration(Some(125.0)), "2m05s");
        assert_eq!(duration(Some(7260.0)), "2h01m");
    }

    #[test]
    fn sort_cycles_through_every_order() {
        let s = Sort::Utilization;
        assert_eq!(s.next().next().next(), s);
        assert_ne!(s.next(), s);
    }
}
