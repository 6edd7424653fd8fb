//! The `stepper_roles` table: what each global stepper index of a host is
//! for, so that `machine_state.stepper_positions` can be read in SQL without
//! the host's configuration file.

use tokio_postgres::Client;

use crate::config::{Config, Role};

/// The text stored in `stepper_roles.role` (the table's CHECK lists the same
/// values).
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::X => "x",
        Role::ZIn { .. } => "z_in",
        Role::ZOut { .. } => "z_out",
        Role::Tuner { .. } => "tuner",
        Role::Unused => "unused",
    }
}

/// One row per stepper, as columns (the statement takes arrays).
#[derive(Default)]
struct Rows {
    index: Vec<i32>,
    board: Vec<String>,
    local: Vec<i32>,
    role: Vec<&'static str>,
    string: Vec<Option<i32>>,
}

fn rows(config: &Config) -> Rows {
    let layout = &config.layout;
    let mut rows = Rows::default();
    for global in 0..layout.total_steppers() {
        // A validated layout locates every stepper on a configured board and
        // has at most a few hundred; the checks only keep a malformed one
        // from writing a wrong row.
        let Some((board, local)) = layout.locate(global) else {
            continue;
        };
        let Some(board) = config.boards.get(board) else {
            continue;
        };
        let (Ok(index), Ok(local)) = (i32::try_from(global), i32::try_from(local)) else {
            continue;
        };
        let role = layout.role(global);
        rows.index.push(index);
        rows.board.push(board.name.clone());
        rows.local.push(local);
        rows.role.push(role_name(role));
        rows.string
            .push(role.string().and_then(|s| i32::try_from(s).ok()));
    }
    rows
}

/// Both halves in one statement, which PostgreSQL runs atomically: a reader
/// never sees a host's map half rewritten. The upsert touches only indices
/// in the new map and the delete only the others, so the two never meet.
/// `updated_at` moves only when the row's content changes, and unchanged rows
/// are not returned, so the count is of rows actually changed.
const SYNC: &str = "\
WITH new (stepper_index, board, local_index, role, string_index) AS (
    SELECT * FROM unnest($2::int4[], $3::text[], $4::int4[], $5::text[], $6::int4[])
), upserted AS (
    INSERT INTO stepper_roles AS s (host, stepper_index, board, local_index, role, string_index)
    SELECT $1, stepper_index, board, local_index, role, string_index FROM new
    ON CONFLICT (host, stepper_index) DO UPDATE
        SET board = EXCLUDED.board,
            local_index = EXCLUDED.local_index,
            role = EXCLUDED.role,
            string_index = EXCLUDED.string_index,
            updated_at = now()
        WHERE (s.board, s.local_index, s.role, s.string_index)
              IS DISTINCT FROM
              (EXCLUDED.board, EXCLUDED.local_index, EXCLUDED.role, EXCLUDED.string_index)
    RETURNING 1
), deleted AS (
    DELETE FROM stepper_roles
    WHERE host = $1 AND NOT (stepper_index = ANY ($2::int4[]))
    RETURNING 1
)
SELECT (SELECT count(*) FROM upserted) + (SELECT count(*) FROM deleted)";

/// Makes `stepper_roles` hold exactly the steppers of `config`'s layout for
/// `host`: one row per global index with its board, index on the board,
/// role and string; rows of indices past the layout are deleted, and rows of
/// other hosts are left alone. Atomic and idempotent.
///
/// Returns the number of rows inserted, changed or deleted (0 when the table
/// already matched).
pub async fn sync_stepper_roles(
    client: &Client,
    host: &str,
    config: &Config,
) -> Result<u64, tokio_postgres::Error> {
    let r = rows(config);
    let row = client
        .query_one(
            SYNC,
            &[&host, &r.index, &r.board, &r.local, &r.role, &r.string],
        )
        .await?;
    let changed: i64 = row.try_get(0)?;
    // A count is never negative.
    Ok(u64::try_from(changed).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_those_the_table_accepts() {
        let names: Vec<&str> = [
            Role::X,
            Role::ZIn { string: 0 },
            Role::ZOut { string: 0 },
            Role::Tuner { string: 0 },
            Role::Unused,
        ]
        .into_iter()
        .map(role_name)
        .collect();
        assert_eq!(names, ["x", "z_in", "z_out", "tuner", "unused"]);
    }
}
