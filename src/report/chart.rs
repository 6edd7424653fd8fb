//! The report's SVG charts, drawn as text: a min/max envelope chart per
//! value (one bucket per pixel column, the threshold band behind it, the
//! gaps shaded) and the operations' timeline. No script: hover texts are
//! `<title>` elements, which every browser shows.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::query::{Operation, Series, Span};

/// Width of a chart's plot area, px: one bucket per pixel column.
pub const PLOT_WIDTH: f64 = 380.0;

const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 22.0;
const PLOT_HEIGHT: f64 = 96.0;
const BOTTOM: f64 = 22.0;

/// Width of the timeline's plot area, px.
pub const TIMELINE_WIDTH: f64 = 1240.0;
const LANE: f64 = 20.0;
const MAX_LANES: usize = 12;

/// Colours of the lines, in order.
pub const PALETTE: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// Escapes text for HTML and SVG content and attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The time axis shared by every chart.
#[derive(Debug, Clone, Copy)]
pub struct TimeAxis {
    /// Left edge.
    pub since: DateTime<Utc>,
    /// Right edge.
    pub until: DateTime<Utc>,
}

impl TimeAxis {
    /// Where `t` falls, 0 at `since` to 1 at `until` (clamped).
    pub fn frac(&self, t: DateTime<Utc>) -> f64 {
        let total = (self.until - self.since).num_milliseconds().max(1) as f64;
        ((t - self.since).num_milliseconds() as f64 / total).clamp(0.0, 1.0)
    }

    /// `parts + 1` time labels evenly along a plot `width` wide, at `y`.
    fn labels(&self, s: &mut String, parts: u32, width: f64, y: f64) {
        for k in 0..=parts {
            let f = f64::from(k) / f64::from(parts);
            let anchor = match k {
                0 => "start",
                k if k == parts => "end",
                _ => "middle",
            };
            let _ = write!(
                s,
                r#"<text x="{:.0}" y="{y:.0}" class="l" text-anchor="{anchor}">{}</text>"#,
                LEFT + f * width,
                self.label(f)
            );
        }
    }

    fn label(&self, f: f64) -> String {
        let total = (self.until - self.since).num_milliseconds();
        let t = self.since + chrono::TimeDelta::milliseconds((total as f64 * f) as i64);
        if total <= 86_400_000 {
            t.format("%H:%M:%S").to_string()
        } else {
            t.format("%m-%d %H:%M").to_string()
        }
    }
}

/// One line of a chart: its min/max envelope per bucket.
pub struct Line<'a> {
    /// Legend text.
    pub label: String,
    /// Colour.
    pub color: &'static str,
    /// Values.
    pub series: &'a Series,
}

/// A chart of some lines over the window.
pub struct Chart<'a> {
    /// Heading inside the chart.
    pub title: String,
    /// `data-*` attributes for tools and tests (`chart="positions" string="0"`).
    pub data: Vec<(&'static str, String)>,
    /// The lines.
    pub lines: Vec<Line<'a>>,
    /// The band drawn behind them (thresholds), if any.
    pub band: Option<&'a Series>,
    /// Gaps to shade, as fractions of the window.
    pub gaps: &'a [(f64, f64)],
    /// Empty buckets a line bridges (see [`envelope`]).
    pub bridge: usize,
}

fn bounds<'a>(all: impl Iterator<Item = &'a Series>) -> Option<(f64, f64)> {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for s in all {
        for v in s.iter().flatten() {
            if v.min.is_finite() {
                lo = lo.min(v.min);
            }
            if v.max.is_finite() {
                hi = hi.max(v.max);
            }
        }
    }
    (lo <= hi).then_some((lo, hi))
}

/// Round tick values covering `lo..=hi`.
fn ticks(lo: f64, hi: f64) -> (f64, f64, Vec<f64>) {
    let (lo, hi) = if hi - lo < 1e-9 {
        (lo - 1.0, hi + 1.0)
    } else {
        (lo, hi)
    };
    let raw = (hi - lo) / 4.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).floor() * step;
    let last = (hi / step).ceil() * step;
    let mut out = Vec::new();
    let mut v = first;
    while v <= last + step * 0.5 && out.len() < 12 {
        out.push(v);
        v += step;
    }
    (first, last, out)
}

