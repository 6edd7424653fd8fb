//! From the file as written to the checked configuration, and back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::error::Invalid;
use super::layout::{self, Layout};
use super::schema::{
    ByteSize, HumanDuration, OctalMode, PerChannel, RawBoard, RawCompat, RawConfig, RawConsole,
    RawControl, RawDatabase, RawFeed, RawLog, RawOperations, RawSensors, RawSnapshot, RawSpool,
    RawThresholds,
};
use super::sections::{
    BoardConfig, ClientCert, CompatConfig, ConsoleConfig, ControlConfig, DatabaseConfig,
    DatabaseTarget, DatabaseTls, FeedConfig, GpioSensorsConfig, LogConfig, OperationSettings,
    SensorBackend, SensorsConfig, SnapshotConfig, SnapshotLink, SpoolConfig, SslMode, Thresholds,
    XSwitchLines, XSwitchWiring,
};
use super::Config;

/// Defaults that are not plain literals at their single point of use.
pub mod defaults {
    use std::time::Duration;

    /// Line speed of every board in service.
    pub const BAUD: u32 = 115_200;
    /// AVR bootloader time after the port is opened (about 2 s).
    pub const RESET_WAIT: Duration = Duration::from_secs(2);
    /// Positions poll period.
    pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
    /// Reply deadline.
    pub const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
    /// Slack on a move's expected duration.
    pub const MOVE_MARGIN: Duration = Duration::from_millis(250);
    /// Shortest poll and snapshot period: faster is "hammering" the board
    /// or the spool for no information.
    pub const MIN_PERIOD: Duration = Duration::from_millis(10);
    /// Most steppers one board may declare.
    pub const MAX_STEPPERS: usize = 64;
    /// Longest rest accepted, seconds: longer is almost surely milliseconds
    /// written as seconds, and would hang an operation for hours.
    pub const MAX_REST: f64 = 3600.0;
    /// Spool size: 7 days of 1 Hz snapshots on a 19-stepper host are ~0.4 GB.
    pub const SPOOL_MAX_BYTES: u64 = 1024 * 1024 * 1024;
    /// Smallest spool worth having.
    pub const SPOOL_MIN_BYTES: u64 = 1024 * 1024;
    /// Spool file.
    pub const SPOOL_PATH: &str = "/var/lib/stringdriverd/spool.sqlite";
    /// Control socket.
    pub const CONTROL_SOCKET: &str = "/run/stringdriver/control.sock";
    /// Where the operator console listens: loopback only, so that no
    /// token is needed on the machine itself.
    pub const CONSOLE_LISTEN: &str = "127.0.0.1:7125";
    /// Control socket permissions: owner and group.
    pub const CONTROL_MODE: u32 = 0o660;
    /// The stepper GUI's socket: the unit's RuntimeDirectory, which a tool
    /// outside the service's private /tmp can reach (the package links it
    /// from /tmp, where the tools look).
    pub const COMPAT_DIR: &str = "/run/stringdriver";
    /// audmon's shared-memory directory on Linux.
    pub const FEED_DIR: &str = "/dev/shm";
    /// Database server when `[database]` names none.
    pub const DB_HOST: &str = "localhost";
    /// PostgreSQL's port.
    pub const DB_PORT: u16 = 5432;
    /// Role the daemon connects as.
    pub const DB_USER: &str = "stringdriver";
    /// The audmon database that machine_state extends.
    pub const DB_NAME: &str = "audmon";
    /// Log level.
    pub const LOG_LEVEL: &str = "info";
}

type R<T> = Result<T, Invalid>;

fn dur(v: Option<HumanDuration>, default: Duration) -> Duration {
    v.map_or(default, |d| d.0)
}

fn positive(key: &str, d: Duration) -> R<Duration> {
    if d.is_zero() {
        Err(Invalid::new(key, "must be longer than 0"))
    } else {
        Ok(d)
    }
}

fn at_least(key: &str, d: Duration, min: Duration) -> R<Duration> {
    if d < min {
        Err(Invalid::new(
            key,
            format!(
                "must be at least {}, not {}",
                humantime::format_duration(min),
                humantime::format_duration(d)
            ),
        ))
    } else {
        Ok(d)
    }
}

fn int(key: &str, v: i64, lo: i64, what: &str) -> R<i32> {
    if v < lo {
        return Err(Invalid::new(key, format!("must be {what}, not {v}")));
    }
    i32::try_from(v).map_err(|_| Invalid::new(key, format!("{v} does not fit a 32-bit INTEGER")))
}

fn text(key: &str, v: String) -> R<String> {
    if v.trim().is_empty() {
        Err(Invalid::new(key, "must not be empty"))
    } else {
        Ok(v)
    }
}

fn path(key: &str, v: PathBuf) -> R<PathBuf> {
    if v.as_os_str().is_empty() {
        Err(Invalid::new(key, "must not be an empty path"))
    } else {
        Ok(v)
    }
}

/// Checks everything and fills in every default. `host` is called only when
/// the file sets no host (it asks the OS).
pub(crate) fn resolve(
    raw: RawConfig,
    host: impl FnOnce() -> Result<String, String>,
) -> Result<Config, Resolve> {
    let boards = boards(raw.boards).map_err(Resolve::Invalid)?;
    let layout = layout::build(&raw.layout, &boards).map_err(Resolve::Invalid)?;
    let strings = layout.strings();
    let motor = super::motor::build(&raw.motor, &layout, &boards).map_err(Resolve::Invalid)?;
    let config = Config {
        motor,
        host: String::new(),
        operations: operations(raw.operations, x_travel(&layout)).map_err(Resolve::Invalid)?,
        thresholds: thresholds(raw.thresholds, strings).map_err(Resolve::Invalid)?,
        snapshot: snapshot(raw.snapshot).map_err(Resolve::Invalid)?,
        feed: feed(raw.feed).map_err(Resolve::Invalid)?,
        database: database(raw.database).map_err(Resolve::Invalid)?,
        spool: spool(raw.spool).map_err(Resolve::Invalid)?,
        control: control(raw.control).map_err(Resolve::Invalid)?,
        compat: compat(raw.compat, &boards).map_err(Resolve::Invalid)?,
        console: console(raw.console).map_err(Resolve::Invalid)?,
        log: log(raw.log).map_err(Resolve::Invalid)?,
        sensors: sensors(raw.sensors, &layout, boards.len()).map_err(Resolve::Invalid)?,
        boards,
        layout,
    };
    // The OS is asked last, so that a file with real mistakes reports those.
    let host = match raw.host {
        Some(h) => check_host("host", h).map_err(Resolve::Invalid)?,
        None => {
            let h = host().map_err(Resolve::Hostname)?;
            check_host("host", h).map_err(|e| Resolve::Hostname(e.message))?
        }
    };
    Ok(Config { host, ..config })
}

/// What `resolve` can fail with.
pub(crate) enum Resolve {
    /// A value is not acceptable.
    Invalid(Invalid),
    /// The system host name is needed and unusable.
    Hostname(String),
}

