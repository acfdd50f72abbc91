use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

use crate::*;

pub(crate) fn record(n: i64) -> Record {
    Record {
        provider: "openai".into(),
        endpoint: "/v1/chat/completions".into(),
        method: "POST".into(),
        model: Some("gpt-4o-mini".into()),
        status: 200,
        latency_ms: 12,
        ttft_ms: Some(5),
        tokens: Some(Tokens {
            prompt: 10,
            completion: 5,
            ..Tokens::default()
        }),
        cost_usd: Some(0.001),
        user_id: Some(format!("user-{n}")),
        properties: BTreeMap::from([("env".to_owned(), "prod".to_owned())]),
        request_bytes: 100,
        response_bytes: 200,
        api_key_hint: Some("sk-…abcd".into()),
        request_body: Some("{}".into()),
        response_body: Some("{}".into()),
        upstream_request_body: Some(r#"{"contents":[]}"#.into()),
        upstream_response_body: Some(r#"{"candidates":[]}"#.into()),
        ..Record::new(Uuid::now_v7(), 1_700_000_000_000 + n)
    }
}

/// A writer that records batch sizes and can be told to fail.
#[derive(Clone, Default)]
struct Probe {
    batches: Arc<Mutex<Vec<usize>>>,
    fail: Arc<Mutex<u32>>,
}

#[derive(Debug, thiserror::Error)]
#[error("probe failure")]
struct ProbeError;

impl BatchWriter for Probe {
    type Error = ProbeError;
    fn write_batch(&mut self, batch: &[Record]) -> Result<(), ProbeError> {
        let mut fail = self.fail.lock().expect("lock");
        if *fail > 0 {
            *fail -= 1;
            return Err(ProbeError);
        }
        self.batches.lock().expect("lock").push(batch.len());
        Ok(())
    }
}

fn fast_config() -> BatchConfig {
    BatchConfig {
        max_rows: 10,
        flush_interval: Duration::from_secs(60),
        retry_backoff: Duration::from_millis(1),
        ..BatchConfig::default()
    }
}

#[test]
fn shutdown_drains_everything_in_row_sized_batches() {
    let metrics = IngestMetrics::default();
    let (tx, rx) = channel(100, metrics.clone());
    for i in 0..25 {
        assert!(tx.send(record(i)));
    }
    let probe = Probe::default();
    let worker =
        IngestWorker::spawn(rx, probe.clone(), fast_config(), metrics.clone()).expect("spawn");
    worker.shutdown();
    let batches = probe.batches.lock().expect("lock").clone();
    assert_eq!(batches.iter().sum::<usize>(), 25);
    assert!(batches.iter().all(|&n| n <= 10), "{batches:?}");
    assert_eq!(metrics.written.get(), 25);
    assert_eq!(metrics.dropped_total(), 0);
}

#[test]
fn partial_batch_flushes_on_interval() {
    let metrics = IngestMetrics::default();
    let (tx, rx) = channel(100, metrics.clone());
    let probe = Probe::default();
    let config = BatchConfig {
        flush_interval: Duration::from_millis(20),
        ..fast_config()
    };
    let worker = IngestWorker::spawn(rx, probe.clone(), config, metrics.clone()).expect("spawn");
    tx.send(record(1));
    // Wait (bounded) for the interval flush, without shutting down.
    for _ in 0..500 {
        if metrics.written.get() == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(metrics.written.get(), 1);
    worker.shutdown();
}

#[test]
fn failed_write_is_retried_then_succeeds() {
    let metrics = IngestMetrics::default();
    let (tx, rx) = channel(100, metrics.clone());
    let probe = Probe::default();
    *probe.fail.lock().expect("lock") = 2;
    tx.send(record(1));
    let worker =
        IngestWorker::spawn(rx, probe.clone(), fast_config(), metrics.clone()).expect("spawn");
    worker.shutdown();
    assert_eq!(metrics.written.get(), 1);
    assert_eq!(metrics.write_errors.get(), 2);
    assert_eq!(metrics.dropped_total(), 0);
}

#[test]
fn batch_that_keeps_failing_is_counted_as_dropped() {
    let metrics = IngestMetrics::default();
    let (tx, rx) = channel(100, metrics.clone());
    let probe = Probe::default();
    *probe.fail.lock().expect("lock") = u32::MAX;
    tx.send(record(1));
    tx.send(record(2));
    let worker = IngestWorker::spawn(rx, probe, fast_config(), metrics.clone()).expect("spawn");
    worker.shutdown();
    assert_eq!(metrics.written.get(), 0);
    let dropped = metrics
        .dropped
        .get_or_create(&DropLabels {
            reason: "store_error",
        })
        .get();
    assert_eq!(dropped, 2);
}

#[test]
fn full_channel_never_blocks_and_counts_the_drop() {
    let metrics = IngestMetrics::default();
    let (tx, _rx) = channel(2, metrics.clone());
    assert!(tx.send(record(1)));
    assert!(tx.send(record(2)));
    assert!(!tx.send(record(3)));
    let full = metrics
        .dropped
        .get_or_create(&DropLabels {
            reason: "channel_full",
        })
        .get();
    assert_eq!(full, 1);
    assert_eq!(metrics.enqueued.get(), 2);
}

#[test]
fn sqlite_writer_round_trips_and_ignores_a_replayed_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.db");
    let mut conn = sqlite::open_rw(&path).expect("open");
    sqlite::migrate(&mut conn).expect("migrate");
    let mut writer = sqlite::SqliteWriter::new(conn);
    let batch: Vec<Record> = (0..3).map(record).collect();
    writer.write_batch(&batch).expect("write");
    writer.write_batch(&batch).expect("replay is harmless");
    let ro = sqlite::open_ro(&path).expect("open ro");
    let (n, cost, props): (i64, f64, String) = ro
        .query_row(
            "SELECT count(*), sum(cost_usd), max(properties) FROM requests",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("query");
    assert_eq!(n, 3);
    assert!((cost - 0.003).abs() < 1e-12);
    assert_eq!(props, r#"{"env":"prod"}"#);
    assert!(
        ro.execute("DELETE FROM requests", []).is_err(),
        "read-only connection wrote"
    );
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn outage_spools_then_replays_every_record_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = IngestMetrics::default();
    let (tx, rx) = channel(100, metrics.clone());
    let probe = Probe::default();
    *probe.fail.lock().expect("lock") = u32::MAX; // the store is down
    let spool = spool::Spool::open(dir.path(), spool::DEFAULT_MAX_BYTES).expect("spool");
    let config = BatchConfig {
        flush_interval: Duration::from_millis(10),
        ..fast_config()
    };
    let worker =
        IngestWorker::spawn_with_spool(rx, probe.clone(), config, metrics.clone(), Some(spool))
            .expect("spawn");
    for i in 0..25 {
        tx.send(record(i));
    }
    wait_until("records spooled", || metrics.spooled.get() == 25);
    assert_eq!(metrics.written.get(), 0);
    assert!(metrics.spool_segments.get() >= 3);
    *probe.fail.lock().expect("lock") = 0; // the store is back
    wait_until("spool replayed", || metrics.replayed.get() == 25);
    assert_eq!(metrics.written.get(), 25);
    assert_eq!(metrics.spool_segments.get(), 0);
    assert_eq!(metrics.dropped_total(), 0);
    assert_eq!(
        probe.batches.lock().expect("lock").iter().sum::<usize>(),
        25
    );
    worker.shutdown();
}

#[test]
fn records_spooled_at_shutdown_are_replayed_by_the_next_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let down = Probe::default();
    *down.fail.lock().expect("lock") = u32::MAX;
    let metrics = IngestMetrics::default();
    let (tx, rx) = channel(100, metrics.clone());
    for i in 0..7 {
        tx.send(record(i));
    }
    let spool = spool::Spool::open(dir.path(), spool::DEFAULT_MAX_BYTES).expect("spool");
    IngestWorker::spawn_with_spool(rx, down, fast_config(), metrics.clone(), Some(spool))
        .expect("spawn")
        .shutdown();
    assert_eq!((metrics.spooled.get(), metrics.dropped_total()), (7, 0));

    let up = Probe::default();
    let metrics = IngestMetrics::default();
    let (_tx, rx) = channel(100, metrics.clone());
    let spool = spool::Spool::open(dir.path(), spool::DEFAULT_MAX_BYTES).expect("reopen");
    assert_eq!(spool.len(), 1);
    let worker =
        IngestWorker::spawn_with_spool(rx, up.clone(), fast_config(), metrics.clone(), Some(spool))
            .expect("spawn");
    wait_until("replay after restart", || metrics.replayed.get() == 7);
    worker.shutdown();
    assert_eq!(up.batches.lock().expect("lock").clone(), vec![7]);
}

/// A writer whose every error the store calls permanent: it refuses batches holding a
/// poisoned record always, and every batch while `refuse_all` is set.
#[derive(Clone, Default)]
struct Refuses {
    refuse_all: Arc<std::sync::atomic::AtomicBool>,
    poison: Option<Uuid>,
    attempts: Arc<std::sync::atomic::AtomicU64>,
    written: Arc<Mutex<Vec<Uuid>>>,
}

impl BatchWriter for Refuses {
    type Error = ProbeError;
    fn write_batch(&mut self, batch: &[Record]) -> Result<(), ProbeError> {
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let poisoned = batch.iter().any(|r| Some(r.request_id) == self.poison);
        if poisoned || self.refuse_all.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ProbeError);
        }
        self.written
            .lock()
            .expect("lock")
            .extend(batch.iter().map(|r| r.request_id));
        Ok(())
    }
    fn retriable(_: &ProbeError) -> bool {
        false
    }
}

fn spool_at(dir: &std::path::Path) -> spool::Spool {
    spool::Spool::open(dir, spool::DEFAULT_MAX_BYTES).expect("spool")
}

fn dropped(metrics: &IngestMetrics, reason: &'static str) -> u64 {
    metrics.dropped.get_or_create(&DropLabels { reason }).get()
}

#[test]
fn a_permanent_error_is_not_retried_but_spooled_not_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = IngestMetrics::default();
    let (tx, rx) = channel(100, metrics.clone());
    tx.send(record(1));
    let w = Refuses::default();
    w.refuse_all
        .store(true, std::sync::atomic::Ordering::SeqCst);
    IngestWorker::spawn_with_spool(
        rx,
        w,
        fast_config(),
        metrics.clone(),
        Some(spool_at(dir.path())),
    )
    .expect("spawn")
    .shutdown();
    assert_eq!(
        metrics.write_errors.get(),
        1,
        "no retry of a permanent error"
    );
    assert_eq!((metrics.spooled.get(), metrics.dropped_total()), (1, 0));
}

