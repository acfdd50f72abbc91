use rusqlite::Connection;

use super::SqliteError;

/// Applies every migration of `tally_schema::SQLITE` not yet recorded in `tally_migrations`,
/// each in its own transaction. Running it again is a no-op. Returns how many were applied.
pub fn migrate(conn: &mut Connection) -> Result<usize, SqliteError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS tally_migrations (
            version INTEGER PRIMARY KEY NOT NULL,
            name TEXT NOT NULL,
            applied_at_ms INTEGER NOT NULL
        )",
    )
    .map_err(|source| SqliteError::Migrate {
        name: "tally_migrations",
        source,
    })?;
    let mut applied = 0;
    for m in tally_schema::SQLITE {
        let err = |source| SqliteError::Migrate {
            name: m.name,
            source,
        };
        let tx = conn.transaction().map_err(err)?;
        let done: bool = tx
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM tally_migrations WHERE version = ?1)",
                [m.version],
                |r| r.get(0),
            )
            .map_err(err)?;
        if done {
            continue;
        }
        tx.execute_batch(m.sql).map_err(err)?;
        tx.execute(
            "INSERT INTO tally_migrations (version, name, applied_at_ms)
             VALUES (?1, ?2, CAST(unixepoch('subsec') * 1000 AS INTEGER))",
            rusqlite::params![m.version, m.name],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::info!(migration = m.name, "applied SQLite migration");
        applied += 1;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_are_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = crate::sqlite::open_rw(&dir.path().join("t.db")).expect("open");
        assert_eq!(
            migrate(&mut conn).expect("first"),
            tally_schema::SQLITE.len()
        );
        assert_eq!(migrate(&mut conn).expect("second"), 0);
        let n: i64 = conn
            .query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
            .expect("requests table exists");
        assert_eq!(n, 0);
    }
}
