//! Connecting to the central PostgreSQL server.
//!
//! [`pg_config`] turns `[database]` into a [`PgTarget`]: the driver's
//! settings and the TLS to use with them ([`super::tls`]), built once and
//! reused by every reconnect. [`connect`] opens a session with it.
//!
//! The password only ever lives in the `tokio_postgres::Config` built here
//! (whose `Debug` redacts it): [`describe`] and every error name the server
//! and the role, never the password.

use std::error::Error as _;
use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::{Host, SslMode as DriverSslMode};
use tokio_postgres::{Client, Config, Connection, NoTls, Socket};

use super::tls::{TlsConnector, TlsError};
use crate::config::{ConfigError, DatabaseConfig, DatabaseTarget, SslMode};

/// `application_name` of the daemon's sessions, so that an administrator can
/// tell them apart in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "stringdriverd";

/// PostgreSQL's port when a configuration names none.
const DEFAULT_PORT: u16 = 5432;

/// Name of the systemd credential that holds the database password
/// (`LoadCredential=db-password:/etc/stringdriver/db-password` in the unit):
/// the file `$CREDENTIALS_DIRECTORY/db-password`.
pub const PASSWORD_CREDENTIAL: &str = "db-password";

/// Why a connection to PostgreSQL could not be configured or opened.
///
/// Each message carries its whole cause; `source()` is `None` on purpose,
/// so that `{:#}` chains do not print the cause twice.
#[derive(Debug, thiserror::Error)]
pub enum StoreConnectError {
    /// `database.url` is not a usable PostgreSQL URL.
    #[error("database.url is not a usable PostgreSQL URL: {reason}")]
    InvalidUrl {
        /// What is wrong with it (never the URL itself).
        reason: String,
    },
    /// The password file could not be read.
    #[error("cannot read the database password: {0}")]
    Password(ConfigError),
    /// The systemd credential `db-password` exists but could not be read, or
    /// is empty.
    #[error(
        "{}: cannot read the database password (systemd credential {PASSWORD_CREDENTIAL}): {error}",
        path.display()
    )]
    Credential {
        /// `$CREDENTIALS_DIRECTORY/db-password`.
        path: PathBuf,
        /// Why (never the content).
        error: std::io::Error,
    },
    /// The TLS settings cannot be used (a certificate file is missing or
    /// broken, no system CA certificates).
    #[error("{0}")]
    Tls(TlsError),
    /// The server refused or did not answer, or the TLS handshake failed
    /// (then `cause` says why in the configuration's words).
    #[error("cannot connect to PostgreSQL at {server}: {cause}")]
    Connect {
        /// The server and role, from [`describe`].
        server: String,
        /// The cause with the server's own message, from [`error_text`].
        cause: String,
        /// The driver's error, for callers that look at the SQLSTATE.
        error: tokio_postgres::Error,
    },
    /// No connection within the configured `connect_timeout`.
    #[error(
        "cannot connect to PostgreSQL at {server}: no session after {} \
         (database.connect_timeout)",
        humantime::format_duration(*after)
    )]
    Timeout {
        /// The server and role, from [`describe`].
        server: String,
        /// How long the attempt was given.
        after: Duration,
    },
}

/// A PostgreSQL server to connect to: the driver's settings and the TLS to
/// use with them. Cheap to clone (the rustls configuration is shared).
///
/// It dereferences to its `tokio_postgres::Config`, so that the settings can
/// be read ([`describe`]) and adjusted (another `dbname`) as before; its
/// `ssl_mode` is not used: [`connect`] sets it from the TLS settings, so that
/// a session never falls back to plaintext when TLS is configured.
#[derive(Clone)]
pub struct PgTarget {
    config: Config,
    tls: Option<TlsConnector>,
}

impl PgTarget {
    /// `config` with the TLS settings of `tls`; `None` is plaintext.
    pub fn new(config: Config, tls: Option<TlsConnector>) -> PgTarget {
        PgTarget { config, tls }
    }

    /// The driver's settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The TLS mode of its sessions.
    pub fn sslmode(&self) -> SslMode {
        self.tls
            .as_ref()
            .map_or(SslMode::Disable, TlsConnector::mode)
    }
}

/// A hand-built `Config` (tests, tools on this machine) is a plaintext
/// target; the daemon's targets come from [`pg_config`].
impl From<Config> for PgTarget {
    fn from(config: Config) -> PgTarget {
        PgTarget { config, tls: None }
    }
}

impl std::ops::Deref for PgTarget {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.config
    }
}

impl std::ops::DerefMut for PgTarget {
    fn deref_mut(&mut self) -> &mut Config {
        &mut self.config
    }
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `Config`'s Debug redacts the password.
        f.debug_struct("PgTarget")
            .field("config", &self.config)
            .field("tls", &self.tls)
            .finish()
    }
}