#[test]
fn a_store_that_refuses_everything_is_waited_for_and_nothing_is_quarantined() {
    // Code 516 (authentication failed) while a password rotates: permanent for the store's
    // classification, transient in fact.
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = IngestMetrics::default();
    let (tx, rx) = channel(100, metrics.clone());
    let w = Refuses::default();
    w.refuse_all
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let config = BatchConfig {
        flush_interval: Duration::from_millis(5),
        ..fast_config()
    };
    let worker = IngestWorker::spawn_with_spool(
        rx,
        w.clone(),
        config,
        metrics.clone(),
        Some(spool_at(dir.path())),
    )
    .expect("spawn");
    for i in 0..10 {
        tx.send(record(i));
        std::thread::sleep(Duration::from_millis(15));
    }
    wait_until("spooled", || metrics.spooled.get() == 10);
    // Let the replay fail and back off a few times.
    std::thread::sleep(Duration::from_millis(1800));
    assert_eq!(metrics.spool_quarantined.get(), 0);
    let tries = w.attempts.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        tries < 40,
        "{tries} attempts: the replay must back off, not spin"
    );
    w.refuse_all
        .store(false, std::sync::atomic::Ordering::SeqCst);
    wait_until("replayed once the store takes writes", || {
        metrics.replayed.get() == 10
    });
    worker.shutdown();
    assert_eq!(w.written.lock().expect("lock").len(), 10);
    assert_eq!(metrics.dropped_total(), 0);
}

