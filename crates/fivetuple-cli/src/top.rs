//! `fivetuple top`: a live terminal view of per-destination port headroom,
//! refreshed every second. A scan thread lives in the watched namespace
//! (DESIGN §5) and sends one analysis per second; the UI thread draws the
//! latest one with ratatui and handles keys. Exits 0 on `q`, and 2 with a
//! message when stdout is not a terminal.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::table_args::{TableArgs, ThresholdArgs};
use anyhow::{Context, Result};
use fivetuple_scan::model::{Analysis, Destination, Severity, Thresholds};
use fivetuple_scan::netns;
use fivetuple_scan::node::{self, Netns};
use fivetuple_scan::{History, Reader, Settings, TcpState};
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

/// One refresh of `--all-netns`: each namespace's scan, worst utilization first.
struct NodeScan {
    namespaces: Vec<(Netns, Scan)>,
    vanished: usize,
    failed: usize,
}

/// What the scan thread sends.
enum View {
    One(Scan),
    Node(NodeScan),
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

    let (tx, rx) = mpsc::sync_channel::<Result<View, String>>(1);
    let scan_target = target.clone();
    let all_netns = args.table.all_netns;
    let bound_inactive = args.table.bound_inactive();
    if all_netns {
        args.table.check_all_netns()?;
    }
    std::thread::Builder::new()
        .name("fivetuple-top-scan".into())
        .spawn(move || {
            if all_netns {
                return node_scan_loop(reader, bound_inactive, thresholds, tx);
            }
            let errors = tx.clone();
            let r = netns::run_in(&scan_target, move || scan_loop(reader, thresholds, tx));
            if let Err(e) = r {
                let _ = errors.send(Err(format!("{:#}", anyhow::Error::from(e))));
            }
        })
        .context("cannot start the scan thread")?;

    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    let shown = if all_netns {
        "every".to_string()
    } else {
        target.to_string()
    };
    let result = ui_loop(&mut terminal, &rx, &shown);
    ratatui::restore();
    result
}

/// Scans once per [`REFRESH`] until the UI goes away.
fn scan_loop(reader: Reader, thresholds: Thresholds, tx: mpsc::SyncSender<Result<View, String>>) {
    let mut history = History::new(REFRESH.mul_f32(0.9));
    loop {
        let started = Instant::now();
        let scan = fivetuple_scan::snapshot(reader)
            .map(|snap| {
                let settings = snap.settings.clone();
                let analysis = history.analyze(snap, Instant::now(), thresholds);
                View::One(Scan { analysis, settings })
            })
            .map_err(|e| format!("{:#}", anyhow::Error::from(e)));
        if tx.send(scan).is_err() {
            return;
        }
        std::thread::sleep(REFRESH.saturating_sub(started.elapsed()));
    }
}

/// `--all-netns`: discovers and scans every namespace once per [`REFRESH`]
/// (or as fast as a scan of the node allows), each against its own history.
fn node_scan_loop(
    reader: Reader,
    bound_inactive: bool,
    thresholds: Thresholds,
    tx: mpsc::SyncSender<Result<View, String>>,
) {
    let mut histories: HashMap<u64, History> = HashMap::new();
    loop {
        let started = Instant::now();
        let view = node::discover()
            .map(|d| {
                let scan = node::scan_all(
                    d.namespaces,
                    reader,
                    bound_inactive,
                    node::default_workers(),
                    |_, s| s,
                );
                let live: HashSet<u64> = scan.scanned.iter().map(|(ns, _)| ns.inode).collect();
                histories.retain(|inode, _| live.contains(inode));
                let at = Instant::now();
                let mut namespaces: Vec<(Netns, Scan)> = scan
                    .scanned
                    .into_iter()
                    .map(|(ns, snap)| {
                        let settings = snap.settings.clone();
                        let analysis = histories
                            .entry(ns.inode)
                            .or_insert_with(|| History::new(REFRESH.mul_f32(0.9)))
                            .analyze(snap, at, thresholds);
                        (ns, Scan { analysis, settings })
                    })
                    .collect();
                namespaces
                    .sort_by(|(_, a), (_, b)| worst(&b.analysis).total_cmp(&worst(&a.analysis)));
                View::Node(NodeScan {
                    namespaces,
                    vanished: scan.vanished.len(),
                    failed: scan.failed.len(),
                })
            })
            .map_err(|e| format!("{:#}", anyhow::Error::from(e)));
        if tx.send(view).is_err() {
            return;
        }
        std::thread::sleep(REFRESH.saturating_sub(started.elapsed()));
    }
}

