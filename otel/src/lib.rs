//! OpenTelemetry traces: one span per proxied request, following the GenAI semantic
//! conventions, exported over OTLP (protobuf over HTTP, or gRPC) from a bounded queue.
//!
//! The proxy calls [`Tracer::begin`] when a request arrives: it reads the client's W3C
//! `traceparent`/`tracestate`, makes the sampling decision (parent-based, then the configured
//! ratio) and picks the span's id, so the request sent upstream can carry a `traceparent`
//! naming Tally's span ([`Started::inject`]). When the record is finished, [`Tracer::end`]
//! puts a copy of it on the queue with a `try_send`; a full queue drops the span and counts it.
//! One thread ([`export`]) takes spans off the queue on a tick, runs the store's
//! [`RecordFilter`] over each (so a span carries what the store would: redacted ids, property
//! values and, when `bodies` is on, bodies), builds its attributes ([`span`]) and hands batches
//! to the SDK's OTLP exporter.
//!
//! Why not the SDK's tracer and its batch processor: a request's span is known whole only once
//! its record is (times, usage, cost, the error), so there is nothing for a live span object to
//! do on the request path; and a queue Tally owns is one `/metrics` can count drops from, which
//! the SDK's processor only logs. What the SDK does well it still does: ids, sampling,
//! `traceparent` parsing and writing, and the OTLP encoding and transports.
#![deny(missing_docs)]

mod export;
mod span;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt, TraceFlags, TraceState};
use opentelemetry::Context;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, ShouldSample,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tally_ingest::{Record, RecordFilter};

pub use export::Exporter;
pub use opentelemetry::KeyValue;

/// `[otel]`: where spans go and which requests get one. No `endpoint`: tracing is off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtelConfig {
    /// The collector: `http://host:4318` for `http/protobuf` (`/v1/traces` is added when the
    /// URL has no path), `http://host:4317` for `grpc`.
    pub endpoint: Option<String>,
    /// `http/protobuf` (default) or `grpc`.
    pub protocol: Protocol,
    /// The share of traces started here that are sampled, 0 to 1 (default 1). A request whose
    /// `traceparent` says sampled or not keeps its parent's decision.
    pub sample_ratio: f64,
    /// Headers (gRPC metadata) sent with every export, such as a collector's API key. Never
    /// logged.
    pub headers: BTreeMap<String, String>,
    /// Whether stored request and response bodies go in as span events (redacted as the
    /// store's, capped as the store's). Off by default: spans often travel further than the
    /// store.
    pub bodies: bool,
    /// `service.name` of the spans' resource.
    pub service_name: String,
    /// Spans waiting for export; past this a span is dropped and counted.
    pub queue_size: usize,
    /// Spans per export call.
    pub batch_size: usize,
    /// Longest one export may take before it counts as failed.
    pub timeout_ms: u64,
}

impl Default for OtelConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: Protocol::HttpProtobuf,
            sample_ratio: 1.0,
            headers: BTreeMap::new(),
            bodies: false,
            service_name: "tally".to_owned(),
            queue_size: 4096,
            batch_size: 512,
            timeout_ms: 5000,
        }
    }
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    /// Protobuf over HTTP (`POST /v1/traces`).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// gRPC (`TraceService/Export`).
    #[serde(rename = "grpc")]
    Grpc,
}

/// `[otel]` cannot be used as written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtelError {
    /// A setting is out of range or malformed.
    #[error("otel.{field}: {why}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The exporter could not be built (a bad endpoint, the TLS setup).
    #[error("cannot build the OTLP exporter: {0}")]
    Build(String),
}

impl OtelConfig {
    /// Whether spans are exported at all.
    pub fn enabled(&self) -> bool {
        self.endpoint.is_some()
    }