#[test]
fn a_batch_refused_while_the_next_is_taken_is_quarantined() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = record(0);
    let mut sp = spool_at(dir.path());
    sp.append(std::slice::from_ref(&bad))
        .expect("spool the bad batch");
    sp.append(&[record(1), record(2)])
        .expect("spool a good one");
    let metrics = IngestMetrics::default();
    let (_tx, rx) = channel(100, metrics.clone());
    let w = Refuses {
        poison: Some(bad.request_id),
        ..Default::default()
    };
    let worker =
        IngestWorker::spawn_with_spool(rx, w.clone(), fast_config(), metrics.clone(), Some(sp))
            .expect("spawn");
    wait_until("the good batch replayed", || metrics.replayed.get() == 2);
    wait_until("the bad one quarantined", || {
        metrics.spool_quarantined.get() == 1
    });
    worker.shutdown();
    assert_eq!(metrics.spool_quarantined_segments.get(), 1);
    assert_eq!(metrics.dropped_total(), 0);
}

#[test]
fn a_vanished_segment_is_counted_lost_and_the_replay_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sp = spool_at(dir.path());
    sp.append(&[record(0), record(1), record(2)])
        .expect("first");
    sp.append(&[record(3)]).expect("second");
    let gone = sp.oldest().expect("segment");
    std::fs::remove_file(gone.path()).expect("the segment vanishes");
    let metrics = IngestMetrics::default();
    let (_tx, rx) = channel(100, metrics.clone());
    let probe = Probe::default();
    let worker =
        IngestWorker::spawn_with_spool(rx, probe.clone(), fast_config(), metrics.clone(), Some(sp))
            .expect("spawn");
    wait_until("the other segment replayed", || metrics.replayed.get() == 1);
    worker.shutdown();
    assert_eq!(metrics.spool_segments_lost.get(), 1);
    assert_eq!(
        dropped(&metrics, "spool_lost"),
        3,
        "its rows are counted as dropped"
    );
    assert_eq!(metrics.spool_segments.get(), 0);
    assert_eq!(metrics.write_errors.get(), 0);
}

