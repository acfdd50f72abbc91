//! Tally keys (#18): unmodified SDKs with a `tly-` key reach the upstream with the provider
//! credential Tally holds; allow-lists, revocation, per-key limits and budgets; bad keys.

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{json, Value};
use tally::Config;
use tally_proxy::providers::SecretSource;

use crate::budgets::{fast_alerts, priced, Receiver, MODEL};
use crate::support::clickhouse::ClickHouse;
use crate::support::*;

const OPENAI_KEY: &str = "sk-held-openai-0123456789abcdefghij";
const ANTHROPIC_KEY: &str = "sk-ant-held-0123456789abcdefghijkl";
const GOOGLE_KEY: &str = "AIzaSyHELD-google-key-0123456789ab";

/// Holds a key for openai, anthropic and google (in files, as an operator would), and reloads
/// the keyring every 200 ms.
fn holding(dir: &std::path::Path) -> impl Fn(&mut Config) + Clone {
    let files: Vec<(String, std::path::PathBuf)> = [
        ("openai", OPENAI_KEY),
        ("anthropic", ANTHROPIC_KEY),
        ("google", GOOGLE_KEY),
    ]
    .iter()
    .map(|(p, k)| {
        let f = dir.join(format!("{p}.key"));
        std::fs::write(&f, k).expect("key file");
        ((*p).to_owned(), f)
    })
    .collect();
    move |c: &mut Config| {
        for (p, f) in &files {
            c.providers.get_mut(p.as_str()).expect("provider").api_key =
                Some(SecretSource::File(f.clone()));
        }
        c.auth.refresh_ms = 200;
    }
}

/// Creates a key through the admin API; returns (secret, key view).
async fn create(t: &TestTally, opts: Value) -> (String, Value) {
    let (status, _, body) = post_json(&t.dashboard_url("/api/admin/keys"), &[], &opts).await;
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(status, StatusCode::CREATED, "{v}");
    (
        v["secret"].as_str().expect("secret").to_owned(),
        v["key"].clone(),
    )
}