fn check_host(key: &str, h: String) -> R<String> {
    let h = text(key, h)?;
    if h.len() > 255 {
        // machine_state.host is VARCHAR(255).
        return Err(Invalid::new(key, "must be at most 255 bytes long"));
    }
    if h.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Invalid::new(key, format!("{h:?} contains whitespace")));
    }
    Ok(h)
}

fn boards(raw: Vec<RawBoard>) -> R<Vec<BoardConfig>> {
    if raw.is_empty() {
        return Err(Invalid::new(
            "boards",
            "at least one [[boards]] entry is required (the carriage board)",
        ));
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, b) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("boards[{i}].{k}");
        let name = text(&key("name"), b.name)?;
        if let Some(first) = names.insert(name.clone(), i) {
            return Err(Invalid::new(
                key("name"),
                format!("board name `{name}` is already used by boards[{first}]"),
            ));
        }
        let baud = match b.baud {
            None => defaults::BAUD,
            Some(v) => u32::try_from(v).ok().filter(|&v| v > 0).ok_or_else(|| {
                Invalid::new(
                    key("baud"),
                    format!("must be a positive line speed, not {v}"),
                )
            })?,
        };
        let steppers = usize::try_from(b.steppers)
            .ok()
            .filter(|s| (1..=defaults::MAX_STEPPERS).contains(s))
            .ok_or_else(|| {
                Invalid::new(
                    key("steppers"),
                    format!(
                        "must be 1 to {}, not {}",
                        defaults::MAX_STEPPERS,
                        b.steppers
                    ),
                )
            })?;
        out.push(BoardConfig {
            port: path(&key("port"), b.port)?,
            baud,
            int_bytes: b.int_bytes,
            firmware: b.firmware,
            steppers,
            // Zero is legitimate: a board that does not reset on open.
            reset_wait: dur(b.reset_wait, defaults::RESET_WAIT),
            restore_counters_after_reset: b.restore_counters_after_reset.unwrap_or(true),
            poll_interval: at_least(
                &key("poll_interval"),
                dur(b.poll_interval, defaults::POLL_INTERVAL),
                defaults::MIN_PERIOD,
            )?,
            reply_timeout: positive(
                &key("reply_timeout"),
                dur(b.reply_timeout, defaults::REPLY_TIMEOUT),
            )?,
            move_margin: dur(b.move_margin, defaults::MOVE_MARGIN),
            name,
        });
    }
    Ok(out)
}

fn rest(key: &str, v: Option<f64>, default: f64) -> R<f64> {
    let v = v.unwrap_or(default);
    // machine_state stores rests as REAL: a value that is finite as f64 but
    // not as f32 would be written as infinity.
    if !v.is_finite() || !(v as f32).is_finite() {
        return Err(Invalid::new(
            key,
            format!("must be a finite number of seconds, not {v}"),
        ));
    }
    if v < 0.0 {
        return Err(Invalid::new(
            key,
            format!("a rest cannot be negative ({v} s)"),
        ));
    }
    if v > defaults::MAX_REST {
        return Err(Invalid::new(
            key,
            format!(
                "{v} s is longer than {} s; rests are in seconds",
                defaults::MAX_REST
            ),
        ));
    }
    Ok(v)
}

/// The X stepper's travel, `(0, 0)` without an X or with a placeholder X
/// (X max 0).
fn x_travel(layout: &crate::config::Layout) -> (i32, i32) {
    match layout.x() {
        Some(x) if x.max > x.min => (x.min, x.max),
        _ => (0, 0),
    }
}

fn operations(raw: RawOperations, x_travel: (i32, i32)) -> R<OperationSettings> {
    let d = OperationSettings::default();
    let (start_default, finish_default) = OperationSettings::sweep_defaults(x_travel);
    let k = |n: &str| format!("operations.{n}");
    let opt_int = |n: &str, v: Option<i64>, def: i32, lo: i64, what: &str| match v {
        None => Ok(def),
        Some(v) => int(&k(n), v, lo, what),
    };
    let z_down_step = match raw.z_down_step {
        None => d.z_down_step,
        Some(v) if v >= 0 => {
            return Err(Invalid::new(
                k("z_down_step"),
                format!("must be < 0 (a move toward the string), not {v}"),
            ))
        }
        Some(v) => int(&k("z_down_step"), v, i64::MIN, "")?,
    };
    Ok(OperationSettings {
        bump_check_enable: raw.bump_check_enable.unwrap_or(d.bump_check_enable),
        z_up_step: opt_int(
            "z_up_step",
            raw.z_up_step,
            d.z_up_step,
            1,
            "> 0 (a move away from the string)",
        )?,
        z_down_step,
        tune_rest: rest(&k("tune_rest"), raw.tune_rest, d.tune_rest)?,
        x_rest: rest(&k("x_rest"), raw.x_rest, d.x_rest)?,
        z_rest: rest(&k("z_rest"), raw.z_rest, d.z_rest)?,
        lap_rest: rest(&k("lap_rest"), raw.lap_rest, d.lap_rest)?,
        adjustment_level: opt_int(
            "adjustment_level",
            raw.adjustment_level,
            d.adjustment_level,
            1,
            ">= 1",
        )?,
        retry_threshold: opt_int(
            "retry_threshold",
            raw.retry_threshold,
            d.retry_threshold,
            1,
            ">= 1",
        )?,
        delta_threshold: opt_int(
            "delta_threshold",
            raw.delta_threshold,
            d.delta_threshold,
            0,
            ">= 0",
        )?,
        z_variance_threshold: opt_int(
            "z_variance_threshold",
            raw.z_variance_threshold,
            d.z_variance_threshold,
            0,
            ">= 0",
        )?,
        x_start: x_position(&k("x_start"), raw.x_start, start_default, x_travel)?,
        x_finish: x_position(&k("x_finish"), raw.x_finish, finish_default, x_travel)?,
        x_step: opt_int("x_step", raw.x_step, d.x_step, 1, ">= 1")?,
        tuner_step: opt_int("tuner_step", raw.tuner_step, d.tuner_step, 1, ">= 1")?,
        sweep_max_passes: opt_int(
            "sweep_max_passes",
            raw.sweep_max_passes,
            d.sweep_max_passes,
            1,
            ">= 1",
        )?,
        sweep_max_calibrations: opt_int(
            "sweep_max_calibrations",
            raw.sweep_max_calibrations,
            d.sweep_max_calibrations,
            0,
            ">= 0",
        )?,
        x_travel,
    })
}

/// A sweep's X position: inside the X stepper's travel.
fn x_position(key: &str, v: Option<i64>, default: i32, (lo, hi): (i32, i32)) -> R<i32> {
    let Some(v) = v else { return Ok(default) };
    if !(i64::from(lo)..=i64::from(hi)).contains(&v) {
        return Err(Invalid::new(
            key,
            format!(
                "{v} is outside the X stepper's travel {lo} to {hi} (layout.x_min, layout.x_max)"
            ),
        ));
    }
    int(key, v, i64::from(lo), "")
}

