//! TLS to PostgreSQL against a real server: each test starts its own
//! throw-away PostgreSQL (initdb + pg_ctl, as `scripts/test.sh` does) with
//! certificates made here by rcgen, and connects with the daemon's own
//! `pg_config` + `connect`. Also the `[database]` TLS keys as the
//! configuration checks them, and `check-config` as an operator runs it.
//!
//! The servers run as the user `postgres` when the tests run as root
//! (initdb and postgres refuse root), listen on 127.0.0.1 only, on a free
//! port, and are stopped (`pg_ctl -m immediate stop`) and removed when the
//! test ends, whether it passed or not.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use stringdriverd::config::{
    self, ClientCert, ConfigError, DatabaseConfig, DatabaseTarget, DatabaseTls, SslMode,
};
use stringdriverd::store::pg::{connect, pg_config, StoreConnectError};

// ---------------------------------------------------------------- certificates

/// A certificate authority that signs server and client certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses) with the common
    /// name `cn`: (certificate PEM, key PEM).
    fn issue(&self, cn: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    /// A server certificate for `names`.
    fn server(&self, names: &[&str]) -> (String, String) {
        self.issue("test server", names, ExtendedKeyUsagePurpose::ServerAuth)
    }
}

/// Files on the client's side (CA files, client certificate and key).
struct ClientFiles {
    dir: tempfile::TempDir,
}

