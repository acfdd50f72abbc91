//! Redaction before storage, end to end: the real binary with a `[privacy]` policy serves
//! requests carrying planted personal data and secrets (in bodies, streamed answers, a
//! property and the user id), and afterwards not one planted value is in any byte Tally wrote
//! (database, WAL, spool, crash journal, log), while the masks and hashes are where they
//! belong, and `/metrics` counts them. A `kill -9` right after the answers shows that records
//! recovered from the journal are redacted too, and a running Tally keeps no journal segment
//! with them for more than a moment.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::bin::{Bin, Options};
use crate::support::*;

const EMAIL: &str = "alice.planted@example.com";
const USER: &str = "carol.planted@example.org";
const PHONE: &str = "+1 415-555-2671";
const CARD: &str = "4111 1111 1111 1111";
const IBAN: &str = "DE89 3704 0044 0532 0130 00";
const IP: &str = "203.0.113.77";
const ANTHROPIC_KEY: &str = "sk-ant-api03-PLANTED0123456789abcdefghijkl";
/// The proxy already turns `sk-…` shapes into a hint before the record exists; this one is
/// left to the privacy defaults.
const GITHUB: &str = "ghp_PLANTED0123456789abcdefghijklmnopqrstu";
const TICKET: &str = "TCK-424242";
const SSN: &str = "078-05-1121";
/// Planted on the provider whose scope turns emails off: it must be kept.
const KEPT_EMAIL: &str = "dave.kept@example.net";

const PLANTED: [&str; 10] = [
    GITHUB,
    EMAIL,
    USER,
    PHONE,
    CARD,
    IBAN,
    IP,
    ANTHROPIC_KEY,
    TICKET,
    SSN,
];

fn options(dir: &std::path::Path, upstream: &str) -> Options {
    let key = dir.join("hmac.key");
    std::fs::write(&key, "a-test-hmac-key\n").expect("key");
    Options {
        rest: format!(
            r#"
[providers.selfhosted]
kind = "openai"
base_url = "{upstream}"

[privacy]
hmac_key = {{ file = "{key}" }}
redact_user_ids = true

[privacy.detectors]
email = "hash"
phone = "mask"
card = "mask"
iban = "mask"
ip = "mask"
ssn = "drop"

[[privacy.patterns]]
name = "ticket"
regex = 'TCK-[0-9]{{6}}'

[[privacy.scopes]]
provider = "selfhosted"
detectors = {{ email = "off" }}
"#,
            key = key.display()
        ),
        ..Options::default()
    }
}

fn chat(content: &str, stream: bool) -> Value {
    json!({"model": "gpt-4o-mini", "stream": stream,
           "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": content}]})
}

const HEADERS: [(&str, &str); 4] = [
    ("authorization", "Bearer sk-test"),
    ("x-fake-mode", "echo"),
    ("tally-user-id", USER),
    ("tally-property-contact", PHONE),
];

/// Every file under `dir` but the config and the key, as bytes with the names.
fn written(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if !matches!(
                path.file_name().and_then(|n| n.to_str()),
                Some("tally.toml" | "hmac.key")
            ) {
                out.push((
                    path.display().to_string(),
                    std::fs::read(&path).unwrap_or_default(),
                ));
            }
        }
    }
    out
}

fn assert_nothing_planted(dir: &std::path::Path) {
    let files = written(dir);
    assert!(
        files.iter().any(|(n, _)| n.ends_with("tally.db")),
        "{:?}",
        files.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    for (name, bytes) in &files {
        for planted in PLANTED {
            assert!(
                memchr::memmem::find(bytes, planted.as_bytes()).is_none(),
                "{planted:?} is in {name}"
            );
        }
    }
}

fn journal_segments(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("spool/journal"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
            })
            .count()
        })
        .unwrap_or(0)
}