fn per_channel(name: &str, v: Option<PerChannel>, default: i32, strings: usize) -> R<Vec<i32>> {
    let key = format!("thresholds.{name}");
    match v {
        None => Ok(vec![default; strings]),
        Some(PerChannel::All(n)) => Ok(vec![int(&key, n, i64::MIN, "")?; strings]),
        Some(PerChannel::Each(values)) => {
            if values.len() != strings {
                return Err(Invalid::new(
                    key,
                    format!(
                        "has {} values but layout.strings is {strings}: write one integer for \
                         every channel, or an array of exactly {strings}",
                        values.len()
                    ),
                ));
            }
            values
                .into_iter()
                .enumerate()
                .map(|(c, n)| int(&format!("{key}[{c}]"), n, i64::MIN, ""))
                .collect()
        }
    }
}

fn thresholds(raw: RawThresholds, strings: usize) -> R<Thresholds> {
    let t = Thresholds {
        voice_count_min: per_channel("voice_count_min", raw.voice_count_min, 2, strings)?,
        voice_count_max: per_channel("voice_count_max", raw.voice_count_max, 12, strings)?,
        amp_sum_min: per_channel("amp_sum_min", raw.amp_sum_min, 20, strings)?,
        amp_sum_max: per_channel("amp_sum_max", raw.amp_sum_max, 250, strings)?,
    };
    for (min_name, max_name, min, max) in [
        (
            "voice_count_min",
            "voice_count_max",
            &t.voice_count_min,
            &t.voice_count_max,
        ),
        ("amp_sum_min", "amp_sum_max", &t.amp_sum_min, &t.amp_sum_max),
    ] {
        if let Some(c) = (0..strings).find(|&c| min[c] > max[c]) {
            return Err(Invalid::new(
                format!("thresholds.{min_name}"),
                format!(
                    "channel {c}: minimum {} is above thresholds.{max_name} {}",
                    min[c], max[c]
                ),
            )
            .at(format!("thresholds.{min_name}[{c}]")));
        }
    }
    Ok(t)
}

fn snapshot(raw: RawSnapshot) -> R<SnapshotConfig> {
    Ok(SnapshotConfig {
        interval: at_least(
            "snapshot.interval",
            dur(raw.interval, Duration::from_secs(1)),
            defaults::MIN_PERIOD,
        )?,
        link: raw.link.unwrap_or(SnapshotLink::None),
        link_max_age: positive(
            "snapshot.link_max_age",
            dur(raw.link_max_age, Duration::from_secs(2)),
        )?,
    })
}

fn feed(raw: RawFeed) -> R<FeedConfig> {
    let interval = positive(
        "feed.interval",
        dur(raw.interval, Duration::from_millis(200)),
    )?;
    let stale_after = positive(
        "feed.stale_after",
        dur(raw.stale_after, Duration::from_secs(2)),
    )?;
    if stale_after < interval {
        // Every read would find the previous one stale.
        return Err(Invalid::new(
            "feed.stale_after",
            format!(
                "{} is shorter than feed.interval {}",
                humantime::format_duration(stale_after),
                humantime::format_duration(interval)
            ),
        ));
    }
    Ok(FeedConfig {
        dir: path(
            "feed.dir",
            raw.dir.unwrap_or_else(|| defaults::FEED_DIR.into()),
        )?,
        interval,
        stale_after,
    })
}

/// Whether a `postgres://` URL carries a password, in its user info or as a
/// `password=` query parameter.
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (authority, query) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let in_userinfo = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let in_query = query
        .split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or(q))
        .is_some_and(|q| {
            q.split('&').any(|p| {
                p.split('=')
                    .next()
                    .is_some_and(|k| k.eq_ignore_ascii_case("password"))
            })
        });
    in_userinfo || in_query
}

/// The libpq TLS parameters that `database.url` may carry, percent-decoded.
/// They are taken out of the URL: tokio-postgres knows neither
/// `verify-ca`/`verify-full` nor the certificate files, and the resolved
/// configuration keeps them in one place, the `[database]` keys.
#[derive(Debug, Default)]
struct UrlTls {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
}

/// `url` without its TLS parameters, and their values. A parameter given
/// twice, or `sslnegotiation` (direct TLS is not supported), is an error.
/// Messages never repeat the URL.
fn split_url_tls(url: &str) -> R<(String, UrlTls)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), UrlTls::default()));
    };
    let mut kept: Vec<&str> = Vec::new();
    let mut tls = UrlTls::default();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match k {
            "sslmode" => &mut tls.sslmode,
            "sslrootcert" => &mut tls.sslrootcert,
            "sslcert" => &mut tls.sslcert,
            "sslkey" => &mut tls.sslkey,
            "sslnegotiation" => {
                return Err(Invalid::new(
                    "database.url",
                    "sslnegotiation is not supported: the daemon always asks the server for \
                     TLS the PostgreSQL way (SSLRequest); remove it",
                ))
            }
            _ => {
                kept.push(pair);
                continue;
            }
        };
        if slot.is_some() {
            return Err(Invalid::new("database.url", format!("gives {k} twice")));
        }
        *slot = Some(percent_decode(v).ok_or_else(|| {
            Invalid::new(
                "database.url",
                format!("the value of {k} is not valid percent-encoded UTF-8"),
            )
        })?);
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, tls))
}

/// `%XX` escapes decoded (libpq decodes nothing else: `+` stays `+`);
/// `None` for a bad escape or a result that is not UTF-8.
fn percent_decode(v: &str) -> Option<String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// One TLS setting as written: where (the key, or `database.url`) and what.
struct Given<T> {
    key: &'static str,
    value: T,
}

/// The value of `key` given as a key and/or as the URL parameter `param`;
/// both is fine only when they agree. `show` writes a value for messages.
fn one_place<T: PartialEq>(
    key: &'static str,
    param: &str,
    as_key: Option<T>,
    in_url: Option<T>,
    show: impl Fn(&T) -> String,
) -> R<Option<Given<T>>> {
    Ok(match (as_key, in_url) {
        (Some(a), Some(u)) if a != u => {
            return Err(Invalid::new(
                key,
                format!(
                    "is \"{}\" but database.url says {param}={}: give it in one place \
                     (the key, preferably)",
                    show(&a),
                    show(&u)
                ),
            ))
        }
        (Some(value), _) => Some(Given { key, value }),
        (None, Some(value)) => Some(Given {
            key: "database.url",
            value,
        }),
        (None, None) => None,
    })
}

/// The certificate file `key` (URL parameter `param`), from either place,
/// and absolute: the daemon's working directory under systemd is `/`, so a
/// relative path is a mistake waiting to happen.
fn cert_path(
    key: &'static str,
    param: &str,
    as_key: Option<PathBuf>,
    in_url: Option<String>,
) -> R<Option<Given<PathBuf>>> {
    let given = one_place(key, param, as_key, in_url.map(PathBuf::from), |p| {
        p.display().to_string()
    })?;
    let Some(g) = given else { return Ok(None) };
    // In the URL the parameter needs naming; as a key, the key names it.
    let what = if g.key == key {
        String::new()
    } else {
        format!("{param} ")
    };
    if g.value.as_os_str().is_empty() {
        return Err(Invalid::new(
            g.key,
            format!("{what}must not be an empty path"),
        ));
    }
    if !g.value.is_absolute() {
        return Err(Invalid::new(
            g.key,
            format!(
                "{what}must be an absolute path, not \"{}\"",
                g.value.display()
            ),
        ));
    }
    Ok(Some(g))
}