async fn chat(t: &TestTally, auth: &str, model: &str) -> (StatusCode, Value, String) {
    let (status, h, body) = post_json(
        &t.url("/v1/chat/completions"),
        &[("authorization", auth)],
        &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let id = h
        .get("tally-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
        id,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdks_with_a_tally_key_reach_the_upstream_with_the_credential_tally_holds() {
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let t = TestTally::start_with(&up.url(), holding(dir.path())).await;
    let (secret, key) = create(
        &t,
        json!({"name": "search-team", "models": ["gpt-4o-mini", "claude-*", "gemini-*"],
               "metadata": {"team": "search"}}),
    )
    .await;
    assert!(secret.starts_with("tly-") && secret.len() == 81, "{secret}");

    let out = run_sdk_script("keys.py", &[&format!("http://{}", t.proxy), &secret]).await;
    let received = up.received();
    let sent = |needle: &str| {
        received
            .iter()
            .find(|r| r.path_and_query.contains(needle))
            .unwrap_or_else(|| panic!("nothing sent to {needle}"))
    };
    let header = |r: &crate::support::fake_upstream::Received, h: &str| {
        r.headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(
        header(sent("chat/completions"), "authorization"),
        format!("Bearer {OPENAI_KEY}")
    );
    assert_eq!(header(sent("/v1/messages"), "x-api-key"), ANTHROPIC_KEY);
    assert_eq!(
        header(sent("generateContent"), "x-goog-api-key"),
        GOOGLE_KEY
    );
    for r in &received {
        let all = format!("{:?} {}", r.headers, String::from_utf8_lossy(&r.body));
        assert!(
            !all.contains(&secret[4..]),
            "the Tally key reached the upstream: {all}"
        );
    }
    assert_eq!(
        received.len(),
        3,
        "the refused calls never reached the upstream"
    );

    for (sdk, hint) in [
        ("openai", "sk-…ghij"),
        ("anthropic", "sk-…ijkl"),
        ("google", "…89ab"),
    ] {
        let rec = t.record(out[sdk]["id"].as_str().expect("request id")).await;
        assert_eq!(rec["key_name"], "search-team", "{sdk}: {rec}");
        assert_eq!(rec["key_id"], key["id"], "{sdk}");
        assert_eq!(rec["status"], 200, "{sdk}");
        assert_eq!(rec["api_key_hint"], hint, "{sdk}: the held key's hint");
    }
    assert_eq!(out["forbidden"]["status"], 403, "{}", out["forbidden"]);
    assert_eq!(out["forbidden"]["raised"], "PermissionDeniedError");
    let m = out["forbidden"]["message"].as_str().expect("message");
    assert!(m.contains("gpt-4o") && m.contains("search-team"), "{m}");
    assert_eq!(out["wrong"]["status"], 401, "{}", out["wrong"]);
    assert_eq!(out["wrong"]["raised"], "AuthenticationError");

    // The keys page and the key filter see the key's requests.
    let (_, _, body) = get(&t.dashboard_url("/api/keys?range=24h")).await;
    let keys: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(keys["keys"][0]["key"], "search-team", "{keys}");
    assert_eq!(
        keys["keys"][0]["requests"], 4,
        "3 answered + 1 refused: {keys}"
    );
    let (_, _, body) = get(&t.dashboard_url("/api/requests?key_name=search-team")).await;
    let list: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(list["requests"].as_array().map(Vec::len), Some(4), "{list}");
    let (status, _, page) = get(&t.dashboard_url("/keys")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(contains(&page, "search-team"));

    let dir = t.stop().await;
    for held in [secret.as_str(), &secret[4..]] {
        assert!(
            files_holding(dir.path(), held).is_empty(),
            "the Tally key was stored"
        );
    }
}

/// Revocation and a new key reach a second replica on the same ClickHouse within the refresh
/// interval (200 ms here) plus a load; the measured times are printed for the notes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_clickhouse_see_a_new_key_and_its_revocation() {
    let ch = ClickHouse::started().await;
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let hold = holding(dir.path());
    let configure = |c: &mut Config| {
        ch.configure(c);
        hold(c);
    };
    let a = TestTally::start_with(&up.url(), configure).await;
    let b = TestTally::start_with(&up.url(), configure).await;
    let (secret, key) = create(&a, json!({"name": "replicated"})).await;
    let bearer = format!("Bearer {secret}");
    let wait = |want: StatusCode| {
        let (b, bearer) = (&b, bearer.clone());
        async move {
            let started = Instant::now();
            loop {
                let (status, body, _) = chat(b, &bearer, "gpt-4o-mini").await;
                if status == want {
                    return (started.elapsed(), body);
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "replica B still answers {status} after 10 s: {body}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let (created_after, _) = wait(StatusCode::OK).await;
    let (status, _, body) = post_json(
        &a.dashboard_url(&format!(
            "/api/admin/keys/{}/revoke",
            key["id"].as_str().expect("id")
        )),
        &[],
        &json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    // Replica A reloads at once; B by its next refresh.
    let (status, body, _) = chat(&a, &bearer, "gpt-4o-mini").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (revoked_after, body) = wait(StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        body["error"]["message"], "the Tally key has been revoked",
        "{body}"
    );
    eprintln!(
        "new key reached replica B after {created_after:?}, revocation after {revoked_after:?}"
    );
    for d in [created_after, revoked_after] {
        assert!(
            d < Duration::from_secs(3),
            "beyond the refresh bound: {d:?}"
        );
    }
    a.stop().await;
    b.stop().await;
}

/// A per-key token limit refuses once spent and admits again as the window refills; a
/// per-key budget fires its webhook and then refuses, through the budgets engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_token_limits_and_budgets_refuse_and_tell() {
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let hook = Receiver::start(200).await;
    let hold = holding(dir.path());
    let hook_url = hook.url();
    let t = TestTally::start_with(&up.url(), move |c| {
        hold(c);
        priced(c);
        c.alerts = fast_alerts();
        c.auth.budget_webhooks =
            vec![serde_json::from_value(json!({"url": hook_url})).expect("webhook config")];
    })
    .await;
    // 26 tokens per answer (21 in, 5 out); 120 per minute. Tokens are charged after each
    // response and checked before the next: the fifth answer (104 tokens so far) still
    // passes the check and takes the counter over; the sixth is refused.
    let (tokens, _) = create(&t, json!({"name": "tpm", "tpm": 120})).await;
    let bearer = format!("Bearer {tokens}");
    let mut refused = None;
    let mut admitted = 0;
    for _ in 0..10 {
        let (status, body, _) = chat(&t, &bearer, "gpt-4o-mini").await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(body);
            break;
        }
        assert_eq!(status, StatusCode::OK, "{body}");
        admitted += 1;
    }
    let body = refused.expect("the token limit refused");
    assert!(
        (4..=6).contains(&admitted),
        "admitted {admitted} answers of 26 tokens under 120"
    );
    let m = body["error"]["message"].as_str().expect("message");
    assert!(m.contains("key:tpm:tpm") && m.contains("tokens"), "{m}");
    // Two tokens a second refill; the overshoot is under one answer, so within seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    while chat(&t, &bearer, "gpt-4o-mini").await.0 != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "the token limit never admitted again"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // $1 per answer of MODEL; a $1.5 daily budget is exhausted by the second.
    let (budgeted, _) = create(
        &t,
        json!({"name": "budgeted", "budget_usd": 1.5, "window": "day"}),
    )
    .await;
    let bearer = format!("Bearer {budgeted}");
    assert_eq!(chat(&t, &bearer, MODEL).await.0, StatusCode::OK);
    assert_eq!(chat(&t, &bearer, MODEL).await.0, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        let (status, body, _) = chat(&t, &bearer, MODEL).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            break body;
        }
        assert!(Instant::now() < deadline, "the key's budget never enforced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(body.to_string().contains("keys-day"), "{body}");
    // 50 % at the first dollar, then `budget_exceeded` at the second.
    hook.wait_for(2).await;
    let events = hook.events();
    let exceeded = events
        .iter()
        .find(|e| e["event"] == "budget_exceeded")
        .unwrap_or_else(|| panic!("no budget_exceeded: {events:?}"));
    assert_eq!(exceeded["budget"], "keys-day");
    assert_eq!(exceeded["scope_key"], "budgeted");
    assert_eq!(exceeded["limit_usd"], 1.5);
    // Other keys are not touched by it.
    let (other, _) = create(&t, json!({"name": "other"})).await;
    assert_eq!(
        chat(&t, &format!("Bearer {other}"), MODEL).await.0,
        StatusCode::OK
    );
    t.stop().await;
}

/// `require_key`: every malformed, foreign, oversized or almost-right key is a clear 401 in
/// the provider's shape, nothing reaches the upstream, and repeated failures from one address
/// are refused before the keyring is consulted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_are_refused_clearly_and_failures_are_limited() {
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let hold = holding(dir.path());
    let t = TestTally::start_with(&up.url(), move |c| {
        hold(c);
        c.auth.require_key = true;
        c.auth.max_failures_per_minute = 8;
    })
    .await;
    let (secret, _) = create(&t, json!({"name": "good", "expires": "2999-01-01"})).await;
    let mut one_off = secret.clone().into_bytes();
    let last = one_off.len() - 1;
    one_off[last] = if one_off[last] == b'0' { b'1' } else { b'0' };
    let one_off = String::from_utf8(one_off).expect("ascii");
    let big = format!("tly-{}", "a".repeat(10_000));
    let cases: [(&str, String, &str); 6] = [
        ("missing", String::new(), "missing"),
        (
            "foreign",
            "Bearer sk-not-a-tally-key-0123456789".into(),
            "missing",
        ),
        ("malformed", "Bearer tly-short".into(), "malformed"),
        ("10 KB", format!("Bearer {big}"), "malformed"),
        ("one character off", format!("Bearer {one_off}"), "unknown"),
        (
            "unknown id",
            format!("Bearer tly-000000000000_{}", "0".repeat(64)),
            "unknown",
        ),
    ];
    for (what, auth, reason) in &cases {
        let headers: Vec<(&str, &str)> = if auth.is_empty() {
            vec![]
        } else {
            vec![("authorization", auth.as_str())]
        };
        let (status, _, body) = post_json(
            &t.url("/v1/chat/completions"),
            &headers,
            &json!({"model": "gpt-4o-mini", "messages": []}),
        )
        .await;
        let v: Value = serde_json::from_slice(&body).expect("json error");
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {v}");
        assert_eq!(v["error"]["reason"], *reason, "{what}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("Tally key")),
            "{what}"
        );
    }
    // Anthropic's shape for an Anthropic route.
    let (status, _, body) = post_json(
        &t.url("/anthropic/v1/messages"),
        &[("x-api-key", "tly-nope")],
        &json!({"model": "claude-haiku-4-5", "max_tokens": 8, "messages": []}),
    )
    .await;
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(v["type"], "error", "anthropic's error shape: {v}");
    assert!(up.received().is_empty(), "nothing reached the upstream");
    // 5 failures with a tly- key so far (missing and foreign keys are not attempts); the
    // limit is 8, after which even the right key is refused from this address for a minute.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            chat(&t, &format!("Bearer {one_off}"), "gpt-4o-mini")
                .await
                .0,
        );
    }
    let (status, body, _) = chat(&t, &format!("Bearer {secret}"), "gpt-4o-mini").await;
    assert_eq!(
        statuses,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        t.metric("tally_auth_failures_total", "reason=\"unknown\"")
            .await
            >= 4.0
    );
    assert!(
        t.metric("tally_auth_failures_total", "reason=\"rate_limited\"")
            .await
            >= 2.0
    );
    let (_, _, metrics) = get(&t.dashboard_url("/metrics")).await;
    assert!(!contains(&metrics, &secret[4..]), "a key in /metrics");
    t.stop().await;
}

/// The admin API: its own token, refused without it; no secrets in listings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_takes_its_own_token_and_never_lists_secrets() {
    let up = FakeUpstream::start().await;
    let t = TestTally::start_with(&up.url(), |c| {
        c.auth.admin_token = Some("admin-secret-token".into());
        c.dashboard.auth_token = Some("read-token".into());
    })
    .await;
    let url = t.dashboard_url("/api/admin/keys");
    let body = json!({"name": "ops"});
    for auth in [vec![], vec![("authorization", "Bearer read-token")]] {
        let (status, _, _) = post_json(&url, &auth, &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
    }
    let admin = [("authorization", "Bearer admin-secret-token")];
    let (status, _, created) = post_json(&url, &admin, &body).await;
    assert_eq!(status, StatusCode::CREATED);
    let created: Value = serde_json::from_slice(&created).expect("json");
    let secret = created["secret"].as_str().expect("secret").to_owned();
    let (status, _, _) = post_json(&url, &admin, &body).await;
    assert_eq!(status, StatusCode::CONFLICT, "the name is taken");
    let (status, _, bad) = post_json(
        &url,
        &admin,
        &json!({"name": "x", "window": "year", "budget_usd": 1}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&bad)
    );
    let (status, _, rotated) = post_json(
        &t.dashboard_url("/api/admin/keys/ops/rotate"),
        &admin,
        &json!({"grace_secs": 0}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let rotated: Value = serde_json::from_slice(&rotated).expect("json");
    let new_secret = rotated["secret"].as_str().expect("secret");
    assert_ne!(new_secret, secret);
    let resp = send(
        http::Method::GET,
        &url,
        &[("authorization", "Bearer admin-secret-token")],
        String::new(),
    )
    .await;
    assert_eq!(resp.0, StatusCode::OK);
    let listed = String::from_utf8_lossy(&resp.2).into_owned();
    assert!(
        listed.contains("\"ops\"") && listed.contains("tly-"),
        "{listed}"
    );
    for s in [&secret, new_secret] {
        assert!(!listed.contains(&s[20..]), "a secret in the listing");
    }
    assert!(!listed.contains("hash"), "{listed}");
    t.stop().await;
}

/// 50 requests at once at the edge of a key's $10 budget, each costing $1 and asking for at
/// most 5 output tokens ($1 at the test price). Every one is in flight (the upstream holds its
/// answer 300 ms) before any is counted. How many are admitted is the overshoot; the count is
/// printed for GUARANTEES.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_at_the_edge_of_a_budget_overshoot_by_at_most_one() {
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let hold = holding(dir.path());
    let t = TestTally::start_with(&up.url(), move |c| {
        hold(c);
        priced(c);
        c.alerts = fast_alerts();
    })
    .await;
    let (secret, _) = create(
        &t,
        json!({"name": "edge", "budget_usd": 10.0, "window": "day"}),
    )
    .await;
    let bearer = format!("Bearer {secret}");
    let url = t.url("/v1/chat/completions");
    let body = json!({"model": MODEL, "max_tokens": 5,
                      "messages": [{"role": "user", "content": "hi"}]});
    let calls = (0..50).map(|_| {
        let (url, bearer, body) = (url.clone(), bearer.clone(), body.clone());
        tokio::spawn(async move {
            post_json(
                &url,
                &[("authorization", &bearer), ("x-fake-delay-ms", "300")],
                &body,
            )
            .await
            .0
        })
    });
    let mut admitted = 0;
    for c in calls.collect::<Vec<_>>() {
        if c.await.expect("join") == StatusCode::OK {
            admitted += 1;
        }
    }
    eprintln!("50 concurrent at a $10 budget of $1 requests: {admitted} admitted");
    assert!(admitted >= 10, "the budget's room was used: {admitted}");
    assert!(
        admitted <= 11,
        "overshoot beyond one request: {admitted} admitted"
    );
    t.stop().await;
}

/// A dashboard listening beyond loopback (with its read token) and no admin token: the admin
/// API refuses everything, whatever the caller sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_off_on_a_public_listen_without_its_token() {
    let up = FakeUpstream::start().await;
    let t = TestTally::start_with(&up.url(), |c| {
        c.dashboard.listen = "0.0.0.0:0".into();
        c.dashboard.auth_token = Some("read-token".into());
    })
    .await;
    let url = format!("http://127.0.0.1:{}/api/admin/keys", t.dashboard.port());
    for auth in [vec![], vec![("authorization", "Bearer read-token")]] {
        let (status, _, body) = post_json(&url, &auth, &json!({"name": "x"})).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{auth:?}");
        assert!(
            contains(&body, "admin_token"),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
    t.stop().await;
}
