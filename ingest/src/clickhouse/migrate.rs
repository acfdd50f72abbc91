use serde::Deserialize;

use super::{ClickHouseError, ClickHouseSettings};
use crate::retention::Policy;

/// Fills a migration template's placeholders from validated settings and splits it into
/// statements. In cluster mode, tables get a `_local` suffix and replicated engines, for each
/// `CREATE TABLE … {local}` a Distributed table with the plain name is added, and each
/// `ALTER TABLE … {local}` is repeated for that Distributed table (its columns must match).
pub fn render_statements(s: &ClickHouseSettings, template: &str) -> Vec<String> {
    let db = s.database.as_str();
    let (local, on_cluster, engine, agg_engine) = match &s.cluster {
        Some(c) => (
            "_local",
            format!(" ON CLUSTER {c}"),
            "ReplicatedMergeTree",
            "ReplicatedAggregatingMergeTree",
        ),
        None => ("", String::new(), "MergeTree", "AggregatingMergeTree"),
    };
    let ttl = |days: u32, column: &str| {
        if days == 0 {
            String::new()
        } else {
            format!("TTL toDateTime({column}) + INTERVAL {days} DAY")
        }
    };
    let rendered = template
        .replace("{db}", db)
        .replace("{local}", local)
        .replace("{on_cluster}", &on_cluster)
        .replace("{engine}", engine)
        .replace("{agg_engine}", agg_engine)
        .replace("{table_ttl}", &ttl(s.retention_days, "ts"))
        .replace("{rollup_ttl}", &ttl(s.retention_days, "hour"))
        .replace("{body_ttl}", &ttl(s.body_ttl_days, "ts"))
        .replace("{is_error}", crate::IS_ERROR_SQL);
    let mut out = Vec::new();
    let mut current = String::new();
    for line in rendered.lines() {
        current.push_str(line);
        current.push('\n');
        if line.trim_end().ends_with(';') {
            push_statement(&mut out, &mut current);
        }
    }
    push_statement(&mut out, &mut current);
    if let Some(cluster) = &s.cluster {
        let mut distributed = Vec::new();
        for stmt in &out {
            if let Some(table) = created_local_table(stmt, db) {
                distributed.push(format!(
                    "CREATE TABLE IF NOT EXISTS {db}.{table}{on_cluster} AS {db}.{table}_local \
                     ENGINE = Distributed({cluster}, {db}, {table}_local, rand())"
                ));
            }
            if let Some(alter) = distributed_alter(stmt, db) {
                distributed.push(alter);
            }
        }
        out.extend(distributed);
    }
    out
}

fn push_statement(out: &mut Vec<String>, current: &mut String) {
    let stmt = current.trim().trim_end_matches(';').trim();
    let has_code = stmt
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"));
    if has_code {
        out.push(stmt.to_owned());
    }
    current.clear();
}