/// The ingest thread runs at a lower priority than the proxy's workers (Linux).
#[cfg(target_os = "linux")]
#[test]
fn the_ingest_thread_yields_the_cpu_to_the_proxy() {
    let metrics = IngestMetrics::default();
    let (_tx, rx) = channel(10, metrics.clone());
    let worker = IngestWorker::spawn(rx, Probe::default(), fast_config(), metrics).expect("spawn");
    // The thread lowers its own priority as it starts; give it the moment.
    let nice_of_ingest_thread = || -> Option<i64> {
        std::fs::read_dir("/proc/self/task").ok()?.find_map(|t| {
            let dir = t.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            if comm.trim() != "tally-ingest" {
                return None;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // Field 19 (nice), counted after the parenthesised command name.
            stat.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(16)?
                .parse()
                .ok()
        })
    };
    let own = std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(16)?
                .parse::<i64>()
                .ok()
        })
        .expect("this thread's nice value");
    wait_until("the ingest thread is 5 nicer than the test", || {
        nice_of_ingest_thread() == Some((own + 5).min(19))
    });
    worker.shutdown();
}

fn journal_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .expect("dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
        })
        .count()
}

fn sqlite_store(path: &std::path::Path) -> sqlite::SqliteWriter {
    let mut conn = sqlite::open_rw(path).expect("open");
    sqlite::migrate(&mut conn).expect("migrate");
    sqlite::SqliteWriter::new(conn)
}

fn stored(path: &std::path::Path) -> i64 {
    sqlite::open_ro(path)
        .expect("open ro")
        .query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
        .expect("count")
}

#[test]
fn a_stored_batch_gives_its_journal_segment_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = IngestMetrics::default();
    let (journal, recovered) =
        journal::Journal::open(dir.path().join("journal"), 1 << 30, metrics.clone())
            .expect("journal");
    let (tx, rx) = channel(100, metrics.clone());
    let tx = tx.with_journal(journal.clone());
    for i in 0..25 {
        assert!(tx.send(record(i)));
    }
    assert!(metrics.journal_bytes.get() > 0);
    let db = dir.path().join("t.db");
    let worker = IngestWorker::spawn_journaled(
        rx,
        sqlite_store(&db),
        fast_config(),
        metrics.clone(),
        None,
        Hooks::default(),
        Some((journal.clone(), recovered)),
    )
    .expect("spawn");
    worker.shutdown();
    journal.close();
    assert_eq!(stored(&db), 25);
    assert_eq!(journal_files(&dir.path().join("journal")), 0);
    assert_eq!(metrics.journal_bytes.get(), 0);
}

