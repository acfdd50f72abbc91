//! Retention: how long records and their bodies are kept, globally and per scope.
//!
//! A policy is the global pair (`store.retention_days`, `store.body_ttl_days`) and rules that
//! give a property value its own pair (`[[store.retention]] property = "tenant=acme"`). Rules
//! are tried in order and the first that matches a record decides for it; a record no rule
//! matches takes the global pair. 0 days means kept forever (bodies: as long as the record).
//!
//! Each store applies it with its own means: ClickHouse with TTL clauses on the table and the
//! body columns (`clickhouse/migrate.rs`), SQLite with a sweep that deletes and clears in
//! short transactions (`sqlite/retention.rs`), since SQLite has no TTL.

/// One `[[store.retention]]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The property name and value the rule is for.
    pub property: (String, String),
    /// Days its records are kept; 0 forever.
    pub records_days: u32,
    /// Days its bodies are kept; 0 as long as the record.
    pub bodies_days: u32,
}

/// The whole policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Days a record no rule matches is kept; 0 forever.
    pub records_days: u32,
    /// Days its bodies are kept; 0 as long as the record.
    pub bodies_days: u32,
    /// The rules, first match wins.
    pub rules: Vec<Rule>,
}

/// Which records a part of the policy is about: rule `i` (minus what earlier rules took), or
/// the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Records rule `i` decides for.
    Rule(usize),
    /// Records no rule matches.
    Rest,
}

impl Policy {
    /// Whether nothing is ever deleted or cleared.
    pub fn keeps_everything(&self) -> bool {
        self.records_days == 0
            && self.bodies_days == 0
            && self
                .rules
                .iter()
                .all(|r| r.records_days == 0 && r.bodies_days == 0)
    }

    /// Each part with its (records, bodies) days, rules first.
    pub fn parts(&self) -> Vec<(Part, u32, u32)> {
        self.rules
            .iter()
            .enumerate()
            .map(|(i, r)| (Part::Rule(i), r.records_days, r.bodies_days))
            .chain([(Part::Rest, self.records_days, self.bodies_days)])
            .collect()
    }

    /// Whether the policy keeps bodies shorter than records anywhere (or at all).
    pub fn clears_bodies(&self) -> bool {
        self.parts()
            .iter()
            .any(|(_, records, bodies)| *bodies > 0 && (*records == 0 || bodies < records))
    }
}

impl Policy {
    /// The days `record` is kept: the first rule its properties match, else the global days
    /// (0: forever).
    pub fn records_days_of(&self, record: &crate::Record) -> u32 {
        self.rules
            .iter()
            .find(|r| record.properties.get(&r.property.0) == Some(&r.property.1))
            .map_or(self.records_days, |r| r.records_days)
    }

    /// Whether `record` is past its days at `now_ms`, or within `margin_ms` of it: a store's
    /// TTL may remove it as soon as it is written.
    pub fn expired(&self, record: &crate::Record, now_ms: i64, margin_ms: i64) -> bool {
        match self.records_days_of(record) {
            0 => false,
            days => record.ts + i64::from(days) * DAY_MS - margin_ms <= now_ms,
        }
    }
}

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_expires_by_its_first_matching_rule() {
        let p = Policy {
            records_days: 30,
            bodies_days: 0,
            rules: vec![
                Rule {
                    property: ("tenant".into(), "acme".into()),
                    records_days: 0,
                    bodies_days: 0,
                },
                Rule {
                    property: ("tier".into(), "free".into()),
                    records_days: 1,
                    bodies_days: 0,
                },
            ],
        };
        let now = 100 * DAY_MS;
        let mut r = crate::Record::new(uuid::Uuid::nil(), now - 2 * DAY_MS);
        assert!(!p.expired(&r, now, 0), "30 days for the rest");
        r.properties.insert("tier".into(), "free".into());
        assert!(p.expired(&r, now, 0));
        r.properties.insert("tenant".into(), "acme".into());
        assert!(
            !p.expired(&r, now, 0),
            "the first rule wins: acme keeps forever"
        );
        r.ts = now - 29 * DAY_MS;
        r.properties.clear();
        assert!(p.expired(&r, now, 2 * DAY_MS), "within the margin");
    }
}