fn worst(a: &Analysis) -> f64 {
    a.destinations
        .iter()
        .map(|d| d.utilization)
        .fold(0.0, f64::max)
}

/// A namespace as the `netns` column shows it: `host`, the pod UID's first
/// 8 digits, the container id's first 12, or the inode.
fn netns_short(ns: &Netns) -> String {
    if ns.host {
        return "host".into();
    }
    if let Some(uid) = &ns.identity.pod_uid {
        return format!("pod {}", &uid[..uid.len().min(8)]);
    }
    if let Some(cid) = &ns.identity.container_id {
        return format!("ctr {}", &cid[..cid.len().min(12)]);
    }
    ns.inode.to_string()
}

fn ui_loop(
    terminal: &mut ratatui::DefaultTerminal,
    rx: &mpsc::Receiver<Result<View, String>>,
    target: &str,
) -> Result<u8> {
    let mut sort = Sort::Utilization;
    let mut scan: Option<View> = None;
    // `--all-netns`: the namespace shown alone (an inode), or all.
    let mut filter: Option<u64> = None;
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
        terminal.draw(|f| match scan.as_ref() {
            Some(View::Node(n)) => draw_node(f, n, filter, error.as_deref(), sort),
            Some(View::One(s)) => draw(f, target, Some(s), error.as_deref(), sort),
            None => draw(f, target, None, error.as_deref(), sort),
        })?;
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
                    KeyCode::Char('n') | KeyCode::Char('p') => {
                        if let Some(View::Node(n)) = &scan {
                            filter = step_filter(n, filter, k.code == KeyCode::Char('n'));
                        }
                    }
                    KeyCode::Char('a') => filter = None,
                    _ => {}
                }
            }
        }
    }
}

/// Orders destinations; the analysis already lists them by utilization.
fn sorted(dests: &[Destination], sort: Sort) -> Vec<&Destination> {
    let mut v: Vec<&Destination> = dests.iter().collect();
    if sort != Sort::Utilization {
        sort_rows(&mut v, sort, |d| d);
    }
    v
}

/// Orders rows by `sort`, stably, reading each row's destination with `dest`.
fn sort_rows<T>(v: &mut [T], sort: Sort, dest: impl Fn(&T) -> &Destination) {
    match sort {
        Sort::Utilization => v.sort_by(|a, b| dest(b).utilization.total_cmp(&dest(a).utilization)),
        Sort::Rate => v.sort_by(|a, b| {
            dest(b)
                .rate_per_s
                .unwrap_or(-1.0)
                .total_cmp(&dest(a).rate_per_s.unwrap_or(-1.0))
        }),
        Sort::Exhaustion => v.sort_by(|a, b| {
            dest(a)
                .seconds_to_exhaustion
                .unwrap_or(f64::INFINITY)
                .total_cmp(&dest(b).seconds_to_exhaustion.unwrap_or(f64::INFINITY))
        }),
    }
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

/// The next (or previous) namespace filter: all → first → … → last → all.
fn step_filter(n: &NodeScan, filter: Option<u64>, forward: bool) -> Option<u64> {
    let inodes: Vec<u64> = n.namespaces.iter().map(|(ns, _)| ns.inode).collect();
    let at = filter.and_then(|f| inodes.iter().position(|i| *i == f));
    let next = match (at, forward) {
        (None, true) => Some(0),
        (None, false) => inodes.len().checked_sub(1),
        (Some(i), true) => Some(i + 1).filter(|j| *j < inodes.len()),
        (Some(i), false) => i.checked_sub(1),
    };
    next.map(|i| inodes[i])
}

fn draw(f: &mut Frame, target: &str, scan: Option<&Scan>, error: Option<&str>, sort: Sort) {
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
    let (lo, hi) = s.ip_local_port_range.bounds();
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

    let rows = sorted(&a.destinations, sort)
        .into_iter()
        .map(|d| Row::new(dest_cells(d)));
    f.render_widget(dest_table(rows, None), body);
    f.render_widget(Paragraph::new(footer(error, sort, "")), foot);
}

/// The cells of one destination row.
fn dest_cells(d: &Destination) -> Vec<Cell<'static>> {
    let states = |k: TcpState| d.states.get(k).to_string();
    vec![
        Cell::from(d.label()),
        Cell::from(bar(d.utilization)).style(Style::default().fg(color(d.severity))),
        Cell::from(format!("{}/{}", d.in_use, d.capacity)),
        Cell::from(states(TcpState::TimeWait)),
        Cell::from(states(TcpState::Established)),
        Cell::from(
            d.rate_per_s
                .map(|r| format!("{r:.1}"))
                .unwrap_or_else(|| "-".into()),
        ),
        Cell::from(format!("{:.1}", d.sustainable_rate_per_s)),
        Cell::from(duration(d.seconds_to_exhaustion)),
    ]
}

