//! The optional proxy stages end to end: routers (fallback, retry with `Retry-After`, no retry
//! once the client has a byte, aliases and model overrides), the response cache (stream replay,
//! savings, TTL, only successes) and rate limits, in memory and in a real Redis shared by two
//! Tally instances.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{json, Value};
use tally::Config;
use tally_proxy::stages::{Backend, PolicyConfig, RouterConfig, Strategy, TargetConfig};
use tally_proxy::{Price, ProviderConfig};

use crate::support::redis::RedisServer;
use crate::support::{get, post_json, request_id, send_checked, FakeUpstream, TestTally};

const PRICED: &str = "stage-test-model";

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream,
           "messages": [{"role": "user", "content": "Hi"}]})
}

/// Providers `a` and `b` (OpenAI wire format) pointing at two fakes.
fn two_providers(c: &mut Config, a: &FakeUpstream, b: &FakeUpstream) {
    for (name, fake) in [("a", a), ("b", b)] {
        c.providers.insert(
            name.into(),
            ProviderConfig {
                base_url: Some(fake.url()),
                ..Default::default()
            },
        );
    }
}

fn router(strategy: Strategy, targets: &[(&str, Option<&str>)], retries: u32) -> RouterConfig {
    RouterConfig {
        strategy,
        targets: targets
            .iter()
            .map(|(p, m)| TargetConfig {
                provider: (*p).into(),
                model: m.map(str::to_owned),
                weight: 1,
            })
            .collect(),
        retries,
        backoff_ms: 10,
        aliases: vec!["fast".into()],
        ..RouterConfig::default()
    }
}

fn priced(c: &mut Config) {
    c.pricing.models.insert(
        PRICED.into(),
        Price {
            input: 1_000_000.0,
            output: 0.0,
            cached_input: Some(1_000_000.0),
            cache_write: None,
            reasoning: None,
            ..Default::default()
        },
    );
}

