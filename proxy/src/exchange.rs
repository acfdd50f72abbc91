//! One request's journey, from the first header to the last response byte, and the record it
//! leaves behind.
//!
//! An [`Exchange`] is created as soon as a request arrives and is finished exactly once: by the
//! response body's tee when the stream ends (completely, by error, or by the client leaving), by
//! the handler on an early error, or by its own `Drop` when the client disconnects before the
//! upstream answers. Whatever happens, one record is sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use tally_ingest::{CacheStatus, Record, Tokens};

use crate::body::{BodyObserver, StreamEnd};
pub(crate) use crate::capture::Encoding;
use crate::capture::{Capture, Decoder};
use crate::formats::{self, StreamObserver, WireFormat};
use crate::metrics::RequestLabels;
use crate::phases::Refusal;
use crate::{ProxyMetrics, Shared};

/// Everything about the request that is known before the response body.
pub(crate) struct ExchangeState {
    shared: Arc<Shared>,
    pub(crate) record: Record,
    /// The request's span, when it is traced and sampled.
    pub(crate) trace: Option<Box<tally_otel::Started>>,
    /// The wire format the client speaks, once the route is known.
    pub(crate) format: Option<WireFormat>,
    started: Instant,
    /// The request body as read (bounded), for logging and token estimates.
    pub(crate) request_head: Bytes,
    pub(crate) request_truncated: bool,
    pub(crate) request_rest_bytes: Option<Arc<AtomicU64>>,
    pub(crate) omit_request_body: bool,
    pub(crate) omit_response_body: bool,
    /// Tally asked the upstream for stream usage the client did not request.
    pub(crate) injected: bool,
    /// The keys the request presented, masked in everything stored.
    pub(crate) presented: crate::secrets::Presented,
    /// The response head arrived (status and headers).
    pub(crate) responded: bool,
    pub(crate) encoding: Encoding,
    /// The bounded copy of the body, decoded when it is compressed.
    capture: Capture,
    /// Decodes a compressed body as it passes.
    decoder: Option<Decoder>,
    observer: Option<StreamObserver>,
    /// Usage the response head reported (Bedrock's `InvokeModel`), for a body that has none.
    header_tokens: Option<Tokens>,
    /// What a per-unit endpoint was asked for (images, speech, audio minutes).
    pub(crate) units: Option<formats::Units>,
    /// The stages that let this request through and want to see how it ends.
    hooks: Vec<Box<dyn StageHook>>,
    /// The request came in on the unified API (`/unified/…`).
    pub(crate) unified: bool,
    /// The attempt that answered was translated (`translation.rs`); set by the send phase.
    pub(crate) translation: Option<crate::translation::ResponsePlan>,
    /// Rewrites the answer for the client, from the response head on.
    translator: Option<crate::translation::ResponseTranslator>,
    /// What a whole translated answer said, read from the upstream's own body.
    translated_observed: Option<formats::Observed>,
    /// A translated request as the provider got it, and a bounded copy of its answer before
    /// translation; only with `proxy.keep_translated_bodies`.
    pub(crate) upstream_request: Option<Bytes>,
    pub(crate) upstream_capture: Option<Capture>,
}

/// A response head as a stage sees it.
pub(crate) struct ResponseHead<'a> {
    pub(crate) headers: &'a HeaderMap,
    /// Tally asked for stream usage; the body carries what the client will not see.
    pub(crate) injected: bool,
}