fn number(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The envelope of `series` as SVG path data, one sub-path per run of
/// buckets with rows. A run bridges fewer than `bridge` empty buckets (a
/// bucket shorter than the snapshot period is often empty) and breaks at
/// more, so that a gap in recording stays empty.
fn envelope(series: &Series, bridge: usize, y: &impl Fn(f64) -> f64) -> String {
    let n = series.len().max(1) as f64;
    let x = |b: usize| LEFT + (b as f64 + 0.5) * PLOT_WIDTH / n;
    let mut d = String::new();
    let mut run: Vec<(usize, Span)> = Vec::new();
    let flush = |run: &mut Vec<(usize, Span)>, d: &mut String| {
        if run.is_empty() {
            return;
        }
        for (k, (b, s)) in run.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if k == 0 { "M" } else { "L" },
                x(*b),
                y(s.max)
            );
        }
        for (b, s) in run.iter().rev() {
            let _ = write!(d, "L{:.1},{:.1}", x(*b), y(s.min));
        }
        d.push('Z');
        run.clear();
    };
    let mut empty = 0;
    for (b, v) in series.iter().enumerate() {
        match v {
            Some(s) if s.min.is_finite() && s.max.is_finite() => {
                if empty >= bridge.max(1) {
                    flush(&mut run, &mut d);
                }
                empty = 0;
                run.push((b, *s));
            }
            _ => empty += 1,
        }
    }
    flush(&mut run, &mut d);
    d
}

impl Chart<'_> {
    /// The chart as an `<svg>` element.
    pub fn svg(&self, axis: &TimeAxis) -> String {
        let width = LEFT + PLOT_WIDTH + RIGHT;
        let height = TOP + PLOT_HEIGHT + BOTTOM;
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}""#
        );
        for (k, v) in &self.data {
            let _ = write!(s, r#" data-{k}="{}""#, esc(v));
        }
        s.push('>');
        let _ = write!(
            s,
            r#"<text x="{LEFT}" y="14" class="t">{}</text>"#,
            esc(&self.title)
        );
        // Legend at the right of the title.
        let mut lx = LEFT + PLOT_WIDTH;
        for line in self.lines.iter().rev() {
            let _ = write!(
                s,
                r#"<text x="{lx:.0}" y="14" class="l" text-anchor="end" fill="{}">{}</text>"#,
                line.color,
                esc(&line.label)
            );
            lx -= 8.0 * line.label.len() as f64 + 12.0;
        }
        let _ = write!(
            s,
            r##"<rect x="{LEFT}" y="{TOP}" width="{PLOT_WIDTH}" height="{PLOT_HEIGHT}" fill="#fff" stroke="#bbb"/>"##
        );
        for (a, b) in self.gaps {
            let x0 = LEFT + a * PLOT_WIDTH;
            let w = ((b - a) * PLOT_WIDTH).max(1.0);
            let _ = write!(
                s,
                r##"<rect class="gap" x="{x0:.1}" y="{TOP}" width="{w:.1}" height="{PLOT_HEIGHT}" fill="#e6e6e6"/>"##
            );
        }
        let all = self.lines.iter().map(|l| l.series).chain(self.band);
        match bounds(all) {
            None => {
                let _ = write!(
                    s,
                    r##"<text x="{:.0}" y="{:.0}" class="l" text-anchor="middle" fill="#888">no rows</text>"##,
                    LEFT + PLOT_WIDTH / 2.0,
                    TOP + PLOT_HEIGHT / 2.0
                );
            }
            Some((lo, hi)) => {
                let (lo, hi, ticks) = ticks(lo, hi);
                let y = |v: f64| TOP + PLOT_HEIGHT - (v - lo) / (hi - lo) * PLOT_HEIGHT;
                for t in ticks {
                    let ty = y(t);
                    let _ = write!(
                        s,
                        r##"<line x1="{LEFT}" x2="{:.0}" y1="{ty:.1}" y2="{ty:.1}" stroke="#eee"/><text x="{:.0}" y="{:.1}" class="l" text-anchor="end">{}</text>"##,
                        LEFT + PLOT_WIDTH,
                        LEFT - 4.0,
                        ty + 4.0,
                        number(t)
                    );
                }
                if let Some(band) = self.band {
                    let _ = write!(
                        s,
                        r##"<path class="band" d="{}" fill="#c8e6c9" fill-opacity="0.7" stroke="#81c784" stroke-width="0.8"/>"##,
                        envelope(band, self.bridge, &y)
                    );
                }
                for (k, line) in self.lines.iter().enumerate() {
                    // Later lines dashed: where two lines coincide (a Z pair
                    // at the same height) both stay visible.
                    let dash = if k > 0 {
                        r#" stroke-dasharray="5 4""#
                    } else {
                        ""
                    };
                    let _ = write!(
                        s,
                        r#"<path class="line" d="{}" fill="{c}" fill-opacity="0.25" stroke="{c}" stroke-width="1.4" stroke-linejoin="round"{dash}/>"#,
                        envelope(line.series, self.bridge, &y),
                        c = line.color
                    );
                }
            }
        }
        axis.labels(&mut s, 2, PLOT_WIDTH, TOP + PLOT_HEIGHT + 15.0);
        s.push_str("</svg>");
        s
    }
}

