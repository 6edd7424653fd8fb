//! `stringdriverd`: the daemon and its maintenance subcommands. Thin: it
//! parses arguments, sets up logging and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::builder::TypedValueParser;
use clap::{CommandFactory, Parser, Subcommand};
use stringdriverd::protocol::{Firmware, IntWidth};

/// Where a host's configuration lives (the package installs it there); every
/// subcommand that reads a configuration takes it unless --config says otherwise.
const DEFAULT_CONFIG: &str = "/etc/stringdriver/stringdriver.toml";

/// The demo's configuration, relative to the stringdriverd checkout.
const DEMO_CONFIG: &str = "config/demo.toml";

#[derive(Parser)]
#[command(
    name = "stringdriverd",
    version,
    about = "The stringdriver machine daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon (as the systemd service does).
    Run {
        /// The TOML file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration file and print it fully resolved.
    CheckConfig {
        /// The TOML file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Only the verdict, not the resolved file (the unit's ExecReload=,
        /// whose output goes to the journal on every reload).
        #[arg(long)]
        quiet: bool,
    },
    /// Create or upgrade the PostgreSQL schema (machine_state, operations, stepper_roles).
    Migrate {
        /// The TOML file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Link machine_state rows without controls_id to the audmon controls row
    /// of the same host nearest in time (idempotent); prints what it changed.
    Link {
        /// The TOML file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Only rows recorded at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Largest time difference to accept.
        #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
        tolerance: Duration,
    },
    /// Show the local spool: backlog, oldest unshipped record, dead letters, totals.
    SpoolStatus {
        /// The TOML file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the whole daemon on simulated hardware: a simulated board for
    /// every board of the configuration, a simulated audmon feed, snapshots
    /// into the spool, shipped to PostgreSQL when a database is given.
    Demo {
        /// The TOML file; the default is relative to the stringdriverd
        /// checkout (run the demo from there, or pass the file's path).
        #[arg(long, default_value = DEMO_CONFIG)]
        config: PathBuf,
        /// PostgreSQL to ship to (no password in it); default: $DATABASE_URL.
        /// With neither, nothing connects anywhere and records stay in the spool.
        #[arg(long)]
        database_url: Option<String>,
        /// Stop after this many seconds; default: until Ctrl-C or SIGTERM.
        #[arg(long)]
        seconds: Option<u64>,
        /// Speed scale of the simulated firmware and audmon (1 = real time).
        #[arg(long, default_value_t = 1.0)]
        speed_scale: f64,
        /// Where to serve the control socket (stringdriverctl --socket PATH);
        /// default: `[control] socket` of the file.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Also start the operator console on this address (e.g.
        /// 127.0.0.1:7125; port 0: any free port), a client of the demo's
        /// control socket like `stringdriverd console`; its URL is printed.
        #[arg(long, value_name = "ADDR:PORT")]
        console: Option<std::net::SocketAddr>,
    },
    /// Serve the operator console: a web page on `[console] listen` that
    /// talks to the daemon through its control socket only.
    Console {
        /// The TOML file (`[console]` and `[control] socket`).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Listen here instead of `console.listen` (port 0: any free port).
        /// Any address but 127.0.0.1 and [::1] needs a token.
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<std::net::SocketAddr>,
        /// The daemon's control socket instead of `control.socket`.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// The login token's file instead of `console.token_file` (default
        /// otherwise: the systemd credential `console-token`).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Export a host's recordings over a time window as a dataset for machine
    /// learning: Parquet (or CSV) frames of audio partials with the machine
    /// state in force, meta/info.json, meta/episodes.jsonl, meta/stats.json.
    Export {
        #[command(flatten)]
        window: WindowArgs,
        /// The dataset directory: new or empty.
        #[arg(long)]
        out: PathBuf,
        /// Data file format.
        #[arg(long, value_enum, default_value = "parquet")]
        format: stringdriverd::export::Format,
        /// Oldest machine_state (before the frame) that may describe a frame
        /// with no state linked to it by controls_id.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        tolerance: Duration,
        /// Frames per data file before the next file is started.
        #[arg(long, default_value_t = stringdriverd::export::args::DEFAULT_FRAMES_PER_FILE)]
        frames_per_file: u64,
    },
    /// Write one self-contained HTML page (no network needed to open it) of
    /// what a host recorded in a time window: positions, voice_count and
    /// amp_sum with their thresholds, the operations, the gaps.
    Report {
        #[command(flatten)]
        window: WindowArgs,
        /// The HTML file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve a simulated board on a pseudo-terminal linked at PATH.
    SimController {
        /// Where to put the symlink to the pseudo-terminal.
        #[arg(long)]
        link: PathBuf,
        /// Firmware to imitate.
        #[arg(long, value_parser = firmware_parser())]
        profile: Firmware,
        /// Number of steppers (default: the board in service for the profile).
        #[arg(long)]
        steppers: Option<usize>,
        /// Multiplies the firmware's speeds (moves, reply pacing, reset window).
        #[arg(long, default_value_t = 1.0)]
        speed_scale: f64,
        /// Width of the firmware's int (default: 2 for v1/v2, 4 for tuner).
        #[arg(long, value_parser = width_parser())]
        int_bytes: Option<IntWidth>,
        /// How long the board is deaf after the port is opened, before scaling.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        reset_window: Duration,
        /// Also serve the board's touch sensors on this Unix socket, for a
        /// daemon with sensors.backend = "simulated" and this path in
        /// sensors.simulator_sockets. Z steppers start on their strings
        /// (touching): the simulator's mechanism and string contacts are at 0.
        /// The carriage's X limit switches (home at 0, away at X max) are
        /// served there too.
        #[arg(long)]
        touch_socket: Option<PathBuf>,
    },
    /// Open a board, wait for its reset and print its counters.
    Probe {
        /// The serial device.
        #[arg(long)]
        port: PathBuf,
        /// Firmware command table.
        #[arg(long, value_parser = firmware_parser(), default_value = "v2")]
        profile: Firmware,
        /// Width of the firmware's int (default: 2 for v1/v2, 4 for tuner).
        #[arg(long, value_parser = width_parser())]
        int_bytes: Option<IntWidth>,
        /// Baud rate.
        #[arg(long, default_value_t = 115_200)]
        baud: u32,
        /// How long the board is deaf after opening.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        reset_wait: Duration,
        /// How long to wait for each reply.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Print the manual page (roff) on stdout, e.g. `stringdriverd man | man -l -`.
    #[command(hide = true)]
    Man {
        /// Write every page (the program's and one per subcommand) into
        /// this directory instead.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

/// What `export` and `report` read: a host's rows in a time window.
#[derive(clap::Args)]
struct WindowArgs {
    /// The TOML file (host, [database]).
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Host to read; default: the configuration's host.
    #[arg(long)]
    host: Option<String>,
    /// Window start, inclusive (RFC 3339, e.g. 2026-11-01T00:00:00Z).
    #[arg(long)]
    since: chrono::DateTime<chrono::Utc>,
    /// Window end, exclusive (RFC 3339).
    #[arg(long)]
    until: chrono::DateTime<chrono::Utc>,
    /// PostgreSQL URL (no password in it) instead of the file's [database].
    #[arg(long)]
    database_url: Option<String>,
}

/// The firmware profiles as clap's possible values (listed in --help,
/// checked with "did you mean" on a typo), parsed by `Firmware`'s own names.
fn firmware_parser() -> impl TypedValueParser<Value = Firmware> {
    clap::builder::PossibleValuesParser::new(Firmware::ALL.map(Firmware::name))
        .try_map(|s| s.parse::<Firmware>())
}

/// The int widths as clap's possible values (bytes).
fn width_parser() -> impl TypedValueParser<Value = IntWidth> {
    clap::builder::PossibleValuesParser::new(["2", "4"]).try_map(|s| {
        let n: u8 = s.parse().map_err(|_| format!("`{s}` is not 2 or 4"))?;
        IntWidth::try_from(n)
    })
}

fn default_width(f: Firmware) -> IntWidth {
    match f {
        Firmware::Tuner => IntWidth::Four,
        Firmware::V1 | Firmware::V2 => IntWidth::Two,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("stringdriverd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Run { config } => {
            let cfg = stringdriverd::config::load(&config)?;
            // Before anything in the state directory is touched: one daemon per machine.
            let _claim = stringdriverd::lock::StateLock::acquire(&stringdriverd::lock::state_dir(
                &cfg.spool.path,
            ))?;
            stringdriverd::logging::init(&cfg.log.level);
            let path = stringdriverd::daemon::config_path(&config);
            runtime()?.block_on(stringdriverd::daemon::run(path, cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::CheckConfig { config, quiet } => {
            let cfg = match stringdriverd::config::load_all(&config) {
                Ok(cfg) => cfg,
                Err(errors) => {
                    // Every mistake at once, each on its own line as `run` says the first.
                    for e in &errors {
                        eprintln!("stringdriverd: {e}");
                    }
                    let n = errors.len();
                    let s = if n == 1 { "" } else { "s" };
                    eprintln!("{}: {n} error{s}", config.display());
                    return Ok(ExitCode::FAILURE);
                }
            };
            // A backend this build cannot run is a configuration it cannot use.
            stringdriverd::sensors::check_buildable(&cfg)
                .with_context(|| format!("{}: sensors.backend", config.display()))?;
            // The TLS certificate files, read as the daemon will read them.
            stringdriverd::store::tls::TlsConnector::new(&cfg.database.tls)?;
            if !quiet {
                print!("{}", cfg.to_toml_string());
            }
            eprintln!("{}: configuration is valid", config.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Migrate { config } => {
            let cfg = stringdriverd::config::load(&config)?;
            stringdriverd::logging::init(&cfg.log.level);
            let pg = stringdriverd::store::pg::pg_config(&cfg.database)?;
            let target = stringdriverd::store::pg::describe(&pg);
            let report = runtime()?.block_on(async {
                let mut client = stringdriverd::store::pg::connect(&pg).await?;
                let report = stringdriverd::store::migrate::migrate(&mut client).await?;
                anyhow::Ok(report)
            })?;
            if report.applied.is_empty() {
                println!("{target}: schema is current (version {})", report.current);
            } else {
                for (v, name) in &report.applied {
                    println!("{target}: applied V{v} {name}");
                }
                println!("{target}: schema is now at version {}", report.current);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Link {
            config,
            since,
            tolerance,
        } => {
            let cfg = stringdriverd::config::load(&config)?;
            stringdriverd::logging::init(&cfg.log.level);
            let pg = stringdriverd::store::pg::pg_config(&cfg.database)?;
            let rows = runtime()?.block_on(async {
                let client = stringdriverd::store::pg::connect(&pg).await?;
                stringdriverd::store::migrate::check_migrated(&client).await?;
                let rows =
                    stringdriverd::store::controls::backfill(&client, &cfg.host, since, tolerance)
                        .await?;
                anyhow::Ok(rows)
            })?;
            print!("{}", stringdriverd::store::controls::render_linked(&rows));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::SpoolStatus { config, json } => {
            let cfg = stringdriverd::config::load(&config)?;
            let path = &cfg.spool.path;
            if !path.exists() {
                anyhow::bail!(
                    "no spool at {} (nothing has been captured yet)",
                    path.display()
                );
            }
            let spool = stringdriverd::store::Spool::open_read_only(path)?;
            let mut st = spool.status()?;
            st.limit_bytes = cfg.spool.max_bytes;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!(
                    "{}",
                    stringdriverd::store::spool::render_status(&st, chrono::Utc::now())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo {
            config,
            database_url,
            seconds,
            speed_scale,
            socket,
            console,
        } => {
            if config.as_os_str() == DEMO_CONFIG && !config.exists() {
                let here = std::env::current_dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|_| "the current directory".into());
                // The checkout this binary was built from, when it is still there.
                let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DEMO_CONFIG);
                let pass = if built.is_file() {
                    format!("--config {}", built.display())
                } else {
                    "--config PATH/TO/config/demo.toml".to_string()
                };
                anyhow::bail!(
                    "no {DEMO_CONFIG} in {here}: the demo's configuration is \
                     config/demo.toml of the stringdriverd checkout; run the demo \
                     from the checkout or pass {pass}"
                );
            }
            let mut cfg = stringdriverd::config::load(&config)?;
            if let Some(s) = socket {
                cfg.control.socket = s;
            }
            stringdriverd::logging::init(&cfg.log.level);
            let options = stringdriverd::demo::Options {
                config_path: stringdriverd::daemon::config_path(&config),
                speed_scale,
                database: stringdriverd::demo::choose_database(
                    database_url,
                    std::env::var("DATABASE_URL").ok(),
                ),
            };
            let console = match console {
                Some(listen) => Some(console_options(&cfg, Some(listen), None, None)?),
                None => None,
            };
            let summary = runtime()?.block_on(async move {
                // Beside the demo, not inside it: the console is only a
                // client of the control socket, as in production.
                let stop = tokio_util::sync::CancellationToken::new();
                let served = match console {
                    Some(opts) => {
                        Some(tokio::spawn(start_console(opts).await?.serve(stop.clone())))
                    }
                    None => None,
                };
                let summary = stringdriverd::demo::run(
                    cfg,
                    options,
                    stop_signal(seconds.map(Duration::from_secs)),
                )
                .await;
                stop.cancel();
                if let Some(task) = served {
                    let _ = task.await;
                }
                anyhow::Ok(summary?)
            })?;
            print!("{}", summary.render());
            // As sim-controller: a host that would corrupt the real firmware fails.
            if summary.violations > 0 {
                return Ok(ExitCode::from(3));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Console {
            config,
            listen,
            socket,
            token_file,
        } => {
            let cfg = stringdriverd::config::load(&config)?;
            stringdriverd::logging::init(&cfg.log.level);
            let opts = console_options(&cfg, listen, socket, token_file)?;
            runtime()?.block_on(async move {
                let console = start_console(opts).await?;
                let stop = tokio_util::sync::CancellationToken::new();
                let serving = tokio::spawn(console.serve(stop.clone()));
                stop_signal(None).await;
                stop.cancel();
                serving.await.context("the console task")??;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Export {
            window,
            out,
            format,
            tolerance,
            frames_per_file,
        } => {
            let args = stringdriverd::export::ExportArgs {
                config: window.config,
                host: window.host,
                since: window.since,
                until: window.until,
                out,
                format,
                tolerance,
                database_url: window.database_url,
                frames_per_file,
            };
            let summary = runtime()?.block_on(stringdriverd::export::run(args))?;
            print!("{}", summary.render());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Report { window, out } => {
            let args = stringdriverd::report::ReportArgs {
                config: window.config,
                host: window.host,
                since: window.since,
                until: window.until,
                out,
                database_url: window.database_url,
            };
            let summary = runtime()?.block_on(stringdriverd::report::run(args))?;
            print!("{}", summary.render());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::SimController {
            link,
            profile,
            steppers,
            speed_scale,
            int_bytes,
            reset_window,
            touch_socket,
        } => {
            stringdriverd::logging::init("info");
            let mut p = stringdriverd::sim::Profile::for_firmware(profile, steppers);
            if let Some(w) = int_bytes {
                p.width = w;
            }
            let mut opts = stringdriverd::sim::SimOptions::new(p);
            opts.speed_scale = speed_scale;
            opts.reset_window = reset_window;
            let sim = std::sync::Arc::new(stringdriverd::sim::Simulator::spawn(opts, &link)?);
            let touch = match &touch_socket {
                Some(path) => {
                    let (sim, sim2) = (sim.clone(), sim.clone());
                    Some(stringdriverd::sim::touch::TouchServer::spawn_with_switches(
                        path,
                        move || sim.touching(),
                        move || sim2.x_switches(),
                    )?)
                }
                None => None,
            };
            eprintln!(
                "simulated {profile} board at {} -> {}{}; Ctrl-C to stop",
                link.display(),
                sim.device()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default(),
                touch_socket
                    .as_ref()
                    .map(|p| format!(", touch sensors and X switches on {}", p.display()))
                    .unwrap_or_default()
            );
            runtime()?.block_on(stop_signal(None));
            // The server's threads hold the other reference to the simulator;
            // stopping it first lets the simulator be stopped, not just dropped.
            if let Some(t) = touch {
                t.stop();
            }
            let violations = sim.violations();
            let lost = sim.rx_lost();
            if lost > 0 {
                // Not a violation (nothing was corrupted here), but the real
                // board would have lost them too: the host sent too fast.
                eprintln!("{lost} byte(s) lost in the board's receive buffer (sent faster than the firmware reads)");
            }
            match std::sync::Arc::try_unwrap(sim) {
                Ok(sim) => sim.stop(),
                Err(sim) => drop(sim),
            }
            if !violations.is_empty() {
                eprintln!("{} safety violation(s) recorded:", violations.len());
                for v in &violations {
                    eprintln!("  {}", v.detail);
                }
                return Ok(ExitCode::from(3));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man { out_dir } => {
            stringdriverd::ctl::docs::man(
                Cli::command(),
                out_dir.as_deref(),
                &mut std::io::stdout().lock(),
            )
            .context("cannot write the manual pages")?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Probe {
            port,
            profile,
            int_bytes,
            baud,
            reset_wait,
            timeout,
        } => {
            let opts = stringdriverd::probe::ProbeOptions {
                port,
                baud,
                firmware: profile,
                width: int_bytes.unwrap_or(default_width(profile)),
                reset_wait,
                reply_timeout: timeout,
            };
            let report = runtime()?.block_on(stringdriverd::probe::probe(&opts))?;
            println!("steppers: {}", report.positions.len());
            println!(
                "positions: {}",
                report
                    .positions
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            match report.free_memory {
                Some(m) => println!("free memory: {m} bytes"),
                None => println!("free memory: not reported"),
            }
            if report.noise_bytes > 0 {
                println!("noise bytes before the first reply: {}", report.noise_bytes);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The console's options from the file, the command line and the unit's
/// credentials directory.
fn console_options(
    cfg: &stringdriverd::config::Config,
    listen: Option<std::net::SocketAddr>,
    socket: Option<PathBuf>,
    token_file: Option<PathBuf>,
) -> anyhow::Result<stringdriverd::console::ConsoleOptions> {
    Ok(stringdriverd::console::options::resolve(
        cfg,
        listen,
        socket,
        token_file,
        std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
    )?)
}

/// Binds the console and says where it is (stdout: the line a script or a
/// person looks for).
async fn start_console(
    opts: stringdriverd::console::ConsoleOptions,
) -> anyhow::Result<stringdriverd::console::Console> {
    let login = if opts.token.is_some() {
        " (log in with the token)"
    } else {
        ""
    };
    let console = stringdriverd::console::Console::bind(opts).await?;
    println!("console: {}{login}", console.url()?);
    Ok(console)
}

/// Resolves on Ctrl-C, SIGTERM, or after `limit`.
async fn stop_signal(limit: Option<Duration>) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let limit = async {
        match limit {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
        _ = limit => {}
    }
}
