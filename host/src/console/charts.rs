//! The console's charts: the last hour of sessions, opens/s, invokes/s,
//! p99 invoke latency and faults/s per backend, and the memory budget and
//! guest CPU per tenant, drawn server-side as inline SVG (no script, nothing fetched).
//!
//! A sampler task reads the gateway's own `/metrics` text every
//! [`EVERY`] into a ring of [`KEEP`] samples (one hour); a page adds a
//! sample taken as it renders, so its charts end now and rates have a
//! point a second after the start. The task ends when the console does.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::metrics::Metrics;

/// How often the sampler reads the metrics.
pub const EVERY: Duration = Duration::from_secs(10);
/// Samples kept: an hour at [`EVERY`].
pub const KEEP: usize = 360;
/// The span every chart covers, in seconds.
const SPAN: f64 = 3600.0;

/// The figures of one moment, read from the metrics text.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// Unix time, seconds.
    at: f64,
    /// Per backend: open sessions, sessions opened, invokes, faults.
    open: BTreeMap<String, f64>,
    opened: BTreeMap<String, f64>,
    invokes: BTreeMap<String, f64>,
    faults: BTreeMap<String, f64>,
    /// Per backend: invoke latency buckets (upper bound, cumulative count).
    buckets: BTreeMap<String, Vec<(f64, f64)>>,
    /// Per tenant: bytes reserved of the budget.
    tenant_memory: BTreeMap<String, f64>,
    /// Per tenant: guest CPU seconds (all backends).
    tenant_cpu: BTreeMap<String, f64>,
    budget: f64,
}

/// The ring of samples and where they come from.
pub struct Charts {
    metrics: Arc<Metrics>,
    ring: Mutex<VecDeque<Sample>>,
}

impl Charts {
    /// Charts over `metrics`, with a first sample taken now and a sampler
    /// task that ends when the returned value is dropped.
    pub fn start(metrics: Arc<Metrics>) -> Arc<Self> {
        let charts = Arc::new(Self {
            metrics,
            ring: Mutex::new(VecDeque::with_capacity(KEEP)),
        });
        charts.record();
        let weak: Weak<Self> = Arc::downgrade(&charts);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(charts) = weak.upgrade() else {
                    return;
                };
                charts.record();
            }
        });
        charts
    }

    fn sample(&self) -> Sample {
        parse(&self.metrics.encode(), now())
    }

    fn record(&self) {
        let sample = self.sample();
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    /// Every chart, from the ring and a sample taken now.
    pub fn render(&self) -> Vec<Chart> {
        let mut samples: Vec<Sample> = self
            .ring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        // A rate over a few milliseconds is noise: the live sample counts
        // once a second has passed since the last one.
        let live = self.sample();
        if samples.last().is_none_or(|last| live.at - last.at >= 1.0) {
            samples.push(live);
        }
        draw_all(&samples)
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A line's label pairs, borrowed from the text.
type Labels<'a> = Vec<(&'a str, &'a str)>;

/// One metric line: name, labels, value.
fn parse_line(line: &str) -> Option<(&str, Labels<'_>, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}')?;
            (name, parse_labels(inner))
        }
        None => (series, Vec::new()),
    };
    Some((name, labels, value))
}

/// `k="v",k2="v2"`: values may hold commas and escaped quotes (a fault
/// code carries its detail); escapes are kept as written.
fn parse_labels(inner: &str) -> Labels<'_> {
    let mut out = Vec::new();
    let mut rest = inner;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let Some(end) = end else { break };
        out.push((key.trim_start_matches(',').trim(), &after[..end]));
        rest = &after[end + 1..];
    }
    out
}

fn label<'a>(labels: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// The figures the charts need from the metrics text.
fn parse(text: &str, at: f64) -> Sample {
    let mut s = Sample {
        at,
        ..Sample::default()
    };
    for line in text.lines() {
        let Some((name, labels, value)) = parse_line(line) else {
            continue;
        };
        let backend = label(&labels, "backend").map(str::to_string);
        let add = |map: &mut BTreeMap<String, f64>, key: Option<String>| {
            if let Some(key) = key {
                *map.entry(key).or_default() += value;
            }
        };
        match name {
            "gatehouse_open_sessions" => add(&mut s.open, backend),
            "gatehouse_sessions_opened_total" => add(&mut s.opened, backend),
            "gatehouse_invoke_seconds_count" => add(&mut s.invokes, backend),
            "gatehouse_faults_total" => add(&mut s.faults, backend),
            "gatehouse_tenant_memory_reserved_bytes" => add(
                &mut s.tenant_memory,
                label(&labels, "tenant").map(str::to_string),
            ),
            "gatehouse_guest_cpu_seconds_total" => add(
                &mut s.tenant_cpu,
                label(&labels, "tenant").map(str::to_string),
            ),
            "gatehouse_memory_budget_bytes" => s.budget = value,
            "gatehouse_invoke_seconds_bucket" => {
                let le = label(&labels, "le").and_then(|le| match le {
                    "+Inf" => Some(f64::INFINITY),
                    le => le.parse().ok(),
                });
                if let (Some(backend), Some(le)) = (backend, le) {
                    s.buckets.entry(backend).or_default().push((le, value));
                }
            }
            _ => {}
        }
    }
    s
}