impl ClientFiles {
    fn new() -> ClientFiles {
        ClientFiles {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        path
    }
}

// ---------------------------------------------------------------- the server

/// The newest PostgreSQL server program `name` (`initdb`, `pg_ctl`).
fn pg_bin(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort_by_key(|p| {
        p.components()
            .nth(4)
            .and_then(|c| c.as_os_str().to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    match found.pop() {
        Some(p) => p,
        None => panic!(
            "no PostgreSQL server programs under /usr/lib/postgresql/*/bin: these tests start \
             their own server with TLS; install them (apt-get install postgresql)"
        ),
    }
}

/// Who runs the server: initdb and postgres refuse to run as root.
#[derive(Clone, Copy)]
enum Runner {
    Myself,
    Postgres(nix::unistd::Uid, nix::unistd::Gid),
    Nobody,
}

impl Runner {
    fn pick() -> Runner {
        if !nix::unistd::geteuid().is_root() {
            return Runner::Myself;
        }
        match nix::unistd::User::from_name("postgres") {
            Ok(Some(u)) => Runner::Postgres(u.uid, u.gid),
            _ => Runner::Nobody,
        }
    }

    fn command(self, program: &Path) -> Command {
        match self {
            Runner::Myself => Command::new(program),
            Runner::Postgres(..) => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            }
            Runner::Nobody => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                    .arg(program);
                c
            }
        }
    }

    /// Gives `path` to the server's user, with `mode`.
    fn own(self, path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let ids = match self {
            Runner::Myself => None,
            Runner::Postgres(uid, gid) => Some((uid.as_raw(), gid.as_raw())),
            Runner::Nobody => Some((65534, 65534)),
        };
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
}

fn run(mut c: Command, what: &str) -> Output {
    let o = c
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        o.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// How a test server is set up.
struct ServerSetup<'a> {
    /// Certificate and key PEM; `None`: ssl = off.
    tls: Option<(&'a str, &'a str)>,
    /// PEM of the CA whose client certificates it accepts (`ssl_ca_file`).
    client_ca: Option<&'a str>,
    /// The TCP lines of pg_hba.conf.
    hba: &'a str,
}

/// pg_hba.conf lines with which only TLS sessions get in: a session that
/// gets in proves it used TLS.
const TLS_ONLY: &str = "hostnossl all all 127.0.0.1/32 reject\n\
                        hostssl all all 127.0.0.1/32 trust\n";

/// A running throw-away PostgreSQL; stopped and removed on drop.
struct Server {
    dir: tempfile::TempDir,
    port: u16,
    runner: Runner,
}

impl Server {
    fn start(setup: ServerSetup<'_>) -> Server {
        let runner = Runner::pick();
        let dir = tempfile::Builder::new()
            .prefix("sdtls")
            .tempdir()
            .expect("tempdir");
        runner.own(dir.path(), 0o755);
        let data = dir.path().join("data");
        let mut initdb = runner.command(&pg_bin("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(initdb, "initdb");

        let mut hba = String::from("local all all trust\n");
        hba.push_str(setup.hba);
        std::fs::write(data.join("pg_hba.conf"), hba).expect("pg_hba.conf");
        runner.own(&data.join("pg_hba.conf"), 0o600);
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -k {} -c fsync=off -c shared_buffers=16MB \
             -c max_connections=20",
            dir.path().display()
        );
        match setup.tls {
            Some((cert, key)) => {
                let (c, k) = (data.join("server.crt"), data.join("server.key"));
                std::fs::write(&c, cert).expect("server.crt");
                std::fs::write(&k, key).expect("server.key");
                runner.own(&c, 0o644);
                // PostgreSQL refuses a key that others may read.
                runner.own(&k, 0o600);
                options.push_str(&format!(
                    " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                    c.display(),
                    k.display()
                ));
            }
            None => options.push_str(" -c ssl=off"),
        }
        if let Some(ca) = setup.client_ca {
            let f = data.join("client-ca.crt");
            std::fs::write(&f, ca).expect("client-ca.crt");
            runner.own(&f, 0o644);
            options.push_str(&format!(" -c ssl_ca_file={}", f.display()));
        }

        // A port that was free a moment ago may be taken by a parallel
        // test's server by now: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut pg_ctl = runner.command(&pg_bin("pg_ctl"));
            pg_ctl
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("log"))
                .args(["-w", "-t", "30", "-o"])
                .arg(format!("{options} -p {port}"))
                .arg("start");
            let o = pg_ctl.output().expect("pg_ctl runs");
            if o.status.success() {
                return Server { dir, port, runner };
            }
            last = format!(
                "{}{}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
            );
        }
        panic!("the test PostgreSQL did not start: {last}");
    }

    /// The `[database]` settings for this server at `host` with `tls`.
    fn database(&self, host: &str, tls: DatabaseTls) -> DatabaseConfig {
        DatabaseConfig {
            target: DatabaseTarget::Parts {
                host: host.to_string(),
                port: self.port,
                user: "postgres".to_string(),
                dbname: "postgres".to_string(),
            },
            password_file: None,
            auto_migrate: false,
            connect_timeout: Duration::from_secs(10),
            tls,
        }
    }

    /// `host:port/postgres as user postgres`, as errors name the server.
    fn named(&self, host: &str) -> String {
        format!("{host}:{}/postgres as user postgres", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let mut stop = self.runner.command(&pg_bin("pg_ctl"));
        stop.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"]);
        let _ = stop.output();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn tls(mode: SslMode, root: Option<&Path>) -> DatabaseTls {
    let mut t = DatabaseTls::new(mode);
    t.sslrootcert = root.map(Path::to_path_buf);
    t
}

/// Connects as the daemon does, and says whether the session uses TLS.
async fn session(db: &DatabaseConfig) -> Result<bool, StoreConnectError> {
    let target = pg_config(db)?;
    let client = connect(&target).await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    Ok(row.get::<_, bool>(0))
}

// ---------------------------------------------------------------- connections

#[tokio::test]
async fn verify_full_with_the_right_ca_connects_over_tls() {
    let ca = Ca::new("lab CA");
    let (cert, key) = ca.server(&["localhost", "127.0.0.1"]);
    let server = Server::start(ServerSetup {
        tls: Some((&cert, &key)),
        client_ca: None,
        hba: TLS_ONLY,
    });
    let files = ClientFiles::new();
    let root = files.write("ca.pem", &ca.pem());

    // By DNS name and by IP address (the certificate's IP SAN).
    for host in ["localhost", "127.0.0.1"] {
        let db = server.database(host, tls(SslMode::VerifyFull, Some(&root)));
        assert!(
            session(&db).await.expect("verify-full connects"),
            "{host}: pg_stat_ssl says no TLS"
        );
    }

    // The same through the configuration file, with the settings in the URL
    // (percent-encoded, as libpq takes them) rather than as keys.
    let encoded = root.display().to_string().replace('/', "%2F");
    let text = format!(
        "{MINIMAL}\n[database]\nurl = \"postgres://postgres@localhost:{}/postgres?\
         sslmode=verify-full&sslrootcert={encoded}\"\n",
        server.port
    );
    let c = parse(&text).expect("config");
    assert_eq!(c.database.tls.sslmode, SslMode::VerifyFull);
    assert_eq!(c.database.tls.sslrootcert.as_deref(), Some(root.as_path()));
    assert!(session(&c.database).await.expect("connects"));

    // An address alone (hostaddr, no host name): the certificate is checked
    // against the address, as libpq does.
    let text = format!(
        "{MINIMAL}\n[database]\nurl = \"postgres://postgres@/postgres?hostaddr=127.0.0.1&\
         port={}\"\nsslmode = \"verify-full\"\nsslrootcert = \"{}\"\n",
        server.port,
        root.display()
    );
    let c = parse(&text).expect("config");
    assert!(session(&c.database).await.expect("connects by address"));
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_from_another_ca() {
    let ca = Ca::new("lab CA");
    let other = Ca::new("someone else's CA");
    let (cert, key) = ca.server(&["localhost", "127.0.0.1"]);
    let server = Server::start(ServerSetup {
        tls: Some((&cert, &key)),
        client_ca: None,
        hba: TLS_ONLY,
    });
    let files = ClientFiles::new();
    let wrong = files.write("other-ca.pem", &other.pem());

    for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
        let db = server.database("127.0.0.1", tls(mode, Some(&wrong)));
        let e = session(&db).await.expect_err("untrusted certificate");
        let text = e.to_string();
        assert!(matches!(e, StoreConnectError::Connect { .. }), "{e:?}");
        assert!(text.contains(&server.named("127.0.0.1")), "{text}");
        assert!(text.contains("certificate is not trusted"), "{text}");
        assert!(text.contains(&wrong.display().to_string()), "{text}");
        assert!(text.contains("database.sslrootcert"), "{text}");
    }

    // The system's CAs do not know a lab CA either.
    let db = server.database("127.0.0.1", tls(SslMode::VerifyFull, None));
    let e = session(&db).await.expect_err("untrusted certificate");
    assert!(e.to_string().contains("system's CA certificates"), "{e}");
}

#[tokio::test]
async fn verify_full_checks_the_name_and_verify_ca_does_not() {
    let ca = Ca::new("lab CA");
    // A certificate for another name, as a server reached by address has.
    let (cert, key) = ca.server(&["db.example"]);
    let server = Server::start(ServerSetup {
        tls: Some((&cert, &key)),
        client_ca: None,
        hba: TLS_ONLY,
    });
    let files = ClientFiles::new();
    let root = files.write("ca.pem", &ca.pem());

    let db = server.database("127.0.0.1", tls(SslMode::VerifyFull, Some(&root)));
    let e = session(&db).await.expect_err("wrong name");
    let text = e.to_string();
    assert!(text.contains(&server.named("127.0.0.1")), "{text}");
    assert!(text.contains("does not name the host"), "{text}");
    assert!(text.contains("db.example"), "{text}");
    assert!(text.contains("verify-ca"), "{text}");

    let db = server.database("127.0.0.1", tls(SslMode::VerifyCa, Some(&root)));
    assert!(session(&db).await.expect("verify-ca connects"));
}

#[tokio::test]
async fn require_encrypts_without_checking_the_certificate() {
    let unknown = Ca::new("a CA nobody here trusts");
    let (cert, key) = unknown.server(&["db.example"]);
    let server = Server::start(ServerSetup {
        tls: Some((&cert, &key)),
        client_ca: None,
        hba: TLS_ONLY,
    });
    let db = server.database("127.0.0.1", tls(SslMode::Require, None));
    assert!(session(&db).await.expect("require connects"));
}

#[tokio::test]
async fn tls_modes_never_fall_back_to_plaintext() {
    let server = Server::start(ServerSetup {
        tls: None,
        client_ca: None,
        hba: "host all all 127.0.0.1/32 trust\n",
    });
    let files = ClientFiles::new();
    let root = files.write("ca.pem", &Ca::new("lab CA").pem());
    for mode in [SslMode::VerifyFull, SslMode::VerifyCa, SslMode::Require] {
        let root = mode.verifies_chain().then_some(root.as_path());
        let db = server.database("127.0.0.1", tls(mode, root));
        let e = session(&db).await.expect_err("no TLS at the server");
        let text = e.to_string();
        assert!(text.contains(&server.named("127.0.0.1")), "{text}");
        assert!(text.contains("does not accept TLS"), "{mode}: {text}");
        assert!(text.contains("database.sslmode = \"disable\""), "{text}");
    }
    // The same server in plaintext, as configured.
    let db = server.database("127.0.0.1", tls(SslMode::Disable, None));
    assert!(!session(&db).await.expect("disable connects"));
}

#[tokio::test]
async fn disable_is_plaintext_even_where_tls_is_offered() {
    let ca = Ca::new("lab CA");
    let (cert, key) = ca.server(&["localhost", "127.0.0.1"]);
    // TLS on, but only plaintext sessions are let in.
    let server = Server::start(ServerSetup {
        tls: Some((&cert, &key)),
        client_ca: None,
        hba: "hostssl all all 127.0.0.1/32 reject\nhostnossl all all 127.0.0.1/32 trust\n",
    });
    let db = server.database("127.0.0.1", tls(SslMode::Disable, None));
    assert!(!session(&db).await.expect("plaintext connects"));

    // And a TLS mode really uses TLS: here it is turned away.
    let files = ClientFiles::new();
    let root = files.write("ca.pem", &ca.pem());
    let db = server.database("127.0.0.1", tls(SslMode::VerifyFull, Some(&root)));
    let e = session(&db).await.expect_err("hostssl rejected");
    assert!(e.to_string().contains("pg_hba.conf"), "{e}");
}

#[tokio::test]
async fn a_client_certificate_authenticates_the_daemon() {
    let ca = Ca::new("lab CA");
    let (cert, key) = ca.server(&["localhost", "127.0.0.1"]);
    let server = Server::start(ServerSetup {
        tls: Some((&cert, &key)),
        client_ca: Some(&ca.pem()),
        hba: "hostssl all all 127.0.0.1/32 cert\n",
    });
    let files = ClientFiles::new();
    let root = files.write("ca.pem", &ca.pem());
    // `cert` authentication takes the role from the certificate's CN.
    let (client_cert, client_key) = ca.issue(
        "postgres",
        &["stringdriver-2"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let mut with_cert = tls(SslMode::VerifyFull, Some(&root));
    with_cert.client_cert = Some(ClientCert {
        cert: files.write("client.pem", &client_cert),
        key: files.write("client.key", &client_key),
    });
    let db = server.database("127.0.0.1", with_cert);
    assert!(session(&db).await.expect("client certificate accepted"));

    // Without one the server says no.
    let db = server.database("127.0.0.1", tls(SslMode::VerifyFull, Some(&root)));
    let e = session(&db).await.expect_err("no client certificate");
    let text = e.to_string();
    assert!(text.contains(&server.named("127.0.0.1")), "{text}");
    assert!(text.contains("certificate"), "{text}");

    // A certificate from another CA is refused in the handshake.
    let (other_cert, other_key) =
        Ca::new("other").issue("postgres", &["x"], ExtendedKeyUsagePurpose::ClientAuth);
    let mut foreign = tls(SslMode::VerifyFull, Some(&root));
    foreign.client_cert = Some(ClientCert {
        cert: files.write("foreign.pem", &other_cert),
        key: files.write("foreign.key", &other_key),
    });
    let db = server.database("127.0.0.1", foreign);
    let e = session(&db).await.expect_err("foreign client certificate");
    assert!(e.to_string().contains(&server.named("127.0.0.1")), "{e}");
}

// ---------------------------------------------------------------- configuration

const MINIMAL: &str = r#"
host = "testhost"

[[boards]]
name = "carriage"
port = "/dev/ttyACM0"
int_bytes = 2
firmware = "v2"
steppers = 13

[layout]
strings = 6
x_index = 0
z_first_index = 1
"#;

fn parse(text: &str) -> Result<config::Config, ConfigError> {
    config::parse(text, Path::new("t.toml"))
}

fn with_database(lines: &str) -> String {
    format!("{MINIMAL}\n[database]\n{lines}\n")
}

fn rejects(lines: &str, key: &str, fragment: &str) -> String {
    let e = parse(&with_database(lines)).expect_err(lines);
    assert_eq!(e.key(), Some(key), "{lines}: {e}");
    let text = e.to_string();
    assert!(
        text.contains(fragment),
        "{lines}: `{fragment}` not in: {text}"
    );
    text
}

#[test]
fn sslmode_defaults_to_verify_full_except_on_this_machine() {
    let mode = |lines: &str| {
        parse(&with_database(lines))
            .unwrap_or_else(|e| panic!("{lines}: {e}"))
            .database
            .tls
            .sslmode
    };
    assert_eq!(mode(""), SslMode::Disable, "default host localhost");
    assert_eq!(mode("host = \"127.0.0.1\""), SslMode::Disable);
    assert_eq!(mode("host = \"::1\""), SslMode::Disable);
    assert_eq!(mode("host = \"/run/postgresql\""), SslMode::Disable);
    assert_eq!(mode("host = \"db.lab\""), SslMode::VerifyFull);
    assert_eq!(mode("url = \"postgres://u@db.lab/x\""), SslMode::VerifyFull);
    assert_eq!(
        mode("url = \"postgres://u@127.0.0.1:5/x\""),
        SslMode::Disable
    );
    assert_eq!(
        mode("url = \"postgres://u@%2Frun%2Fpostgresql/x\""),
        SslMode::Disable
    );
    assert_eq!(
        mode("host = \"db.lab\"\nsslmode = \"verify-ca\""),
        SslMode::VerifyCa
    );
    assert_eq!(
        mode("host = \"localhost\"\nsslmode = \"require\""),
        SslMode::Require
    );
    assert_eq!(
        mode("url = \"postgres://u@db.lab/x?sslmode=disable\""),
        SslMode::Disable
    );
}

#[test]
fn tls_settings_print_back_and_the_url_loses_its_tls_parameters() {
    let c = parse(&with_database(
        "url = \"postgres://u@db.lab/x?application_name=a&sslmode=verify-ca&sslrootcert=/etc/ca.pem\"\n\
         sslcert = \"/etc/c.pem\"\nsslkey = \"/etc/c.key\"",
    ))
    .expect("config");
    assert_eq!(
        c.database.target,
        DatabaseTarget::Url("postgres://u@db.lab/x?application_name=a".into())
    );
    assert_eq!(
        c.database.tls,
        DatabaseTls {
            sslmode: SslMode::VerifyCa,
            sslrootcert: Some("/etc/ca.pem".into()),
            client_cert: Some(ClientCert {
                cert: "/etc/c.pem".into(),
                key: "/etc/c.key".into(),
            }),
        }
    );
    let text = c.to_toml_string();
    for line in [
        "sslmode = \"verify-ca\"",
        "sslrootcert = \"/etc/ca.pem\"",
        "sslcert = \"/etc/c.pem\"",
        "sslkey = \"/etc/c.key\"",
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
    assert_eq!(parse(&text).expect("round trip"), c);

    // The default mode is written out too.
    let text = parse(&with_database("host = \"db.lab\""))
        .expect("config")
        .to_toml_string();
    assert!(text.contains("sslmode = \"verify-full\""), "{text}");
}

#[test]
fn tls_settings_are_checked_for_sense() {
    let text = rejects(
        "host = \"db.lab\"\nsslmode = \"prefer\"",
        "database.sslmode",
        "plaintext",
    );
    assert!(text.contains("\"verify-full\""), "lists the modes: {text}");
    let text = rejects(
        "host = \"db.lab\"\nsslmode = \"full\"",
        "database.sslmode",
        "not a sslmode",
    );
    for m in ["disable", "require", "verify-ca", "verify-full"] {
        assert!(text.contains(m), "{text}");
    }
    rejects(
        "url = \"postgres://u@db.lab/x?sslmode=allow\"",
        "database.url",
        "sslmode=",
    );
    // The same setting in two places must agree.
    rejects(
        "url = \"postgres://u@db.lab/x?sslmode=require\"\nsslmode = \"verify-full\"",
        "database.sslmode",
        "one place",
    );
    rejects(
        "url = \"postgres://u@db.lab/x?sslrootcert=/a.pem\"\nsslrootcert = \"/b.pem\"",
        "database.sslrootcert",
        "one place",
    );
    parse(&with_database(
        "url = \"postgres://u@db.lab/x?sslmode=verify-full\"\nsslmode = \"verify-full\"",
    ))
    .expect("agreeing settings");
    // A CA file that would not be used.
    rejects(
        "host = \"db.lab\"\nsslmode = \"require\"\nsslrootcert = \"/etc/ca.pem\"",
        "database.sslrootcert",
        "only used by",
    );
    let text = rejects(
        "host = \"127.0.0.1\"\nsslrootcert = \"/etc/ca.pem\"",
        "database.sslrootcert",
        "only used by",
    );
    assert!(
        text.contains("default for a server on this machine"),
        "{text}"
    );
    // Client certificate: both or neither, and only with TLS.
    rejects(
        "host = \"db.lab\"\nsslcert = \"/etc/c.pem\"",
        "database.sslkey",
        "both or neither",
    );
    rejects(
        "host = \"db.lab\"\nsslkey = \"/etc/c.key\"",
        "database.sslcert",
        "both or neither",
    );
    rejects(
        "host = \"db.lab\"\nsslmode = \"disable\"\nsslcert = \"/etc/c.pem\"\nsslkey = \"/etc/c.key\"",
        "database.sslcert",
        "only sent over TLS",
    );
    // Paths: absolute, not empty.
    rejects(
        "host = \"db.lab\"\nsslrootcert = \"ca.pem\"",
        "database.sslrootcert",
        "absolute",
    );
    rejects(
        "host = \"db.lab\"\nsslrootcert = \"\"",
        "database.sslrootcert",
        "empty",
    );
    rejects(
        "url = \"postgres://u@db.lab/x?sslkey=k.pem&sslcert=/c.pem\"",
        "database.url",
        "sslkey must be an absolute path",
    );
    // No TLS over a Unix socket.
    rejects(
        "host = \"/run/postgresql\"\nsslmode = \"verify-full\"",
        "database.sslmode",
        "Unix socket",
    );
    rejects(
        "url = \"postgres://u@db.lab/x?sslnegotiation=direct\"",
        "database.url",
        "sslnegotiation",
    );
    rejects(
        "url = \"postgres://u@db.lab/x?nonsense=1\"",
        "database.url",
        "not a usable PostgreSQL URL",
    );
    let e = rejects(
        "host = \"db.lab\"\nsslmode = \"bogus\"",
        "database.sslmode",
        "bogus",
    );
    assert!(e.contains("t.toml:"), "{e}");
}

#[test]
fn the_demo_url_brings_its_own_tls_settings() {
    let mut c = parse(&with_database("host = \"127.0.0.1\"")).expect("config");
    c.database
        .use_url("postgres://u@db.lab/x?sslrootcert=/etc/ca.pem")
        .expect("usable");
    assert_eq!(
        c.database.target,
        DatabaseTarget::Url("postgres://u@db.lab/x".into())
    );
    assert_eq!(c.database.tls.sslmode, SslMode::VerifyFull);
    assert_eq!(
        c.database.tls.sslrootcert.as_deref(),
        Some(Path::new("/etc/ca.pem"))
    );
    c.database
        .use_url("postgres://u@127.0.0.1/x")
        .expect("usable");
    assert_eq!(c.database.tls, DatabaseTls::new(SslMode::Disable));
    let e = c
        .database
        .use_url("postgres://u:hunter2@db.lab/x")
        .expect_err("password");
    assert!(!e.contains("hunter2"), "{e}");
}

// ---------------------------------------------------------------- check-config

fn check_config(file: &Path, credentials: Option<&Path>) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stringdriverd"));
    c.args(["check-config", "--config"]).arg(file);
    match credentials {
        Some(dir) => c.env("CREDENTIALS_DIRECTORY", dir),
        None => c.env_remove("CREDENTIALS_DIRECTORY"),
    };
    let o = c.output().expect("runs");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn check_config_shows_the_tls_settings_and_never_the_password() {
    const SECRET: &str = "correct-horse-battery-staple";
    let files = ClientFiles::new();
    let password = files.write("db-password", &format!("{SECRET}\n"));
    let creds = files.dir.path().join("creds");
    std::fs::create_dir(&creds).expect("mkdir");
    std::fs::write(creds.join("db-password"), SECRET).expect("credential");
    let ca = Ca::new("lab CA");
    let root = files.write("ca.pem", &ca.pem());
    let (client_cert, client_key) =
        ca.issue("stringdriver", &["h"], ExtendedKeyUsagePurpose::ClientAuth);
    let cert = files.write("client.pem", &client_cert);
    let key = files.write("client.key", &client_key);
    let config = files.write(
        "stringdriver.toml",
        &with_database(&format!(
            "url = \"postgres://stringdriver@db.lab:5432/audmon\"\n\
             password_file = \"{}\"\nsslrootcert = \"{}\"\nsslcert = \"{}\"\nsslkey = \"{}\"",
            password.display(),
            root.display(),
            cert.display(),
            key.display()
        )),
    );

    for credentials in [None, Some(creds.as_path())] {
        let (ok, out, err) = check_config(&config, credentials);
        assert!(ok, "{err}");
        assert!(err.contains("configuration is valid"), "{err}");
        for line in [
            "sslmode = \"verify-full\"".to_string(),
            format!("sslrootcert = \"{}\"", root.display()),
            format!("sslcert = \"{}\"", cert.display()),
            format!("sslkey = \"{}\"", key.display()),
            format!("password_file = \"{}\"", password.display()),
        ] {
            assert!(out.contains(&line), "{line} not in:\n{out}");
        }
        assert!(
            !out.contains(SECRET) && !err.contains(SECRET),
            "{out}\n{err}"
        );
        // Nor the private key.
        let key_body = client_key.lines().nth(1).expect("a key line");
        assert!(!out.contains(key_body) && !err.contains(key_body));
    }
}

#[test]
fn check_config_reads_the_certificate_files() {
    let files = ClientFiles::new();
    let missing = files.dir.path().join("no-such-ca.pem");
    let config = files.write(
        "stringdriver.toml",
        &with_database(&format!(
            "host = \"db.lab\"\nsslrootcert = \"{}\"",
            missing.display()
        )),
    );
    let (ok, _, err) = check_config(&config, None);
    assert!(!ok, "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("database.sslrootcert"), "{err}");

    let key = files.write(
        "client.key",
        "-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n",
    );
    let cert = files.write("client.pem", &Ca::new("x").pem());
    let config = files.write(
        "stringdriver.toml",
        &with_database(&format!(
            "host = \"db.lab\"\nsslmode = \"require\"\nsslcert = \"{}\"\nsslkey = \"{}\"",
            cert.display(),
            key.display()
        )),
    );
    let (ok, out, err) = check_config(&config, None);
    assert!(!ok, "{err}");
    assert!(err.contains("database.sslkey"), "{err}");
    assert!(
        !err.contains("TOPSECRET") && !out.contains("TOPSECRET"),
        "{err}"
    );
}