/// What a stage that let a request through gets to see of it: its response as it goes by and
/// its finished record. This is all the exchange knows of stages.
pub(crate) trait StageHook: Send {
    /// The response head, upstream's or the cache's.
    fn on_head(&mut self, _head: &ResponseHead<'_>) {}
    /// A response body chunk, as forwarded. On the hot path: cheap, never blocking.
    fn on_data(&mut self, _chunk: &Bytes) {}
    /// The record is final (usage and cost known); `complete` is true when the whole answer
    /// reached the client.
    fn on_finish(self: Box<Self>, _record: &Record, _complete: bool, _metrics: &ProxyMetrics) {}
}

/// See the module docs.
pub(crate) struct Exchange {
    state: Option<Box<ExchangeState>>,
}

impl Exchange {
    pub(crate) fn new(shared: Arc<Shared>, record: Record, started: Instant) -> Self {
        shared.metrics.in_flight.inc();
        let limit = shared.settings.max_body_bytes;
        Self {
            state: Some(Box::new(ExchangeState {
                shared,
                record,
                trace: None,
                format: None,
                started,
                request_head: Bytes::new(),
                request_truncated: false,
                request_rest_bytes: None,
                omit_request_body: false,
                omit_response_body: false,
                injected: false,
                presented: Default::default(),
                responded: false,
                encoding: Encoding::Identity,
                capture: Capture::new(limit),
                decoder: None,
                observer: None,
                header_tokens: None,
                units: None,
                hooks: Vec::new(),
                unified: false,
                translation: None,
                translator: None,
                translated_observed: None,
                upstream_request: None,
                upstream_capture: None,
            })),
        }
    }

    /// The request's state; always present until the exchange is finished.
    pub(crate) fn state(&mut self) -> &mut ExchangeState {
        self.state
            .as_mut()
            .expect("an exchange is only used before it is finished")
    }

    /// The record-to-be, read-only (for phases that also read other parts of the context).
    pub(crate) fn record_ref(&self) -> &Record {
        &self
            .state
            .as_ref()
            .expect("an exchange is only used before it is finished")
            .record
    }

    /// Adds a stage that wants to see the response and the finished record.
    pub(crate) fn hook(&mut self, hook: Box<dyn StageHook>) {
        self.state().hooks.push(hook);
    }

    /// Marks the response head as received; `stream` when it is an event stream. A translated
    /// answer's head is rewritten for the client here (its type and length change).
    pub(crate) fn responded(&mut self, status: u16, headers: &mut HeaderMap, stream: bool) {
        let s = self.state();
        // Usage is read in the format of the bytes that carry it: the upstream's.
        let format = s
            .translation
            .as_ref()
            .map(|p| p.upstream_format)
            .or(s.format);
        let encoding = Encoding::from_header(
            headers
                .get(http::header::CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok()),
        );
        s.responded = true;
        s.record.status = status;
        s.record.stream = stream;
        s.encoding = encoding;
        s.header_tokens = format.and_then(|f| f.adapter().header_usage(headers));
        s.decoder = Decoder::new(encoding, s.shared.settings.max_body_bytes);
        let readable = encoding == Encoding::Identity || s.decoder.is_some();
        if stream && readable {
            if let Some(format) = format {
                s.observer = Some(StreamObserver::new(format));
            }
        }
        if let Some(plan) = s.translation.as_ref().filter(|p| p.rewrites()) {
            let limit = s.shared.settings.max_body_bytes;
            let t = crate::translation::ResponseTranslator::new(plan, status, stream, limit);
            headers.remove(http::header::CONTENT_LENGTH);
            headers.remove(http::header::CONTENT_ENCODING);
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(t.content_type()),
            );
            s.record.stream = t.content_type() == "text/event-stream";
            if encoding != Encoding::Identity {
                // Tally asked for an uncoded answer; one that is coded anyway cannot be read.
                s.decoder = None;
            }
            s.translator = Some(t);
        }
        let head = ResponseHead {
            headers,
            injected: s.injected,
        };
        for h in &mut s.hooks {
            h.on_head(&head);
        }
    }