/// The connection settings of `db`: its URL or parts, the password,
/// `connect_timeout`, `application_name = "stringdriverd"` and the TLS
/// settings, whose certificate files are read now.
///
/// The password comes from `db.password_file` if one is set; otherwise, under
/// systemd, from the credential `$CREDENTIALS_DIRECTORY/db-password` if it
/// exists; otherwise there is none.
pub fn pg_config(db: &DatabaseConfig) -> Result<PgTarget, StoreConnectError> {
    let credentials_dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    pg_config_with(db, credentials_dir.as_deref())
}

/// [`pg_config`] with the credentials directory passed in rather than read
/// from the environment, so that tests need not change the process's
/// environment (which parallel tests share).
fn pg_config_with(
    db: &DatabaseConfig,
    credentials_dir: Option<&Path>,
) -> Result<PgTarget, StoreConnectError> {
    let mut cfg = match &db.target {
        DatabaseTarget::Url(url) => {
            // The parser's message names the offending option, not the URL,
            // so it is safe to repeat even if a URL held a password.
            let cfg = url
                .parse::<Config>()
                .map_err(|e| StoreConnectError::InvalidUrl {
                    reason: error_text(&e),
                })?;
            // tokio-postgres has no libpq defaults (OS user, local socket):
            // say what is missing now rather than at every reconnect.
            if cfg.get_user().is_none() {
                return Err(StoreConnectError::InvalidUrl {
                    reason: "it names no user (postgres://USER@HOST/DBNAME)".to_string(),
                });
            }
            if cfg.get_hosts().is_empty() && cfg.get_hostaddrs().is_empty() {
                return Err(StoreConnectError::InvalidUrl {
                    reason: "it names no host (postgres://USER@HOST/DBNAME)".to_string(),
                });
            }
            cfg
        }
        DatabaseTarget::Parts {
            host,
            port,
            user,
            dbname,
        } => {
            let mut cfg = Config::new();
            cfg.host(host).port(*port).user(user).dbname(dbname);
            cfg
        }
    };
    let tls = TlsConnector::new(&db.tls).map_err(StoreConnectError::Tls)?;
    if tls.is_some() && cfg.get_hosts().is_empty() {
        // tokio-postgres checks a certificate against `host` only; with
        // addresses alone (`hostaddr=`), check it against them, as libpq does.
        for addr in cfg.get_hostaddrs().to_vec() {
            cfg.host(addr.to_string());
        }
    }
    if let Some(tls) = &tls {
        if tls.mode() == SslMode::Require {
            tracing::warn!(
                server = %describe(&cfg),
                "database.sslmode = \"require\": the connection is encrypted but the server's \
                 certificate is not checked, so anyone who can intercept it can pose as the \
                 server; use \"verify-full\" (or \"verify-ca\")"
            );
        }
    }
    let password = match db.password().map_err(StoreConnectError::Password)? {
        Some(password) => Some(password),
        None => match credentials_dir {
            Some(dir) => credential_password(dir)?,
            None => None,
        },
    };
    if let Some(password) = password {
        cfg.password(password);
    }
    cfg.connect_timeout(db.connect_timeout);
    cfg.application_name(APPLICATION_NAME);
    Ok(PgTarget::new(cfg, tls))
}

/// The password in `dir/db-password`, without one trailing newline (as for
/// `password_file`); `Ok(None)` when the service was given no such
/// credential.
fn credential_password(dir: &Path) -> Result<Option<String>, StoreConnectError> {
    let path = dir.join(PASSWORD_CREDENTIAL);
    let fail = |error: std::io::Error| StoreConnectError::Credential {
        path: path.clone(),
        error,
    };
    match crate::config::read_secret(&path) {
        Ok(text) => Ok(Some(text)),
        // A service may have other credentials but not this one.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(fail(e)),
    }
}

/// Opens a session, over TLS as `target` says, and drives it on a spawned
/// task, which logs at warn level if the connection ends with an error.
///
/// With TLS configured the session is TLS or nothing: a server that does not
/// accept TLS is an error, never a plaintext session.
///
/// tokio-postgres applies `connect_timeout` to the TCP connect of each host
/// only; here it also bounds the start-up, TLS and authentication exchange,
/// so that a server that accepts but never answers cannot hang the caller.
pub async fn connect(target: &PgTarget) -> Result<Client, StoreConnectError> {
    // Detached: the connection task ends with the client.
    connect_owned(target).await.map(|(client, _task)| client)
}