/// A chart as the template draws it.
#[derive(Debug, Serialize)]
pub struct Chart {
    /// Its element id, e.g. `chart-sessions`.
    pub id: &'static str,
    pub title: &'static str,
    /// The top of the y axis, formatted with its unit.
    pub top: String,
    pub lines: Vec<Line>,
    /// Points drawn, over all lines: 0 is an empty chart.
    pub points: usize,
}

/// One series of a chart.
#[derive(Debug, Serialize)]
pub struct Line {
    pub label: String,
    pub color: &'static str,
    /// SVG polyline points in the 600x160 view box.
    pub points: String,
    /// The last point, marked with a dot (a lone point draws no line).
    pub x: String,
    pub y: String,
    /// The latest value, formatted.
    pub last: String,
}

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 160.0;
const COLORS: &[&str] = &[
    "#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563",
];

/// Values over time for one series: (unix time, value).
type Series = Vec<(f64, f64)>;

fn gauge(
    samples: &[Sample],
    pick: impl Fn(&Sample) -> &BTreeMap<String, f64>,
) -> BTreeMap<String, Series> {
    let mut out: BTreeMap<String, Series> = BTreeMap::new();
    for s in samples {
        for (k, v) in pick(s) {
            out.entry(k.clone()).or_default().push((s.at, *v));
        }
    }
    out
}

/// Per-second rates between consecutive samples (a counter that went
/// down, after a restart of its series, counts from zero).
fn rate(
    samples: &[Sample],
    pick: impl Fn(&Sample) -> &BTreeMap<String, f64>,
) -> BTreeMap<String, Series> {
    let mut out: BTreeMap<String, Series> = BTreeMap::new();
    for pair in samples.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let dt = b.at - a.at;
        if dt <= 0.0 {
            continue;
        }
        for (k, v) in pick(b) {
            let before = pick(a).get(k).copied().unwrap_or(0.0);
            let delta = if *v >= before { v - before } else { *v };
            out.entry(k.clone()).or_default().push((b.at, delta / dt));
        }
    }
    out
}

/// The 99th percentile of the invokes between consecutive samples,
/// interpolated within buckets as Prometheus does.
fn p99(samples: &[Sample]) -> BTreeMap<String, Series> {
    let mut out: BTreeMap<String, Series> = BTreeMap::new();
    for pair in samples.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        for (backend, after) in &b.buckets {
            let before = a.buckets.get(backend);
            let deltas: Vec<(f64, f64)> = after
                .iter()
                .map(|(le, n)| {
                    let was = before
                        .and_then(|bs| bs.iter().find(|(l, _)| l == le))
                        .map_or(0.0, |(_, n)| *n);
                    (*le, (n - was).max(0.0))
                })
                .collect();
            if let Some(q) = quantile(0.99, &deltas) {
                out.entry(backend.clone()).or_default().push((b.at, q));
            }
        }
    }
    out
}

fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let within = count - lower.1;
            let share = if within > 0.0 {
                (rank - lower.1) / within
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * share);
        }
        lower = (le, count);
    }
    None
}

fn draw_all(samples: &[Sample]) -> Vec<Chart> {
    let end = samples.last().map_or_else(now, |s| s.at);
    let budget = samples.last().map_or(0.0, |s| s.budget);
    let memory: BTreeMap<String, Series> = gauge(samples, |s| &s.tenant_memory)
        .into_iter()
        .map(|(tenant, series)| {
            let share = series
                .into_iter()
                .map(|(t, v)| {
                    (
                        t,
                        if budget > 0.0 {
                            100.0 * v / budget
                        } else {
                            0.0
                        },
                    )
                })
                .collect();
            (tenant, share)
        })
        .collect();
    vec![
        draw(
            "chart-sessions",
            "Open sessions",
            "",
            end,
            gauge(samples, |s| &s.open),
        ),
        draw(
            "chart-opens",
            "Opens per second",
            "/s",
            end,
            rate(samples, |s| &s.opened),
        ),
        draw(
            "chart-invokes",
            "Invokes per second",
            "/s",
            end,
            rate(samples, |s| &s.invokes),
        ),
        draw("chart-p99", "Invoke latency p99", "ms", end, {
            p99(samples)
                .into_iter()
                .map(|(k, s)| (k, s.into_iter().map(|(t, v)| (t, v * 1e3)).collect()))
                .collect()
        }),
        draw(
            "chart-faults",
            "Faults per second",
            "/s",
            end,
            rate(samples, |s| &s.faults),
        ),
        draw(
            "chart-memory",
            "Memory budget reserved, per tenant",
            "%",
            end,
            memory,
        ),
        draw(
            "chart-cpu",
            "Guest CPU, per tenant",
            " cores",
            end,
            rate(samples, |s| &s.tenant_cpu),
        ),
    ]
}

