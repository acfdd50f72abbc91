//! #21, Prometheus and `Server-Timing`: the per-model series on `/metrics` (durations, TTFT,
//! tokens, cost, Tally's overhead) with bounded model labels, and the optional header.

use serde_json::json;

use crate::support::bin::{Bin, Options};
use crate::support::fake_upstream::OPENAI_USAGE;
use crate::support::*;

async fn chat(bin: &Bin, model: &str, stream: bool, delay_ms: &str) -> http::HeaderMap {
    let body = json!({"model": model, "stream": stream,
                      "messages": [{"role": "user", "content": "hi"}]});
    let (status, headers, _) = post_json(
        &bin.url("/v1/chat/completions"),
        &[("x-fake-delay-ms", delay_ms)],
        &body,
    )
    .await;
    assert_eq!(status, 200);
    headers
}

/// `tally;dur=…, upstream;dur=…` in milliseconds with three decimals.
fn timings(h: &http::HeaderMap) -> (f64, f64) {
    let v = h
        .get("server-timing")
        .expect("Server-Timing")
        .to_str()
        .expect("ascii");
    let mut parts = v.split(", ").map(|p| {
        let (name, dur) = p.split_once(";dur=").unwrap_or_else(|| panic!("{v}"));
        assert_eq!(dur.split_once('.').map(|(_, d)| d.len()), Some(3), "{v}");
        (
            name.to_owned(),
            dur.parse::<f64>().unwrap_or_else(|_| panic!("{v}")),
        )
    });
    let (t, u) = (
        parts.next().expect("tally"),
        parts.next().expect("upstream"),
    );
    assert_eq!((t.0.as_str(), u.0.as_str()), ("tally", "upstream"), "{v}");
    assert!(parts.next().is_none(), "{v}");
    (t.1, u.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_per_model_histograms_and_counters_and_server_timing_splits_the_wait() {
    let up = FakeUpstream::start().await;
    let opts = Options {
        proxy: "server_timing = true\nmetrics_max_models = 1\n".into(),
        ..Options::default()
    };
    let bin = Bin::start_with(&up.url(), tempfile::tempdir().expect("tempdir"), &opts).await;
    let h = chat(&bin, "gpt-4o-mini", false, "150").await;
    let (tally, upstream) = timings(&h);
    assert!(
        upstream >= 150.0,
        "the upstream's 150 ms are the upstream's: {upstream}"
    );
    assert!(tally < upstream, "tally {tally} ms, upstream {upstream} ms");
    chat(&bin, "gpt-4o-mini", true, "0").await;
    chat(&bin, "mystery-a", false, "0").await;
    chat(&bin, "mystery-b", false, "0").await;
    bin.wait_for_rows(4).await;
    let (_, c, cached, _) = OPENAI_USAGE;
    let priced = "provider=\"openai\",model=\"gpt-4o-mini\"";
    bin.assert_metrics(&[
        &format!("tally_request_duration_seconds_count{{{priced},status=\"2xx\"}} 2"),
        &format!("tally_time_to_first_token_seconds_count{{{priced}}} 2"),
        &format!("tally_tokens_total{{{priced},class=\"output\"}} {}", 2 * c),
        &format!("tally_tokens_total{{{priced},class=\"cache_read\"}} {}", 2 * cached),
        // The first unpriced name keeps its label (the cap is 1); the next is `other`.
        "tally_request_duration_seconds_count{provider=\"openai\",model=\"mystery-a-2024-08-06\",status=\"2xx\"} 1",
        "tally_request_duration_seconds_count{provider=\"openai\",model=\"other\",status=\"2xx\"} 1",
        "tally_overhead_seconds_count{provider=\"openai\"} 4",
    ])
    .await;
    let (_, _, body) = get(&bin.dashboard_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&body);
    // Each class agrees with the stored records.
    for (class, column) in [
        ("input", "prompt_tokens"),
        ("output", "completion_tokens"),
        ("cache_read", "cache_read_tokens"),
    ] {
        let stored = bin.rows(&format!(
            "SELECT sum({column}) FROM requests WHERE model = 'gpt-4o-mini'"
        ));
        let line = format!("tally_tokens_total{{{priced},class=\"{class}\"}} {stored}");
        assert!(metrics.contains(&line), "no {line} in\n{metrics}");
    }
    let cost = metrics
        .lines()
        .find(|l| l.starts_with(&format!("tally_cost_usd_total{{{priced}}}")))
        .expect("cost");
    let stored: f64 = bin
        .rows("SELECT CAST(round(sum(cost_usd) * 1e9) AS INTEGER) FROM requests WHERE model = 'gpt-4o-mini'")
        as f64
        / 1e9;
    let counted: f64 = cost
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a number");
    assert!(
        stored > 0.0 && (counted - stored).abs() < 1e-9,
        "{cost} vs stored {stored}"
    );

    // Off by default.
    let plain = Bin::start(&up.url()).await;
    let h = chat(&plain, "gpt-4o-mini", false, "0").await;
    assert!(h.get("server-timing").is_none());
}

/// The `tally_…` names in a PromQL expression.
fn series_names(expr: &str) -> Vec<String> {
    expr.match_indices("tally_")
        .map(|(i, _)| {
            expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect()
}

fn dashboard(name: &str) -> serde_json::Value {
    let path = format!(
        "{}/docker/grafana/dashboards/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every query of a dashboard, with the data source it names.
pub(crate) fn queries(d: &serde_json::Value, field: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let uid = t["datasource"]["uid"].as_str().expect("a data source uid");
            let q = t[field]
                .as_str()
                .unwrap_or_else(|| panic!("no {field} in {t}"));
            out.push((uid.to_owned(), q.to_owned()));
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        let uid = v["datasource"]["uid"].as_str().expect("a data source uid");
        out.push((
            uid.to_owned(),
            v["query"].as_str().expect("query").to_owned(),
        ));
    }
    out
}

/// The Grafana board on Prometheus asks only for series Tally exports, through the data
/// source the compose file provisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prometheus_dashboard_names_only_series_tally_exports() {
    let provisioned = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docker/grafana/provisioning/datasources/tally.yaml"
    ))
    .expect("provisioning");
    let up = FakeUpstream::start().await;
    let bin = Bin::start(&up.url()).await;
    chat(&bin, "gpt-4o-mini", true, "0").await;
    // A refusal too: a family shows on /metrics once it has a series.
    let (status, _, _) = post_json(&bin.url("/nosuch/v1/chat/completions"), &[], &json!({})).await;
    assert_eq!(status, 404);
    bin.wait_for_rows(2).await;
    let (_, _, body) = get(&bin.dashboard_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&body);
    let d = dashboard("tally-prometheus.json");
    let qs = queries(&d, "expr");
    assert!(qs.len() >= 9, "{qs:?}");
    for (uid, expr) in qs {
        assert!(
            provisioned.contains(&format!("uid: {uid}")),
            "{uid} is not provisioned"
        );
        let names = series_names(&expr);
        assert!(!names.is_empty(), "{expr}");
        for n in names.iter().map(String::as_str) {
            let stem = ["_bucket", "_count", "_sum", "_total"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n);
            let exported = metrics.lines().any(|l| {
                l.starts_with(&format!("{n}{{"))
                    || l.starts_with(&format!("{n} "))
                    || l.starts_with(&format!("# TYPE {stem} "))
            });
            assert!(exported, "{n} (in {expr}) is not in /metrics:\n{metrics}");
        }
    }
}

/// `tests/otel/receiver.py`: an OTLP collector made of the official `opentelemetry-proto`
/// package, on HTTP and gRPC, writing every span it decodes to a JSON-lines file.
struct Collector {
    child: std::process::Child,
    http: u16,
    grpc: u16,
    out: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Collector {
    fn start(slow_secs: Option<u32>) -> Self {
        use std::io::BufRead;
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("spans.jsonl");
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/otel/receiver.py");
        let mut cmd = std::process::Command::new(crate::support::clickhouse::python());
        cmd.arg(script).arg(&out);
        if let Some(s) = slow_secs {
            cmd.args(["--slow", &s.to_string()]);
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the OTLP receiver");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        let ports: Vec<u16> = line
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("receiver said {line:?}"))
            .split_whitespace()
            .map(|p| p.parse().expect("port"))
            .collect();
        Self {
            child,
            http: ports[0],
            grpc: ports[1],
            out,
            _dir: dir,
        }
    }

    /// Waits (bounded) until `n` spans arrived, and returns them.
    async fn spans(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&self.out).unwrap_or_default();
            let spans: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).expect("json"))
                .collect();
            if spans.len() >= n {
                return spans;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} spans arrived: {text}",
                spans.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/metrics` parsed by the official `prometheus_client` parser: every sample as
/// `[name, labels, value]`.
async fn parsed_metrics(bin: &Bin) -> Vec<(String, serde_json::Value, f64)> {
    let (_, _, body) = get(&bin.dashboard_url("/metrics")).await;
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new(crate::support::clickhouse::python())
            .args([
                "-c",
                "import sys, json\n\
                 from prometheus_client.parser import text_string_to_metric_families\n\
                 print(json.dumps([[s.name, s.labels, s.value] for f in \
                 text_string_to_metric_families(sys.stdin.read()) for s in f.samples]))",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        child.wait_with_output().expect("parse")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics"
    );
    let samples: Vec<(String, serde_json::Value, f64)> =
        serde_json::from_slice(&out.stdout).expect("json");
    samples
}

fn sample(
    samples: &[(String, serde_json::Value, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
        .map(|(_, _, v)| v)
        .sum()
}

/// Polls `/metrics` (bounded) until `f` holds of its samples.
async fn metrics_until(
    bin: &Bin,
    what: &str,
    f: impl Fn(&[(String, serde_json::Value, f64)]) -> bool,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let samples = parsed_metrics(bin).await;
        if f(&samples) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {samples:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_spans_carry_the_genai_attributes_the_clients_parent_and_name_tallys_span_upstream() {
    let collector = Collector::start(None);
    let up = FakeUpstream::start().await;
    let second = FakeUpstream::start().await;
    let opts = Options {
        rest: format!(
            "[providers.second]\nkind = \"openai\"\nbase_url = \"{}\"\n\n\
             [routers.smart]\nstrategy = \"fallback\"\nretries = 0\n\
             targets = [{{ provider = \"openai\" }}, {{ provider = \"second\" }}]\n\n\
             [otel]\nendpoint = \"http://127.0.0.1:{}\"\nheaders = {{ \"x-collector-key\" = \"k-123\" }}\n",
            second.url(),
            collector.http
        ),
        ..Options::default()
    };
    let bin = Bin::start_with(&up.url(), tempfile::tempdir().expect("tempdir"), &opts).await;
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traceparent = format!("00-{trace}-{parent}-01");
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let (status, headers, _) = post_json(
        &bin.url("/v1/chat/completions"),
        &[
            ("traceparent", traceparent.as_str()),
            ("tracestate", "vendor=abc"),
            ("tally-user-id", "u-42"),
            ("tally-session-id", "s-1"),
            ("tally-property-feature", "search"),
        ],
        &body,
    )
    .await;
    assert_eq!(status, 200);
    let child_id = request_id(&headers);
    chat(&bin, "gpt-4o-mini", true, "0").await;
    bin.wait_for_rows(2).await;

    let spans = collector.spans(2).await;
    let by_request = |id: &str| {
        spans
            .iter()
            .find(|s| s["attributes"]["tally.request_id"] == id)
            .unwrap_or_else(|| panic!("no span for {id}: {spans:?}"))
            .clone()
    };
    let s = by_request(&child_id);
    assert_eq!(s["transport"], "http");
    assert_eq!(
        s["headers"]["x-collector-key"], "k-123",
        "configured headers go with each export"
    );
    assert_eq!(s["resource"]["service.name"], "tally");
    assert_eq!(s["trace_id"], trace, "the span joins the client's trace");
    assert_eq!(
        s["parent_span_id"], parent,
        "as a child of the client's span"
    );
    assert_eq!(s["name"], "chat gpt-4o-mini");
    assert_eq!(
        s["kind"], 3,
        "SPAN_KIND_CLIENT, as the GenAI conventions say"
    );
    let a = &s["attributes"];
    let stored = |column: &str| {
        bin.rows(&format!(
            "SELECT {column} FROM requests WHERE request_id = '{child_id}'"
        ))
    };
    assert_eq!(a["gen_ai.operation.name"], "chat");
    assert_eq!(a["gen_ai.provider.name"], "openai");
    assert_eq!(a["gen_ai.request.model"], "gpt-4o-mini");
    assert_eq!(a["gen_ai.response.model"], "gpt-4o-mini-2024-08-06");
    assert_eq!(a["gen_ai.usage.input_tokens"], stored("prompt_tokens"));
    assert_eq!(a["gen_ai.usage.output_tokens"], stored("completion_tokens"));
    assert_eq!(a["server.address"], "127.0.0.1");
    assert_eq!(a["server.port"], i64::from(up.addr.port()));
    assert_eq!(a["http.response.status_code"], 200);
    assert!(a.get("error.type").is_none(), "{a}");
    assert_eq!(a["tally.user_id"], "u-42");
    assert_eq!(a["tally.session_id"], "s-1");
    assert_eq!(a["tally.property.feature"], "search");
    assert_eq!(a["tally.cache_status"], "none");
    let cost = bin.rows(&format!(
        "SELECT CAST(round(cost_usd * 1e12) AS INTEGER) FROM requests WHERE request_id = '{child_id}'"
    ));
    assert!(cost > 0);
    assert_eq!(
        (a["tally.cost_usd"].as_f64().expect("cost") * 1e12).round() as i64,
        cost
    );
    assert!(
        a.get("gen_ai.prompt").is_none()
            && s["events"]
                .as_array()
                .expect("events")
                .iter()
                .all(|e| e["name"] != "gen_ai.content.prompt"),
        "bodies are off by default"
    );
    let span_ms =
        (s["end_ns"].as_u64().expect("end") - s["start_ns"].as_u64().expect("start")) / 1_000_000;
    assert_eq!(
        span_ms as i64,
        stored("latency_ms"),
        "the span lasts the record's latency"
    );

    // The upstream saw Tally's span as the parent, in the client's trace, with its state.
    let received = up.received();
    let forwarded: Vec<&str> = received
        .iter()
        .filter_map(|r| r.headers.get("traceparent")?.to_str().ok())
        .collect();
    let tally_span = s["span_id"].as_str().expect("span id");
    assert!(
        forwarded.contains(&format!("00-{trace}-{tally_span}-01").as_str()),
        "{forwarded:?}"
    );
    assert!(received.iter().any(|r| r
        .headers
        .get("tracestate")
        .is_some_and(|v| v == "vendor=abc")));

    // Without a traceparent: a new trace, a root span, still forwarded upstream.
    let streamed = spans
        .iter()
        .find(|s| s["attributes"]["tally.request_id"] != child_id.as_str())
        .expect("the streamed request's span");
    assert_eq!(streamed["parent_span_id"], "");
    assert_ne!(streamed["trace_id"], trace);
    assert_eq!(streamed["attributes"]["tally.stream"], true);
    assert!(
        streamed["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["name"] == "tally.first_token"),
        "{streamed}"
    );
    let root = format!(
        "00-{}-{}-01",
        streamed["trace_id"].as_str().expect("trace"),
        streamed["span_id"].as_str().expect("span")
    );
    assert!(forwarded.contains(&root.as_str()), "{forwarded:?}");

    // A router's failed attempt is an event on the request's span, and its own record.
    up.script(&["error500"]);
    let (status, headers, _) =
        post_json(&bin.url("/router/smart/v1/chat/completions"), &[], &body).await;
    assert_eq!(status, 200);
    let routed = request_id(&headers);
    let spans = collector.spans(3).await;
    let s = spans
        .iter()
        .find(|s| s["attributes"]["tally.request_id"] == routed.as_str())
        .expect("the routed request's span");
    assert_eq!(s["attributes"]["tally.router"], "smart");
    assert_eq!(s["attributes"]["tally.attempts"], 2);
    assert_eq!(s["attributes"]["tally.provider"], "second");
    let fallback = s["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["name"] == "tally.fallback")
        .unwrap_or_else(|| panic!("no fallback event: {s}"));
    assert_eq!(fallback["attributes"]["tally.target"], "openai");
    assert_eq!(fallback["attributes"]["error.type"], "500");
    bin.wait_for_rows(4).await;
    assert_eq!(
        bin.rows(&format!(
            "SELECT count(*) FROM requests WHERE request_id = '{}' AND parent_request_id = '{routed}'",
            fallback["attributes"]["tally.attempt_request_id"].as_str().expect("id")
        )),
        1
    );
    // Both targets got Tally's span as the parent.
    let tally_span = format!("-{}-01", s["span_id"].as_str().expect("span"));
    assert!(
        second
            .received()
            .iter()
            .chain(up.received().iter())
            .filter(|r| r
                .headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.ends_with(&tally_span)))
            .count()
            == 2
    );

    // `/metrics` through prometheus_client's parser: every span counted as exported, and the
    // duration histogram counts every record.
    metrics_until(&bin, "three spans exported", |m| {
        sample(m, "tally_otlp_spans_exported_total", &[]) == 3.0
    })
    .await;
    let m = parsed_metrics(&bin).await;
    assert_eq!(
        sample(
            m.as_slice(),
            "tally_request_duration_seconds_count",
            &[("provider", "openai")]
        ) as i64,
        bin.rows(
            "SELECT count(*) FROM requests WHERE provider = 'openai' AND parent_request_id IS NULL"
        )
    );
    assert_eq!(
        sample(
            m.as_slice(),
            "tally_time_to_first_token_seconds_count",
            &[("provider", "openai")]
        ) as i64,
        bin.rows("SELECT count(*) FROM requests WHERE provider = 'openai' AND parent_request_id IS NULL AND ttft_ms IS NOT NULL")
    );

    // The same over gRPC, with a client's trace that says "not sampled": no span, and the
    // client's traceparent reaches the upstream untouched.
    let grpc = Bin::start_with(
        &up.url(),
        tempfile::tempdir().expect("tempdir"),
        &Options {
            rest: format!(
                "[otel]\nendpoint = \"http://127.0.0.1:{}\"\nprotocol = \"grpc\"\nheaders = {{ \"x-collector-key\" = \"k-456\" }}\n",
                collector.grpc
            ),
            ..Options::default()
        },
    )
    .await;
    let unsampled = format!("00-{trace}-{parent}-00");
    let (status, _, _) = post_json(
        &grpc.url("/v1/chat/completions"),
        &[("traceparent", unsampled.as_str())],
        &body,
    )
    .await;
    assert_eq!(status, 200);
    let (status, headers, _) = post_json(
        &grpc.url("/v1/chat/completions"),
        &[("traceparent", traceparent.as_str())],
        &body,
    )
    .await;
    assert_eq!(status, 200);
    let sampled_id = request_id(&headers);
    let spans = collector.spans(4).await;
    let g: Vec<_> = spans.iter().filter(|s| s["transport"] == "grpc").collect();
    assert_eq!(g.len(), 1, "only the sampled request has a span: {g:?}");
    assert_eq!(g[0]["attributes"]["tally.request_id"], sampled_id.as_str());
    assert_eq!(g[0]["parent_span_id"], parent);
    assert_eq!(g[0]["headers"]["x-collector-key"], "k-456");
    assert!(up.received().iter().any(|r| r
        .headers
        .get("traceparent")
        .is_some_and(|v| v == unsampled.as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_or_slow_never_holds_a_request_and_its_spans_count_as_dropped() {
    let up = FakeUpstream::start().await;
    // Down: nothing listens on the port.
    let down = Bin::start_with(
        &up.url(),
        tempfile::tempdir().expect("tempdir"),
        &Options {
            rest: format!(
                "[otel]\nendpoint = \"http://127.0.0.1:{}\"\ntimeout_ms = 300\n",
                free_port()
            ),
            ..Options::default()
        },
    )
    .await;
    // Slow: every export is answered after 60 s, far past the 300 ms export timeout, and the
    // queue holds 2 spans.
    let collector = Collector::start(Some(60));
    let slow = Bin::start_with(
        &up.url(),
        tempfile::tempdir().expect("tempdir"),
        &Options {
            rest: format!(
                "[otel]\nendpoint = \"http://127.0.0.1:{}\"\ntimeout_ms = 300\nqueue_size = 2\nbatch_size = 1\n",
                collector.http
            ),
            ..Options::default()
        },
    )
    .await;
    for bin in [&down, &slow] {
        // Not a timing test: a request path that waited on the export would wait for 60 s
        // (or a connection timeout), and this bound is there only so such a bug fails instead
        // of hanging the suite.
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            for _ in 0..12 {
                chat(bin, "gpt-4o-mini", false, "0").await;
            }
        })
        .await
        .expect("requests are answered while the collector is down or stuck");
        bin.wait_for_rows(12).await;
        metrics_until(bin, "every span exported or counted as dropped", |m| {
            sample(m, "tally_otlp_spans_dropped_total", &[]) == 12.0
                && sample(m, "tally_otlp_spans_exported_total", &[]) == 0.0
        })
        .await;
    }
    let m = parsed_metrics(&slow).await;
    assert!(
        sample(
            m.as_slice(),
            "tally_otlp_spans_dropped_total",
            &[("reason", "queue_full")]
        ) > 0.0,
        "a full queue drops instead of waiting: {m:?}"
    );
    assert!(
        sample(
            m.as_slice(),
            "tally_otlp_spans_dropped_total",
            &[("reason", "export_failed")]
        ) > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_with_bodies_carry_what_the_store_keeps_redacted_as_it_is() {
    let collector = Collector::start(None);
    let up = FakeUpstream::start().await;
    let opts = Options {
        rest: format!(
            "[otel]\nendpoint = \"http://127.0.0.1:{}\"\nbodies = true\n\n\
             [privacy]\nredact_user_ids = true\n\n[privacy.detectors]\nemail = \"mask\"\n",
            collector.http
        ),
        ..Options::default()
    };
    let bin = Bin::start_with(&up.url(), tempfile::tempdir().expect("tempdir"), &opts).await;
    let (email, token) = (
        "erin.planted@example.com",
        "ghp_PLANTED0123456789abcdefghijklmnopqrstu",
    );
    let body = json!({"model": "gpt-4o-mini",
                      "messages": [{"role": "user", "content": format!("mail {email}, token {token}")}]});
    let (status, _, _) = post_json(
        &bin.url("/v1/chat/completions"),
        &[("tally-user-id", email)],
        &body,
    )
    .await;
    assert_eq!(status, 200);
    let spans = collector.spans(1).await;
    let text = spans[0].to_string();
    assert!(!text.contains(email) && !text.contains(token), "{text}");
    let prompt = spans[0]["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["name"] == "gen_ai.content.prompt")
        .unwrap_or_else(|| panic!("no prompt event: {text}"));
    let stored: String = {
        bin.wait_for_rows(1).await;
        let conn = rusqlite::Connection::open(bin.dir.path().join("tally.db")).expect("open");
        conn.query_row("SELECT request_body FROM requests", [], |r| r.get(0))
            .expect("body")
    };
    assert_eq!(
        prompt["attributes"]["gen_ai.prompt"],
        stored.as_str(),
        "the stored body, as stored"
    );
    assert!(stored.contains("[EMAIL]"), "{stored}");
    assert_eq!(spans[0]["attributes"]["tally.user_id"], "[EMAIL]");
    assert!(spans[0]["events"]
        .as_array()
        .expect("events")
        .iter()
        .any(|e| e["name"] == "gen_ai.content.completion"));
}