/// [`connect`], also returning the task that drives the connection, so that
/// a caller that gives up on a frozen connection can end it at once
/// (dropping the client alone leaves the task waiting on the socket).
pub async fn connect_owned(
    target: &PgTarget,
) -> Result<(Client, tokio::task::JoinHandle<()>), StoreConnectError> {
    let server = describe(target);
    let mut cfg = target.config.clone();
    match &target.tls {
        None => {
            cfg.ssl_mode(DriverSslMode::Disable);
            let (client, connection) = within(&cfg, &server, cfg.connect(NoTls), None).await?;
            Ok((client, drive(connection, server)))
        }
        Some(tls) => {
            // `Require` in the driver: TLS or an error. The certificate
            // checks of verify-ca / verify-full are the connector's.
            cfg.ssl_mode(DriverSslMode::Require);
            let attempt = cfg.connect(tls.make_connect());
            let (client, connection) = within(&cfg, &server, attempt, Some(tls)).await?;
            Ok((client, drive(connection, server)))
        }
    }
}

/// Socket settings that let the kernel notice a dead peer: keepalive probes
/// after `idle` of silence, and `TCP_USER_TIMEOUT` (data unacknowledged for
/// `user_timeout` ends the connection).
pub fn harden(target: &mut PgTarget, idle: Duration, user_timeout: Duration) {
    let interval = (idle / 3).max(Duration::from_secs(1));
    target
        .config
        .keepalives(true)
        .keepalives_idle(idle)
        .keepalives_interval(interval)
        .keepalives_retries(3)
        .tcp_user_timeout(user_timeout);
}

/// `attempt` bounded by the connect timeout of `cfg`, its error explained.
async fn within<T>(
    cfg: &Config,
    server: &str,
    attempt: impl Future<Output = Result<T, tokio_postgres::Error>>,
    tls: Option<&TlsConnector>,
) -> Result<T, StoreConnectError> {
    let result = match cfg.get_connect_timeout() {
        Some(timeout) => {
            // tokio-postgres tries the hosts in turn, each with the full timeout.
            let hosts = cfg.get_hosts().len().max(cfg.get_hostaddrs().len()).max(1);
            let after = timeout.saturating_mul(u32::try_from(hosts).unwrap_or(u32::MAX));
            match tokio::time::timeout(after, attempt).await {
                Ok(result) => result,
                Err(_) => {
                    return Err(StoreConnectError::Timeout {
                        server: server.to_string(),
                        after,
                    })
                }
            }
        }
        None => attempt.await,
    };
    result.map_err(|error| {
        let raw = error_text(&error);
        let cause = match tls.and_then(|t| super::tls::explain(&error, t.mode(), t.roots())) {
            // The driver's own words stay, for whoever searches for them.
            Some(why) => format!("{why} [{raw}]"),
            None => raw,
        };
        StoreConnectError::Connect {
            server: server.to_string(),
            cause,
            error,
        }
    })
}

/// Drives `connection` until it ends, warning if it ends with an error;
/// the task's handle lets a caller end it sooner.
fn drive<S>(connection: Connection<Socket, S>, server: String) -> tokio::task::JoinHandle<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(
                server = %server,
                error = %error_text(&e),
                "PostgreSQL connection ended with an error"
            );
        }
    })
}

/// `host:port/dbname as user NAME`, for messages: every host of `cfg`, never
/// the password.
pub fn describe(cfg: &Config) -> String {
    let ports = cfg.get_ports();
    // A single port applies to every host; none means the default.
    let port_of = |i: usize| match ports {
        [] => DEFAULT_PORT,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(DEFAULT_PORT),
    };
    let mut hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| match host {
            Host::Tcp(name) if name.contains(':') => format!("[{name}]:{}", port_of(i)),
            Host::Tcp(name) => format!("{name}:{}", port_of(i)),
            #[cfg(unix)]
            Host::Unix(dir) => format!("{}:{}", dir.display(), port_of(i)),
        })
        .collect();
    if hosts.is_empty() {
        hosts = cfg
            .get_hostaddrs()
            .iter()
            .enumerate()
            .map(|(i, addr)| match addr {
                std::net::IpAddr::V6(a) => format!("[{a}]:{}", port_of(i)),
                std::net::IpAddr::V4(a) => format!("{a}:{}", port_of(i)),
            })
            .collect();
    }
    let hosts = if hosts.is_empty() {
        "(no host)".to_string()
    } else {
        hosts.join(",")
    };
    let user = cfg.get_user().unwrap_or("(no user)");
    // PostgreSQL's own default: the database named like the user.
    let dbname = cfg.get_dbname().unwrap_or(user);
    format!("{hosts}/{dbname} as user {user}")
}

