//! The report page: one HTML file holding everything (style, SVG charts,
//! a JSON block of the numbers), so that it opens anywhere without a
//! network.

use std::fmt::Write as _;

use serde_json::json;

use super::chart::{self, esc, Chart, Line, TimeAxis, PALETTE};
use super::query::{Gaps, ReportData, Series, Window};
use super::rfc3339;

/// Version of the JSON block's layout.
pub const FORMAT: u32 = 1;

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:16px 24px;color:#222}\
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 6px;border-bottom:1px solid #ddd}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}\
th{background:#f4f4f4}summary{cursor:pointer;font-size:13px;margin:4px 0}td.n{text-align:right;font-variant-numeric:tabular-nums}td.t{white-space:nowrap}\
.row{display:flex;flex-wrap:nowrap;gap:4px}.muted{color:#666;font-size:13px}\
.empty{font-size:16px;padding:12px;background:#fff3e0;border:1px solid #ffb74d}\
svg .t{font-size:13px;font-weight:600;fill:#222}svg .l{font-size:11px;fill:#555}svg .b{font-size:11px;fill:#fff}\
svg .op:hover rect{stroke:#000;stroke-width:1.5}\
.key span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:-1px}";

/// The page for `data` over `w`.
pub fn render(w: &Window, data: &ReportData) -> String {
    let axis = TimeAxis {
        since: w.since,
        until: w.until,
    };
    let nothing =
        data.counts.machine_state == 0 && data.counts.controls == 0 && data.ops.total == 0;
    let gaps: Vec<(f64, f64)> = data
        .state_gaps
        .listed
        .iter()
        .map(|g| (axis.frac(g.from), axis.frac(g.to)))
        .collect();

    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>Recording of {}</h1><p class=\"muted\">{} to {} (UTC), from PostgreSQL; charts show the \
         minimum and maximum of each {} of the window; grey: no machine_state row (a gap).</p>",
        esc(&w.host),
        rfc3339(w.since),
        rfc3339(w.until),
        duration_text(w.bucket_seconds())
    );
    if nothing {
        let _ = write!(
            body,
            "<p class=\"empty\" id=\"nothing-recorded\">Nothing was recorded for host {} in this \
             window: no machine_state rows, no audmon frames (controls) and no operations.</p>",
            esc(&w.host)
        );
    }
    summary_table(&mut body, data);
    operations_section(&mut body, data, &axis, &gaps);
    let mut charts = Vec::new();
    if data.counts.machine_state > 0 {
        charts_section(&mut body, w, data, &axis, &gaps, &mut charts);
    }
    // After the charts: a long list would push them out of sight.
    gaps_section(&mut body, "machine_state", &data.state_gaps);
    gaps_section(&mut body, "controls (audmon frames)", &data.audio_gaps);

    let block = json!({
        "format": FORMAT,
        "host": w.host,
        "since": rfc3339(w.since),
        "until": rfc3339(w.until),
        "bucket_seconds": w.bucket_seconds(),
        "gap_threshold_seconds": w.gap.as_secs_f64(),
        "nothing_recorded": nothing,
        "counts": {
            "machine_state": data.counts.machine_state,
            "linked_to_controls": data.counts.linked,
            "controls": data.counts.controls,
            "operations": data.ops.total,
        },
        "first_row": data.counts.first.map(rfc3339),
        "last_row": data.counts.last.map(rfc3339),
        "roles_from": data.roles_from,
        "charts": charts,
        "gaps": {
            "machine_state": gaps_json(&data.state_gaps),
            "controls": gaps_json(&data.audio_gaps),
        },
        "operations": {
            "total": data.ops.total,
            "drawn": data.ops.listed.len(),
            "ids": data.ops.listed.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
            "by_type_status": data.ops.by_type_status.iter().map(|((t, s), n)| json!({"type": t, "status": s, "count": n})).collect::<Vec<_>>(),
            "resets_mentioned": data.ops.resets,
            "disconnections_mentioned": data.ops.disconnections,
        },
    });
    // `</` would end the script element early.
    let block = block.to_string().replace("</", "<\\/");

    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>stringdriver report: {} {} to {}</title><style>{STYLE}</style></head>\
         <body>{body}<script type=\"application/json\" id=\"report-data\">{block}</script></body></html>\n",
        esc(&w.host),
        rfc3339(w.since),
        rfc3339(w.until)
    )
}

fn duration_text(seconds: f64) -> String {
    if seconds >= 2.0 * 86_400.0 {
        format!("{:.1} days", seconds / 86_400.0)
    } else if seconds >= 2.0 * 3600.0 {
        format!("{:.1} h", seconds / 3600.0)
    } else if seconds >= 120.0 {
        format!("{:.1} min", seconds / 60.0)
    } else if seconds >= 1.0 {
        format!("{seconds:.1} s")
    } else {
        format!("{:.0} ms", seconds * 1000.0)
    }
}

fn gaps_json(g: &Gaps) -> serde_json::Value {
    json!({
        "threshold_seconds": g.threshold,
        "total": g.total,
        "seconds": g.seconds,
        "listed": g.listed.iter().map(|g| json!({
            "from": rfc3339(g.from),
            "to": rfc3339(g.to),
            "seconds": (g.to - g.from).num_milliseconds() as f64 / 1000.0,
            "kind": g.kind,
            "reason": g.reason,
        })).collect::<Vec<_>>(),
    })
}

/// A summary line about `g`, the gaps in rows of `what`.
fn gaps_line(g: &Gaps, what: &str) -> String {
    format!(
        "{} ({} without {what}; a gap is {} or more without a row)",
        g.total,
        duration_text(g.seconds),
        duration_text(g.threshold)
    )
}

fn summary_table(body: &mut String, data: &ReportData) {
    let c = &data.counts;
    let opt = |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or("—".to_string(), rfc3339);
    let rows: Vec<(&str, String)> = vec![
        (
            "machine_state rows (snapshots)",
            c.machine_state.to_string(),
        ),
        (
            "… linked to an audmon frame by controls_id",
            c.linked.to_string(),
        ),
        ("controls rows (audmon frames)", c.controls.to_string()),
        ("operations", data.ops.total.to_string()),
        (
            "first / last snapshot",
            format!("{} / {}", opt(c.first), opt(c.last)),
        ),
        (
            "gaps in machine_state",
            gaps_line(&data.state_gaps, "snapshots"),
        ),
        (
            "gaps in controls",
            gaps_line(&data.audio_gaps, "audmon frames"),
        ),
        (
            "resets and disconnections",
            format!(
                "{} operation messages mention a board reset, {} a disconnected board; the \
                 database records no link events themselves (the daemon's journal has them), \
                 only their traces: these messages and the gaps",
                data.ops.resets, data.ops.disconnections
            ),
        ),
        ("stepper roles from", data.roles_from.to_string()),
    ];
    body.push_str("<h2>Summary</h2><table id=\"summary\">");
    for (k, v) in rows {
        let _ = write!(body, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    }
    body.push_str("</table>");
}

fn operations_section(body: &mut String, data: &ReportData, axis: &TimeAxis, gaps: &[(f64, f64)]) {
    let ops = &data.ops;
    body.push_str("<h2>Operations</h2>");
    if ops.total == 0 {
        body.push_str("<p class=\"muted\">No operation in the window.</p>");
        return;
    }
    body.push_str("<p class=\"key muted\">");
    for status in ["completed", "failed", "cancelled", "started"] {
        let _ = write!(
            body,
            "<span style=\"background:{}\"></span>{}",
            chart::status_color(status),
            if status == "started" {
                "running / end not recorded"
            } else {
                status
            }
        );
    }
    body.push_str("</p>");
    if (ops.listed.len() as u64) < ops.total {
        let _ = write!(
            body,
            "<p class=\"muted\">The first {} of {} operations are drawn.</p>",
            ops.listed.len(),
            ops.total
        );
    }
    body.push_str(&chart::timeline(&ops.listed, axis, gaps));
    body.push_str("<table id=\"operations\"><tr><th>type</th><th>status</th><th>count</th></tr>");
    for ((t, s), n) in &ops.by_type_status {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{n}</td></tr>",
            esc(t),
            esc(s)
        );
    }
    body.push_str("</table>");
}

fn gaps_section(body: &mut String, what: &str, g: &Gaps) {
    let _ = write!(body, "<h2>Gaps in {}</h2>", esc(what));
    if g.total == 0 {
        body.push_str("<p class=\"muted\">None.</p>");
        return;
    }
    // Folded when long (a <details> element: no script).
    let _ = write!(
        body,
        "<details{}><summary>{} gap{}, {} in all{}</summary>",
        if g.listed.len() <= 10 { " open" } else { "" },
        g.total,
        if g.total == 1 { "" } else { "s" },
        duration_text(g.seconds),
        if (g.listed.len() as u64) < g.total {
            format!("; the first {} listed", g.listed.len())
        } else {
            String::new()
        }
    );
    body.push_str("<table><tr><th>from</th><th>to</th><th>length</th><th>why (as far as the data can say)</th></tr>");
    for gap in &g.listed {
        let _ = write!(
            body,
            "<tr><td class=\"t\">{}</td><td class=\"t\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            rfc3339(gap.from),
            rfc3339(gap.to),
            duration_text((gap.to - gap.from).num_milliseconds() as f64 / 1000.0),
            esc(&gap.reason)
        );
    }
    body.push_str("</table></details>");
}

fn charts_section(
    body: &mut String,
    w: &Window,
    data: &ReportData,
    axis: &TimeAxis,
    gaps: &[(f64, f64)],
    charts: &mut Vec<serde_json::Value>,
) {
    let empty: Series = Vec::new();
    // Lines bridge empty buckets shorter than a gap in recording.
    let bridge = (w.gap.as_secs_f64() / w.bucket_seconds().max(1e-9)).ceil() as usize;
    let series = |i: usize| data.positions.get(i).unwrap_or(&empty);
    let with_role = |role: &'static str, string: Option<usize>| -> Vec<usize> {
        data.roles
            .iter()
            .filter(|r| r.role == role && (string.is_none() || r.string == string))
            .map(|r| r.index)
            .collect()
    };

    let xs = with_role("x", None);
    if !xs.is_empty() {
        body.push_str("<h2>Carriage</h2><div class=\"row\">");
        let lines = xs
            .iter()
            .enumerate()
            .map(|(k, &i)| Line {
                label: format!("X (stepper {i})"),
                color: PALETTE[k % PALETTE.len()],
                series: series(i),
            })
            .collect();
        body.push_str(
            &Chart {
                title: "X position".to_string(),
                data: vec![("chart", "x".to_string())],
                lines,
                band: None,
                gaps,
                bridge,
            }
            .svg(axis),
        );
        charts.push(json!({"chart": "x"}));
        body.push_str("</div>");
    }

    let strings = data
        .roles
        .iter()
        .filter_map(|r| r.string.map(|s| s + 1))
        .max()
        .unwrap_or(0);
    let rows = strings.max(data.channels.len());
    if rows > 0 {
        body.push_str(
            "<h2>Strings</h2><p class=\"muted\">Per string: its Z pair's positions, and its \
             channel's voice_count and amp_sum; green: the thresholds (voice_count_min..max, \
             amp_sum_min..max).</p>",
        );
    }
    for c in 0..rows {
        body.push_str("<div class=\"row\">");
        if c < strings {
            let mut lines = Vec::new();
            for (k, role) in ["z_in", "z_out"].iter().enumerate() {
                for i in with_role(role, Some(c)) {
                    lines.push(Line {
                        label: format!("{} ({i})", role.replace('_', " ")),
                        color: PALETTE[k],
                        series: series(i),
                    });
                }
            }
            body.push_str(
                &Chart {
                    title: format!("String {c}: Z positions"),
                    data: vec![("chart", "positions".into()), ("string", c.to_string())],
                    lines,
                    band: None,
                    gaps,
                    bridge,
                }
                .svg(axis),
            );
            charts.push(json!({"chart": "positions", "string": c}));
        }
        if let Some(ch) = data.channels.get(c) {
            for (name, values, band) in [
                ("voice_count", &ch.voice_count, &ch.voice_band),
                ("amp_sum", &ch.amp_sum, &ch.amp_band),
            ] {
                body.push_str(
                    &Chart {
                        title: format!("Channel {c}: {name}"),
                        data: vec![("chart", name.into()), ("channel", c.to_string())],
                        lines: vec![Line {
                            label: name.to_string(),
                            color: PALETTE[0],
                            series: values,
                        }],
                        band: Some(band),
                        gaps,
                        bridge,
                    }
                    .svg(axis),
                );
                charts.push(json!({"chart": name, "channel": c}));
            }
        }
        body.push_str("</div>");
    }
    if data.roles.is_empty() {
        // No map of the steppers: one chart per stepper index.
        body.push_str("<h2>Steppers</h2><p class=\"muted\">No stepper_roles rows for this host and not the configuration's host: positions by stepper index.</p><div class=\"row\" style=\"flex-wrap:wrap\">");
        for (i, s) in data.positions.iter().enumerate() {
            body.push_str(
                &Chart {
                    title: format!("Stepper {i}"),
                    data: vec![("chart", "stepper".into()), ("stepper", i.to_string())],
                    lines: vec![Line {
                        label: "position".into(),
                        color: PALETTE[0],
                        series: s,
                    }],
                    band: None,
                    gaps,
                    bridge,
                }
                .svg(axis),
            );
            charts.push(json!({"chart": "stepper", "stepper": i}));
        }
        body.push_str("</div>");
    }
}
