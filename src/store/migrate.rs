//! The PostgreSQL schema: the migrations in `migrations/` at the crate root,
//! embedded at build time and applied by refinery, and the start-up check
//! that the database is at exactly the version this build writes.
//!
//! refinery records applied migrations in `refinery_schema_history` (in the
//! first schema of the search path) and runs each migration in its own
//! transaction, so a failed migration leaves the database at the version
//! before it.

use std::fmt;
use std::sync::OnceLock;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::pg::error_text;

/// The embedded migrations, kept private: callers go through [`migrate`].
mod sql {
    refinery::embed_migrations!("migrations");
}

/// refinery's history table.
const HISTORY_TABLE: &str = "refinery_schema_history";

/// Key of the session advisory lock held while migrating, so that two
/// daemons started together do not both apply the same migration (the loser
/// would fail on "relation already exists"). Arbitrary, fixed forever.
const MIGRATION_LOCK_KEY: i64 = 0x5344_4d49_4752_4154; // "SDMIGRAT"

/// The command that brings a database to the current schema, for messages.
pub const MIGRATE_COMMAND: &str = "stringdriverd migrate --config FILE";

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// Migrations applied by this call, as (version, name), oldest first;
    /// empty when the database was already current.
    pub applied: Vec<(i32, String)>,
    /// Schema version of the database afterwards.
    pub current: i32,
}

/// Type of `machine_state.controls_id`, which follows the type of audmon's
/// `controls.controls_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlsIdType {
    /// `UUID`, as in the schema document: bind a `uuid::Uuid`.
    Uuid,
    /// A string type (`TEXT`, or `VARCHAR` on some audmon installs): bind the
    /// UUID's text.
    Text,
}

impl fmt::Display for ControlsIdType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ControlsIdType::Uuid => "UUID",
            ControlsIdType::Text => "TEXT",
        })
    }
}

/// A database found to be at the current schema by [`check_migrated`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaInfo {
    /// Schema version (equal to [`latest_version`]).
    pub version: i32,
    /// Type of `machine_state.controls_id`.
    pub controls_id: ControlsIdType,
}

/// Why migrating or checking the schema failed.
///
/// Each message carries its whole cause; `source()` is `None` on purpose,
/// so that `{:#}` chains do not print the cause twice.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The session failed (server unreachable, connection lost), or a
    /// statement other than a migration's own failed.
    #[error("PostgreSQL error while {action}: {cause}")]
    Database {
        /// What was being done.
        action: String,
        /// The cause with the server's own message, from [`error_text`].
        cause: String,
        /// The server's SQLSTATE; `None` when the server said nothing
        /// (connection refused, lost or closed).
        code: Option<SqlState>,
    },
    /// The database is behind this build's schema.
    #[error(
        "{}: run `{MIGRATE_COMMAND}` (or set database.auto_migrate = true)",
        behind(*current, *latest)
    )]
    NotMigrated {
        /// Version of the database; `None` when no migration was ever applied.
        current: Option<i32>,
        /// Newest version this build knows.
        latest: i32,
    },
    /// A newer stringdriverd migrated the database past what this build knows.
    #[error(
        "the database schema is at version {current}, newer than the newest this \
         stringdriverd knows ({latest}): a newer stringdriverd has migrated it; upgrade \
         this one (it must not write to a schema it does not know)"
    )]
    Ahead {
        /// Version of the database.
        current: i32,
        /// Newest version this build knows.
        latest: i32,
    },
    /// The history of applied migrations does not match the embedded ones: a
    /// migration was edited after it was applied, or one is missing.
    #[error(
        "the database's migration history does not match this stringdriverd at version \
         {version}: {detail}"
    )]
    Divergent {
        /// The version that differs.
        version: i32,
        /// How it differs.
        detail: String,
    },
    /// A migration failed; it was rolled back, and the database stays at
    /// the version before it.
    #[error("migration V{version}__{name} failed and was rolled back: {cause}")]
    Failed {
        /// Version of the failed migration.
        version: i32,
        /// Its name.
        name: String,
        /// The server's message (for the migrations' own checks, a sentence
        /// saying what to repair).
        cause: String,
    },
    /// The schema does not look as the migrations leave it, or refinery
    /// failed in a way not covered above.
    #[error("unexpected database schema: {detail}")]
    Unexpected {
        /// What was found.
        detail: String,
    },
}

fn behind(current: Option<i32>, latest: i32) -> String {
    match current {
        None => format!(
            "the database is not migrated (it has no stringdriverd schema; this \
             stringdriverd needs version {latest})"
        ),
        Some(v) => format!("the database schema is at version {v} of {latest}"),
    }
}

/// An embedded migration: version, name, refinery's checksum.
struct Embedded {
    version: i32,
    name: String,
    checksum: u64,
}

fn embedded() -> &'static [Embedded] {
    static EMBEDDED: OnceLock<Vec<Embedded>> = OnceLock::new();
    EMBEDDED.get_or_init(|| {
        let mut list: Vec<Embedded> = sql::migrations::runner()
            .get_migrations()
            .iter()
            .map(|m| Embedded {
                version: m.version(),
                name: m.name().to_string(),
                checksum: m.checksum(),
            })
            .collect();
        list.sort_by_key(|m| m.version);
        list
    })
}

