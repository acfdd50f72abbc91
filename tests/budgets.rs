//! Budgets and alerts end to end: a real Tally, the fake upstream, and a local webhook receiver
//! on a real socket. Spend comes from real proxied requests priced by a config price that
//! makes each request cost exactly $1.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use sha2::Sha256;
use tally::Config;
use tally_budgets::{AlertsConfig, BudgetConfig};
use tally_proxy::Price;
use tokio::net::TcpListener;

use crate::support::clickhouse::ClickHouse;
use crate::support::{get, post_json, FakeUpstream, TestTally};

/// The model whose price makes the fake's answer (5 completion tokens) cost $1.
pub(crate) const MODEL: &str = "budget-test-model";
const SECRET: &str = "whsec-test";

/// A webhook receiver: keeps every delivery, answers with the configured status.
pub(crate) struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub(crate) async fn start(status: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let got = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(status));
        let (g, s) = (got.clone(), status.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (g, s) = (g.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (g, s) = (g.clone(), s.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes());
                            g.lock()
                                .expect("lock")
                                .push((parts.headers, body.unwrap_or_default()));
                            let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
                            *r.status_mut() =
                                StatusCode::from_u16(s.load(Ordering::SeqCst)).expect("status");
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            got,
            status,
            task,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/hook/secret-path", self.addr)
    }

    fn deliveries(&self) -> Vec<(HeaderMap, Bytes)> {
        self.got.lock().expect("lock").clone()
    }

    pub(crate) fn events(&self) -> Vec<Value> {
        self.deliveries()
            .iter()
            .map(|(_, b)| serde_json::from_slice(b).expect("JSON delivery"))
            .collect()
    }

    /// Waits (bounded) for `n` deliveries.
    pub(crate) async fn wait_for(&self, n: usize) -> Vec<(HeaderMap, Bytes)> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let d = self.deliveries();
            if d.len() >= n {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} deliveries arrived",
                d.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn budget(v: Value) -> BudgetConfig {
    serde_json::from_value(v).expect("budget config")
}

pub(crate) fn priced(c: &mut Config) {
    c.pricing.models.insert(
        MODEL.into(),
        Price {
            input: 0.0,
            output: 200_000.0,
            cached_input: Some(0.0),
            cache_write: None,
            reasoning: None,
            ..Default::default()
        },
    );
}

/// Fast retries, and no projections: whether one fires depends on the time of day the suite
/// runs (the engine's unit tests cover them with fixed times).
pub(crate) fn fast_alerts() -> AlertsConfig {
    AlertsConfig {
        project_after: 1.0,
        webhook_attempts: 3,
        webhook_backoff_ms: 50,
        webhook_timeout_ms: 2_000,
        ..Default::default()
    }
}

/// One chat completion by `user`; $1 each.
async fn spend(t: &TestTally, user: &str) -> (StatusCode, HeaderMap, Value) {
    let (status, headers, body) = post_json(
        &t.url("/v1/chat/completions"),
        &[("tally-user-id", user)],
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, headers, v)
}

async fn budgets_api(t: &TestTally) -> Value {
    let (status, _, body) = get(&t.dashboard_url("/api/budgets")).await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice(&body).expect("budgets JSON")
}

/// Waits (bounded) until the budget's live spend (all keys) reaches `usd`.
async fn wait_spend(t: &TestTally, usd: f64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = budgets_api(t).await;
        if v["budgets"][0]["spend_usd"].as_f64().unwrap_or(0.0) >= usd - 1e-9 {
            return v;
        }
        assert!(Instant::now() < deadline, "spend never reached {usd}: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Verifies `Tally-Signature` the way a receiver would, independently of Tally's code.
fn signature_ok(headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(sig) = headers.get("tally-signature").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let parts: HashMap<&str, &str> = sig.split(',').filter_map(|p| p.split_once('=')).collect();
    let (Some(t), Some(v1)) = (parts.get("t"), parts.get("v1")) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    let Ok(expected) = hex::decode(v1) else {
        return false;
    };
    mac.verify_slice(&expected).is_ok()
}

/// Thresholds fire once each, in order, signed; a restart rebuilds spend from the store and
/// fires nothing again. `store` points the config at SQLite or ClickHouse.
async fn thresholds_fire_once_and_survive_a_restart(store: impl Fn(&mut Config) + Clone) {
    let up = FakeUpstream::start().await;
    let json_hook = Receiver::start(200).await;
    let slack_hook = Receiver::start(200).await;
    let configure = {
        let (j, s) = (json_hook.url(), slack_hook.url());
        move |c: &mut Config| {
            priced(c);
            c.alerts = fast_alerts();
            c.budgets = vec![budget(json!({
                "name": "team-daily",
                "limit_usd": 5.0,
                "window": "day",
                "webhooks": [
                    {"url": j, "secret": SECRET},
                    {"url": s, "format": "slack"},
                ],
            }))];
        }
    };
    let first = TestTally::start_with(&up.url(), |c| {
        store(c);
        configure.clone()(c);
    })
    .await;
    let mut expected = Vec::new();
    for (n, fires) in [
        (1, None),
        (2, None),
        (3, Some(("threshold_crossed", 0.5))),
        (4, Some(("threshold_crossed", 0.8))),
        (5, Some(("budget_exceeded", 1.0))),
        (6, None),
    ] {
        let (status, _, _) = spend(&first, "alice").await;
        assert_eq!(status, StatusCode::OK);
        wait_spend(&first, f64::from(n)).await;
        if let Some(f) = fires {
            expected.push(f);
        }
        json_hook.wait_for(expected.len()).await;
    }
    let deliveries = json_hook.wait_for(3).await;
    // A tick or two later, still exactly three.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(json_hook.deliveries().len(), 3);
    let events = json_hook.events();
    for (e, (kind, threshold)) in events.iter().zip(&expected) {
        assert_eq!(e["event"], *kind, "{e}");
        assert_eq!(e["threshold"], *threshold);
        assert_eq!(e["budget"], "team-daily");
        assert_eq!(e["scope"], "everything");
        assert_eq!(e["scope_key"], "*");
        assert_eq!(e["limit_usd"], 5.0);
        assert!(e["window_start"]
            .as_str()
            .expect("start")
            .ends_with("T00:00:00.000Z"));
        assert!(e["dashboard_url"]
            .as_str()
            .expect("link")
            .ends_with("/budgets"));
        assert!(e["time"].is_string() && e["id"].is_string());
    }
    assert_eq!(events[0]["spend_usd"], 3.0);
    assert_eq!(events[2]["spend_usd"], 5.0);
    for (headers, body) in &deliveries {
        assert!(signature_ok(headers, body), "signature must verify");
        let mut tampered = body.to_vec();
        tampered[body.len() / 2] ^= 0x01;
        assert!(
            !signature_ok(headers, &tampered),
            "a tampered body must fail"
        );
        assert!(headers.contains_key("tally-event-id"));
    }
    let slack = slack_hook.wait_for(3).await;
    let text: Value = serde_json::from_slice(&slack[2].1).expect("slack JSON");
    let text = text["text"].as_str().expect("text");
    assert!(
        text.contains("*team-daily*") && text.contains("exhausted"),
        "{text}"
    );
    assert!(
        !slack[0].0.contains_key("tally-signature"),
        "no secret, no signature"
    );

    // The dashboard and the API show the history with every delivery recorded.
    let api = budgets_api(&first).await;
    let history = api["alerts"].as_array().expect("alerts");
    assert_eq!(history.len(), 3, "{api}");
    for h in history {
        let d = h["deliveries"].as_array().expect("deliveries");
        assert_eq!(d.len(), 2, "{h}");
        assert!(d
            .iter()
            .all(|d| d["delivered"] == true && d["attempts"] == 1));
        assert!(
            d.iter()
                .all(|d| !d["webhook"].as_str().expect("hint").contains("secret-path")),
            "webhook paths are secrets and never stored"
        );
    }
    let (_, _, page) = get(&first.dashboard_url("/budgets")).await;
    let page = String::from_utf8_lossy(&page);
    assert!(page.contains("team-daily") && page.contains("budget_exceeded"));
    assert!(page.contains("<meter"), "spend vs limit bar");
    assert_eq!(
        first.metric("tally_budget_spend_usd", "team-daily").await,
        6.0
    );
    assert_eq!(
        first.metric("tally_alerts_fired_total", "team-daily").await,
        3.0
    );

    // Restart on the same store: spend is rebuilt, nothing fires again.
    let dir = first.stop().await;
    let db = dir.path().join("tally.db");
    let second = TestTally::start_with(&up.url(), |c| {
        store(c);
        configure(c);
        c.store.path = db.clone();
    })
    .await;
    let rebuilt = budgets_api(&second).await;
    assert_eq!(rebuilt["budgets"][0]["spend_usd"], 6.0, "{rebuilt}");
    spend(&second, "alice").await;
    wait_spend(&second, 7.0).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        json_hook.deliveries().len(),
        3,
        "a restart must not fire again"
    );
    assert_eq!(
        budgets_api(&second).await["alerts"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    second.stop().await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_fire_once_signed_and_a_restart_does_not_refire() {
    thresholds_fire_once_and_survive_a_restart(|_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_holds_with_the_clickhouse_store() {
    let ch = Arc::new(ClickHouse::started().await);
    let engine = ch.clone();
    thresholds_fire_once_and_survive_a_restart(move |c| engine.configure(c)).await;
    drop(ch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforcement_is_per_user_answers_429_and_never_reaches_the_upstream() {
    let up = FakeUpstream::start().await;
    let t = TestTally::start_with(&up.url(), |c| {
        priced(c);
        c.alerts = fast_alerts();
        c.budgets = vec![budget(json!({
            "name": "per-user-hourly",
            "scope": "per_user",
            "limit_usd": 2.0,
            "window": "hour",
            "thresholds": [100],
            "enforce": true,
        }))];
    })
    .await;
    for _ in 0..2 {
        assert_eq!(spend(&t, "alice").await.0, StatusCode::OK);
    }
    assert_eq!(spend(&t, "bob").await.0, StatusCode::OK);
    // Exhaustion is set when the ingest worker sees the record, just after the response.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = budgets_api(&t).await;
        let top = &v["budgets"][0]["top"];
        if top[0]["scope_key"] == "alice" && top[0]["exhausted"] == true {
            assert_eq!(v["budgets"][0]["exhausted_keys"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "alice never exhausted: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let upstream_calls = up.received().len();

    let (status, headers, body) = spend(&t, "alice").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=3600).contains(&retry), "{retry}");
    let e = &body["error"];
    assert_eq!(e["type"], "tally_budget_exceeded");
    assert_eq!(e["budget"], "per-user-hourly");
    assert_eq!(e["scope_key"], "alice");
    assert_eq!(e["spend_usd"], 2.0);
    assert_eq!(e["limit_usd"], 2.0);
    let msg = e["message"].as_str().expect("message");
    assert!(
        msg.contains("per-user-hourly") && msg.contains("resets at"),
        "{msg}"
    );

    // The Anthropic route answers in Anthropic's error shape.
    let (status, _, body) = post_json(
        &t.url("/anthropic/v1/messages"),
        &[("tally-user-id", "alice")],
        &json!({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "tally_budget_exceeded");

    // Bob has his own counter.
    assert_eq!(spend(&t, "bob").await.0, StatusCode::OK);
    assert_eq!(
        up.received().len(),
        upstream_calls + 1,
        "only bob reached the upstream"
    );

    // The refusals are recorded: status 0 (no upstream response), Tally's code, the budget
    // named.
    let rejected = crate::support::request_id(&headers);
    let r = t.record(&rejected).await;
    assert_eq!(r["status"], 0);
    assert_eq!(r["refusal"], "tally_budget_exceeded");
    assert_eq!(r["user_id"], "alice");
    assert!(r["error"]
        .as_str()
        .expect("error")
        .contains("per-user-hourly"));
    assert_eq!(t.metric("tally_budget_rejections_total", "").await, 2.0);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_gets_retries_then_a_recorded_failure() {
    let up = FakeUpstream::start().await;
    let failing = Receiver::start(503).await;
    // A port with nothing listening: connection refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let t = TestTally::start_with(&up.url(), |c| {
        priced(c);
        c.alerts = fast_alerts();
        c.budgets = vec![budget(json!({
            "name": "tiny",
            "limit_usd": 1.0,
            "window": "month",
            "webhooks": [
                {"url": failing.url()},
                {"url": format!("http://{closed}/hook")},
            ],
        }))];
    })
    .await;
    spend(&t, "alice").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let deliveries = loop {
        let v = budgets_api(&t).await;
        let d = v["alerts"][0]["deliveries"].clone();
        if d.as_array().is_some_and(|d| d.len() == 2) {
            break d;
        }
        assert!(Instant::now() < deadline, "failures never recorded: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for d in deliveries.as_array().expect("array") {
        assert_eq!(d["delivered"], false, "{d}");
        assert_eq!(d["attempts"], 3, "{d}");
        assert!(d["error"].as_str().is_some_and(|e| !e.is_empty()), "{d}");
    }
    assert_eq!(
        failing.deliveries().len(),
        3,
        "every attempt reached the receiver"
    );
    let by_hook: HashMap<String, Value> = deliveries
        .as_array()
        .expect("array")
        .iter()
        .map(|d| (d["webhook"].as_str().expect("hint").to_owned(), d.clone()))
        .collect();
    assert_eq!(
        by_hook[&format!("http://{}/…", failing.addr)]["status"],
        503
    );
    assert_eq!(
        t.metric("tally_alert_deliveries_total", "result=\"failed\"")
            .await,
        2.0
    );
    // Once the receiver recovers, the next event is delivered on the first attempt.
    failing.status.store(200, Ordering::SeqCst);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_rate_rule_fires_once_for_the_failing_model() {
    let up = FakeUpstream::start().await;
    let hook = Receiver::start(200).await;
    let t = TestTally::start_with(&up.url(), |c| {
        priced(c);
        c.alerts = fast_alerts();
        c.alerts.rules = vec![serde_json::from_value(json!({
            "name": "errors",
            "metric": "error_rate",
            "threshold": 0.5,
            "window": "30s",
            "min_requests": 4,
            "webhooks": [{"url": hook.url()}],
        }))
        .expect("rule")];
    })
    .await;
    for mode in ["error500", "error500", "error500", "ok"] {
        post_json(
            &t.url("/v1/chat/completions"),
            &[("x-fake-mode", mode)],
            &json!({"model": MODEL, "messages": []}),
        )
        .await;
    }
    let got = hook.wait_for(1).await;
    let e: Value = serde_json::from_slice(&got[0].1).expect("json");
    assert_eq!(e["event"], "error_rate_above");
    assert_eq!(e["rule"], "errors");
    assert_eq!(e["scope_key"], MODEL);
    assert_eq!(e["value"], 0.75);
    assert_eq!(e["requests"], 4);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(hook.deliveries().len(), 1, "once per window");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_users_get_a_rate_limit_error_that_names_the_budget() {
    let up = FakeUpstream::start().await;
    let t = TestTally::start_with(&up.url(), |c| {
        priced(c);
        c.alerts = fast_alerts();
        c.budgets = vec![budget(json!({
            "name": "alice-cap", "scope": "user:alice", "limit_usd": 1.0,
            "window": "hour", "enforce": true,
        }))];
    })
    .await;
    spend(&t, "alice").await;
    wait_spend(&t, 1.0).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while spend(&t, "alice").await.0 != StatusCode::TOO_MANY_REQUESTS {
        assert!(Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused_before = t.metric("tally_budget_rejections_total", "").await;
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/budget_refusal.py");
    let proxy = format!("http://{}", t.proxy);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(crate::support::clickhouse::python())
            .arg(script)
            .arg(proxy)
            .arg(MODEL)
            .output()
    })
    .await
    .expect("join")
    .expect("run python");
    assert!(
        out.status.success(),
        "SDK script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let o = &r["openai"];
    assert_eq!(o["raised"], "RateLimitError", "{r}");
    assert_eq!(o["status"], 429);
    assert!(
        o["message"]
            .as_str()
            .is_some_and(|m| m.contains("alice-cap")),
        "{o}"
    );
    assert_eq!(o["body"]["budget"], "alice-cap", "{o}");
    assert!(o["retry_after"]
        .as_str()
        .is_some_and(|s| s.parse::<u64>().is_ok()));
    let a = &r["anthropic"];
    assert_eq!(a["raised"], "RateLimitError", "{r}");
    assert!(
        a["message"]
            .as_str()
            .is_some_and(|m| m.contains("alice-cap")),
        "{a}"
    );
    assert_eq!(
        t.metric("tally_budget_rejections_total", "").await - refused_before,
        2.0,
        "{r}"
    );
    t.stop().await;
}

/// Two replicas in front of one ClickHouse: each sees the other's spend within the documented
/// bound (reconcile interval + flush interval), and an event fires once, not once per replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_clickhouse_converge_and_fire_once() {
    let ch = ClickHouse::started().await;
    let up = FakeUpstream::start().await;
    let hook = Receiver::start(200).await;
    let configure = |c: &mut Config| {
        ch.configure(c);
        priced(c);
        c.alerts = fast_alerts();
        c.alerts.reconcile_interval_secs = 1;
        c.budgets = vec![budget(json!({
            "name": "shared", "limit_usd": 3.0, "window": "month", "thresholds": [100],
            "enforce": true, "webhooks": [{"url": hook.url()}],
        }))];
    };
    let a = TestTally::start_with(&up.url(), configure).await;
    let b = TestTally::start_with(&up.url(), configure).await;
    spend(&a, "alice").await;
    spend(&a, "alice").await;
    let started = Instant::now();
    wait_spend(&b, 2.0).await;
    let converged = started.elapsed();
    assert!(
        converged < Duration::from_secs(5),
        "B saw A's spend after {converged:?}"
    );
    spend(&b, "bob").await;
    // B crosses the limit with its own request; A learns of it at its next reconciliation.
    wait_spend(&b, 3.0).await;
    wait_spend(&a, 3.0).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while spend(&a, "carol").await.0 != StatusCode::TOO_MANY_REQUESTS {
        assert!(
            Instant::now() < deadline,
            "A never enforced the shared limit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hook.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let events = hook.events();
    assert_eq!(events.len(), 1, "one event for two replicas: {events:?}");
    assert_eq!(events[0]["event"], "budget_exceeded");
    a.stop().await;
    b.stop().await;
}