/// Where `target` connects to, as far as TLS cares.
#[derive(Debug, Default, PartialEq, Eq)]
struct Hosts {
    /// Every host and address is loopback (127.0.0.0/8, ::1, `localhost`)
    /// or a Unix-socket directory.
    all_local: bool,
    /// The first Unix-socket directory among the hosts, if any.
    unix: Option<String>,
}

fn is_loopback_name(name: &str) -> bool {
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name.eq_ignore_ascii_case("localhost.")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The hosts of `target`; for a URL, parsed the way the driver will parse it
/// (so a URL it cannot use is refused here, by `check-config` too).
fn hosts(target: &DatabaseTarget) -> R<Hosts> {
    let mut names: Vec<String> = Vec::new();
    let mut unix: Vec<String> = Vec::new();
    let mut addrs: Vec<std::net::IpAddr> = Vec::new();
    match target {
        DatabaseTarget::Parts { host, .. } => {
            // tokio-postgres takes a leading `/` as a socket directory.
            if host.starts_with('/') {
                unix.push(host.clone());
            } else {
                names.push(host.clone());
            }
        }
        DatabaseTarget::Url(url) => {
            let cfg: tokio_postgres::Config = url.parse().map_err(|e| {
                let mut reason = format!("{e}");
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    reason = format!("{reason}: {c}");
                    cause = c.source();
                }
                // The parser names the offending option, never the URL.
                Invalid::new(
                    "database.url",
                    format!("is not a usable PostgreSQL URL: {reason}"),
                )
            })?;
            for h in cfg.get_hosts() {
                match h {
                    tokio_postgres::config::Host::Tcp(name) => names.push(name.clone()),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(dir) => unix.push(dir.display().to_string()),
                }
            }
            addrs.extend(cfg.get_hostaddrs());
        }
    }
    let any = !(names.is_empty() && unix.is_empty() && addrs.is_empty());
    Ok(Hosts {
        all_local: any
            && names.iter().all(|n| is_loopback_name(n))
            && addrs.iter().all(|a| a.is_loopback()),
        unix: unix.into_iter().next(),
    })
}

/// The default `sslmode` for a server: none on this machine (loopback or a
/// Unix socket), where TLS protects nothing; `verify-full` anywhere else.
fn default_sslmode(hosts: &Hosts) -> SslMode {
    if hosts.all_local {
        SslMode::Disable
    } else {
        SslMode::VerifyFull
    }
}

/// The raw TLS keys of `[database]`.
struct RawTls {
    sslmode: Option<String>,
    sslrootcert: Option<PathBuf>,
    sslcert: Option<PathBuf>,
    sslkey: Option<PathBuf>,
}

/// The TLS settings from the keys and the URL's parameters, checked against
/// each other and against the hosts.
fn database_tls(target: &DatabaseTarget, keys: RawTls, url: UrlTls) -> R<DatabaseTls> {
    let hosts = hosts(target)?;
    let parse_mode = |key: &'static str, s: String| -> R<SslMode> {
        s.parse::<SslMode>().map_err(|why| {
            let why = if key == "database.url" {
                format!("sslmode={why}")
            } else {
                why
            };
            Invalid::new(key, why)
        })
    };
    let sslmode = one_place(
        "database.sslmode",
        "sslmode",
        keys.sslmode
            .map(|s| parse_mode("database.sslmode", s))
            .transpose()?,
        url.sslmode
            .map(|s| parse_mode("database.url", s))
            .transpose()?,
        |m| m.to_string(),
    )?;
    let sslrootcert = cert_path(
        "database.sslrootcert",
        "sslrootcert",
        keys.sslrootcert,
        url.sslrootcert,
    )?;
    let sslcert = cert_path("database.sslcert", "sslcert", keys.sslcert, url.sslcert)?;
    let sslkey = cert_path("database.sslkey", "sslkey", keys.sslkey, url.sslkey)?;

    let (mode, mode_key, mode_why) = match sslmode {
        Some(g) => (g.value, g.key, ""),
        None => {
            let mode = default_sslmode(&hosts);
            let why = if mode == SslMode::Disable {
                " (the default for a server on this machine)"
            } else {
                " (the default)"
            };
            (mode, "database.sslmode", why)
        }
    };
    // In the URL a setting needs naming; as a key, the key names it.
    let named = |key: &str, param: &str| {
        if key == "database.url" {
            format!("{param} ")
        } else {
            String::new()
        }
    };
    if mode.uses_tls() {
        if let Some(dir) = &hosts.unix {
            return Err(Invalid::new(
                mode_key,
                format!(
                    "{}is \"{mode}\" but the server is reached through the Unix socket \
                     directory {dir}, where PostgreSQL offers no TLS: set database.sslmode = \
                     \"disable\" (a local socket needs none), or connect over TCP",
                    named(mode_key, "sslmode")
                ),
            ));
        }
    }
    if let Some(root) = &sslrootcert {
        if !mode.verifies_chain() {
            return Err(Invalid::new(
                root.key,
                format!(
                    "{}is only used by sslmode \"verify-ca\" and \"verify-full\", but \
                     sslmode is \"{mode}\"{mode_why}: set database.sslmode = \"verify-full\" \
                     to check the server's certificate against it, or remove sslrootcert",
                    named(root.key, "sslrootcert")
                ),
            ));
        }
    }
    let client_cert = match (sslcert, sslkey) {
        (None, None) => None,
        (Some(cert), None) => {
            return Err(Invalid::new(
                "database.sslkey",
                format!(
                    "must be set too: sslcert is set ({}), and a client certificate needs \
                     its private key; give both or neither",
                    cert.key
                ),
            ))
        }
        (None, Some(key)) => {
            return Err(Invalid::new(
                "database.sslcert",
                format!(
                    "must be set too: sslkey is set ({}), and a private key needs its \
                     certificate; give both or neither",
                    key.key
                ),
            ))
        }
        (Some(cert), Some(key)) => {
            if !mode.uses_tls() {
                return Err(Invalid::new(
                    cert.key,
                    format!(
                        "a client certificate is only sent over TLS, but sslmode is \
                         \"{mode}\"{mode_why}: set database.sslmode = \"verify-full\", or \
                         remove sslcert and sslkey"
                    ),
                ));
            }
            Some(ClientCert {
                cert: cert.value,
                key: key.value,
            })
        }
    };
    Ok(DatabaseTls {
        sslmode: mode,
        sslrootcert: sslrootcert.map(|g| g.value),
        client_cert,
    })
}