/// Newest schema version embedded in this build.
pub fn latest_version() -> i32 {
    embedded().last().map_or(0, |m| m.version)
}

/// A row of the history table.
struct Applied {
    version: i32,
    name: String,
    checksum: String,
}

fn database_error(action: impl Into<String>, error: &tokio_postgres::Error) -> MigrateError {
    MigrateError::Database {
        action: action.into(),
        cause: error_text(error),
        code: error.code().cloned(),
    }
}

fn db_error(action: &'static str) -> impl Fn(tokio_postgres::Error) -> MigrateError {
    move |error| database_error(action, &error)
}

/// The history table's rows, oldest first; empty when there is no table.
async fn applied(client: &Client) -> Result<Vec<Applied>, MigrateError> {
    let action = "reading the schema history";
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&HISTORY_TABLE])
        .await
        .map_err(db_error(action))?
        .try_get(0)
        .map_err(db_error(action))?;
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            &format!(
                "SELECT version, coalesce(name, ''), coalesce(checksum, '') \
                 FROM {HISTORY_TABLE} ORDER BY version"
            ),
            &[],
        )
        .await
        .map_err(db_error(action))?;
    rows.iter()
        .map(|r| {
            Ok(Applied {
                version: r.try_get(0).map_err(db_error(action))?,
                name: r.try_get(1).map_err(db_error(action))?,
                checksum: r.try_get(2).map_err(db_error(action))?,
            })
        })
        .collect()
}

/// Checks applied migrations against the embedded ones: none newer, none
/// edited, none skipped.
fn verify(applied: &[Applied]) -> Result<(), MigrateError> {
    let latest = latest_version();
    if let Some(last) = applied.last() {
        if last.version > latest {
            return Err(MigrateError::Ahead {
                current: last.version,
                latest,
            });
        }
    }
    for a in applied {
        let Some(m) = embedded().iter().find(|m| m.version == a.version) else {
            return Err(MigrateError::Divergent {
                version: a.version,
                detail: format!(
                    "the database has migration V{}__{}, which this stringdriverd does not have",
                    a.version, a.name
                ),
            });
        };
        if m.name != a.name {
            return Err(MigrateError::Divergent {
                version: a.version,
                detail: format!(
                    "the database applied it as V{}__{}, but this stringdriverd's is V{}__{}",
                    a.version, a.name, m.version, m.name
                ),
            });
        }
        if m.checksum.to_string() != a.checksum {
            return Err(MigrateError::Divergent {
                version: a.version,
                detail: format!(
                    "V{}__{} was applied with a different text than this stringdriverd's \
                     (the migration file was edited after it was applied); restore it",
                    a.version, a.name
                ),
            });
        }
    }
    // A gap below the newest applied version would never be filled in.
    if let Some(last) = applied.last() {
        if let Some(m) = embedded()
            .iter()
            .find(|m| m.version < last.version && !applied.iter().any(|a| a.version == m.version))
        {
            return Err(MigrateError::Divergent {
                version: m.version,
                detail: format!(
                    "migration V{}__{} was never applied, but later ones were",
                    m.version, m.name
                ),
            });
        }
    }
    Ok(())
}

/// Applies the pending migrations, each in its own transaction. Running it
/// on a current database applies nothing.
///
/// Concurrent callers are serialised by a session advisory lock; the
/// second finds nothing to apply.
pub async fn migrate(client: &mut Client) -> Result<MigrateReport, MigrateError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(db_error("waiting for the migration lock"))?;
    let result = migrate_locked(client).await;
    if let Err(e) = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await
    {
        // The lock goes with the session; a failure here means the session
        // is gone, which released it already.
        tracing::warn!(error = %error_text(&e), "cannot release the migration lock");
    }
    result
}

async fn migrate_locked(client: &mut Client) -> Result<MigrateReport, MigrateError> {
    let before = applied(client).await?;
    // Checked here rather than left to refinery so that a newer schema is
    // reported as such, not as a "missing" migration.
    verify(&before)?;
    let pending: Vec<&Embedded> = embedded()
        .iter()
        .filter(|m| !before.iter().any(|a| a.version == m.version))
        .collect();

    match sql::migrations::runner().run_async(client).await {
        Ok(report) => {
            let applied: Vec<(i32, String)> = report
                .applied_migrations()
                .iter()
                .map(|m| (m.version(), m.name().to_string()))
                .collect();
            for (version, name) in &applied {
                tracing::info!(version, name = %name, "applied database migration");
            }
            let current = before
                .iter()
                .map(|a| a.version)
                .chain(applied.iter().map(|(v, _)| *v))
                .max()
                .unwrap_or(0);
            Ok(MigrateReport { applied, current })
        }
        Err(e) => Err(refinery_error(&e, &pending)),
    }
}