    /// Finishes a request Tally answered itself: status 0 (no upstream answer), the refusal's
    /// code in `refusal`, its message in `error`.
    pub(crate) fn refuse(mut self, refusal: &Refusal) {
        if let Some(mut s) = self.state.take() {
            s.record.status = 0;
            s.record.refusal = Some(refusal.code.to_owned());
            s.record.error = Some(refusal.message.clone());
            s.finish(StreamEnd::Complete);
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some(s) = self.state.take() {
            s.finish(StreamEnd::Cancelled);
        }
    }
}

impl BodyObserver for Exchange {
    fn on_data(&mut self, chunk: Bytes) -> Bytes {
        let s = self.state();
        if chunk.is_empty() {
            return chunk;
        }
        if s.record.ttft_ms.is_none() {
            s.record.ttft_ms = Some(s.started.elapsed().as_millis() as u64);
        }
        s.record.response_bytes += chunk.len() as u64;
        if let Some(t) = s.translator.as_mut() {
            // The upstream's bytes tell the usage; the client's are what is kept and shown.
            if let Some(o) = s.observer.as_mut() {
                o.feed(&chunk);
            }
            if let Some(c) = s.upstream_capture.as_mut() {
                c.push(&chunk);
            }
            let out = t.chunk(&chunk);
            s.client_bytes(&out);
            return out;
        }
        match s.decoder.as_mut() {
            None => {
                s.capture.push(&chunk);
                if let Some(o) = s.observer.as_mut() {
                    o.feed(&chunk);
                }
            }
            Some(d) => {
                let (capture, observer) = (&mut s.capture, &mut s.observer);
                d.feed(&chunk, |decoded| {
                    capture.push_slice(decoded);
                    if let Some(o) = observer.as_mut() {
                        o.feed(decoded);
                    }
                });
            }
        }
        for h in &mut s.hooks {
            h.on_data(&chunk);
        }
        chunk
    }

    fn on_last(&mut self) -> Option<Bytes> {
        let s = self.state.as_mut()?;
        let (out, observed) = s.translator.as_mut()?.finish();
        s.translated_observed = observed;
        s.client_bytes(&out);
        Some(out)
    }

    fn rewrites(&self) -> bool {
        self.state.as_ref().is_some_and(|s| s.translator.is_some())
    }

    fn on_end(mut self, end: StreamEnd) {
        if let Some(s) = self.state.take() {
            s.finish(end);
        }
    }
}

impl ExchangeState {
    /// Bytes of a translated answer on their way to the client: kept, and shown to the stages
    /// (a cached answer replays what the client got).
    fn client_bytes(&mut self, out: &Bytes) {
        if out.is_empty() {
            return;
        }
        self.capture.push(out);
        for h in &mut self.hooks {
            h.on_data(out);
        }
    }