/// A statement without its comment lines.
fn code(stmt: &str) -> String {
    stmt.lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `requests` for `CREATE TABLE IF NOT EXISTS db.requests_local …` (not for views).
fn created_local_table(stmt: &str, db: &str) -> Option<String> {
    let code = code(stmt);
    let rest = code
        .trim_start()
        .strip_prefix("CREATE TABLE IF NOT EXISTS ")?
        .strip_prefix(db)?
        .strip_prefix('.')?;
    let name = rest.split_whitespace().next()?;
    name.strip_suffix("_local").map(str::to_owned)
}

/// For `ALTER TABLE db.t_local …`, the same ALTER of the Distributed table `db.t`.
fn distributed_alter(stmt: &str, db: &str) -> Option<String> {
    let alter = format!("ALTER TABLE {db}.");
    let code = code(stmt);
    let (table, tail) = code
        .trim_start()
        .strip_prefix(&alter)?
        .split_once("_local ")?;
    Some(format!("{alter}{table} {tail}"))
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct Applied {
    version: u32,
}

/// Creates the database if missing and applies every migration not yet recorded in
/// `tally_migrations`. Statements are `IF NOT EXISTS`, so a migration interrupted half-way is
/// safe to run again. Returns how many migrations were applied.
pub async fn migrate(s: &ClickHouseSettings) -> Result<usize, ClickHouseError> {
    let db = &s.database;
    let on_cluster = s
        .cluster
        .as_ref()
        .map(|c| format!(" ON CLUSTER {c}"))
        .unwrap_or_default();
    let server = s.server_client();
    server
        .query(&format!("CREATE DATABASE IF NOT EXISTS {db}{on_cluster}"))
        .execute()
        .await?;
    let engine = if s.cluster.is_some() {
        "ReplicatedMergeTree"
    } else {
        "MergeTree"
    };
    server
        .query(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.tally_migrations{on_cluster} \
             (version UInt32, name String, applied_at DateTime64(3, 'UTC')) \
             ENGINE = {engine} ORDER BY version"
        ))
        .execute()
        .await?;
    let applied: Vec<u32> = server
        .query(&format!("SELECT version FROM {db}.tally_migrations"))
        .fetch_all::<Applied>()
        .await?
        .into_iter()
        .map(|a| a.version)
        .collect();
    let mut count = 0;
    for m in tally_schema::CLICKHOUSE {
        if applied.contains(&m.version) {
            continue;
        }
        for stmt in render_statements(s, m.sql) {
            server.query(&stmt).execute().await?;
        }
        server
            .query(&format!(
                "INSERT INTO {db}.tally_migrations (version, name, applied_at) \
                 SELECT ?, ?, now64(3, 'UTC')"
            ))
            .bind(m.version)
            .bind(m.name)
            .execute()
            .await?;
        tracing::info!(migration = m.name, "applied ClickHouse migration");
        count += 1;
    }
    apply_retention(s, &server).await?;
    Ok(count)
}

/// The TTL clause ClickHouse shows for `days` of retention on `column` (its normalised form).
fn shown_ttl(column: &str, days: u32) -> Option<String> {
    (days > 0).then(|| format!("toDateTime({column}) + toIntervalDay({days})"))
}

/// What a TTL should be.
#[derive(Debug, Clone, PartialEq)]
enum Want {
    /// None at all.
    Nothing,
    /// `toDateTime(column) + INTERVAL days DAY`: compared with the one ClickHouse shows, and
    /// changed only when it differs.
    Days(u32),
    /// An expression of the retention rules. ClickHouse shows it reformatted, so it is set
    /// at every start (with `materialize_ttl_after_modify = 0`, a change of metadata only).
    Expr(String),
}

impl Want {
    fn of_days(days: u32) -> Want {
        if days == 0 {
            Want::Nothing
        } else {
            Want::Days(days)
        }
    }

    /// Whether `current` (as shown) must be replaced, and the expression to set (`None`:
    /// remove).
    fn change(&self, column: &str, current: Option<&str>) -> Option<Option<String>> {
        match self {
            Want::Nothing => current.is_some().then_some(None),
            Want::Days(d) => (current != shown_ttl(column, *d).as_deref())
                .then(|| Some(format!("toDateTime({column}) + INTERVAL {d} DAY"))),
            Want::Expr(e) => Some(Some(e.clone())),
        }
    }
}

/// A string literal in ClickHouse SQL (backslashes and quotes escaped): rule values come from
/// the config file and DDL takes no query parameters.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Far enough to mean never, inside `DateTime`'s range (2100-01-01).
const NEVER: &str = "toDateTime(4102444800, 'UTC')";

/// The TTL expression of the retention rules: `multiIf` takes the first rule that matches, as
/// the policy says, then the rest. `bodies`: the bodies' days instead of the records'.
fn rules_ttl(policy: &Policy, bodies: bool) -> String {
    let when = |records: u32, body: u32| {
        let days = if !bodies {
            records
        } else if body > 0 && (records == 0 || body < records) {
            body
        } else {
            0
        };
        if days == 0 {
            NEVER.to_owned()
        } else {
            format!("toDateTime(ts) + INTERVAL {days} DAY")
        }
    };
    let mut args = Vec::new();
    for r in &policy.rules {
        let (k, v) = &r.property;
        args.push(format!(
            "mapContains(properties, {}) AND properties[{}] = {}",
            literal(k),
            literal(k),
            literal(v)
        ));
        args.push(when(r.records_days, r.bodies_days));
    }
    args.push(when(policy.records_days, policy.bodies_days));
    format!("multiIf({})", args.join(", "))
}

async fn apply_retention(
    s: &ClickHouseSettings,
    server: &clickhouse::Client,
) -> Result<(), ClickHouseError> {
    let db = &s.database;
    let (local, on_cluster) = match &s.cluster {
        Some(c) => ("_local", format!(" ON CLUSTER {c}")),
        None => ("", String::new()),
    };
    let alter = server
        .clone()
        .with_setting("materialize_ttl_after_modify", "0");
    let policy = s.retention();
    let (rows, bodies, rollup) = if policy.rules.is_empty() {
        (
            Want::of_days(s.retention_days),
            Want::of_days(s.body_ttl_days),
            Want::of_days(s.retention_days),
        )
    } else {
        let parts = policy.parts();
        // The rollup has no properties: it is kept as long as the longest-kept records.
        let longest = if parts.iter().any(|(_, records, _)| *records == 0) {
            0
        } else {
            parts.iter().map(|(_, r, _)| *r).max().unwrap_or(0)
        };
        (
            if parts.iter().all(|(_, r, _)| *r == 0) {
                Want::Nothing
            } else {
                Want::Expr(rules_ttl(&policy, false))
            },
            if policy.clears_bodies() {
                Want::Expr(rules_ttl(&policy, true))
            } else {
                Want::Nothing
            },
            Want::of_days(longest),
        )
    };
    for (table, time_column, row_ttl, body_columns) in [
        (
            "requests",
            "ts",
            &rows,
            &[
                "request_body",
                "response_body",
                "upstream_request_body",
                "upstream_response_body",
            ][..],
        ),
        ("requests_hourly", "hour", &rollup, &[][..]),
    ] {
        let name = format!("{db}.{table}{local}");
        let ddl = server
            .query(&format!("SHOW CREATE TABLE {name}"))
            .fetch_bytes("TabSeparatedRaw")?
            .collect()
            .await?;
        let ddl = String::from_utf8_lossy(&ddl);
        let current = ddl
            .lines()
            .find_map(|l| l.strip_prefix("TTL "))
            .map(str::trim);
        if let Some(change) = row_ttl.change(time_column, current) {
            let stmt = match &change {
                Some(expr) => format!("ALTER TABLE {name}{on_cluster} MODIFY TTL {expr}"),
                None => format!("ALTER TABLE {name}{on_cluster} REMOVE TTL"),
            };
            alter.query(&stmt).execute().await?;
            tracing::info!(table = %name, ttl = change.as_deref().unwrap_or("none"), "row retention updated");
        }
        for column in body_columns {
            let line = ddl
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("`{column}`")));
            let current = line
                .and_then(|l| l.split(" TTL ").nth(1))
                .map(|t| t.trim().trim_end_matches(','));
            if let Some(change) = bodies.change("ts", current) {
                let stmt = match &change {
                    Some(expr) => format!(
                        "ALTER TABLE {name}{on_cluster} MODIFY COLUMN {column} Nullable(String) \
                         CODEC(ZSTD(3)) TTL {expr}"
                    ),
                    None => {
                        format!("ALTER TABLE {name}{on_cluster} MODIFY COLUMN {column} REMOVE TTL")
                    }
                };
                alter.query(&stmt).execute().await?;
                tracing::info!(table = %name, column, ttl = change.as_deref().unwrap_or("none"), "body retention updated");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::ClickHouseConfig;

    fn settings(cluster: Option<&str>, retention: u32, body: u32) -> ClickHouseSettings {
        ClickHouseConfig {
            url: "http://h:8123".into(),
            cluster: cluster.map(str::to_owned),
            retention_days: retention,
            body_ttl_days: body,
            ..Default::default()
        }
        .validate()
        .expect("valid")
    }

    #[test]
    fn single_server_ddl() {
        let s = settings(None, 90, 14);
        let stmts = render_statements(&s, tally_schema::CLICKHOUSE[0].sql);
        assert_eq!(stmts.len(), 1);
        let ddl = &stmts[0];
        assert!(
            ddl.contains("CREATE TABLE IF NOT EXISTS tally.requests\n"),
            "{ddl}"
        );
        assert!(ddl.contains("ENGINE = MergeTree\n"));
        assert!(ddl.contains("TTL toDateTime(ts) + INTERVAL 90 DAY"));
        assert!(ddl.contains("CODEC(ZSTD(3)) TTL toDateTime(ts) + INTERVAL 14 DAY"));
        assert!(!ddl.contains('{'), "unfilled placeholder: {ddl}");
        let rollups = render_statements(&s, tally_schema::CLICKHOUSE[1].sql);
        assert_eq!(rollups.len(), 2, "table and materialized view");
        assert!(rollups[1].contains("TO tally.requests_hourly\n"));
    }

    #[test]
    fn retention_rules_are_one_first_match_ttl_with_escaped_literals() {
        let policy = Policy {
            records_days: 365,
            bodies_days: 30,
            rules: vec![
                crate::retention::Rule {
                    property: ("tenant".into(), "o'hare\\".into()),
                    records_days: 0,
                    bodies_days: 7,
                },
                crate::retention::Rule {
                    property: ("tier".into(), "free".into()),
                    records_days: 10,
                    bodies_days: 0,
                },
            ],
        };
        let tenant = "mapContains(properties, 'tenant') AND properties['tenant'] = 'o\\'hare\\\\'";
        let tier = "mapContains(properties, 'tier') AND properties['tier'] = 'free'";
        assert_eq!(
            rules_ttl(&policy, false),
            format!(
                "multiIf({tenant}, {NEVER}, {tier}, toDateTime(ts) + INTERVAL 10 DAY, \
                 toDateTime(ts) + INTERVAL 365 DAY)"
            )
        );
        assert_eq!(
            rules_ttl(&policy, true),
            format!(
                "multiIf({tenant}, toDateTime(ts) + INTERVAL 7 DAY, {tier}, {NEVER}, \
                 toDateTime(ts) + INTERVAL 30 DAY)"
            ),
            "free-tier bodies go with their records"
        );
    }

    #[test]
    fn no_ttl_when_kept_forever() {
        let s = settings(None, 0, 0);
        let ddl = &render_statements(&s, tally_schema::CLICKHOUSE[0].sql)[0];
        let code = ddl.lines().filter(|l| !l.trim_start().starts_with("--"));
        assert!(!code.into_iter().any(|l| l.contains("TTL")), "{ddl}");
    }

    #[test]
    fn cluster_ddl_is_replicated_on_cluster_with_distributed_tables() {
        let s = settings(Some("prod"), 0, 0);
        let stmts = render_statements(&s, tally_schema::CLICKHOUSE[0].sql);
        assert_eq!(stmts.len(), 2);
        assert!(
            stmts[0].contains("CREATE TABLE IF NOT EXISTS tally.requests_local ON CLUSTER prod")
        );
        assert!(stmts[0].contains("ENGINE = ReplicatedMergeTree\n"));
        assert_eq!(
            stmts[1],
            "CREATE TABLE IF NOT EXISTS tally.requests ON CLUSTER prod AS tally.requests_local \
             ENGINE = Distributed(prod, tally, requests_local, rand())"
        );
        let rollups = render_statements(&s, tally_schema::CLICKHOUSE[1].sql);
        assert_eq!(rollups.len(), 3, "local table, view, distributed table");
        assert!(rollups[0].contains("ENGINE = ReplicatedAggregatingMergeTree"));
        assert!(
            rollups[1].contains("FROM tally.requests_local\n"),
            "views read the local shard: {}",
            rollups[1]
        );
        assert!(rollups[2].contains("Distributed(prod, tally, requests_hourly_local, rand())"));
        let columns = render_statements(&s, tally_schema::CLICKHOUSE[2].sql);
        assert_eq!(
            columns.len(),
            4,
            "alter, drop view, view, alter of the distributed table"
        );
        assert!(columns[0].contains("ALTER TABLE tally.requests_hourly_local ON CLUSTER prod\n"));
        assert!(columns[3].starts_with("ALTER TABLE tally.requests_hourly ON CLUSTER prod\n"));
        assert!(columns[3].contains("ADD COLUMN IF NOT EXISTS users AggregateFunction"));
        let alerts = render_statements(&s, tally_schema::CLICKHOUSE[3].sql);
        assert_eq!(alerts.len(), 4, "two local tables, two distributed tables");
        assert!(alerts[0].contains("tally.alert_events_local ON CLUSTER prod"));
        assert!(alerts[1].contains("tally.alert_deliveries_local ON CLUSTER prod"));
        assert!(alerts[2].contains("Distributed(prod, tally, alert_events_local, rand())"));
        assert!(alerts[3].contains("Distributed(prod, tally, alert_deliveries_local, rand())"));
    }
}