/// `url` as the whole description of the server: the target and TLS
/// settings that a `[database]` naming only this URL resolves to (its own
/// TLS parameters, else the default mode for its hosts). For a URL that
/// comes from elsewhere than the file (the demo's `--database-url`).
pub(crate) fn database_url(url: &str) -> R<(DatabaseTarget, DatabaseTls)> {
    if url_has_password(url) {
        return Err(Invalid::new(
            "database.url",
            "contains a password; give the URL without one and put the password in a file \
             named by database.password_file",
        ));
    }
    let (url, url_tls) = split_url_tls(url)?;
    let target = DatabaseTarget::Url(url);
    let tls = database_tls(
        &target,
        RawTls {
            sslmode: None,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
        },
        url_tls,
    )?;
    Ok((target, tls))
}

fn database(raw: RawDatabase) -> R<DatabaseConfig> {
    let parts_given = [
        ("database.host", raw.host.is_some()),
        ("database.port", raw.port.is_some()),
        ("database.user", raw.user.is_some()),
        ("database.dbname", raw.dbname.is_some()),
    ];
    let mut url_tls = UrlTls::default();
    let target = match raw.url {
        Some(url) => {
            if let Some((k, _)) = parts_given.iter().find(|(_, set)| *set) {
                return Err(Invalid::new(
                    *k,
                    "database.url is set too: give either url or host/port/user/dbname, not both",
                ));
            }
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(Invalid::new(
                    "database.url",
                    "must start with postgres:// or postgresql://",
                ));
            }
            // The message never repeats the URL: it holds the password.
            if url_has_password(&url) {
                return Err(Invalid::new(
                    "database.url",
                    "contains a password; remove it from the URL and put it in a file of its \
                     own named by database.password_file",
                ));
            }
            let (url, tls) = split_url_tls(&url)?;
            url_tls = tls;
            DatabaseTarget::Url(url)
        }
        None => DatabaseTarget::Parts {
            host: text(
                "database.host",
                raw.host.unwrap_or_else(|| defaults::DB_HOST.into()),
            )?,
            port: match raw.port {
                None => defaults::DB_PORT,
                Some(p) => u16::try_from(p).ok().filter(|&p| p > 0).ok_or_else(|| {
                    Invalid::new("database.port", format!("must be 1 to 65535, not {p}"))
                })?,
            },
            user: text(
                "database.user",
                raw.user.unwrap_or_else(|| defaults::DB_USER.into()),
            )?,
            dbname: text(
                "database.dbname",
                raw.dbname.unwrap_or_else(|| defaults::DB_NAME.into()),
            )?,
        },
    };
    let tls = database_tls(
        &target,
        RawTls {
            sslmode: raw.sslmode,
            sslrootcert: raw.sslrootcert,
            sslcert: raw.sslcert,
            sslkey: raw.sslkey,
        },
        url_tls,
    )?;
    Ok(DatabaseConfig {
        target,
        tls,
        password_file: raw
            .password_file
            .map(|p| path("database.password_file", p))
            .transpose()?,
        auto_migrate: raw.auto_migrate.unwrap_or(false),
        connect_timeout: positive(
            "database.connect_timeout",
            dur(raw.connect_timeout, Duration::from_secs(5)),
        )?,
    })
}

fn spool(raw: RawSpool) -> R<SpoolConfig> {
    let max_bytes = raw.max_bytes.map_or(defaults::SPOOL_MAX_BYTES, |b| b.0);
    if max_bytes < defaults::SPOOL_MIN_BYTES {
        return Err(Invalid::new(
            "spool.max_bytes",
            format!("{max_bytes} bytes is less than the minimum of 1MiB"),
        ));
    }
    Ok(SpoolConfig {
        path: path(
            "spool.path",
            raw.path.unwrap_or_else(|| defaults::SPOOL_PATH.into()),
        )?,
        max_bytes,
    })
}

/// Longest path a Unix socket can be bound at (`sun_path` holds 108 bytes
/// with the terminating NUL).
const SOCKET_PATH_MAX: usize = 107;

fn compat(raw: RawCompat, boards: &[BoardConfig]) -> R<CompatConfig> {
    let board = match raw.board {
        None => boards
            .first()
            .ok_or_else(|| Invalid::new("compat.board", "there is no board to serve"))?,
        Some(name) => {
            let name = text("compat.board", name)?;
            boards.iter().find(|b| b.name == name).ok_or_else(|| {
                let names: Vec<&str> = boards.iter().map(|b| b.name.as_str()).collect();
                Invalid::new(
                    "compat.board",
                    format!(
                        "no board is named {name:?} (the boards are {})",
                        names.join(", ")
                    ),
                )
            })?
        }
    };
    let port = match raw.port {
        None => board.port.clone(),
        Some(p) => path("compat.port", p)?,
    };
    if port.to_string_lossy().contains('\0') {
        return Err(Invalid::new("compat.port", "must not contain a NUL byte"));
    }
    let c = CompatConfig {
        enabled: raw.enabled.unwrap_or(false),
        board: board.name.clone(),
        port,
        dir: path(
            "compat.dir",
            raw.dir.unwrap_or_else(|| defaults::COMPAT_DIR.into()),
        )?,
    };
    let socket = c.socket();
    let len = socket.as_os_str().len();
    if len > SOCKET_PATH_MAX {
        return Err(Invalid::new(
            "compat",
            format!(
                "the socket {} is {len} bytes long, more than the {SOCKET_PATH_MAX} a Unix socket \
                 path may have: choose a shorter compat.dir or compat.port",
                socket.display()
            ),
        ));
    }
    Ok(c)
}

fn control(raw: RawControl) -> R<ControlConfig> {
    Ok(ControlConfig {
        socket: path(
            "control.socket",
            raw.socket
                .unwrap_or_else(|| defaults::CONTROL_SOCKET.into()),
        )?,
        group: raw.group.map(|g| text("control.group", g)).transpose()?,
        mode: raw.mode.map_or(defaults::CONTROL_MODE, |m| m.0),
        idle_timeout: positive(
            "control.idle_timeout",
            dur(raw.idle_timeout, Duration::from_secs(60)),
        )?,
    })
}

fn console(raw: RawConsole) -> R<ConsoleConfig> {
    let listen = match raw.listen {
        None => defaults::CONSOLE_LISTEN
            .parse()
            .map_err(|_| Invalid::new("console.listen", "the default does not parse"))?,
        Some(text) => text.trim().parse().map_err(|_| {
            Invalid::new(
                "console.listen",
                format!(
                    "`{text}` is not an address and port such as \"127.0.0.1:7125\" or \"[::1]:7125\""
                ),
            )
        })?,
    };
    Ok(ConsoleConfig {
        listen,
        token_file: raw
            .token_file
            .map(|p| path("console.token_file", p))
            .transpose()?,
    })
}

/// Level names a bare `log.level` may be.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

