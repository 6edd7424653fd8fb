//! A private PostgreSQL database per test, dropped when the test ends.
//!
//! The server comes from `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); `scripts/test.sh` starts a
//! throw-away cluster when nothing answers there. Tests that need PostgreSQL
//! never skip: without a server they fail and say how to get one.

use tokio_postgres::NoTls;

/// Where the tests look for PostgreSQL when `DATABASE_URL` is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database created for one test.
pub struct TestDb {
    /// Connection settings of the private database.
    pub config: tokio_postgres::Config,
    /// Its name.
    pub name: String,
    admin: tokio_postgres::Config,
}

fn admin_config() -> (String, tokio_postgres::Config) {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
    let cfg = url
        .parse::<tokio_postgres::Config>()
        .unwrap_or_else(|e| panic!("DATABASE_URL `{url}` is not a PostgreSQL URL: {e}"));
    (url, cfg)
}

async fn connect(cfg: &tokio_postgres::Config, what: &str) -> tokio_postgres::Client {
    let (client, conn) = cfg.connect(NoTls).await.unwrap_or_else(|e| {
        panic!(
            "these tests need PostgreSQL at {what}, which did not answer: {e}. \
             Run the suite with scripts/test.sh (it starts a throw-away cluster when \
             none answers and the server binaries are installed, e.g. `apt-get install postgresql`), \
             or point DATABASE_URL at a server where the user may create databases."
        )
    });
    tokio::spawn(conn);
    client
}

impl TestDb {
    /// Creates a fresh, empty database.
    pub async fn create() -> TestDb {
        let (url, admin) = admin_config();
        let client = connect(&admin, &url).await;
        let name = format!("sdtest_{}", uuid::Uuid::new_v4().simple());
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name} at {url}: {e}"));
        let mut config = admin.clone();
        config.dbname(&name);
        TestDb {
            config,
            name,
            admin,
        }
    }

    /// The private database as a URL (TCP servers only).
    pub fn url(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            other => panic!("tests need PostgreSQL over TCP, DATABASE_URL gives {other:?}"),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let user = self.config.get_user().unwrap_or("postgres");
        format!("postgres://{user}@{host}:{port}/{}", self.name)
    }

    /// A client of the private database.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.config, &self.name).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs outside async context; a short-lived runtime on its own
        // thread removes the database even when the test panicked.
        let admin = self.admin.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, conn)) = admin.connect(NoTls).await {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}
