//! Provider keys never leave the request: the real binary runs with debug logging, serves
//! every kind of request (JSON, stream, upstream error, unreachable upstream, a refused
//! header, a query-string key, a Bedrock request Tally signs, a Vertex request with a token
//! Tally mints), and afterwards the key is searched for in every byte of the store (database,
//! WAL and spool), the logs, `/metrics` and the JSON API. So are the credentials Tally holds:
//! the AWS secret, the service account's private key and every token minted from it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

const TALLY_BIN: &str = env!("CARGO_BIN_EXE_tally");
/// Distinctive enough that any occurrence is the key.
const KEYS: [&str; 4] = [
    "sk-proj-SECRETopenaiKEY0123456789abcd",
    "sk-ant-api03-SECRETanthropicKEY987654wxyz",
    "AIzaSECRETgoogleKEY1122334455",
    "azureSECRETkey000111222333",
];

/// URL, headers, body.
type Case<'a> = (String, Vec<(&'a str, &'a str)>, serde_json::Value);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_keys_appear_in_no_record_log_line_or_metric() {
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, d, dead) = (free_port(), free_port(), free_port());
    // Held credentials live outside the searched directory (they are in their own files).
    let held = tempfile::tempdir().expect("tempdir");
    let (aws_id, aws_secret, sa) = (
        held.path().join("aws_id"),
        held.path().join("aws_secret"),
        held.path().join("sa.json"),
    );
    std::fs::write(&aws_id, crate::support::fake_bedrock::ACCESS_KEY).expect("id");
    std::fs::write(&aws_secret, crate::support::fake_bedrock::SECRET_KEY).expect("secret");
    let sa_json = crate::support::fake_google_auth::key_file(&format!("{}/token", up.url()));
    std::fs::write(&sa, &sa_json).expect("sa");
    let cfg = dir.path().join("tally.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[proxy]
listen = "127.0.0.1:{p}"
[dashboard]
listen = "127.0.0.1:{d}"
[store]
path = "{db}"
spool_dir = "{spool}"
[providers.openai]
base_url = "{up}"
[providers.anthropic]
base_url = "{up}"
[providers.down]
kind = "openai"
base_url = "http://127.0.0.1:{dead}"
[providers.bedrock]
base_url = "{up}"
region = "us-east-1"
aws_access_key_id = {{ file = "{aws_id}" }}
aws_secret_access_key = {{ file = "{aws_secret}" }}
[providers.vertex]
base_url = "{up}"
service_account_file = "{sa}"
"#,
            up = up.url(),
            aws_id = aws_id.display(),
            aws_secret = aws_secret.display(),
            sa = sa.display(),
            db = dir.path().join("tally.db").display(),
            spool = dir.path().join("spool").display(),
        ),
    )
    .expect("config");
    let child = Command::new(TALLY_BIN)
        .args(["--config", cfg.to_str().expect("utf8")])
        .env("TALLY_LOG", "debug")
        .env_remove("TALLY_CLICKHOUSE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tally");
    wait_healthy(d, Duration::from_secs(20)).await;
    let proxy = format!("http://127.0.0.1:{p}");
    let chat = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let stream = json!({"model": "gpt-4o-mini", "stream": true, "messages": []});
    let bearer = format!("Bearer {}", KEYS[0]);
    let openai_auth = [("authorization", bearer.as_str())];
    let cases: Vec<Case> = vec![
        (
            format!("{proxy}/v1/chat/completions"),
            openai_auth.to_vec(),
            chat.clone(),
        ),
        (
            format!("{proxy}/v1/chat/completions"),
            openai_auth.to_vec(),
            stream,
        ),
        (
            format!("{proxy}/v1/chat/completions"),
            vec![
                ("authorization", bearer.as_str()),
                ("x-fake-mode", "error500"),
            ],
            chat.clone(),
        ),
        (
            format!("{proxy}/anthropic/v1/messages"),
            vec![("x-api-key", KEYS[1])],
            json!({"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []}),
        ),
        (
            format!("{proxy}/v1/chat/completions?key={}", KEYS[2]),
            vec![("x-goog-api-key", KEYS[2])],
            chat.clone(),
        ),
        (
            format!("{proxy}/down/v1/chat/completions"),
            vec![("api-key", KEYS[3])],
            chat.clone(),
        ),
        // A refused Tally header: the error path before forwarding.
        (
            format!("{proxy}/v1/chat/completions"),
            vec![
                ("authorization", bearer.as_str()),
                ("tally-cache-ttl", "soon"),
            ],
            chat.clone(),
        ),
        // An unknown provider.
        (
            format!("{proxy}/nosuch/v1/chat/completions"),
            openai_auth.to_vec(),
            chat,
        ),
        // Bedrock: signed again by Tally with the AWS secret it holds.
        (
            format!("{proxy}/bedrock/model/amazon.nova-lite-v1%3A0/converse"),
            vec![],
            json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}),
        ),
        // Vertex: a placeholder token, replaced by one Tally mints.
        (
            format!("{proxy}/vertex/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent"),
            vec![("authorization", "Bearer placeholder")],
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
        ),
    ];
    for (url, headers, body) in &cases {
        post_json(url, headers, body).await;
    }
    // The fake upstream did get the keys: they are forwarded, only never kept.
    assert!(up
        .received()
        .iter()
        .any(|r| r.headers.get("authorization").map(|v| v.as_bytes()) == Some(bearer.as_bytes())));

    // Records are written within the flush interval; wait (bounded) for all of them.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (api, v) = loop {
        let api = get(&format!("http://127.0.0.1:{d}/api/requests?limit=100"))
            .await
            .2;
        let v: serde_json::Value = serde_json::from_slice(&api).expect("json");
        if v["requests"]
            .as_array()
            .is_some_and(|r| r.len() >= cases.len())
        {
            break (api, v);
        }
        assert!(Instant::now() < deadline, "records missing: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rows = v["requests"].as_array().expect("rows");
    let hints: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["api_key_hint"].as_str())
        .collect();
    assert!(hints.contains(&"sk-…abcd"), "{hints:?}");
    let mut everything = api.to_vec();
    for r in rows {
        let id = r["request_id"].as_str().expect("id");
        let one = get(&format!("http://127.0.0.1:{d}/api/requests/{id}"))
            .await
            .2;
        everything.extend_from_slice(&one);
        let page = get(&format!("http://127.0.0.1:{d}/requests/{id}")).await.2;
        everything.extend_from_slice(&page);
    }
    everything.extend_from_slice(&get(&format!("http://127.0.0.1:{d}/metrics")).await.2);
    everything.extend_from_slice(&get(&format!("http://127.0.0.1:{d}/")).await.2);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    assert!(out.status.success());
    assert!(
        out.stderr.len() > 1_000,
        "debug logging produced output to search ({} bytes)",
        out.stderr.len()
    );
    everything.extend_from_slice(&out.stderr);
    everything.extend_from_slice(&out.stdout);
    // Every file Tally wrote: the database, its WAL and shared memory, the spool.
    let mut files = 0;
    for entry in walk(dir.path()) {
        if entry.file_name().and_then(|n| n.to_str()) == Some("tally.toml") {
            continue;
        }
        everything.extend_from_slice(&std::fs::read(&entry).expect("read"));
        files += 1;
    }
    assert!(files >= 1, "the store was searched");
    let sent = up.received();
    let bedrock = sent
        .iter()
        .find(|r| r.path_and_query.starts_with("/model/"))
        .expect("the Bedrock request went upstream");
    assert!(bedrock.headers["authorization"]
        .to_str()
        .is_ok_and(|a| a.contains(crate::support::fake_bedrock::ACCESS_KEY)));
    let minted: Vec<String> = sent
        .iter()
        .filter(|r| r.path_and_query.contains("/projects/"))
        .filter_map(|r| r.headers.get("authorization")?.to_str().ok())
        .map(|a| a.trim_start_matches("Bearer ").to_owned())
        .collect();
    assert!(
        minted.iter().any(|t| t.starts_with("ya29.fake-minted-")),
        "{minted:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&sa_json).expect("json");
    let pem = v["private_key"].as_str().expect("pem");
    let key_line = pem.lines().nth(5).expect("a line of the key");
    let held_secrets = [crate::support::fake_bedrock::SECRET_KEY, key_line]
        .into_iter()
        .map(str::to_owned)
        .chain(minted);
    for secret in held_secrets {
        assert!(!contains(&everything, &secret), "{secret} leaked");
    }
    for key in KEYS {
        assert!(!contains(&everything, key), "{key} leaked");
        // Not even the secret part without its prefix.
        assert!(!contains(&everything, &key[8..]), "part of {key} leaked");
    }
}