    fn finish(mut self: Box<Self>, end: StreamEnd) {
        let shared = self.shared.clone();
        shared.metrics.in_flight.dec();
        // A client may close as soon as the format's end event has reached it (the OpenAI SDK
        // and httpx-based clients do, right after `[DONE]`): the answer was complete.
        let end = match end {
            StreamEnd::Cancelled if self.observer.as_ref().is_some_and(StreamObserver::ended) => {
                StreamEnd::Complete
            }
            other => other,
        };
        let complete = end == StreamEnd::Complete;
        let r = &mut self.record;
        r.latency_ms = self.started.elapsed().as_millis() as u64;
        if let Some(rest) = &self.request_rest_bytes {
            r.request_bytes += rest.load(Ordering::Relaxed);
        }
        let provider_label = if shared.providers.get(&r.provider).is_some() {
            r.provider.clone()
        } else {
            "unknown".to_owned()
        };
        let end_error = match &end {
            StreamEnd::Complete => None,
            StreamEnd::Error(e) => {
                shared.metrics.upstream_error(&r.provider, "stream");
                Some(format!("upstream stream failed: {e}"))
            }
            StreamEnd::IdleTimeout => {
                shared.metrics.upstream_error(&r.provider, "idle");
                Some(format!(
                    "upstream sent nothing for {} ms; stream aborted",
                    shared.settings.idle_timeout.as_millis()
                ))
            }
            StreamEnd::Cancelled => {
                shared.metrics.client_disconnects.inc();
                Some(if self.responded {
                    "client disconnected before the response ended".to_owned()
                } else {
                    "client disconnected before the upstream answered".to_owned()
                })
            }
        };
        if r.error.is_none() {
            r.error = end_error;
        }

        let captured = std::mem::replace(&mut self.capture, Capture::new(0));
        let response_truncated = captured.truncated;
        let tail = if response_truncated {
            captured.tail()
        } else {
            Vec::new()
        };
        // Decoded already when it was compressed; raw bytes when Tally cannot decode them.
        let body = captured.into_bytes();
        if let Some(why) = self.decoder.take().and_then(|d| d.stopped) {
            tracing::warn!(provider = %r.provider, reason = why, "stopped decoding a compressed response; usage past that point is not read");
        }
        let format = self.format;
        let (encoding, responded, stream) = (self.encoding, self.responded, r.stream);
        let observer = self.observer.take();
        let translated = self.translated_observed.take();
        let read_as = self
            .translation
            .as_ref()
            .map_or(format, |p| Some(p.upstream_format));
        let parsed = guarded(&shared.metrics, "reading usage", || {
            if let Some(t) = translated {
                // A whole translated answer was read in its own format when it was rewritten.
                return t;
            }
            match (read_as, observer) {
                (_, Some(o)) => o.finish(),
                (Some(f), None) if responded && encoding != Encoding::Other => {
                    // A stream that came back as JSON (Gemini without `alt=sse` sends one
                    // array) is read as the JSON it is.
                    if stream && !looks_like_json(&body) {
                        let mut o = StreamObserver::new(f);
                        o.feed(&body);
                        o.finish()
                    } else if response_truncated {
                        formats::from_truncated_json(f, &body, &tail)
                    } else {
                        formats::from_json(f, &body)
                    }
                }
                _ => formats::Observed::default(),
            }
        });
        let mut observed = parsed.unwrap_or_else(|| formats::Observed {
            error: Some(INTERNAL_ERROR.to_owned()),
            ..Default::default()
        });
        if let (None, Some(t)) = (observed.tokens, self.header_tokens) {
            observed.tokens = Some(t);
            observed.usage_final = true;
        }
        r.response_model = observed.response_model;
        r.service_tier = observed.service_tier.take();
        let units = formats::Units::merge(self.units.take(), observed.units.take())
            .filter(|_| (200..300).contains(&r.status));
        for (name, value) in units.iter().flat_map(formats::Units::properties) {
            r.properties.insert(name.to_owned(), value);
        }
        if let Some(f) = &observed.content_filter {
            let findings = f.findings.iter().cloned().collect::<Vec<_>>().join(",");
            let props = &mut r.properties;
            props.insert("content_filter".to_owned(), f.verdict().to_owned());
            if !findings.is_empty() {
                props.insert("content_filter_findings".to_owned(), findings);
            }
        }
        if r.model.is_none() && format == Some(WireFormat::Azure) {
            // A deployment the config does not map: the response says which model served it.
            r.model = r.response_model.clone();
        }
        if r.provider_request_id.is_none() {
            r.provider_request_id = observed.body_id.clone();
        }
        if r.error.is_none() {
            if r.status >= 400 {
                r.error = Some(
                    observed
                        .error
                        .unwrap_or_else(|| format!("upstream answered HTTP {}", r.status)),
                );
            } else if let Some(e) = observed.error {
                // An error event inside a 200 stream.
                r.error = Some(e);
            }
        }
        // A report made while the answer was still being generated (Anthropic's
        // `message_start`) has exact input counts but a placeholder output: keep the input,
        // estimate the output from what was forwarded.
        if observed.web_search_calls > formats::MAX_PLAUSIBLE_SEARCHES {
            shared.metrics.implausible_usage.inc();
            tracing::warn!(provider = %r.provider, calls = observed.web_search_calls, "the provider reported implausible web search calls; not billed");
            r.error.get_or_insert_with(|| {
                format!(
                    "the provider reported implausible usage ({} web search calls); they are not billed",
                    observed.web_search_calls
                )
            });
        } else {
            r.web_search_calls = observed.web_search_calls as u32;
        }
        let implausible = observed.tokens.filter(|t| !formats::plausible(t));
        if let Some(t) = implausible {
            shared.metrics.implausible_usage.inc();
            tracing::warn!(provider = %r.provider, tokens = ?t, "the provider reported implausible usage; not recorded");
            r.error.get_or_insert_with(|| {
                format!(
                    "the provider reported implausible usage (prompt {}, completion {}, cache read {}, cache write {}, reasoning {}); tokens and cost are not recorded",
                    t.prompt, t.completion, t.cache_read, t.cache_write, t.reasoning
                )
            });
        }
        let usable = observed.tokens.filter(|_| implausible.is_none());
        let partial = usable.filter(|_| !observed.usage_final);
        r.tokens = usable.filter(|_| observed.usage_final);
        let free = background_billing(&shared, r, observed.background_done, observed.body_id);
        r.response_body_truncated = response_truncated;
        r.request_body_truncated = self.request_truncated;
        r.request_body = (!self.omit_request_body && !self.request_head.is_empty())
            .then(|| String::from_utf8_lossy(&self.request_head).into_owned());
        r.response_body = (!self.omit_response_body && !body.is_empty())
            .then(|| String::from_utf8_lossy(&body).into_owned());
        if let Some(sent) = self.upstream_request.take() {
            r.upstream_request_body =
                (!self.omit_request_body).then(|| String::from_utf8_lossy(&sent).into_owned());
        }
        if let Some(answer) = self.upstream_capture.take() {
            r.upstream_response_body = (!self.omit_response_body)
                .then(|| String::from_utf8_lossy(&answer.into_bytes()).into_owned());
        }
        // An upstream may echo the key it was sent; the record must not keep it.
        for field in [
            &mut r.error,
            &mut r.response_body,
            &mut r.request_body,
            &mut r.upstream_request_body,
            &mut r.upstream_response_body,
        ] {
            self.presented.mask(field);
        }

        shared
            .metrics
            .requests
            .get_or_create(&RequestLabels {
                provider: provider_label,
                status: status_class(r.status),
            })
            .inc();

        let hooks = std::mem::take(&mut self.hooks);
        let trace = self.trace.take();
        let needs_estimate = r.tokens.is_none()
            && !free
            && units.is_none()
            && implausible.is_none()
            && (200..300).contains(&r.status)
            && r.model.is_some()
            && format.is_some();
        if free {
            self.record.cost_usd = Some(0.0);
        }
        if !needs_estimate {
            price_and_send(&shared, self.record, hooks, complete, units.as_ref(), trace);
            return;
        }
        // Tokenizing can take milliseconds for long texts: keep it off the runtime's workers.
        // The record is journaled as it is now, before the response's last frame goes out, so
        // a crash during the estimate still leaves it (without the estimate).
        let reservation = shared.sender.reserve(&self.record);
        let request = self.request_head.clone();
        let response = body;
        let record = self.record;
        shared.pending_estimates.fetch_add(1, Ordering::AcqRel);
        let job = move || {
            let mut record = record;
            let model = record.model.clone().unwrap_or_default();
            let f = format.unwrap_or(WireFormat::OpenAi);
            let stream = record.stream;
            match guarded(&shared.metrics, "estimating tokens", || {
                crate::estimate::estimate(f, &model, &request, &response, stream)
            }) {
                Some(t) => {
                    record.tokens = Some(with_exact_input(t, partial));
                    record.tokens_estimated = true;
                    shared.metrics.tokens_estimated.inc();
                }
                None => {
                    record
                        .error
                        .get_or_insert_with(|| INTERNAL_ERROR.to_owned());
                }
            }
            let record = price(&shared, record, hooks, complete, None, trace);
            shared.sender.send_reserved(record, reservation);
            shared.pending_estimates.fetch_sub(1, Ordering::AcqRel);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(job);
            }
            Err(_) => job(),
        }
    }
}

