//! The real `tally` binary: serve, SIGTERM with streams in flight, `sql`, `migrate`, config
//! errors.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

fn write_config(dir: &Path, upstream: &str) -> (std::path::PathBuf, u16, u16) {
    let (p, d) = (free_port(), free_port());
    let cfg = dir.join("tally.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[proxy]
listen = "127.0.0.1:{p}"
[dashboard]
listen = "127.0.0.1:{d}"
[store]
kind = "sqlite"
path = "{db}"
spool_dir = "{spool}"
[providers.openai]
base_url = "{upstream}"
[providers.anthropic]
kind = "anthropic"
base_url = "{upstream}"
"#,
            db = dir.join("tally.db").display(),
            spool = dir.join("spool").display()
        ),
    )
    .expect("write config");
    (cfg, p, d)
}

/// The binary with `args`, outside any configuration the environment would give it.
pub(crate) fn tally(args: &[&str]) -> std::process::Output {
    Command::new(TALLY_BIN)
        .args(args)
        .env_remove("TALLY_CONFIG")
        .env_remove("TALLY_CLICKHOUSE_URL")
        .output()
        .expect("run tally")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_drains_in_flight_streams_on_sigterm_then_sql_reads_the_store() {
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, proxy_port, dash_port) = write_config(dir.path(), &up.url());
    let cfg_s = cfg.to_str().expect("utf8 path");
    let child = Command::new(TALLY_BIN)
        .args(["--config", cfg_s])
        .env_remove("TALLY_CLICKHOUSE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tally");
    wait_healthy(dash_port, Duration::from_secs(20)).await;
    let proxy = format!("http://127.0.0.1:{proxy_port}");

    // Two quick requests, then three slow streams that are still running at SIGTERM.
    for _ in 0..2 {
        let (s, _, _) = post_json(
            &format!("{proxy}/v1/chat/completions"),
            &[],
            &json!({"model": "gpt-4o"}),
        )
        .await;
        assert_eq!(s, 200);
    }
    // The store is readable by another process while Tally runs (WAL).
    let db = dir.path().join("tally.db");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .expect("open");
        let n: i64 = conn
            .query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
            .expect("count");
        if n == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "records not visible to a concurrent reader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let url = format!("{proxy}/v1/chat/completions");
        slow.spawn(async move {
            let body = json!({"model": "gpt-4o", "stream": true, "messages": []});
            post_json(&url, &[("x-fake-interval-ms", "150")], &body).await
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    while let Some(r) = slow.join_next().await {
        let (status, _, body) = r.expect("task");
        assert_eq!(status, 200);
        assert!(
            String::from_utf8_lossy(&body).ends_with("data: [DONE]\n\n"),
            "stream cut short by shutdown"
        );
    }
    let status = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    assert!(
        status.status.success(),
        "exit: {:?}\n{}",
        status.status,
        String::from_utf8_lossy(&status.stderr)
    );

    let out = tally(&[
        "--config",
        cfg_s,
        "sql",
        "SELECT count() FROM requests WHERE error IS NULL AND prompt_tokens > 0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "count()\n5\n");

    let out = tally(&[
        "--config",
        cfg_s,
        "sql",
        "--format",
        "json",
        "SELECT model, stream FROM requests ORDER BY ts LIMIT 1",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"model":"gpt-4o","stream":0}"#
    );

    let out = tally(&["--config", cfg_s, "sql", "DELETE FROM requests"]);
    assert!(!out.status.success(), "sql must be read-only");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only reads"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tally(&["--config", cfg_s, "sql", "SELECT count(*) FROM requests"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "count(*)\n5\n");
}

#[test]
fn migrate_is_idempotent_and_bad_config_is_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, _, _) = write_config(dir.path(), "http://127.0.0.1:9");
    let cfg_s = cfg.to_str().expect("utf8");
    for _ in 0..2 {
        let out = tally(&["--config", cfg_s, "migrate"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = tally(&[
        "--config",
        cfg_s,
        "sql",
        "SELECT version FROM tally_migrations",
    ]);
    // Each migration once, however often `migrate` ran.
    let applied: String = tally_schema::SQLITE
        .iter()
        .map(|m| format!("{}\n", m.version))
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("version\n{applied}")
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[dashboard]\nlisten = \"0.0.0.0:8788\"\n").expect("write");
    let out = tally(&["--config", bad.to_str().expect("utf8"), "migrate"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow_public"));

    std::fs::write(&bad, "[proxy]\nlisen = \"x\"\n").expect("write");
    let out = tally(&["--config", bad.to_str().expect("utf8"), "migrate"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lisen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = tally(&[
        "--config",
        dir.path().join("missing.toml").to_str().expect("utf8"),
        "migrate",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_and_sql_work_against_clickhouse_via_environment() {
    let ch = crate::support::clickhouse::ClickHouse::started().await;
    let compression = match ch.compression {
        tally_ingest::clickhouse::Compression::Lz4 => "lz4",
        tally_ingest::clickhouse::Compression::None => "none",
    };
    let run = |args: &[&str]| {
        let mut cmd = Command::new(TALLY_BIN);
        cmd.args(args)
            .env_remove("TALLY_CONFIG")
            .env("TALLY_CLICKHOUSE_URL", &ch.url)
            .env("TALLY_STORE__DATABASE", &ch.database)
            .env("TALLY_STORE__COMPRESSION", compression);
        cmd.output().expect("run tally")
    };
    // The engine is another process; blocking this test's thread on the CLI is harmless.
    let out = run(&["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["sql", "SELECT name FROM system.tables WHERE database = currentDatabase() AND name LIKE 'requests%' ORDER BY name"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "name\nrequests\nrequests_hourly\nrequests_hourly_mv\n"
    );
    let out = run(&[
        "sql",
        "--format",
        "json",
        "SELECT count() AS n FROM requests",
    ]);
    // Whether 64-bit integers are quoted in JSON depends on the server's version.
    let row: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON row");
    assert!(row["n"] == 0 || row["n"] == "0", "{row}");
    let out = run(&["sql", "DROP TABLE requests"]);
    assert!(
        !out.status.success(),
        "sql must be read-only on ClickHouse too"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("readonly"));
}

/// #25, item 16: `tally sql` reads; it creates nothing, not even when asked to copy the store.
#[test]
fn sql_creates_nothing_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, _, _) = write_config(dir.path(), "http://127.0.0.1:9");
    let cfg = cfg.to_str().expect("utf8");
    let out = tally(&["--config", cfg, "migrate"]);
    assert!(out.status.success());
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = listing();
    assert!(!before.iter().any(|n| n.ends_with("-wal")), "{before:?}");
    let out = tally(&["--config", cfg, "sql", "SELECT count(*) FROM requests"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(listing(), before, "a read created files");
    let copy = dir.path().join("copy.db");
    let vacuum = format!("VACUUM INTO '{}'", copy.display());
    let out = tally(&["--config", cfg, "sql", &vacuum]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only reads"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!copy.exists(), "VACUUM INTO left a file behind");
    assert_eq!(listing(), before);
}

/// #25, item 1: `tally spool` shows what waits and puts quarantined segments back; a segment
/// whose checksum fails but whose records still parse comes back only when asked.
#[test]
fn spool_status_and_requeue_put_quarantined_segments_back() {
    use tally_ingest::spool::Spool;
    use tally_ingest::Record;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, _, _) = write_config(dir.path(), "http://127.0.0.1:9");
    let cfg = cfg.to_str().expect("utf8");
    let spool_dir = dir.path().join("spool");
    let id = uuid::Uuid::new_v4();
    let quarantined = {
        let mut spool = Spool::open(&spool_dir, 1 << 20).expect("open");
        let mut record = Record::new(id, 1_700_000_000_000);
        record.model = Some("gpt-4o-mini".into());
        spool.append(&[record]).expect("append");
        let segment = spool.oldest().expect("one segment");
        let held = Spool::open(&spool_dir, 1 << 20);
        assert!(held.is_err(), "the spool is locked while open");
        let out = tally(&["--config", cfg, "spool", "status"]);
        assert!(!out.status.success(), "status ran beside a holder");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("in use by another Tally process"),
            "{stderr}"
        );
        spool.quarantine(&segment).expect("quarantine")
    };
    // One bit flipped inside the model name: the checksum fails, the JSON still parses.
    let mut bytes = std::fs::read(&quarantined).expect("read");
    let at = bytes
        .windows(11)
        .position(|w| w == b"gpt-4o-mini")
        .expect("model in segment");
    bytes[at] ^= 0x20;
    std::fs::write(&quarantined, &bytes).expect("write");

    let status = |want: &str| {
        let out = tally(&["--config", cfg, "spool", "status"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains(want), "want {want:?} in {text}");
    };
    status("segments\t0\n");
    status("quarantined\t1\n");
    let out = tally(&["--config", cfg, "spool", "requeue"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("requeued 0 segments"), "{text}");
    assert!(text.contains("left in quarantine"), "{text}");
    status("quarantined\t1\n");

    let out = tally(&["--config", cfg, "spool", "requeue", "--ignore-checksum"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("requeued 1 segments (1 records)"), "{text}");
    status("segments\t1\n");
    status("quarantined\t0\n");
    let spool = Spool::open(&spool_dir, 1 << 20).expect("open");
    let batch = spool
        .read(&spool.oldest().expect("requeued"))
        .expect("reads with its new checksum");
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].request_id, id);
    assert_eq!(
        batch[0].model.as_deref(),
        Some("Gpt-4o-mini"),
        "the flipped bit stays flipped"
    );
}