fn log(raw: RawLog) -> R<LogConfig> {
    let level = text(
        "log.level",
        raw.level.unwrap_or_else(|| defaults::LOG_LEVEL.into()),
    )?;
    // EnvFilter reads a bare word as a target name, so the typo "inof" would
    // silence everything but a target that does not exist: a single word
    // must be a level.
    let bare = !level.contains(['=', ',', ':', '[']);
    if bare && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level.trim())) {
        return Err(Invalid::new(
            "log.level",
            format!("\"{level}\" is not a level: expected trace, debug, info, warn, error or off, or an EnvFilter directive string"),
        ));
    }
    // Parsed the way the daemon will, but without reading RUST_LOG, so that
    // a bad directive fails here with the key named instead of at start-up.
    tracing_subscriber::EnvFilter::builder()
        .parse(&level)
        .map_err(|e| {
            Invalid::new(
                "log.level",
                format!("{e} (expected trace, debug, info, warn, error or an EnvFilter directive)"),
            )
        })?;
    Ok(LogConfig { level })
}

fn sensors(raw: RawSensors, layout: &Layout, boards: usize) -> R<SensorsConfig> {
    let strings = layout.strings();
    let backend = raw.backend.unwrap_or(SensorBackend::None);
    if backend != SensorBackend::Simulated && raw.simulator_sockets.is_some() {
        // Sockets only a simulator serves must never look as if a machine's
        // sensors were read through them.
        return Err(Invalid::new(
            "sensors.simulator_sockets",
            format!(
                "only used with sensors.backend = \"simulated\" (simulated hardware), but the \
                 backend is \"{backend}\": remove it, or set backend = \"simulated\""
            ),
        ));
    }
    if backend != SensorBackend::Simulated && raw.x_switches.is_some() {
        return Err(Invalid::new(
            "sensors.x_switches",
            format!(
                "only used with sensors.backend = \"simulated\", but the backend is \
                 \"{backend}\": with \"gpio\" the lines say how the X limit switches are wired \
                 (x_home_line and x_away_line, or x_switch_line)"
            ),
        ));
    }
    if backend != SensorBackend::Gpio {
        // A chip or lines left behind after switching away from gpio would
        // otherwise look as if they were in use.
        for (k, set) in [
            ("chip", raw.chip.is_some()),
            ("lines", raw.lines.is_some()),
            ("active_low", raw.active_low.is_some()),
            ("bias", raw.bias.is_some()),
            ("x_home_line", raw.x_home_line.is_some()),
            ("x_away_line", raw.x_away_line.is_some()),
            ("x_switch_line", raw.x_switch_line.is_some()),
        ] {
            if set {
                return Err(Invalid::new(
                    format!("sensors.{k}"),
                    format!(
                        "only used with sensors.backend = \"gpio\", but the backend is \"{backend}\": \
                         remove it, or set backend = \"gpio\""
                    ),
                ));
            }
        }
        return Ok(match backend {
            SensorBackend::Simulated => {
                let x_switches = raw.x_switches.unwrap_or_default();
                check_x_switches_fit(layout, x_switches, "sensors.x_switches")?;
                SensorsConfig::Simulated {
                    x_switches,
                    sockets: simulator_sockets(raw.simulator_sockets, boards)?,
                }
            }
            _ => SensorsConfig::None,
        });
    }
    let z = 2 * strings;
    // Not given: found at start by the lines (the header's chip is not
    // gpiochip0 on every Pi).
    let chip = raw
        .chip
        .clone()
        .map(|c| path("sensors.chip", c))
        .transpose()?;
    let Some(raw_lines) = raw.lines.clone() else {
        return Err(Invalid::new(
            "sensors.lines",
            format!(
                "required with sensors.backend = \"gpio\": one line per Z stepper ({z} for \
                 layout.strings = {strings}), in Z stepper order"
            ),
        ));
    };
    if raw_lines.len() != z {
        return Err(Invalid::new(
            "sensors.lines",
            format!(
                "has {} lines but there are {z} Z steppers (2 per string, layout.strings = \
                 {strings}): one line per Z stepper, in Z stepper order (string 0 in, string 0 \
                 out, string 1 in, ...)",
                raw_lines.len()
            ),
        ));
    }
    let mut lines: Vec<u32> = Vec::with_capacity(z);
    for (i, &l) in raw_lines.iter().enumerate() {
        let key = format!("sensors.lines[{i}]");
        let line = line_offset(&key, l)?;
        if let Some(first) = lines.iter().position(|&x| x == line) {
            // Two sensors on one line would make one string's contact look
            // like the other's.
            return Err(Invalid::new(
                "sensors.lines",
                format!(
                    "line {line} is given twice, as sensors.lines[{first}] and \
                     sensors.lines[{i}]: every sensor needs its own line"
                ),
            )
            .at(key));
        }
        lines.push(line);
    }
    let x_switches = x_switch_lines(&raw, &lines)?;
    let key = match x_switches {
        XSwitchLines::One(_) => "sensors.x_switch_line",
        _ => "sensors.x_home_line",
    };
    check_x_switches_fit(layout, x_switches.wiring(), key)?;
    Ok(SensorsConfig::Gpio(GpioSensorsConfig {
        chip,
        lines,
        // Every sensor of the machines is a contact to ground with the
        // pull-up bias (reference/hosts.md, "electrical sense").
        active_low: raw.active_low.unwrap_or(true),
        bias: raw.bias.unwrap_or_default(),
        x_switches,
    }))
}

/// A GPIO line offset from the file.
fn line_offset(key: &str, l: i64) -> R<u32> {
    u32::try_from(l).map_err(|_| {
        Invalid::new(
            key,
            format!("a GPIO line offset is 0 or more and fits 32 bits, not {l}"),
        )
    })
}

/// `sensors.x_home_line` and `x_away_line`, or `x_switch_line`: distinct
/// lines, none of them a touch sensor's.
fn x_switch_lines(raw: &RawSensors, touch: &[u32]) -> R<XSwitchLines> {
    let one = |key: &str, v: Option<i64>| -> R<Option<u32>> {
        let Some(v) = v else { return Ok(None) };
        let line = line_offset(key, v)?;
        if let Some(i) = touch.iter().position(|&t| t == line) {
            // The switch would read as that string's contact, and back.
            return Err(Invalid::new(
                key,
                format!(
                    "line {line} is the touch sensor's of sensors.lines[{i}]: an X limit \
                     switch needs a line of its own"
                ),
            ));
        }
        Ok(Some(line))
    };
    let home = one("sensors.x_home_line", raw.x_home_line)?;
    let away = one("sensors.x_away_line", raw.x_away_line)?;
    let both = one("sensors.x_switch_line", raw.x_switch_line)?;
    match (home, away, both) {
        (None, None, None) => Ok(XSwitchLines::None),
        (None, None, Some(l)) => Ok(XSwitchLines::One(l)),
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => Err(Invalid::new(
            "sensors.x_switch_line",
            "set together with x_home_line/x_away_line: give one switch for both ends \
             (x_switch_line, as on stringdriver-1) or one per end (x_home_line and x_away_line, \
             as on stringdriver-2), not both",
        )),
        (Some(h), Some(a), None) if h == a => Err(Invalid::new(
            "sensors.x_away_line",
            format!(
                "is line {a}, like sensors.x_home_line: for one switch at both ends set \
                 x_switch_line = {a} instead"
            ),
        )),
        (Some(home), Some(away), None) => Ok(XSwitchLines::Two { home, away }),
        (Some(_), None, None) => Err(Invalid::new(
            "sensors.x_home_line",
            "set without sensors.x_away_line: give both (a switch at each end), or \
             x_switch_line alone for one switch at both ends",
        )),
        (None, Some(_), None) => Err(Invalid::new(
            "sensors.x_away_line",
            "set without sensors.x_home_line: give both (a switch at each end), or \
             x_switch_line alone for one switch at both ends",
        )),
    }
}