/// The Responses API's background mode bills a response once, but shows its usage on every
/// retrieval (`GET /v1/responses/{id}`). So the request that creates a background response
/// costs nothing yet (its usage is not known); the first retrieval that sees it finished
/// carries its usage and cost; every other retrieval costs nothing and keeps no tokens, so
/// that sums over records count each response once. Returns whether the record is free.
fn background_billing(
    shared: &Shared,
    r: &mut Record,
    done: Option<bool>,
    id: Option<String>,
) -> bool {
    let retrieval = r.method == "GET" && r.endpoint.contains("/responses/");
    let id = id.unwrap_or_default();
    let billed = match (retrieval, done) {
        (false, Some(false)) => {
            shared.background.insert(id, ());
            r.properties
                .insert("billed_on".to_owned(), "retrieval".to_owned());
            false
        }
        (true, Some(true)) if shared.background.remove(&id).is_some() => true,
        (true, _) => false,
        _ => return false,
    };
    if !billed {
        r.tokens = None;
    }
    !billed
}

/// An estimate, with the input counts the provider did report (exact) in place of the
/// estimated ones.
fn with_exact_input(estimate: Tokens, partial: Option<Tokens>) -> Tokens {
    match partial {
        Some(p) if p.prompt > 0 => Tokens {
            prompt: p.prompt,
            cache_read: p.cache_read,
            cache_write: p.cache_write,
            ..estimate
        },
        _ => estimate,
    }
}