/// The destination table, with a leading namespace column of `ns_width` when given.
fn dest_table<'a>(rows: impl IntoIterator<Item = Row<'a>>, ns_width: Option<u16>) -> Table<'a> {
    let mut widths = vec![
        Constraint::Min(30),
        Constraint::Length(BAR as u16 + 5),
        Constraint::Length(13),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(11),
        Constraint::Length(9),
    ];
    let mut header = vec![
        "destination",
        "utilization",
        "in use/cap",
        "TIME_WAIT",
        "ESTAB",
        "new/s",
        "sustain/s",
        "exhaust",
    ];
    if let Some(w) = ns_width {
        widths.insert(0, Constraint::Length(w));
        header.insert(0, "netns");
    }
    Table::new(rows, widths)
        .header(Row::new(header).style(Style::default().add_modifier(Modifier::BOLD)))
}

fn footer(error: Option<&str>, sort: Sort, extra: &str) -> Line<'static> {
    match error {
        Some(e) => Line::from(Span::styled(
            format!("scan failed: {e}"),
            Style::default().fg(Color::Red),
        )),
        None => Line::from(format!(
            "sort: {} · s: next sort · u/r/t: utilization/rate/exhaustion{extra} · q: quit",
            sort.name()
        )),
    }
}

/// `--all-netns`: every namespace's destinations in one table with a
/// namespace column, or one namespace's alone (`n`/`p` step the filter,
/// `a` shows all again).
fn draw_node(f: &mut Frame, n: &NodeScan, filter: Option<u64>, error: Option<&str>, sort: Sort) {
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let shown: Vec<&(Netns, Scan)> = n
        .namespaces
        .iter()
        .filter(|(ns, _)| filter.is_none_or(|i| ns.inode == i))
        .collect();
    let status = shown
        .iter()
        .map(|(_, s)| s.analysis.status)
        .max()
        .unwrap_or(Severity::Ok);
    let dests: usize = shown
        .iter()
        .map(|(_, s)| s.analysis.destinations.len())
        .sum();
    let scope = match shown.first() {
        Some((ns, s)) if filter.is_some() => {
            let (lo, hi) = s.settings.ip_local_port_range.bounds();
            format!(
                "netns {} ({}) · range {lo}-{hi} · {} usable ports per destination",
                ns.inode,
                netns_short(ns),
                s.analysis.totals.usable_ports
            )
        }
        _ => format!(
            "{} namespaces ({} vanished, {} failed)",
            n.namespaces.len(),
            n.vanished,
            n.failed
        ),
    };
    let header = vec![
        Line::from(vec![
            Span::styled("fivetuple top", bold),
            Span::raw(format!(
                " · every network namespace · {dests} destinations · status "
            )),
            Span::styled(
                format!("{status:?}").to_uppercase(),
                Style::default()
                    .fg(color(status))
                    .add_modifier(Modifier::BOLD),
            ),
        ]),
        Line::from(scope),
    ];
    f.render_widget(Paragraph::new(header), head);

    let mut all: Vec<(&Netns, &Destination)> = shown
        .iter()
        .flat_map(|(ns, s)| s.analysis.destinations.iter().map(move |d| (ns, d)))
        .collect();
    // Stable: ties keep the worst-namespace-first order.
    sort_rows(&mut all, sort, |(_, d)| d);
    let rows = all.into_iter().map(|(ns, d)| {
        let mut cells = dest_cells(d);
        cells.insert(0, Cell::from(netns_short(ns)));
        Row::new(cells)
    });
    f.render_widget(dest_table(rows, Some(14)), body);
    f.render_widget(
        Paragraph::new(footer(error, sort, " · n/p: one namespace · a: all")),
        foot,
    );
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