fn column(tally: &Bin, sql: &str) -> Vec<Option<String>> {
    let conn = rusqlite::Connection::open(tally.dir.path().join("tally.db")).expect("open");
    let mut stmt = conn.prepare(sql).expect("prepare");
    stmt.query_map([], |r| r.get::<_, Option<String>>(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_values_are_in_no_byte_tally_writes() {
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(dir.path(), &up.url());
    let mut tally = Bin::start_with(&up.url(), dir, &opts).await;
    let prompt = format!(
        "I am {EMAIL}, call {PHONE}, card {CARD}, IBAN {IBAN}, from {IP}, key {ANTHROPIC_KEY}, token {GITHUB}, re {TICKET}"
    );
    let url = tally.url("/v1/chat/completions");
    for stream in [false, true] {
        let (status, _, body) = post_json(&url, &HEADERS, &chat(&prompt, stream)).await;
        assert_eq!(status, 200);
        // The client gets the answer untouched: redaction is for storage only.
        assert!(String::from_utf8_lossy(&body).contains(CARD));
    }
    let (status, _, _) = post_json(&url, &HEADERS, &chat(&format!("my ssn is {SSN}"), false)).await;
    assert_eq!(status, 200);
    let kept = format!("write to {KEPT_EMAIL} from {IP}");
    let (status, _, _) = post_json(
        &tally.url("/selfhosted/v1/chat/completions"),
        &[HEADERS[0], HEADERS[1], ("tally-user-id", KEPT_EMAIL)],
        &chat(&kept, false),
    )
    .await;
    assert_eq!(status, 200);
    // What the provider was sent is what the client sent.
    let sent = up.received();
    assert!(String::from_utf8_lossy(&sent[0].body).contains(EMAIL));
    tally.wait_for_rows(4).await;

    let bodies = column(
        &tally,
        "SELECT request_body || ' ' || response_body FROM requests WHERE provider = 'openai' AND request_body IS NOT NULL ORDER BY ts",
    );
    assert_eq!(bodies.len(), 2, "the ssn request's bodies are dropped");
    let mut digests = Vec::new();
    for b in bodies.iter().flatten() {
        for mask in [
            "[PHONE]",
            "[CARD]",
            "[IBAN]",
            "[IP]",
            "[GITHUB_TOKEN]",
            "[TICKET]",
        ] {
            assert!(b.contains(mask), "{mask} not in {b}");
        }
        let at = b.find("[EMAIL:").expect("email hashed");
        digests.push(b[at..at + 20].to_owned());
    }
    // Equal addresses hash alike, across requests, bodies and streamed answers.
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    assert!(bodies[1]
        .as_deref()
        .is_some_and(|b| b.matches(&digests[0]).count() == 2));
    let dropped = column(
        &tally,
        "SELECT coalesce(request_body, 'absent') || coalesce(response_body, ' absent') FROM requests WHERE request_body IS NULL",
    );
    assert_eq!(dropped, [Some("absent absent".to_owned())]);
    // User ids and properties.
    let users = column(
        &tally,
        "SELECT DISTINCT user_id FROM requests WHERE provider = 'openai'",
    );
    assert_eq!(users.len(), 1);
    assert!(
        users[0]
            .as_deref()
            .is_some_and(|u| u.starts_with("[EMAIL:")),
        "{users:?}"
    );
    let contacts = column(
        &tally,
        "SELECT DISTINCT json_extract(properties, '$.contact') FROM requests WHERE provider = 'openai'",
    );
    assert_eq!(contacts, [Some("[PHONE]".to_owned())]);
    // The provider scope keeps its emails, and the rest of the policy still holds.
    let selfhosted = column(
        &tally,
        "SELECT request_body FROM requests WHERE provider = 'selfhosted'",
    );
    let s = selfhosted[0].as_deref().expect("kept");
    assert!(
        s.contains(KEPT_EMAIL) && s.contains("[IP]") && !s.contains(IP),
        "{s}"
    );

    tally
        .assert_metrics(&[
            r#"tally_redactions_total{detector="card",mode="mask"} 4"#,
            // Four bodies, and the user id of all three requests to openai.
            r#"tally_redactions_total{detector="email",mode="hash"} 7"#,
            // Four bodies, and three properties.
            r#"tally_redactions_total{detector="phone",mode="mask"} 7"#,
            r#"tally_redactions_total{detector="ssn",mode="drop"} 2"#,
        ])
        .await;

    // A running Tally keeps no journal segment holding these records for long.
    let deadline = Instant::now() + Duration::from_secs(5);
    while journal_segments(tally.dir.path()) > 0 {
        assert!(Instant::now() < deadline, "the journal kept its segment");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tally.signal("-TERM");
    assert!(tally.wait().await.success());
    assert_nothing_planted(tally.dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_recovered_from_the_journal_after_kill_9_are_redacted() {
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(dir.path(), &up.url());
    // A long flush interval: the answers are in the journal, not the store, at the kill.
    let opts = Options {
        rest: format!("{}\n[ingest]\nflush_interval_ms = 60000\n", opts.rest),
        ..opts
    };
    let mut tally = Bin::start_with(&up.url(), dir, &opts).await;
    let prompt = format!("I am {EMAIL}, card {CARD}, token {GITHUB}");
    let url = tally.url("/v1/chat/completions");
    for _ in 0..3 {
        let (status, _, _) = post_json(&url, &HEADERS, &chat(&prompt, false)).await;
        assert_eq!(status, 200);
    }
    tally.signal("-KILL");
    tally.wait().await;
    assert_eq!(tally.rows("SELECT count(*) FROM requests"), 0);
    assert!(
        journal_segments(tally.dir.path()) > 0,
        "the crash left a journal"
    );

    let dir = std::mem::replace(&mut tally.dir, tempfile::tempdir().expect("tempdir"));
    let again = Bin::start_with(&up.url(), dir, &opts).await;
    again
        .wait_for_log("journal recovery done", Duration::from_secs(30))
        .await;
    // Recovered records are written at once; the flush interval is for new ones.
    again.wait_for_rows(3).await;
    for b in column(&again, "SELECT request_body FROM requests") {
        let b = b.expect("kept");
        assert!(
            b.contains("[CARD]") && b.contains("[EMAIL:") && b.contains("[GITHUB_TOKEN]"),
            "{b}"
        );
    }
    let mut again = again;
    again.signal("-TERM");
    assert!(again.wait().await.success());
    assert_nothing_planted(again.dir.path());
}

/// #20 part 2, the request path: with `[privacy.request]`, the real OpenAI and Anthropic SDKs
/// get a 400 they raise as `BadRequestError` naming the detector when a blocking detector
/// finds something, and an ordinary answer when a masking one does, while the provider never
/// receives the value. Refused requests are recorded with the refusal and a masked body; a body
/// too large to check and a body that is not UTF-8 are refused, and `/metrics` counts it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_guard_blocks_and_masks_before_the_provider_sees_it() {
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        proxy: "max_body_bytes = 16384".into(),
        rest: format!(
            r#"
[providers.anthropic]
base_url = "{upstream}"

[providers.selfhosted]
kind = "openai"
base_url = "{upstream}"

[privacy.request]
block = ["github_token"]
mask = ["email", "ssn"]
providers = ["openai", "anthropic"]
"#,
            upstream = up.url()
        ),
        ..Options::default()
    };
    let tally = Bin::start_with(&up.url(), dir, &opts).await;
    let proxy = tally.url("");
    let r = run_sdk_script("privacy_guard.py", &[&proxy, GITHUB, EMAIL, SSN]).await;

    for call in ["openai_block", "anthropic_block"] {
        let b = &r[call];
        assert_eq!(b["raised"], "BadRequestError", "{call}: {r}");
        assert_eq!(b["status"], 400, "{call}");
        let message = b["message"].as_str().unwrap_or_default();
        assert!(message.contains("github_token"), "{call}: {message}");
        assert!(!message.contains(GITHUB), "{call}: {message}");
    }
    assert_eq!(r["openai_block"]["body"]["detector"], "github_token", "{r}");
    let masked_prompt = "write to [EMAIL] about ssn [SSN]";
    for call in ["openai_mask", "openai_stream_mask", "anthropic_mask"] {
        // The echoing upstream answers with what it received.
        assert_eq!(r[call]["text"], masked_prompt, "{call}: {r}");
    }
    for call in ["openai_mask", "openai_stream_mask"] {
        assert_eq!(r[call]["masked"], "email, ssn", "{call}: {r}");
    }

    // Raw HTTP: a body over max_body_bytes cannot be checked whole, so it is refused by
    // default; a body that is not UTF-8 and holds a masked value cannot be rewritten.
    let url = tally.url("/v1/chat/completions");
    let big = chat(&"x".repeat(20_000), false);
    let (status, _, body) = post_json(&url, &HEADERS[..1], &big).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["error"]["code"], "tally_privacy_unchecked", "{v}");
    let mut binary =
        format!("{{\"model\":\"gpt-4o-mini\",\"note\":\"{EMAIL}\",\"x\":\"").into_bytes();
    binary.extend_from_slice(&[0xff, 0xfe, b'"', b'}']);
    let (status, _, body) = send(
        http::Method::POST,
        &url,
        &[HEADERS[0], ("content-type", "application/json")],
        binary,
    )
    .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("not UTF-8"));

    // A provider the guard is not limited to gets the body as sent.
    let (status, _, _) = post_json(
        &tally.url("/selfhosted/v1/chat/completions"),
        &HEADERS[..1],
        &chat(&format!("write to {KEPT_EMAIL}"), false),
    )
    .await;
    assert_eq!(status, 200);
    let mut sent = up.received();
    let unguarded = sent.pop().expect("the selfhosted request");
    assert!(contains(&unguarded.body, KEPT_EMAIL));

    // Only the three masked requests reached the guarded providers, and none held a planted
    // value.
    assert_eq!(
        sent.len(),
        3,
        "{:?}",
        sent.iter().map(|s| &s.path_and_query).collect::<Vec<_>>()
    );
    for s in &sent {
        let b = String::from_utf8_lossy(&s.body);
        for planted in [EMAIL, SSN, GITHUB] {
            assert!(!b.contains(planted), "{planted} reached the provider: {b}");
        }
        assert!(b.contains(masked_prompt), "{b}");
    }

    tally.wait_for_rows(8).await;
    let refusals = column(
        &tally,
        "SELECT refusal FROM requests WHERE refusal IS NOT NULL ORDER BY refusal",
    );
    assert_eq!(
        refusals,
        [
            Some("tally_privacy_blocked".to_owned()),
            Some("tally_privacy_blocked".to_owned()),
            Some("tally_privacy_blocked".to_owned()),
            Some("tally_privacy_unchecked".to_owned()),
        ]
    );
    // A blocked request's record keeps its body with the finding masked.
    let blocked = column(
        &tally,
        "SELECT request_body FROM requests WHERE refusal = 'tally_privacy_blocked' AND request_body IS NOT NULL",
    );
    assert_eq!(blocked.len(), 2, "{blocked:?}");
    for b in blocked.iter().flatten() {
        // `[EMAIL]` is the guard's: the default storage policy leaves emails alone.
        assert!(b.contains("[GITHUB_TOKEN]") && b.contains("[EMAIL]"), "{b}");
    }
    tally
        .assert_metrics(&[
            r#"tally_privacy_request_total{detector="github_token",action="blocked"} 2"#,
            r#"tally_privacy_request_total{detector="email",action="masked"} 3"#,
            r#"tally_privacy_request_total{detector="ssn",action="masked"} 3"#,
            r#"tally_privacy_request_total{detector="email",action="blocked"} 1"#,
            r#"tally_privacy_request_unchecked_total{outcome="refused"} 1"#,
        ])
        .await;
    // Nothing Tally wrote holds a planted value (the default storage policy does not look for
    // emails: these were masked before the record existed).
    let mut tally = tally;
    tally.signal("-TERM");
    assert!(tally.wait().await.success());
    for (name, bytes) in written(tally.dir.path()) {
        for planted in [EMAIL, SSN, GITHUB] {
            assert!(
                memchr::memmem::find(&bytes, planted.as_bytes()).is_none(),
                "{planted:?} is in {name}"
            );
        }
    }
}

/// #20 part 4, erasure: `tally purge --user` with the user id as the client sent it erases
/// the records stored under its hashed form. Records still in the crash journal after a
/// `kill -9` are refused by the store when the next start replays them; a purge while Tally
/// runs deletes at once and says the spool is left to the running writer; requests made
/// after a purge are kept; every purge is in `purges`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_erases_a_user_everywhere_a_record_can_be() {
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(dir.path(), &up.url());
    let slow = Options {
        rest: format!("{}\n[ingest]\nflush_interval_ms = 60000\n", opts.rest),
        ..opts.clone()
    };
    let headers = |user: &'static str| {
        [
            ("authorization", "Bearer sk-test"),
            ("x-fake-mode", "echo"),
            ("tally-user-id", user),
            ("tally-property-tenant", "acme"),
        ]
    };
    let mut tally = Bin::start_with(&up.url(), dir, &slow).await;
    let url = tally.url("/v1/chat/completions");
    for user in [USER, USER, "bob"] {
        let (status, _, _) = post_json(&url, &headers(user), &chat("hello", false)).await;
        assert_eq!(status, 200);
    }
    tally.signal("-KILL");
    tally.wait().await;
    assert_eq!(tally.rows("SELECT count(*) FROM requests"), 0);
    assert!(
        journal_segments(tally.dir.path()) > 0,
        "the crash left a journal"
    );

    let cfg = tally.dir.path().join("tally.toml");
    let cfg = cfg.to_str().expect("utf8").to_owned();
    let out = crate::cli::tally(&["--config", &cfg, "purge", "--user", USER]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("in 1 redacted forms): 0 records deleted from the store, 0 from the spool"),
        "{text}"
    );
    assert!(!text.contains("in use"), "Tally is stopped: {text}");

    let dir = std::mem::replace(&mut tally.dir, tempfile::tempdir().expect("tempdir"));
    let mut again = Bin::start_with(&up.url(), dir, &opts).await;
    again
        .wait_for_log("journal recovery done", Duration::from_secs(30))
        .await;
    again.wait_for_rows(1).await;
    assert_eq!(
        column(&again, "SELECT user_id FROM requests"),
        [Some("bob".to_owned())],
        "the purged user's journaled records were refused by the store"
    );
    // After the purge, the same user is new traffic, and kept.
    let (status, _, _) = post_json(
        &again.url("/v1/chat/completions"),
        &headers(USER),
        &chat("again", false),
    )
    .await;
    assert_eq!(status, 200);
    again.wait_for_rows(2).await;
    assert_eq!(
        again.rows(
            "SELECT count(*) FROM requests WHERE user_id LIKE '[USER:%' OR user_id LIKE '[EMAIL:%'"
        ),
        1
    );

    let out = crate::cli::tally(&["--config", &cfg, "purge", "--user", USER]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 records deleted from the store"), "{text}");
    assert!(
        text.contains("The spool is in use by a running Tally"),
        "{text}"
    );
    assert_eq!(again.rows("SELECT count(*) FROM requests"), 1);
    let out = crate::cli::tally(&["--config", &cfg, "purge", "--property", "tenant=acme"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 records deleted"));
    assert_eq!(again.rows("SELECT count(*) FROM requests"), 0);
    assert_eq!(
        again.rows("SELECT count(*) FROM purges"),
        5,
        "two forms twice, and the tenant"
    );
    assert_eq!(again.rows("SELECT sum(records) FROM purges"), 2);

    // Mistakes are named before anything is touched.
    for (args, says) in [
        (vec!["purge"], "--user"),
        (vec!["purge", "--property", "tenant"], "expected KEY=VALUE"),
        (
            vec!["purge", "--user", "a", "--session", "b"],
            "cannot be used with",
        ),
        (vec!["purge", "--user", ""], "needs a value"),
    ] {
        let mut full = vec!["--config", cfg.as_str()];
        full.extend(args);
        let out = crate::cli::tally(&full);
        assert!(!out.status.success(), "{full:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{full:?}: {err}");
    }
    assert_eq!(again.rows("SELECT count(*) FROM purges"), 5);
    again.signal("-TERM");
    assert!(again.wait().await.success());
}

/// #20 part 4, retention on SQLite (which has no TTL): at start, and every ten minutes, the
/// sweep deletes records past their days and clears bodies past theirs, `tenant=acme` by its
/// own rule and the rest by `[store]`'s; `/metrics` counts both, and new traffic is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_retention_keeps_each_tenant_its_own_days() {
    use tally_ingest::BatchWriter;
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let day = 86_400_000;
    let now = chrono::Utc::now().timestamp_millis();
    let aged = |user: &str, tenant: &str, days: i64| tally_ingest::Record {
        user_id: Some(user.into()),
        properties: [("tenant".to_owned(), tenant.to_owned())].into(),
        request_body: Some("{\"q\":1}".into()),
        response_body: Some("{\"a\":1}".into()),
        ..tally_ingest::Record::new(uuid::Uuid::now_v7(), now - days * day)
    };
    {
        let db = dir.path().join("tally.db");
        let mut conn = tally_ingest::sqlite::open_rw(&db).expect("open");
        tally_ingest::sqlite::migrate(&mut conn).expect("migrate");
        tally_ingest::sqlite::SqliteWriter::new(conn)
            .write_batch(&[
                aged("acme-new", "acme", 2),
                aged("acme-old", "acme", 10),
                aged("acme-gone", "acme", 40),
                aged("other-new", "globex", 10),
                aged("other-old", "globex", 40),
                aged("other-gone", "globex", 400),
            ])
            .expect("seed");
    }
    let opts = Options {
        store: "retention_days = 365\nbody_ttl_days = 30\n".into(),
        rest: "[[store.retention]]\nproperty = \"tenant=acme\"\nretention_days = 30\nbody_ttl_days = 7\n"
            .into(),
        ..Options::default()
    };
    let mut tally = Bin::start_with(&up.url(), dir, &opts).await;
    // The first sweep runs beside the start-up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, body) = get(&tally.dashboard_url("/metrics")).await;
        if String::from_utf8_lossy(&body).contains("tally_retention_bodies_cleared_total 2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no sweep at start:\n{}",
            tally.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tally
        .assert_metrics(&[
            "tally_retention_records_deleted_total 2",
            "tally_retention_bodies_cleared_total 2",
        ])
        .await;
    assert_eq!(
        column(
            &tally,
            "SELECT user_id || ':' || (request_body IS NOT NULL AND response_body IS NOT NULL)
             FROM requests ORDER BY user_id"
        ),
        ["acme-new:1", "acme-old:0", "other-new:1", "other-old:0"].map(|s| Some(s.to_owned()))
    );
    let (status, _, _) = post_json(
        &tally.url("/v1/chat/completions"),
        &[("tally-property-tenant", "acme")],
        &chat("hello", false),
    )
    .await;
    assert_eq!(status, 200);
    tally.wait_for_rows(5).await;
    assert_eq!(
        tally.rows("SELECT count(*) FROM requests WHERE request_body IS NOT NULL"),
        3
    );
    tally.signal("-TERM");
    assert!(tally.wait().await.success());
}
