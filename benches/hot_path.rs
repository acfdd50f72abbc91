//! Per-chunk work on the proxy path: what one streamed response costs Tally beyond forwarding.
//!
//! `cargo bench --bench hot_path`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tally_ingest::Tokens;
use tally_proxy::body::{BoxError, StripUsage};
use tally_proxy::formats::{StreamObserver, WireFormat};
use tally_proxy::PricingTable;

/// A realistic chat stream: 200 content chunks and a usage chunk, one event per chunk, as
/// OpenAI sends them with include_usage.
fn openai_stream() -> Vec<Bytes> {
    let mut v = Vec::new();
    for i in 0..200 {
        v.push(Bytes::from(format!(
            "data: {{\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_1\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" token{i}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
        )));
    }
    v.push(Bytes::from_static(b"data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":200,\"total_tokens\":220}}\n\n"));
    v.push(Bytes::from_static(b"data: [DONE]\n\n"));
    v
}

fn anthropic_stream() -> Vec<Bytes> {
    let mut v = vec![Bytes::from_static(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n")];
    for i in 0..200 {
        v.push(Bytes::from(format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\" token{i}\"}}}}\n\n"
        )));
    }
    v.push(Bytes::from_static(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":200}}\n\n"));
    v
}

/// A Gemini `alt=sse` stream: 200 chunks, each repeating `usageMetadata` with the counts so far
/// (as Gemini does), the last with `finishReason` and the final counts.
fn gemini_stream() -> Vec<Bytes> {
    let mut v = Vec::new();
    for i in 0..201 {
        let finish = if i == 200 {
            ",\"finishReason\":\"STOP\""
        } else {
            ""
        };
        v.push(Bytes::from(format!(
            "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\" token{i}\"}}],\"role\":\"model\"}}{finish},\"index\":0}}],\"usageMetadata\":{{\"promptTokenCount\":20,\"candidatesTokenCount\":{i},\"totalTokenCount\":{}}},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"r-1\"}}\r\n\r\n",
            20 + i
        )));
    }
    v
}

/// A Bedrock ConverseStream of 200 text deltas between `messageStart` and `metadata`, in AWS's
/// event-stream frames (written with AWS's own encoder).
fn bedrock_stream() -> Vec<Bytes> {
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    let frame = |kind: &str, payload: String| {
        let m = Message::new(payload.into_bytes())
            .add_header(Header::new(
                ":event-type",
                HeaderValue::String(kind.to_owned().into()),
            ))
            .add_header(Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ))
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String("event".into()),
            ));
        let mut out = Vec::new();
        write_message_to(&m, &mut out).expect("frame");
        Bytes::from(out)
    };
    let mut v = vec![frame(
        "messageStart",
        r#"{"role":"assistant","p":"abcdefgh"}"#.to_owned(),
    )];
    for i in 0..200 {
        v.push(frame(
            "contentBlockDelta",
            format!(
                r#"{{"contentBlockIndex":0,"delta":{{"text":" token{i}"}},"p":"abcdefghijklmnop"}}"#
            ),
        ));
    }
    v.push(frame(
        "metadata",
        r#"{"usage":{"inputTokens":20,"outputTokens":200,"totalTokens":220},"metrics":{"latencyMs":900},"p":"abc"}"#.to_owned(),
    ));
    v
}

fn observers(c: &mut Criterion) {
    for (name, format, chunks) in [
        (
            "openai_stream_202_events",
            WireFormat::OpenAi,
            openai_stream(),
        ),
        (
            "anthropic_stream_202_events",
            WireFormat::Anthropic,
            anthropic_stream(),
        ),
        (
            "gemini_stream_201_events",
            WireFormat::Gemini,
            gemini_stream(),
        ),
        (
            "bedrock_stream_202_events",
            WireFormat::Bedrock,
            bedrock_stream(),
        ),
    ] {
        let bytes: usize = chunks.iter().map(Bytes::len).sum();
        let mut g = c.benchmark_group("stream_observer");
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut o = StreamObserver::new(format);
                for c in &chunks {
                    o.feed(black_box(c));
                }
                black_box(o.finish())
            })
        });
        g.finish();
    }
}

fn strip(c: &mut Criterion) {
    let chunks = openai_stream();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("strip_usage");
    g.throughput(Throughput::Elements(chunks.len() as u64));
    g.bench_function("openai_stream_202_events", |b| {
        b.iter(|| {
            let frames: Vec<Result<Frame<Bytes>, BoxError>> =
                chunks.iter().cloned().map(|c| Ok(Frame::data(c))).collect();
            let body = StripUsage::new(
                StreamBody::new(futures_util::stream::iter(frames)),
                WireFormat::OpenAi,
            );
            rt.block_on(async { black_box(body.collect().await.expect("ok").to_bytes()) })
        })
    });
    g.finish();
}

