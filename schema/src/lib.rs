//! Versioned SQL migrations for Tally's stores, embedded in the binary.
//!
//! Migrations are plain `.sql` files under `schema/<store>/`, numbered so that their order is
//! their version. Keeping them as files (rather than strings in code) lets a reviewer read the
//! schema as SQL and lets users apply it by hand if they must. The runners live with each store
//! writer in `tally-ingest`; this crate only owns the text and its order.
#![deny(missing_docs)]

/// One schema change: applied once, in `version` order, and recorded by the runner.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Strictly increasing version number, taken from the file name prefix.
    pub version: u32,
    /// File name without extension, e.g. `0001_requests`.
    pub name: &'static str,
    /// The SQL to run, possibly several statements.
    pub sql: &'static str,
}

/// The SQLite migrations, oldest first.
pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_requests",
        sql: include_str!("../sqlite/0001_requests.sql"),
    },
    Migration {
        version: 2,
        name: "0002_dashboard_index",
        sql: include_str!("../sqlite/0002_dashboard_index.sql"),
    },
    Migration {
        version: 3,
        name: "0003_alerts",
        sql: include_str!("../sqlite/0003_alerts.sql"),
    },
    Migration {
        version: 4,
        name: "0004_routing_cache",
        sql: include_str!("../sqlite/0004_routing_cache.sql"),
    },
    Migration {
        version: 5,
        name: "0005_refusal",
        sql: include_str!("../sqlite/0005_refusal.sql"),
    },
    Migration {
        version: 6,
        name: "0006_keys",
        sql: include_str!("../sqlite/0006_keys.sql"),
    },
    Migration {
        version: 7,
        name: "0007_translated_bodies",
        sql: include_str!("../sqlite/0007_translated_bodies.sql"),
    },
    Migration {
        version: 8,
        name: "0008_billing_details",
        sql: include_str!("../sqlite/0008_billing_details.sql"),
    },
    Migration {
        version: 9,
        name: "0009_purges",
        sql: include_str!("../sqlite/0009_purges.sql"),
    },
];

/// The ClickHouse migrations, oldest first. They are templates: the runner in `tally-ingest`
/// fills `{db}`, `{local}`, `{on_cluster}`, `{engine}`, `{agg_engine}` and the TTL placeholders
/// from validated config, and `{is_error}` with the one definition of a failed request (identifiers checked against a strict pattern), and splits each file
/// into statements at semicolons that end a line.
pub const CLICKHOUSE: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_requests",
        sql: include_str!("../clickhouse/0001_requests.sql"),
    },
    Migration {
        version: 2,
        name: "0002_rollups",
        sql: include_str!("../clickhouse/0002_rollups.sql"),
    },
    Migration {
        version: 3,
        name: "0003_rollup_columns",
        sql: include_str!("../clickhouse/0003_rollup_columns.sql"),
    },
    Migration {
        version: 4,
        name: "0004_alerts",
        sql: include_str!("../clickhouse/0004_alerts.sql"),
    },
    Migration {
        version: 5,
        name: "0005_routing_cache",
        sql: include_str!("../clickhouse/0005_routing_cache.sql"),
    },
    Migration {
        version: 6,
        name: "0006_refusal",
        sql: include_str!("../clickhouse/0006_refusal.sql"),
    },
    Migration {
        version: 7,
        name: "0007_keys",
        sql: include_str!("../clickhouse/0007_keys.sql"),
    },
    Migration {
        version: 8,
        name: "0008_translated_bodies",
        sql: include_str!("../clickhouse/0008_translated_bodies.sql"),
    },
    Migration {
        version: 9,
        name: "0009_billing_details",
        sql: include_str!("../clickhouse/0009_billing_details.sql"),
    },
    Migration {
        version: 10,
        name: "0010_purges",
        sql: include_str!("../clickhouse/0010_purges.sql"),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_and_match_names() {
        for set in [SQLITE, CLICKHOUSE] {
            check(set);
        }
    }

    fn check(set: &[Migration]) {
        let mut last = 0;
        for m in set {
            assert!(m.version > last, "{} is out of order", m.name);
            let prefix: u32 = m.name[..4].parse().expect("numbered name");
            assert_eq!(prefix, m.version, "{} has the wrong version", m.name);
            last = m.version;
        }
    }
}