/// Colour of an operation by its status.
pub fn status_color(status: &str) -> &'static str {
    match status {
        "completed" => "#2e7d32",
        "failed" => "#c62828",
        "cancelled" => "#ef6c00",
        "started" => "#1565c0",
        _ => "#757575",
    }
}

/// The operations as bars over the window, one lane per level of overlap
/// (a nested operation runs inside its parent, so it takes the next lane),
/// coloured by status, each with its details in a `<title>`.
pub fn timeline(ops: &[Operation], axis: &TimeAxis, gaps: &[(f64, f64)]) -> String {
    let mut bars = Vec::with_capacity(ops.len());
    let mut lanes: Vec<f64> = Vec::new();
    for op in ops {
        let x0 = axis.frac(op.start) * TIMELINE_WIDTH;
        let x1 = op
            .end
            .map(|e| axis.frac(e))
            .unwrap_or(if op.status == "started" {
                1.0
            } else {
                axis.frac(op.start)
            })
            * TIMELINE_WIDTH;
        let x1 = x1.max(x0 + 2.0);
        let lane = match lanes.iter().position(|end| *end <= x0) {
            Some(l) => l,
            None if lanes.len() < MAX_LANES => {
                lanes.push(0.0);
                lanes.len() - 1
            }
            None => MAX_LANES - 1,
        };
        lanes[lane] = lanes[lane].max(x1);
        bars.push((op, x0, x1, lane));
    }
    let lanes = lanes.len().max(1);
    let width = LEFT + TIMELINE_WIDTH + RIGHT;
    let height = TOP + lanes as f64 * LANE + BOTTOM;
    let plot_h = lanes as f64 * LANE;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="timeline" data-chart="timeline" data-operations="{}" width="{width}" height="{height}" viewBox="0 0 {width} {height}"><text x="{LEFT}" y="14" class="t">Operations (hover a bar for its message)</text><rect x="{LEFT}" y="{TOP}" width="{TIMELINE_WIDTH}" height="{plot_h}" fill="#fff" stroke="#bbb"/>"##,
        ops.len()
    );
    for (a, b) in gaps {
        let _ = write!(
            s,
            r##"<rect class="gap" x="{:.1}" y="{TOP}" width="{:.1}" height="{plot_h}" fill="#e6e6e6"/>"##,
            LEFT + a * TIMELINE_WIDTH,
            ((b - a) * TIMELINE_WIDTH).max(1.0)
        );
    }
    for (op, x0, x1, lane) in bars {
        let end = match op.end {
            Some(e) => super::rfc3339(e),
            None if op.status == "started" => "still running (or its end was not recorded)".into(),
            None => "end not recorded".into(),
        };
        let steppers: Vec<String> = op.steppers.iter().map(|i| i.to_string()).collect();
        let title = format!(
            "{} {}\n{} → {}\nsteppers {}\n{}",
            op.kind,
            op.status,
            super::rfc3339(op.start),
            end,
            steppers.join(", "),
            op.message.as_deref().unwrap_or("(no message)")
        );
        let y = TOP + lane as f64 * LANE + 2.0;
        let _ = write!(
            s,
            r#"<g class="op" data-operation-id="{}" data-type="{}" data-status="{}"><rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" rx="2" fill="{}"/>"#,
            esc(&op.id),
            esc(&op.kind),
            esc(&op.status),
            LEFT + x0,
            x1 - x0,
            LANE - 4.0,
            status_color(&op.status)
        );
        if x1 - x0 > 7.0 * op.kind.len() as f64 + 6.0 {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{:.1}" class="b">{}</text>"#,
                LEFT + x0 + 3.0,
                y + LANE - 9.0,
                esc(&op.kind)
            );
        }
        let _ = write!(s, "<title>{}</title></g>", esc(&title));
    }
    axis.labels(&mut s, 4, TIMELINE_WIDTH, TOP + plot_h + 15.0);
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_cover_the_range_with_round_steps() {
        let (lo, hi, t) = ticks(3.0, 17.0);
        assert!(lo <= 3.0 && hi >= 17.0, "{lo} {hi}");
        assert_eq!(t, vec![0.0, 5.0, 10.0, 15.0, 20.0]);
        let (lo, hi, _) = ticks(5.0, 5.0);
        assert!(lo < 5.0 && hi > 5.0);
    }

    #[test]
    fn envelope_breaks_at_empty_buckets() {
        let s: Series = vec![
            Some(Span { min: 0.0, max: 1.0 }),
            None,
            Some(Span { min: 1.0, max: 1.0 }),
        ];
        let d = envelope(&s, 1, &|v| v);
        assert_eq!(d.matches('M').count(), 2, "{d}");
        let d = envelope(&s, 2, &|v| v);
        assert_eq!(d.matches('M').count(), 1, "{d}");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