fn pricing(c: &mut Criterion) {
    let table = PricingTable::builtin().expect("prices");
    let t = Tokens {
        prompt: 1000,
        completion: 200,
        cache_read: 100,
        cache_write: 0,
        cache_write_1h: 0,
        reasoning: 50,
    };
    c.bench_function("pricing/dated_snapshot_lookup_and_cost", |b| {
        b.iter(|| {
            black_box(table.cost(black_box("openai"), black_box("gpt-4o-mini-2024-07-18"), &t))
        })
    });
    // What a record's finish does for an Anthropic answer: 1-hour writes, a web search, the
    // request's time (for off-peak rules).
    let usage = tally_proxy::pricing::Usage {
        tokens: Tokens {
            cache_write: 300,
            cache_write_1h: 100,
            ..t
        },
        service_tier: Some("standard"),
        web_search_calls: 1,
        at_ms: Some(1_796_358_600_000),
    };
    c.bench_function("pricing/anthropic_bill_with_details", |b| {
        b.iter(|| {
            black_box(table.bill(
                black_box("anthropic"),
                black_box("claude-sonnet-4-6"),
                &usage,
            ))
        })
    });
    c.bench_function("pricing/unknown_model_miss", |b| {
        b.iter(|| black_box(table.cost(black_box("openai"), black_box("house-model-7"), &t)))
    });
    // Once per start (and per `tally prices show`): the catalog and the corrections parsed.
    c.bench_function("pricing/load_builtin_catalog", |b| {
        b.iter(|| black_box(PricingTable::builtin().expect("prices").len()))
    });
}

/// The crash journal's append, which runs once per request before its last frame: a record
/// as the load harness's JSON request leaves it (both bodies kept), encoded alone and appended.
fn journal(c: &mut Criterion) {
    let mut r = tally_ingest::Record::new(uuid::Uuid::now_v7(), 1_700_000_000_000);
    r.provider = "openai".into();
    r.endpoint = "/v1/chat/completions".into();
    r.method = "POST".into();
    r.model = Some("gpt-4o-mini".into());
    r.response_model = Some("gpt-4o-mini-2024-07-18".into());
    r.status = 200;
    r.tokens = Some(Tokens {
        prompt: 21,
        completion: 7,
        ..Tokens::default()
    });
    r.cost_usd = Some(0.0000073);
    r.api_key_hint = Some("sk-…abcd".into());
    r.request_body = Some(
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}"#.into(),
    );
    r.response_body = Some(r#"{"id":"chatcmpl-load","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the load upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":21,"completion_tokens":7,"total_tokens":28}}"#.into());
    let mut g = c.benchmark_group("journal");
    g.bench_function("encode", |b| {
        b.iter(|| serde_json::to_vec(black_box(&r)).expect("encode"))
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = tally_ingest::IngestMetrics::default();
    let (j, _) =
        tally_ingest::journal::Journal::open(dir.path(), u64::MAX, metrics).expect("journal");
    g.bench_function("append_and_release", |b| {
        b.iter(|| {
            let t = j.append(black_box(&r)).expect("append");
            j.release([t]);
        })
    });
    g.finish();
}

/// The per-model series (#21) a finished request adds to: a duration and a TTFT histogram,
/// two token counters and the cost, with the price-table lookup that names the model.
fn usage_metrics(c: &mut Criterion) {
    let m = tally_proxy::ProxyMetrics::default();
    let table = PricingTable::builtin().expect("prices");
    let mut r = tally_ingest::Record::new(uuid::Uuid::now_v7(), 1_700_000_000_000);
    r.provider = "openai".into();
    r.model = Some("gpt-4o-mini".into());
    r.response_model = Some("gpt-4o-mini-2024-07-18".into());
    r.status = 200;
    r.latency_ms = 420;
    r.ttft_ms = Some(180);
    r.tokens = Some(Tokens {
        prompt: 21,
        completion: 7,
        ..Tokens::default()
    });
    r.cost_usd = Some(0.0000073);
    c.bench_function("metrics/usage_observe_per_request", |b| {
        b.iter(|| {
            let r = black_box(&r);
            let priced_as = [&r.response_model, &r.model]
                .into_iter()
                .flatten()
                .find_map(|model| table.lookup_entry(&r.provider, model))
                .map(|(entry, _)| entry);
            m.usage.observe(r, priced_as, "2xx");
        })
    });
}

criterion_group!(benches, observers, strip, pricing, journal, usage_metrics);
criterion_main!(benches);