/// X limit switches need an X stepper that moves.
fn check_x_switches_fit(layout: &Layout, wiring: XSwitchWiring, key: &str) -> R<()> {
    if wiring == XSwitchWiring::None {
        return Ok(());
    }
    let Some(x) = layout.x() else {
        return Err(Invalid::new(
            key,
            "X limit switches are configured, but layout.x_index is not: there is no X \
             stepper for them to find",
        ));
    };
    let (_, max) = layout.limits(x.first);
    if max == 0 {
        return Err(Invalid::new(
            key,
            "X limit switches are configured, but X max is 0 (a placeholder X without a \
             motor, as on stringdriver-3): the X homing operations skip such a machine; remove \
             the switches",
        ));
    }
    Ok(())
}

/// `sensors.simulator_sockets`: one absolute path per board, "" for none;
/// absent is an empty list (only in-process simulators).
fn simulator_sockets(raw: Option<Vec<PathBuf>>, boards: usize) -> R<Vec<Option<PathBuf>>> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    if raw.len() != boards {
        return Err(Invalid::new(
            "sensors.simulator_sockets",
            format!(
                "has {} entries but there are {boards} [[boards]]: one socket path per board, \
                 in board order (\"\" for a board without simulated sensors)",
                raw.len()
            ),
        ));
    }
    let mut sockets: Vec<Option<PathBuf>> = Vec::with_capacity(boards);
    for (i, p) in raw.into_iter().enumerate() {
        let key = format!("sensors.simulator_sockets[{i}]");
        if p.as_os_str().is_empty() {
            sockets.push(None);
            continue;
        }
        // The daemon runs as a service or a test's child, whose working
        // directory says nothing about where the simulator put its socket.
        if !p.is_absolute() {
            return Err(Invalid::new(
                &key,
                format!(
                    "must be an absolute path, not \"{}\" (or \"\" for a board without \
                     simulated sensors)",
                    p.display()
                ),
            ));
        }
        if let Some(first) = sockets.iter().position(|s| s.as_ref() == Some(&p)) {
            // Two boards reading one socket would give one board the other's
            // readings.
            return Err(Invalid::new(
                "sensors.simulator_sockets",
                format!(
                    "{} is given twice, as sensors.simulator_sockets[{first}] and {key}: every \
                     board has its own simulator",
                    p.display()
                ),
            )
            .at(key));
        }
        sockets.push(Some(p));
    }
    Ok(sockets)
}