    /// Checks what can be checked without building the exporter.
    pub fn validate(&self) -> Result<(), OtelError> {
        let invalid = |field, why: &str| {
            Err(OtelError::Invalid {
                field,
                why: why.to_owned(),
            })
        };
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return invalid("sample_ratio", "must be between 0 and 1");
        }
        if self.queue_size == 0 || self.batch_size == 0 {
            return invalid("queue_size", "queue_size and batch_size must be at least 1");
        }
        if self.timeout_ms == 0 {
            return invalid("timeout_ms", "must be at least 1");
        }
        if let Some(e) = &self.endpoint {
            match e.parse::<http::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                }
                _ => return invalid("endpoint", "must be an http:// or https:// URL"),
            }
            if self.protocol == Protocol::Grpc && e.starts_with("https:") {
                // tonic's TLS would be a second TLS stack in the binary; said in the README.
                return invalid(
                    "endpoint",
                    "gRPC over TLS is not built in; use protocol = \"http/protobuf\" for an https collector, or a local collector over http",
                );
            }
        }
        for (k, v) in &self.headers {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err()
                || http::HeaderValue::from_str(v).is_err()
            {
                // The value may be a credential: name the header only.
                return Err(OtelError::Invalid {
                    field: "headers",
                    why: format!("{k:?} is not a valid header name and value"),
                });
            }
        }
        Ok(())
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// What the exporter counts, on `/metrics`.
#[derive(Clone, Default)]
struct OtelMetrics {
    exported: Counter,
    dropped: Family<DropLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

impl OtelMetrics {
    fn dropped(&self, reason: &'static str, n: u64) {
        self.dropped.get_or_create(&DropLabels { reason }).inc_by(n);
    }
}

/// A span whose request is under way: its identity, its parent and its start.
#[derive(Debug, Clone)]
pub struct Started {
    context: SpanContext,
    parent: Option<SpanContext>,
    start: SystemTime,
    events: Vec<opentelemetry::trace::Event>,
}

impl Started {
    /// Writes `traceparent` (and `tracestate`) naming this span into the upstream request's
    /// headers, replacing the client's: the upstream's work is a child of Tally's.
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.remove("traceparent");
        headers.remove("tracestate");
        let cx = Context::new().with_remote_span_context(self.context.clone());
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    }

    /// Notes something that happened during the request (a retry, a fallback), now.
    pub fn event(&mut self, name: &'static str, attributes: Vec<KeyValue>) {
        self.events.push(opentelemetry::trace::Event::new(
            name,
            SystemTime::now(),
            attributes,
            0,
        ));
    }

    /// The span's trace id, as hex.
    pub fn trace_id(&self) -> String {
        self.context.trace_id().to_string()
    }
}

/// Where the request went, for `server.address` and `server.port`.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The upstream's host.
    pub host: String,
    /// Its port, when the URL names one.
    pub port: Option<u16>,
    /// `gen_ai.provider.name`, when the conventions name the provider's API (`openai`,
    /// `aws.bedrock`, …); else the span carries Tally's provider name.
    pub provider: Option<&'static str>,
}

/// A finished request waiting for export.
struct Finished {
    started: Started,
    record: Record,
    upstream: Option<Upstream>,
}

/// The request path's handle: sampling, ids, and the queue's sending side. Shared by every
/// event loop.
pub struct Tracer {
    sampler: Sampler,
    ids: RandomIdGenerator,
    queue: crossbeam_channel::Sender<Finished>,
    bodies: bool,
    metrics: OtelMetrics,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer").finish_non_exhaustive()
    }
}