#[test]
fn what_a_crash_left_is_written_once_and_only_what_the_store_lacks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let jdir = dir.path().join("journal");
    let db = dir.path().join("t.db");
    let records: Vec<Record> = (0..30).map(record).collect();
    {
        // A run that died: every record journaled, the first ten committed, none released.
        let metrics = IngestMetrics::default();
        let (journal, _) = journal::Journal::open(&jdir, 1 << 30, metrics).expect("journal");
        for r in &records {
            let _kept = journal.append(r).expect("append");
        }
        sqlite_store(&db)
            .write_batch(&records[..10])
            .expect("write");
    }
    let metrics = IngestMetrics::default();
    let (journal, recovered) =
        journal::Journal::open(&jdir, 1 << 30, metrics.clone()).expect("reopen");
    assert_eq!(recovered.records, records);
    let seen = Arc::new(Mutex::new(0usize));
    // Counts only what the filter has already rewritten: recovered records are filtered too,
    // and before the observer.
    struct Count(Arc<Mutex<usize>>);
    impl RecordObserver for Count {
        fn observe(&self, r: &Record) {
            if r.request_body.is_none() {
                *self.0.lock().expect("lock") += 1;
            }
        }
    }
    struct ClearBodies;
    impl RecordFilter for ClearBodies {
        fn filter(&self, r: &mut Record) {
            r.request_body = None;
        }
    }
    let (_tx, rx) = channel(100, metrics.clone());
    let worker = IngestWorker::spawn_journaled(
        rx,
        sqlite_store(&db),
        fast_config(),
        metrics.clone(),
        None,
        Hooks {
            filter: Some(Arc::new(ClearBodies)),
            observer: Some(Arc::new(Count(seen.clone()))),
        },
        Some((journal.clone(), recovered)),
    )
    .expect("spawn");
    wait_until("recovery", || {
        metrics.journal_recovered.get() == 20 && stored(&db) == 30
    });
    worker.shutdown();
    assert_eq!(
        *seen.lock().expect("lock"),
        20,
        "budgets see each record once"
    );
    assert_eq!(journal_files(&jdir), 0, "recovered segments are deleted");
}

#[test]
fn a_filter_that_panics_costs_the_record_its_texts_not_the_worker() {
    struct Fragile;
    impl RecordFilter for Fragile {
        fn filter(&self, r: &mut Record) {
            if r.user_id.as_deref() == Some("user-3") {
                r.request_body = Some("half-redacted".into());
                panic!("a bug in redaction");
            }
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("t.db");
    let metrics = IngestMetrics::default();
    let (tx, rx) = channel(100, metrics.clone());
    let worker = IngestWorker::spawn_observed(
        rx,
        sqlite_store(&db),
        fast_config(),
        metrics.clone(),
        None,
        Hooks {
            filter: Some(Arc::new(Fragile)),
            observer: None,
        },
    )
    .expect("spawn");
    for i in 0..10 {
        assert!(tx.send(record(i)));
    }
    worker.shutdown();
    assert_eq!(stored(&db), 10, "every record, and the worker lived on");
    assert_eq!(metrics.filter_panics.get(), 1);
    let conn = sqlite::open_ro(&db).expect("open ro");
    let (bodies, props, user): (Option<String>, String, Option<String>) = conn
        .query_row(
            "SELECT coalesce(request_body, response_body, upstream_request_body, upstream_response_body), \
             properties, user_id FROM requests WHERE status = 200 AND cost_usd IS NOT NULL \
             AND user_id IS NULL",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("the record of the panic");
    assert_eq!((bodies, props.as_str(), user), (None, "{}", None));
    let with_bodies: i64 = conn
        .query_row(
            "SELECT count(*) FROM requests WHERE request_body = '{}'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(with_bodies, 9);
}