fn format(v: f64, unit: &str) -> String {
    let n = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    format!("{n}{unit}")
}

fn draw(
    id: &'static str,
    title: &'static str,
    unit: &str,
    end: f64,
    series: BTreeMap<String, Series>,
) -> Chart {
    let start = end - SPAN;
    let max = series
        .values()
        .flatten()
        .filter(|(t, _)| *t >= start)
        .map(|(_, v)| *v)
        .fold(0.0_f64, f64::max);
    // Headroom, and a visible axis for an all-zero series.
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    let mut points = 0;
    let lines = series
        .into_iter()
        .enumerate()
        .map(|(i, (label, values))| {
            let shown: Vec<&(f64, f64)> = values.iter().filter(|(t, _)| *t >= start).collect();
            points += shown.len();
            let xy: Vec<(String, String)> = shown
                .iter()
                .map(|(t, v)| {
                    let x = (t - start) / SPAN * WIDTH;
                    let y = HEIGHT - (v / top * HEIGHT).clamp(0.0, HEIGHT);
                    (format!("{x:.1}"), format!("{y:.1}"))
                })
                .collect();
            let svg = xy
                .iter()
                .map(|(x, y)| format!("{x},{y}"))
                .collect::<Vec<_>>()
                .join(" ");
            let (x, y) = xy.last().cloned().unwrap_or_default();
            Line {
                label,
                color: COLORS[i % COLORS.len()],
                points: svg,
                x,
                y,
                last: shown
                    .last()
                    .map(|(_, v)| format(*v, unit))
                    .unwrap_or_default(),
            }
        })
        .collect();
    Chart {
        id,
        title,
        top: format(top, unit),
        lines,
        points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE x gauge\n\
        gatehouse_open_sessions{backend=\"echo\"} 3\n\
        gatehouse_sessions_opened_total{backend=\"echo\"} 10\n\
        gatehouse_invoke_seconds_count{backend=\"echo\"} 100\n\
        gatehouse_invoke_seconds_bucket{le=\"0.001\",backend=\"echo\"} 50\n\
        gatehouse_invoke_seconds_bucket{le=\"0.01\",backend=\"echo\"} 100\n\
        gatehouse_invoke_seconds_bucket{le=\"+Inf\",backend=\"echo\"} 100\n\
        gatehouse_faults_total{backend=\"echo\",code=\"trap\"} 2\n\
        gatehouse_faults_total{code=\"trap: a, \\\"b\\\"\",backend=\"echo\"} 1\n\
        gatehouse_tenant_memory_reserved_bytes{tenant=\"acme\"} 250\n\
        gatehouse_memory_budget_bytes 1000\n\
        gatehouse_guest_cpu_seconds_total{tenant=\"acme\",backend=\"echo\"} 1.5\n\
        gatehouse_guest_cpu_seconds_total{tenant=\"acme\",backend=\"kv\"} 0.5\n";

    #[test]
    fn samples_read_the_metrics_text() {
        let s = parse(TEXT, 5.0);
        assert_eq!(s.open["echo"], 3.0);
        assert_eq!(s.faults["echo"], 3.0);
        assert_eq!(s.buckets["echo"].len(), 3);
        assert_eq!(s.tenant_memory["acme"], 250.0);
        assert_eq!(s.tenant_cpu["acme"], 2.0);
        assert_eq!(s.budget, 1000.0);
    }

    #[test]
    fn rates_and_percentiles_come_from_consecutive_samples() {
        let a = parse(TEXT, 0.0);
        let b = parse(
            &TEXT
                .replace("} 10\n", "} 30\n")
                .replace("} 100\n", "} 200\n"),
            10.0,
        );
        let samples = [a, b];
        assert_eq!(rate(&samples, |s| &s.opened)["echo"], [(10.0, 2.0)]);
        // Of the 100 invokes between, none under 1ms, all under 10ms.
        let p = p99(&samples)["echo"][0].1;
        assert!((p - 0.00991).abs() < 1e-9, "{p}");
        let charts = draw_all(&samples);
        let opens = charts.iter().find(|c| c.id == "chart-opens").unwrap();
        assert_eq!(opens.points, 1);
        assert_eq!(opens.lines[0].last, "2.00/s");
    }

    #[test]
    fn an_empty_ring_draws_empty_charts() {
        let charts = draw_all(&[]);
        assert_eq!(charts.len(), 7);
        assert!(charts.iter().all(|c| c.points == 0));
    }
}