/// The file that resolves to `config` again, with every default written out.
pub(crate) fn to_raw(config: &Config) -> RawConfig {
    let some_d = |d: Duration| Some(HumanDuration(d));
    let o = &config.operations;
    let t = &config.thresholds;
    let each = |v: &Vec<i32>| Some(PerChannel::Each(v.iter().map(|&n| i64::from(n)).collect()));
    let (url, host, port, user, dbname) = match &config.database.target {
        DatabaseTarget::Url(u) => (Some(u.clone()), None, None, None, None),
        DatabaseTarget::Parts {
            host,
            port,
            user,
            dbname,
        } => (
            None,
            Some(host.clone()),
            Some(i64::from(*port)),
            Some(user.clone()),
            Some(dbname.clone()),
        ),
    };
    RawConfig {
        host: Some(config.host.clone()),
        boards: config
            .boards
            .iter()
            .map(|b| RawBoard {
                name: b.name.clone(),
                port: b.port.clone(),
                baud: Some(i64::from(b.baud)),
                int_bytes: b.int_bytes,
                firmware: b.firmware,
                steppers: b.steppers as i64,
                reset_wait: some_d(b.reset_wait),
                restore_counters_after_reset: Some(b.restore_counters_after_reset),
                poll_interval: some_d(b.poll_interval),
                reply_timeout: some_d(b.reply_timeout),
                move_margin: some_d(b.move_margin),
            })
            .collect(),
        layout: config.layout.to_raw(),
        motor: config.motor.to_raw(),
        operations: RawOperations {
            bump_check_enable: Some(o.bump_check_enable),
            z_up_step: Some(o.z_up_step.into()),
            z_down_step: Some(o.z_down_step.into()),
            tune_rest: Some(o.tune_rest),
            x_rest: Some(o.x_rest),
            z_rest: Some(o.z_rest),
            lap_rest: Some(o.lap_rest),
            adjustment_level: Some(o.adjustment_level.into()),
            retry_threshold: Some(o.retry_threshold.into()),
            delta_threshold: Some(o.delta_threshold.into()),
            z_variance_threshold: Some(o.z_variance_threshold.into()),
            x_start: Some(o.x_start.into()),
            x_finish: Some(o.x_finish.into()),
            x_step: Some(o.x_step.into()),
            tuner_step: Some(o.tuner_step.into()),
            sweep_max_passes: Some(o.sweep_max_passes.into()),
            sweep_max_calibrations: Some(o.sweep_max_calibrations.into()),
        },
        thresholds: RawThresholds {
            voice_count_min: each(&t.voice_count_min),
            voice_count_max: each(&t.voice_count_max),
            amp_sum_min: each(&t.amp_sum_min),
            amp_sum_max: each(&t.amp_sum_max),
        },
        snapshot: RawSnapshot {
            interval: some_d(config.snapshot.interval),
            link: Some(config.snapshot.link),
            link_max_age: some_d(config.snapshot.link_max_age),
        },
        feed: RawFeed {
            dir: Some(config.feed.dir.clone()),
            interval: some_d(config.feed.interval),
            stale_after: some_d(config.feed.stale_after),
        },
        database: RawDatabase {
            url,
            host,
            port,
            user,
            dbname,
            password_file: config.database.password_file.clone(),
            auto_migrate: Some(config.database.auto_migrate),
            connect_timeout: some_d(config.database.connect_timeout),
            sslmode: Some(config.database.tls.sslmode.as_str().to_string()),
            sslrootcert: config.database.tls.sslrootcert.clone(),
            sslcert: config
                .database
                .tls
                .client_cert
                .as_ref()
                .map(|c| c.cert.clone()),
            sslkey: config
                .database
                .tls
                .client_cert
                .as_ref()
                .map(|c| c.key.clone()),
            password: None,
        },
        spool: RawSpool {
            path: Some(config.spool.path.clone()),
            max_bytes: Some(ByteSize(config.spool.max_bytes)),
        },
        control: RawControl {
            socket: Some(config.control.socket.clone()),
            group: config.control.group.clone(),
            mode: Some(OctalMode(config.control.mode)),
            idle_timeout: some_d(config.control.idle_timeout),
        },
        compat: RawCompat {
            enabled: Some(config.compat.enabled),
            board: Some(config.compat.board.clone()),
            port: Some(config.compat.port.clone()),
            dir: Some(config.compat.dir.clone()),
        },
        console: RawConsole {
            listen: Some(config.console.listen.to_string()),
            token_file: config.console.token_file.clone(),
        },
        log: RawLog {
            level: Some(config.log.level.clone()),
        },
        sensors: match &config.sensors {
            SensorsConfig::Gpio(g) => RawSensors {
                backend: Some(SensorBackend::Gpio),
                chip: g.chip.clone(),
                lines: Some(g.lines.iter().map(|&l| i64::from(l)).collect()),
                active_low: Some(g.active_low),
                bias: Some(g.bias),
                x_home_line: match g.x_switches {
                    XSwitchLines::Two { home, .. } => Some(i64::from(home)),
                    _ => None,
                },
                x_away_line: match g.x_switches {
                    XSwitchLines::Two { away, .. } => Some(i64::from(away)),
                    _ => None,
                },
                x_switch_line: match g.x_switches {
                    XSwitchLines::One(l) => Some(i64::from(l)),
                    _ => None,
                },
                x_switches: None,
                simulator_sockets: None,
            },
            SensorsConfig::Simulated {
                sockets,
                x_switches,
            } => RawSensors {
                backend: Some(SensorBackend::Simulated),
                x_switches: Some(*x_switches),
                simulator_sockets: (!sockets.is_empty()).then(|| {
                    sockets
                        .iter()
                        .map(|s| s.clone().unwrap_or_default())
                        .collect()
                }),
                ..RawSensors::default()
            },
            other => RawSensors {
                backend: Some(other.backend()),
                ..RawSensors::default()
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_found_in_userinfo_and_query() {
        assert!(url_has_password("postgres://u:secret@db/x"));
        assert!(url_has_password("postgres://u:@db/x"));
        assert!(url_has_password(
            "postgresql://db/x?sslmode=require&password=secret"
        ));
        assert!(url_has_password("postgres://db/x?PASSWORD=s"));
        assert!(!url_has_password(
            "postgres://stringdriver@db.lab:5432/audmon"
        ));
        assert!(!url_has_password(
            "postgres://db.lab:5432/audmon?sslmode=require"
        ));
        assert!(!url_has_password("postgres://u@[::1]:5432/x"));
        // A colon after the host is the port, not a password.
        assert!(!url_has_password(
            "postgres://db.lab:5432/x?application_name=a:b"
        ));
    }

    #[test]
    fn url_tls_parameters_are_taken_out_of_the_url() {
        let (url, tls) = split_url_tls(
            "postgres://u@db.lab/x?application_name=a&sslmode=verify-ca\
             &sslrootcert=%2Fetc%2Fca%20file.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://u@db.lab/x?application_name=a&connect_timeout=3"
        );
        assert_eq!(tls.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(tls.sslrootcert.as_deref(), Some("/etc/ca file.pem"));
        assert_eq!(tls.sslcert, None);

        let (url, tls) = split_url_tls("postgres://u@db/x?sslmode=require").unwrap();
        assert_eq!(url, "postgres://u@db/x");
        assert_eq!(tls.sslmode.as_deref(), Some("require"));
        let (url, _) = split_url_tls("postgres://u@db/x").unwrap();
        assert_eq!(url, "postgres://u@db/x");

        let e = split_url_tls("postgres://u@db/x?sslmode=require&sslmode=disable").unwrap_err();
        assert!(e.message.contains("twice"), "{e:?}");
        let e = split_url_tls("postgres://u@db/x?sslnegotiation=direct").unwrap_err();
        assert!(e.message.contains("sslnegotiation"), "{e:?}");
        let e = split_url_tls("postgres://u@db/x?sslcert=%zz").unwrap_err();
        assert!(e.message.contains("percent-encoded"), "{e:?}");
        assert_eq!(percent_decode("a+b%41").as_deref(), Some("a+bA"));
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
    }

    fn mode_for(target: DatabaseTarget) -> SslMode {
        default_sslmode(&hosts(&target).unwrap())
    }

    fn parts(host: &str) -> DatabaseTarget {
        DatabaseTarget::Parts {
            host: host.into(),
            port: 5432,
            user: "u".into(),
            dbname: "d".into(),
        }
    }

    #[test]
    fn tls_is_off_by_default_only_for_servers_on_this_machine() {
        for local in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.3.2.1",
            "::1",
            "[::1]",
        ] {
            assert_eq!(mode_for(parts(local)), SslMode::Disable, "{local}");
        }
        assert_eq!(mode_for(parts("/run/postgresql")), SslMode::Disable);
        for remote in ["db.lab", "10.0.0.5", "::2", "localhost.lab", "128.0.0.1"] {
            assert_eq!(mode_for(parts(remote)), SslMode::VerifyFull, "{remote}");
        }
        let url = |u: &str| DatabaseTarget::Url(u.to_string());
        assert_eq!(
            mode_for(url("postgres://u@127.0.0.1:5/x")),
            SslMode::Disable
        );
        assert_eq!(mode_for(url("postgres://u@[::1]/x")), SslMode::Disable);
        assert_eq!(
            mode_for(url("postgres://u@localhost,127.0.0.2/x")),
            SslMode::Disable
        );
        assert_eq!(
            mode_for(url("postgres://u@%2Frun%2Fpostgresql/x")),
            SslMode::Disable
        );
        // One remote host among local ones is enough to need TLS.
        assert_eq!(
            mode_for(url("postgres://u@localhost,db.lab/x")),
            SslMode::VerifyFull
        );
        assert_eq!(
            mode_for(url("postgres://u@db.lab/x?hostaddr=127.0.0.1")),
            SslMode::VerifyFull,
            "a remote name through a local tunnel still gets its certificate checked"
        );
        assert_eq!(
            mode_for(url("postgres://u@localhost/x?hostaddr=10.1.1.1")),
            SslMode::VerifyFull
        );
        assert_eq!(
            mode_for(url("postgres://u@/x?hostaddr=127.0.0.1")),
            SslMode::Disable
        );
    }

    #[test]
    fn rests_must_fit_a_real_column() {
        assert!(rest("k", Some(1e300), 0.0).is_err());
        assert!(rest("k", Some(f64::NAN), 0.0).is_err());
        assert!(rest("k", Some(-0.5), 0.0).is_err());
        assert!(rest("k", Some(3601.0), 0.0).is_err());
        assert_eq!(rest("k", Some(0.0), 1.0).unwrap(), 0.0);
        assert_eq!(rest("k", None, 1.5).unwrap(), 1.5);
    }

    #[test]
    fn log_levels_and_directives() {
        for ok in ["info", "debug", "warn,stringdriverd::board=trace"] {
            assert!(
                log(RawLog {
                    level: Some(ok.into())
                })
                .is_ok(),
                "{ok}"
            );
        }
        for bad in ["", "  ", "info,=[", "stringdriverd=loud", "inof", "verbose"] {
            let e = log(RawLog {
                level: Some(bad.into()),
            })
            .unwrap_err();
            assert_eq!(e.key, "log.level", "{bad}");
        }
    }
}