impl Tracer {
    /// Builds the exporter on its own thread and returns the tracer and that thread's handle.
    /// `filter` is the store's record filter (redaction), run over each span's record.
    pub fn start(
        config: &OtelConfig,
        filter: Option<Arc<dyn RecordFilter>>,
    ) -> Result<(Arc<Tracer>, Exporter), OtelError> {
        config.validate()?;
        let (tx, rx) = crossbeam_channel::bounded(config.queue_size);
        let metrics = OtelMetrics::default();
        let exporter = Exporter::spawn(config, rx, filter, metrics.clone())?;
        let tracer = Tracer {
            sampler: Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))),
            ids: RandomIdGenerator::default(),
            queue: tx,
            bodies: config.bodies,
            metrics,
        };
        Ok((Arc::new(tracer), exporter))
    }

    /// A request arrived with these headers: its span, when it is sampled.
    pub fn begin(&self, headers: &HeaderMap) -> Option<Started> {
        let parent_cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let parent = parent_cx.span().span_context().clone();
        let parent = parent.is_valid().then_some(parent);
        let trace_id = match &parent {
            Some(p) => p.trace_id(),
            None => self.ids.new_trace_id(),
        };
        let decision =
            self.sampler
                .should_sample(Some(&parent_cx), trace_id, "", &SpanKind::Client, &[], &[]);
        if decision.decision != SamplingDecision::RecordAndSample {
            return None;
        }
        let state = parent
            .as_ref()
            .map_or_else(TraceState::default, |p| p.trace_state().clone());
        let context = SpanContext::new(
            trace_id,
            self.ids.new_span_id(),
            TraceFlags::SAMPLED,
            false,
            state,
        );
        Some(Started {
            context,
            parent,
            start: SystemTime::now(),
            events: Vec::new(),
        })
    }

    /// The request's record is finished: queue its span. Never waits; a full queue drops it
    /// and counts it (`tally_otlp_spans_dropped_total{reason="queue_full"}`). The record is
    /// `&mut` only so that its bodies can be lifted out while it is copied (they can be most
    /// of its bytes, and a span carries them only with `bodies` on); it is left as it was.
    pub fn end(&self, started: Started, record: &mut Record, upstream: Option<Upstream>) {
        let bodies = [
            record.request_body.take(),
            record.response_body.take(),
            record.upstream_request_body.take(),
            record.upstream_response_body.take(),
        ];
        let mut copy = record.clone();
        let [req, resp, up_req, up_resp] = bodies;
        if self.bodies {
            copy.request_body.clone_from(&req);
            copy.response_body.clone_from(&resp);
        }
        record.request_body = req;
        record.response_body = resp;
        record.upstream_request_body = up_req;
        record.upstream_response_body = up_resp;
        let finished = Finished {
            started,
            record: copy,
            upstream,
        };
        if self.queue.try_send(finished).is_err() {
            self.metrics.dropped("queue_full", 1);
        }
    }

    /// Adds `tally_otlp_spans_exported_total` and `tally_otlp_spans_dropped_total{reason}`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "otlp_spans_exported",
            "Spans the OTLP collector accepted",
            self.metrics.exported.clone(),
        );
        registry.register(
            "otlp_spans_dropped",
            "Spans not exported: queue_full (the collector is slower than the traffic), export_failed (the collector refused or did not answer)",
            self.metrics.dropped.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(ratio: f64) -> (Tracer, crossbeam_channel::Receiver<Finished>) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let t = Tracer {
            sampler: Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))),
            ids: RandomIdGenerator::default(),
            queue: tx,
            bodies: false,
            metrics: OtelMetrics::default(),
        };
        (t, rx)
    }

    fn headers(traceparent: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            http::HeaderValue::from_str(traceparent).expect("ascii"),
        );
        h
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn the_parents_decision_wins_over_the_ratio() {
        let (never, _) = tracer(0.0);
        assert!(
            never.begin(&HeaderMap::new()).is_none(),
            "a root at ratio 0"
        );
        let s = never
            .begin(&headers(&format!("00-{TRACE}-00f067aa0ba902b7-01")))
            .expect("a sampled parent is followed");
        assert_eq!(s.trace_id(), TRACE);
        let (always, _) = tracer(1.0);
        assert!(always
            .begin(&headers(&format!("00-{TRACE}-00f067aa0ba902b7-00")))
            .is_none());
        // A malformed traceparent is no parent: a new trace.
        let s = always
            .begin(&headers("00-zz-00f067aa0ba902b7-01"))
            .expect("root");
        assert_ne!(s.trace_id(), TRACE);
    }

    #[test]
    fn injection_replaces_the_clients_traceparent_with_tallys_span() {
        let (t, _) = tracer(1.0);
        let mut h = headers(&format!("00-{TRACE}-00f067aa0ba902b7-01"));
        let s = t.begin(&h).expect("sampled");
        s.inject(&mut h);
        let v = h["traceparent"].to_str().expect("ascii").to_owned();
        assert_eq!(h.get_all("traceparent").iter().count(), 1);
        assert_eq!(
            v,
            format!("00-{TRACE}-{}-01", s.context.span_id()),
            "Tally's span is the upstream's parent"
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (t, rx) = tracer(1.0);
        let mut r = Record::new(uuid::Uuid::now_v7(), 0);
        r.request_body = Some("kept on the record".into());
        for _ in 0..3 {
            let s = t.begin(&HeaderMap::new()).expect("sampled");
            t.end(s, &mut r, None);
        }
        assert_eq!(rx.len(), 1);
        let queued = rx.try_recv().expect("one");
        assert_eq!(queued.record.request_body, None, "bodies are off");
        assert_eq!(r.request_body.as_deref(), Some("kept on the record"));
        assert_eq!(
            t.metrics
                .dropped
                .get_or_create(&DropLabels {
                    reason: "queue_full"
                })
                .get(),
            2
        );
    }

    #[test]
    fn settings_out_of_range_are_named() {
        let bad = |c: OtelConfig| c.validate().expect_err("invalid").to_string();
        let on = OtelConfig {
            endpoint: Some("http://127.0.0.1:4318".into()),
            ..OtelConfig::default()
        };
        assert!(on.validate().is_ok());
        assert!(bad(OtelConfig {
            sample_ratio: 1.5,
            ..on.clone()
        })
        .contains("otel.sample_ratio"));
        assert!(bad(OtelConfig {
            endpoint: Some("127.0.0.1:4318".into()),
            ..on.clone()
        })
        .contains("otel.endpoint"));
        assert!(bad(OtelConfig {
            endpoint: Some("https://collector.example:4317".into()),
            protocol: Protocol::Grpc,
            ..on.clone()
        })
        .contains("gRPC over TLS"));
        let secret = bad(OtelConfig {
            headers: [("bad header".to_owned(), "s3cret".to_owned())].into(),
            ..on
        });
        assert!(
            secret.contains("otel.headers") && !secret.contains("s3cret"),
            "{secret}"
        );
    }
}