/// Sorts a refinery error into [`MigrateError`]: with non-grouped runs,
/// refinery attaches a report only to failures of a migration itself, and the
/// failed one is the first pending migration the report does not list.
fn refinery_error(e: &refinery::Error, pending: &[&Embedded]) -> MigrateError {
    use refinery::error::Kind;
    let failed = e.report().and_then(|report| {
        let done = report.applied_migrations();
        pending
            .iter()
            .find(|m| !done.iter().any(|d| d.version() == m.version))
    });
    let pg = match e.kind() {
        Kind::Connection(_, source) => source.downcast_ref::<tokio_postgres::Error>(),
        Kind::DivergentVersion(applied, _) | Kind::MissingVersion(applied) => {
            return MigrateError::Divergent {
                version: applied.version(),
                detail: e.to_string(),
            }
        }
        _ => None,
    };
    match (failed, pg) {
        // The server refused a statement of the migration.
        (Some(m), Some(pg)) if pg.as_db_error().is_some() => MigrateError::Failed {
            version: m.version,
            name: m.name.clone(),
            cause: error_text(pg),
        },
        // The session broke: nothing is wrong with the migration itself.
        (Some(m), Some(pg)) => {
            database_error(format!("applying migration V{}__{}", m.version, m.name), pg)
        }
        (None, Some(pg)) => database_error("preparing the migrations", pg),
        (Some(m), None) => MigrateError::Failed {
            version: m.version,
            name: m.name.clone(),
            cause: e.to_string(),
        },
        (None, None) => MigrateError::Unexpected {
            detail: e.to_string(),
        },
    }
}

/// Checks that the database is at exactly the schema this build writes and
/// reads the type of `machine_state.controls_id`. Changes nothing.
pub async fn check_migrated(client: &Client) -> Result<SchemaInfo, MigrateError> {
    let applied = applied(client).await?;
    verify(&applied)?;
    let latest = latest_version();
    let current = applied.last().map(|a| a.version);
    if current != Some(latest) {
        return Err(MigrateError::NotMigrated { current, latest });
    }
    let action = "reading the type of machine_state.controls_id";
    let row = client
        .query_opt(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = to_regclass('machine_state') \
               AND a.attname = 'controls_id' AND NOT a.attisdropped",
            &[],
        )
        .await
        .map_err(db_error(action))?;
    let Some(row) = row else {
        return Err(MigrateError::Unexpected {
            detail: format!(
                "the schema history says version {latest}, but there is no \
                 machine_state.controls_id column (was the table dropped?)"
            ),
        });
    };
    let type_name: String = row.try_get(0).map_err(db_error(action))?;
    let controls_id = match type_name.as_str() {
        "uuid" => ControlsIdType::Uuid,
        t if t == "text" || t.starts_with("character varying") => ControlsIdType::Text,
        other => {
            return Err(MigrateError::Unexpected {
                detail: format!(
                    "machine_state.controls_id has type {other}; the migrations make it \
                     uuid or a string type"
                ),
            })
        }
    };
    Ok(SchemaInfo {
        version: latest,
        controls_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_embedded_in_order_without_gaps() {
        let versions: Vec<i32> = embedded().iter().map(|m| m.version).collect();
        assert_eq!(versions, (1..=latest_version()).collect::<Vec<_>>());
        assert_eq!(latest_version(), 3);
        assert_eq!(embedded()[0].name, "machine_state_and_operations");
    }

    #[test]
    fn messages_name_the_command_and_the_versions() {
        let e = MigrateError::NotMigrated {
            current: None,
            latest: 2,
        };
        assert!(e.to_string().contains("not migrated"), "{e}");
        assert!(e.to_string().contains(MIGRATE_COMMAND), "{e}");
        let e = MigrateError::NotMigrated {
            current: Some(1),
            latest: 2,
        };
        assert!(e.to_string().contains("version 1 of 2"), "{e}");
        let e = MigrateError::Ahead {
            current: 3,
            latest: 2,
        };
        assert!(e.to_string().contains("newer"), "{e}");
    }

    #[test]
    fn verify_refuses_newer_edited_and_skipped_history() {
        let row = |version: i32, name: &str, checksum: String| Applied {
            version,
            name: name.to_string(),
            checksum,
        };
        let good = |i: usize| {
            let m = &embedded()[i];
            row(m.version, &m.name, m.checksum.to_string())
        };
        assert!(verify(&[]).is_ok());
        assert!(verify(&[good(0)]).is_ok());
        assert!(verify(&[good(0), good(1)]).is_ok());
        // One version past the newest embedded migration, whatever it is.
        let n = embedded().len();
        assert!(verify(&(0..n).map(good).collect::<Vec<_>>()).is_ok());
        let latest = embedded()[n - 1].version;
        let mut ahead: Vec<Applied> = (0..n).map(good).collect();
        ahead.push(row(latest + 1, "future", "1".into()));
        assert!(matches!(
            verify(&ahead),
            Err(MigrateError::Ahead { current, latest: l }) if current == latest + 1 && l == latest
        ));
        assert!(matches!(
            verify(&[row(1, "machine_state_and_operations", "0".into())]),
            Err(MigrateError::Divergent { version: 1, .. })
        ));
        assert!(matches!(
            verify(&[good(1)]),
            Err(MigrateError::Divergent { version: 1, .. })
        ));
    }
}