/// A one-line account of a driver error with everything the server said.
///
/// tokio-postgres displays a server error as just `db error`; this adds the
/// severity, message, SQLSTATE, detail and hint, or for other errors the
/// chain of causes (such as the OS error of a refused connection).
pub fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(detail) = db.detail() {
            let _ = write!(text, "; detail: {detail}");
        }
        if let Some(hint) = db.hint() {
            let _ = write!(text, "; hint: {hint}");
        }
        return text;
    }
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let _ = write!(text, ": {c}");
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseTarget;

    const SECRET: &str = "s3cret-from-credential";

    fn database(password_file: Option<&Path>) -> DatabaseConfig {
        DatabaseConfig {
            target: DatabaseTarget::Url("postgres://stringdriver@db.lab:5432/audmon".to_string()),
            password_file: password_file.map(Path::to_path_buf),
            auto_migrate: false,
            connect_timeout: Duration::from_secs(3),
            tls: crate::config::DatabaseTls::new(SslMode::Disable),
        }
    }

    /// A credentials directory as systemd makes one, holding `db-password`
    /// with `content` (none if `None`) and another credential beside it.
    fn credentials(content: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("other-credential"), "not the password").unwrap();
        if let Some(content) = content {
            std::fs::write(dir.path().join(PASSWORD_CREDENTIAL), content).unwrap();
        }
        dir
    }

    #[test]
    fn credential_gives_the_password_without_its_newline() {
        let dir = credentials(Some(&format!("{SECRET}\n")));
        let cfg = pg_config_with(&database(None), Some(dir.path())).unwrap();
        assert_eq!(cfg.get_password(), Some(SECRET.as_bytes()));
        assert!(!format!("{cfg:?}").contains(SECRET));

        // Only one newline (with its CR) goes; the rest is the password.
        let dir = credentials(Some("pw\r\n"));
        let cfg = pg_config_with(&database(None), Some(dir.path())).unwrap();
        assert_eq!(cfg.get_password(), Some(&b"pw"[..]));
        let dir = credentials(Some("pw\n\n"));
        let cfg = pg_config_with(&database(None), Some(dir.path())).unwrap();
        assert_eq!(cfg.get_password(), Some(&b"pw\n"[..]));
        let dir = credentials(Some(" pw "));
        let cfg = pg_config_with(&database(None), Some(dir.path())).unwrap();
        assert_eq!(cfg.get_password(), Some(&b" pw "[..]));
    }

    #[test]
    fn password_file_wins_over_the_credential() {
        let dir = credentials(Some(SECRET));
        let file = dir.path().join("password-file");
        std::fs::write(&file, "from-file\n").unwrap();
        let cfg = pg_config_with(&database(Some(&file)), Some(dir.path())).unwrap();
        assert_eq!(cfg.get_password(), Some(&b"from-file"[..]));
    }

    #[test]
    fn no_credential_means_no_password() {
        let cfg = pg_config_with(&database(None), None).unwrap();
        assert_eq!(cfg.get_password(), None);
        // Started by systemd with other credentials but not this one.
        let dir = credentials(None);
        let cfg = pg_config_with(&database(None), Some(dir.path())).unwrap();
        assert_eq!(cfg.get_password(), None);
        // CREDENTIALS_DIRECTORY naming a directory that is gone.
        let gone = dir.path().join("gone");
        let cfg = pg_config_with(&database(None), Some(&gone)).unwrap();
        assert_eq!(cfg.get_password(), None);
    }

    #[test]
    fn empty_or_unreadable_credential_is_an_error_naming_the_file() {
        for content in ["", "\n", "\r\n"] {
            let dir = credentials(Some(content));
            let e = pg_config_with(&database(None), Some(dir.path())).unwrap_err();
            assert!(matches!(e, StoreConnectError::Credential { .. }), "{e:?}");
            let text = e.to_string();
            assert!(
                text.contains("db-password") && text.contains("empty"),
                "{text}"
            );
        }
        // A directory where the file should be: read fails, not NotFound.
        let dir = credentials(None);
        std::fs::create_dir(dir.path().join(PASSWORD_CREDENTIAL)).unwrap();
        let e = pg_config_with(&database(None), Some(dir.path())).unwrap_err();
        assert!(matches!(e, StoreConnectError::Credential { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains(&dir.path().join(PASSWORD_CREDENTIAL).display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn describe_names_every_host_with_its_port() {
        let cfg: Config = "host=a,b port=1,2 user=u dbname=d".parse().unwrap();
        assert_eq!(describe(&cfg), "a:1,b:2/d as user u");
        let cfg: Config = "postgres://u@[::1]/x".parse().unwrap();
        assert_eq!(describe(&cfg), "[::1]:5432/x as user u");
        let cfg: Config = "host=/run/postgresql user=u".parse().unwrap();
        assert_eq!(describe(&cfg), "/run/postgresql:5432/u as user u");
        let cfg: Config = "hostaddr=10.0.0.1 port=6 user=u dbname=d".parse().unwrap();
        assert_eq!(describe(&cfg), "10.0.0.1:6/d as user u");
        assert_eq!(
            describe(&Config::new()),
            "(no host)/(no user) as user (no user)"
        );
    }
}