/// What a record says when Tally's own code failed on it.
const INTERNAL_ERROR: &str = "internal error while finishing this record; see Tally's log";

/// Runs `f`, turning a panic into `None`, a log line and a metric. Finishing a record parses
/// bytes from the network; whatever a bug there does, the record must still be sent, and
/// the connection task must not die with it.
fn guarded<T>(metrics: &crate::ProxyMetrics, what: &str, f: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            metrics.internal_errors.inc();
            tracing::error!(what, panic = %msg, "internal error while finishing a record");
            None
        }
    }
}

/// Prices the record, shows it to the stages that asked, and sends it.
fn price_and_send(
    shared: &Shared,
    record: Record,
    hooks: Vec<Box<dyn StageHook>>,
    complete: bool,
    units: Option<&formats::Units>,
    trace: Option<Box<tally_otel::Started>>,
) {
    let record = price(shared, record, hooks, complete, units, trace);
    shared.sender.send(record);
}

/// Prices the record, shows it to the stages that asked and ends its span. The cost is the
/// tokens' plus, for an endpoint billed by the unit, the units'.
fn price(
    shared: &Shared,
    mut record: Record,
    hooks: Vec<Box<dyn StageHook>>,
    complete: bool,
    units: Option<&formats::Units>,
    trace: Option<Box<tally_otel::Started>>,
) -> Record {
    if record.tokens.is_some() || units.is_some() {
        let cost = guarded(&shared.metrics, "pricing", || {
            shared.pricing.price_record(&record, units)
        });
        if cost.is_none() {
            record
                .error
                .get_or_insert_with(|| INTERNAL_ERROR.to_owned());
        }
        record.cost_usd = cost.flatten();
        if record.cost_usd.is_none() {
            shared.metrics.unpriced.inc();
        }
    }
    // An answer replayed from the cache cost nothing; what it would have cost is the saving.
    if record.cache_status == CacheStatus::Hit {
        record.cost_saved_usd = record.cost_usd;
        record.cost_usd = Some(0.0);
        if let Some(saved) = record.cost_saved_usd {
            shared.metrics.cache_saved_usd.inc_by(saved);
        }
    }
    for h in hooks {
        let metrics = &shared.metrics;
        let _ = guarded(metrics, "a stage's finish", || {
            h.on_finish(&record, complete, metrics)
        });
    }
    let provider = shared.providers.get(&record.provider);
    if provider.is_some() {
        let priced_as = [&record.response_model, &record.model]
            .into_iter()
            .flatten()
            .find_map(|m| shared.pricing.lookup_entry(&record.provider, m))
            .map(|(entry, _)| entry);
        shared
            .metrics
            .usage
            .observe(&record, priced_as, status_class(record.status));
    }
    if let (Some(t), Some(tracer)) = (trace, &shared.stages.tracing) {
        let upstream = provider.map(|p| p.span_upstream());
        tracer.end(*t, &mut record, upstream);
    }
    record
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

/// Whether a captured body opens like a JSON document rather than an event stream.
fn looks_like_json(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| matches!(b, b'[' | b'{'))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_panic_while_finishing_is_caught_and_counted() {
        let m = crate::ProxyMetrics::default();
        assert_eq!(guarded(&m, "fine", || 7), Some(7));
        let caught: Option<u8> = guarded(&m, "broken", || panic!("a bug"));
        assert_eq!(caught, None);
        assert_eq!(m.internal_errors.get(), 1);
    }

    use super::*;
}