/// Rows whose `parent_request_id` is `parent`, oldest first: (provider, status, error).
fn attempts_of(t: &TestTally, parent: &str) -> Vec<(String, i64, String)> {
    let conn = rusqlite::Connection::open(&t.db).expect("open db");
    let mut stmt = conn
        .prepare(
            "SELECT provider, status, error FROM requests WHERE parent_request_id = ?1 ORDER BY ts, rowid",
        )
        .expect("prepare");
    stmt.query_map([parent], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[tokio::test]
async fn a_500_from_the_first_target_falls_back_to_the_second() {
    let (a, b) = (FakeUpstream::start().await, FakeUpstream::start().await);
    a.script(&["error500"]);
    let t = TestTally::start_with(&a.url(), |c| {
        two_providers(c, &a, &b);
        c.routers.insert(
            "smart".into(),
            router(
                Strategy::Fallback,
                &[("a", None), ("b", Some("gpt-4o-mini"))],
                0,
            ),
        );
    })
    .await;

    let (status, headers, body) = post_json(
        &t.url("/router/smart/v1/chat/completions"),
        &[],
        &chat("gpt-4o", false),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!((a.received().len(), b.received().len()), (1, 1));
    // The second target's model override reached it, every other field as sent.
    let sent: Value = serde_json::from_slice(&b.received()[0].body).expect("json");
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["messages"][0]["content"], "Hi");

    let id = request_id(&headers);
    let rec = t.record(&id).await;
    assert_eq!(rec["provider"], "b");
    assert_eq!(rec["router"], "smart");
    assert_eq!(rec["attempts"], 2);
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["model"], "gpt-4o-mini");
    t.wait_for_rows(2).await;
    let failed = attempts_of(&t, &id);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!((failed[0].0.as_str(), failed[0].1), ("a", 500));
    assert!(failed[0].2.contains("falling back"), "{}", failed[0].2);
    assert_eq!(
        t.metric("tally_route_attempts_total", "result=\"fallback\"")
            .await,
        1.0
    );

    // The alias and the header select the same router; with `a` healthy again it serves.
    let (status, headers, _) =
        post_json(&t.url("/v1/chat/completions"), &[], &chat("fast", false)).await;
    assert_eq!(status, StatusCode::OK);
    let rec = t.record(&request_id(&headers)).await;
    assert_eq!(
        (rec["router"].as_str(), rec["attempts"].as_u64()),
        (Some("smart"), Some(1))
    );
    let (status, headers, _) = post_json(
        &t.url("/v1/chat/completions"),
        &[("Tally-Router", "smart")],
        &chat("gpt-4o", false),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!a.received()[2].headers.contains_key("tally-router"));
    assert_eq!(t.record(&request_id(&headers)).await["router"], "smart");

    // An unknown router is a clear 404, not a silent direct call.
    let (status, _, body) = post_json(
        &t.url("/router/nope/v1/chat/completions"),
        &[],
        &chat("gpt-4o", false),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("configured: smart"));
    // An OpenAI-format router takes an Anthropic-format body by translating it both ways.
    let (status, headers, body) = post_json(
        &t.url("/anthropic/v1/messages"),
        &[("Tally-Router", "smart")],
        &json!({"model": "claude-haiku-4-5", "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let answer: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["type"], "message", "{answer}");
    assert_eq!(answer["role"], "assistant", "{answer}");
    let sent: serde_json::Value =
        serde_json::from_slice(&a.received().last().expect("sent").body).expect("json");
    assert_eq!(sent["messages"][0]["content"][0]["text"], "hi", "{sent}");
    let rec = t.record(&request_id(&headers)).await;
    assert_eq!(rec["properties"]["translated"], "anthropic>openai", "{rec}");
    t.stop().await;
}

#[tokio::test]
async fn a_429_with_retry_after_1_is_retried_after_a_second() {
    let (a, b) = (FakeUpstream::start().await, FakeUpstream::start().await);
    a.script(&["error429-ra1"]);
    let t = TestTally::start_with(&a.url(), |c| {
        two_providers(c, &a, &b);
        c.routers.insert(
            "r".into(),
            router(Strategy::Fallback, &[("a", None), ("b", None)], 2),
        );
    })
    .await;
    let (status, headers, _) = post_json(
        &t.url("/router/r/v1/chat/completions"),
        &[],
        &chat("gpt-4o", false),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let got = a.received();
    assert_eq!(got.len(), 2, "retried on the same target");
    assert!(b.received().is_empty(), "no fallback needed");
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(1000) && gap < Duration::from_millis(2500),
        "waited {gap:?}"
    );
    let id = request_id(&headers);
    assert_eq!(t.record(&id).await["attempts"], 2);
    t.wait_for_rows(2).await;
    let failed = attempts_of(&t, &id);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].1, 429);
    assert!(
        failed[0].2.contains("retrying after 1000 ms"),
        "{}",
        failed[0].2
    );

    // Retries spent on every target: the last answer goes to the client as it is.
    a.script(&["error503", "error503", "error503"]);
    b.script(&["error503", "error503", "error503"]);
    let (status, headers, _) = post_json(
        &t.url("/router/r/v1/chat/completions"),
        &[],
        &chat("gpt-4o", false),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let rec = t.record(&request_id(&headers)).await;
    assert_eq!(
        (rec["attempts"].as_u64(), rec["provider"].as_str()),
        (Some(6), Some("b"))
    );
    t.stop().await;
}

#[tokio::test]
async fn nothing_is_retried_once_a_byte_of_the_stream_reached_the_client() {
    let (a, b) = (FakeUpstream::start().await, FakeUpstream::start().await);
    a.script(&["reset"]);
    let t = TestTally::start_with(&a.url(), |c| {
        two_providers(c, &a, &b);
        c.routers.insert(
            "r".into(),
            router(Strategy::Fallback, &[("a", None), ("b", None)], 2),
        );
    })
    .await;
    let got = send_checked(
        Method::POST,
        &t.url("/router/r/v1/chat/completions"),
        &[
            ("content-type", "application/json"),
            ("x-fake-interval-ms", "50"),
        ],
        chat("gpt-4o", true).to_string(),
    )
    .await;
    // The client saw the beginning of the stream, then the cut.
    assert!(got.is_err(), "the cut reaches the client: {got:?}");
    assert_eq!(a.received().len(), 1);
    assert!(b.received().is_empty(), "no fallback after bytes were sent");
    t.wait_for_rows(1).await;
    let conn = rusqlite::Connection::open(&t.db).expect("db");
    let (attempts, error, ttft): (i64, String, Option<i64>) = conn
        .query_row(
            "SELECT attempts, error, ttft_ms FROM requests WHERE router = 'r'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("one record");
    assert_eq!(attempts, 1);
    assert!(error.contains("upstream stream failed"), "{error}");
    assert!(ttft.is_some(), "bytes had reached the client");
    t.stop().await;
}

#[tokio::test]
async fn a_cache_hit_replays_a_stream_byte_identical_and_records_the_saving() {
    let up = FakeUpstream::start().await;
    let t = TestTally::start_with(&up.url(), priced).await;
    let ask = || async {
        send_checked(
            Method::POST,
            &t.url("/v1/chat/completions"),
            &[
                ("content-type", "application/json"),
                ("Tally-Cache", "true"),
            ],
            chat(PRICED, true).to_string(),
        )
        .await
        .expect("stream")
    };
    let (s1, h1, first) = ask().await;
    let (s2, h2, second) = ask().await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(h1["tally-cache"], "MISS");
    assert_eq!(h2["tally-cache"], "HIT");
    assert_eq!(h2["content-type"], h1["content-type"]);
    assert!(first.len() > 100);
    assert_eq!(first, second, "replayed byte for byte");
    assert_eq!(up.received().len(), 1, "the hit never reached the upstream");

    let miss = t.record(&request_id(&h1)).await;
    let hit = t.record(&request_id(&h2)).await;
    assert_eq!(miss["cache_status"], "miss");
    assert_eq!(hit["cache_status"], "hit");
    let cost = miss["cost_usd"].as_f64().expect("priced");
    assert!(cost > 0.0);
    assert_eq!(hit["cost_usd"], 0.0);
    assert_eq!(hit["cost_saved_usd"].as_f64(), Some(cost));
    assert_eq!(
        hit["prompt_tokens"], miss["prompt_tokens"],
        "usage read from the replay"
    );
    assert_eq!(hit["response_body"], miss["response_body"]);
    assert!((t.metric("tally_cache_saved_usd_total", "").await - cost).abs() < 1e-9);
    // The dashboard shows the saving.
    let (_, _, body) = get(&t.dashboard_url("/api/overview")).await;
    let overview: Value = serde_json::from_slice(&body).expect("overview JSON");
    assert!((overview["cache_saved_usd"].as_f64().expect("saved") - cost).abs() < 1e-9);
    let (_, _, page) = get(&t.dashboard_url("/")).await;
    assert!(String::from_utf8_lossy(&page).contains("id=\"cache-saved\""));

    // Another namespace, another key, another body: all misses.
    for extra in [
        ("Tally-Cache-Namespace", "tenant-2"),
        ("Authorization", "Bearer sk-other-key"),
    ] {
        let (_, h, _) = send_checked(
            Method::POST,
            &t.url("/v1/chat/completions"),
            &[
                ("content-type", "application/json"),
                ("Tally-Cache", "true"),
                extra,
            ],
            chat(PRICED, true).to_string(),
        )
        .await
        .expect("stream");
        assert_eq!(h["tally-cache"], "MISS", "{extra:?}");
    }
    // Without the header the cache is not consulted at all.
    let (_, h, _) = post_json(&t.url("/v1/chat/completions"), &[], &chat(PRICED, true)).await;
    assert!(h.get("tally-cache").is_none());
    t.stop().await;
}

#[tokio::test]
async fn cached_answers_expire_and_errors_are_never_cached() {
    let up = FakeUpstream::start().await;
    let t = TestTally::start(&up.url()).await;
    let ask = |mode: &'static str| {
        let url = t.url("/v1/chat/completions");
        async move {
            let (s, h, _) = post_json(
                &url,
                &[
                    ("Tally-Cache", "true"),
                    ("Tally-Cache-Ttl", "1"),
                    ("x-fake-mode", mode),
                ],
                &chat("gpt-4o", false),
            )
            .await;
            (s, h["tally-cache"].to_str().expect("ascii").to_owned())
        }
    };
    assert_eq!(ask("").await.1, "MISS");
    assert_eq!(ask("").await.1, "HIT");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(ask("").await.1, "MISS", "expired after its 1 s TTL");
    assert_eq!(up.received().len(), 2);

    // A 500 is not stored: the same request asked again misses again. (`x-fake-mode` is not
    // part of the key, so the body differs from the cached 200's.)
    for _ in 0..2 {
        let (s, h, _) = post_json(
            &t.url("/v1/chat/completions"),
            &[("Tally-Cache", "true"), ("x-fake-mode", "error500")],
            &chat("gpt-4o-error", false),
        )
        .await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(h["tally-cache"], "MISS");
    }
    t.stop().await;
}

fn policy(name: &str, limit: f64, scope: &str) -> PolicyConfig {
    PolicyConfig {
        name: name.into(),
        limit,
        window_secs: 60,
        unit: Default::default(),
        scope: scope.into(),
        providers: vec![],
    }
}

#[tokio::test]
async fn a_rate_limit_admits_exactly_the_allowed_number() {
    let up = FakeUpstream::start().await;
    let t = TestTally::start_with(&up.url(), |c| {
        c.rate_limits.policies.push(policy("per-user", 5.0, "user"));
    })
    .await;
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..8 {
        let r = post_json(
            &t.url("/v1/chat/completions"),
            &[("Tally-User-Id", "alice")],
            &chat("gpt-4o", false),
        )
        .await;
        statuses.push(r.0.as_u16());
        last = Some(r);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    let (_, headers, body) = last.expect("responses");
    let err: Value = serde_json::from_slice(&body).expect("OpenAI error shape");
    assert_eq!(err["error"]["code"], "tally_rate_limited");
    assert!(err["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("per-user"));
    let retry: u64 = headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("secs");
    assert!((1..=12).contains(&retry), "one request every 12 s: {retry}");
    assert_eq!(headers["ratelimit-limit"], "5");
    assert_eq!(headers["ratelimit-remaining"], "0");
    assert_eq!(headers["ratelimit-policy"], "5;w=60");
    assert_eq!(
        up.received().len(),
        5,
        "refused requests never reach the upstream"
    );

    // Bob has his own counter; admitted responses say what is left.
    let (s, h, _) = post_json(
        &t.url("/v1/chat/completions"),
        &[("Tally-User-Id", "bob")],
        &chat("gpt-4o", false),
    )
    .await;
    assert_eq!(
        (s, h["ratelimit-remaining"].to_str().ok()),
        (StatusCode::OK, Some("4"))
    );

    // A request's own policy (Helicone's syntax) limits it too.
    let mut own = Vec::new();
    for _ in 0..3 {
        let (s, _, _) = post_json(
            &t.url("/v1/chat/completions"),
            &[
                ("Tally-User-Id", "carol"),
                ("Helicone-RateLimit-Policy", "2;w=60;s=user"),
            ],
            &chat("gpt-4o", false),
        )
        .await;
        own.push(s.as_u16());
    }
    assert_eq!(own, [200, 200, 429]);
    let (s, _, body) = post_json(
        &t.url("/v1/chat/completions"),
        &[("Tally-RateLimit-Policy", "2;w=sixty")],
        &chat("gpt-4o", false),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("tally-ratelimit-policy"));

    t.wait_for_rows(13).await;
    let conn = rusqlite::Connection::open(&t.db).expect("db");
    let refused: i64 = conn
        .query_row(
            "SELECT count(*) FROM requests \
             WHERE status = 0 AND refusal = 'tally_rate_limited' AND error LIKE 'rate limit%'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(refused, 4, "every refusal is recorded");
    assert_eq!(t.metric("tally_rate_limited_total", "per-user").await, 3.0);
    t.stop().await;
}

#[tokio::test]
async fn redis_backends_are_shared_by_two_tally_instances() {
    let redis = RedisServer::start().await;
    let up = FakeUpstream::start().await;
    let shared = |c: &mut Config| {
        c.cache.backend = Backend::Redis;
        c.cache.redis_url = Some(redis.url());
        c.rate_limits.backend = Backend::Redis;
        c.rate_limits.redis_url = Some(redis.url());
        c.rate_limits.policies.push(policy("per-user", 3.0, "user"));
    };
    let t1 = TestTally::start_with(&up.url(), shared).await;
    let t2 = TestTally::start_with(&up.url(), shared).await;

    let cached = |t: &TestTally| {
        let url = t.url("/v1/chat/completions");
        async move {
            let (s, h, body) =
                post_json(&url, &[("Tally-Cache", "true")], &chat("gpt-4o", true)).await;
            assert_eq!(s, StatusCode::OK);
            (h["tally-cache"].to_str().expect("ascii").to_owned(), body)
        }
    };
    let (c1, b1) = cached(&t1).await;
    assert_eq!(c1, "MISS");
    // The store is written in the background; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (c2, b2) = loop {
        let r = cached(&t2).await;
        if r.0 == "HIT" || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        c2, "HIT",
        "the second instance reads the first one's answer"
    );
    assert_eq!(b1, b2);

    // 3 requests per minute for one user, whichever instance each goes to.
    let mut statuses = Vec::new();
    for i in 0..5 {
        let t = if i % 2 == 0 { &t1 } else { &t2 };
        let (s, _, _) = post_json(
            &t.url("/v1/chat/completions"),
            &[("Tally-User-Id", "dave")],
            &chat("gpt-4o", false),
        )
        .await;
        statuses.push(s.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    t1.stop().await;
    t2.stop().await;
}

#[tokio::test]
async fn a_redis_that_is_down_costs_the_stages_not_the_requests() {
    let up = FakeUpstream::start().await;
    let nowhere = format!("redis://127.0.0.1:{}/0", crate::support::free_port());
    let t = TestTally::start_with(&up.url(), |c| {
        c.cache.backend = Backend::Redis;
        c.cache.redis_url = Some(nowhere.clone());
        c.rate_limits.backend = Backend::Redis;
        c.rate_limits.redis_url = Some(nowhere.clone());
        c.rate_limits.policies.push(policy("global", 1.0, "global"));
    })
    .await;
    for _ in 0..3 {
        let (s, h, _) = post_json(
            &t.url("/v1/chat/completions"),
            &[("Tally-Cache", "true")],
            &chat("gpt-4o", false),
        )
        .await;
        assert_eq!(
            s,
            StatusCode::OK,
            "fail open: the limit is not enforced without Redis"
        );
        assert_eq!(h["tally-cache"], "MISS");
    }
    assert_eq!(up.received().len(), 3);
    assert!(
        t.metric("tally_stage_errors_total", "stage=\"cache\"")
            .await
            >= 3.0
    );
    assert!(
        t.metric("tally_stage_errors_total", "stage=\"rate_limit\"")
            .await
            >= 3.0
    );
    t.stop().await;
}
