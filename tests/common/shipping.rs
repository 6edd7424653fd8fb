//! Shipping against a private PostgreSQL database: the database migrated,
//! reached directly or through a [`Proxy`](super::proxy::Proxy), a spool in
//! a temporary directory, quick shipper options, and waits on the
//! shipper's status or on rows.

use std::net::SocketAddr;
use std::time::Duration;

use stringdriverd::store::migrate;
use stringdriverd::store::ship::{ShipperOptions, ShipperStatus};
use stringdriverd::store::{Spool, SpoolHandle};
use tokio::sync::watch;

use super::pg::TestDb;

/// Generous upper bound of every wait.
pub const WAIT: Duration = Duration::from_secs(30);

/// A fresh database at the daemon's schema.
pub async fn migrated() -> TestDb {
    let db = TestDb::create().await;
    let mut c = db.client().await;
    migrate::migrate(&mut c).await.expect("migrate");
    db
}

/// The test server's TCP address (for a proxy in front of it).
pub fn pg_addr(db: &TestDb) -> SocketAddr {
    let host = match db.config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        other => panic!("tests need PostgreSQL over TCP, DATABASE_URL gives {other:?}"),
    };
    let port = db.config.get_ports().first().copied().unwrap_or(5432);
    let ip = if host == "localhost" {
        "127.0.0.1".to_string()
    } else {
        host
    };
    format!("{ip}:{port}").parse().expect("socket address")
}

/// The private database's settings, reached at `addr` instead.
pub fn via(db: &TestDb, addr: SocketAddr) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host(addr.ip().to_string())
        .port(addr.port())
        .dbname(&db.name);
    c.user(db.config.get_user().unwrap_or("postgres"));
    c.connect_timeout(Duration::from_secs(2));
    c
}

/// Shipper options with short batches and retries, for tests.
pub fn quick() -> ShipperOptions {
    ShipperOptions {
        batch_size: 100,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        idle_wait: Duration::from_millis(100),
        ..ShipperOptions::default()
    }
}

/// A fresh spool in `dir`, with room to spare.
pub fn spool_in(dir: &tempfile::TempDir) -> SpoolHandle {
    let (s, _) = Spool::open(&dir.path().join("spool.sqlite"), 1 << 30).expect("spool");
    SpoolHandle::new(s)
}

/// Rows of `table` now.
pub async fn count(db: &TestDb, table: &str) -> i64 {
    db.client()
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0)
}

/// The shipper's status once `pred` holds (panics after [`WAIT`]).
pub async fn wait_status(
    rx: &mut watch::Receiver<ShipperStatus>,
    pred: impl FnMut(&ShipperStatus) -> bool,
) -> ShipperStatus {
    tokio::time::timeout(WAIT, rx.wait_for(pred))
        .await
        .expect("in time")
        .expect("shipper alive")
        .clone()
}

/// Waits until `table` holds exactly `n` rows (panics after [`WAIT`]).
pub async fn wait_rows(db: &TestDb, table: &str, n: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let c = count(db, table).await;
        if c == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{table}: {c} rows, want {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A shipper with `opts` on a fresh spool, shipping to a fresh migrated
/// database through a [`Proxy`](super::proxy::Proxy) that lets connections through.
pub struct ProxiedShipper {
    /// The database.
    pub db: TestDb,
    /// The proxy in front of it.
    pub proxy: super::proxy::Proxy,
    /// Holds the spool file.
    pub dir: tempfile::TempDir,
    /// The spool the shipper reads.
    pub spool: SpoolHandle,
    /// The shipper's status.
    pub rx: watch::Receiver<ShipperStatus>,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ProxiedShipper {
    /// Starts it all.
    pub async fn start(opts: ShipperOptions) -> ProxiedShipper {
        let db = migrated().await;
        let proxy = super::proxy::Proxy::start(pg_addr(&db)).await;
        proxy.restore();
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = spool_in(&dir);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (rx, task) = stringdriverd::store::ship::spawn(
            spool.clone(),
            via(&db, proxy.addr),
            opts,
            shutdown.clone(),
        );
        ProxiedShipper {
            db,
            proxy,
            dir,
            spool,
            rx,
            shutdown,
            task,
        }
    }

    /// Stops the shipper and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("the shipper stops");
    }
}
