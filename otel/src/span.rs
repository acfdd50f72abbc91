//! A finished request as a span: the GenAI semantic conventions' attributes
//! (<https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/>) and Tally's own
//! (`tally.*`) for what they do not name.

use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

use opentelemetry::trace::{Event, SpanId, SpanKind, Status};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use tally_ingest::Record;

use crate::Finished;

/// The span of one finished request. Its start is when the request arrived, its end that plus
/// the record's latency (the clock is read once, at the start; the end is not a second reading
/// of a wall clock that may have stepped).
pub(crate) fn span(f: Finished, scope: &InstrumentationScope) -> SpanData {
    let Finished {
        started,
        record: r,
        upstream,
    } = f;
    let operation = operation(&r.endpoint);
    let name = match &r.model {
        Some(m) => format!("{operation} {m}"),
        None => operation.to_owned(),
    };
    let start = started.start;
    let end = start + Duration::from_millis(r.latency_ms);
    let error = error_type(&r);

    let mut a = Vec::with_capacity(24 + r.properties.len());
    a.push(KeyValue::new("gen_ai.operation.name", operation.to_owned()));
    let provider = match upstream.as_ref().and_then(|u| u.provider) {
        Some(known) => opentelemetry::Value::from(known),
        None => opentelemetry::Value::from(r.provider.clone()),
    };
    a.push(KeyValue::new("gen_ai.provider.name", provider));
    if let Some(m) = &r.model {
        a.push(KeyValue::new("gen_ai.request.model", m.clone()));
    }
    if let Some(m) = &r.response_model {
        a.push(KeyValue::new("gen_ai.response.model", m.clone()));
    }
    if let Some(t) = &r.tokens {
        a.push(KeyValue::new("gen_ai.usage.input_tokens", t.prompt as i64));
        a.push(KeyValue::new(
            "gen_ai.usage.output_tokens",
            t.completion as i64,
        ));
        if t.cache_read > 0 {
            a.push(KeyValue::new(
                "gen_ai.usage.cache_read.input_tokens",
                t.cache_read as i64,
            ));
        }
        if t.cache_write > 0 {
            a.push(KeyValue::new(
                "gen_ai.usage.cache_creation.input_tokens",
                t.cache_write as i64,
            ));
        }
    }
    if let Some(id) = &r.provider_request_id {
        a.push(KeyValue::new("gen_ai.response.id", id.clone()));
    }
    if let Some(u) = &upstream {
        a.push(KeyValue::new("server.address", u.host.clone()));
        if let Some(p) = u.port {
            a.push(KeyValue::new("server.port", i64::from(p)));
        }
    }
    if r.status != 0 {
        a.push(KeyValue::new(
            "http.response.status_code",
            i64::from(r.status),
        ));
    }
    if let Some(e) = &error {
        a.push(KeyValue::new("error.type", e.clone()));
    }

    a.push(KeyValue::new("tally.request_id", r.request_id.to_string()));
    a.push(KeyValue::new("tally.provider", r.provider.clone()));
    if let Some(c) = r.cost_usd {
        a.push(KeyValue::new("tally.cost_usd", c));
    }
    if r.tokens_estimated {
        a.push(KeyValue::new("tally.tokens_estimated", true));
    }
    a.push(KeyValue::new("tally.cache_status", r.cache_status.as_str()));
    a.push(KeyValue::new("tally.stream", r.stream));
    if let Some(t) = r.ttft_ms {
        a.push(KeyValue::new("tally.ttft_ms", t as i64));
    }
    let optional = [
        ("tally.user_id", &r.user_id),
        ("tally.session_id", &r.session_id),
        ("tally.session_path", &r.session_path),
        ("tally.session_name", &r.session_name),
        ("tally.key_id", &r.key_id),
        ("tally.key_name", &r.key_name),
        ("tally.router", &r.router),
        ("tally.refusal", &r.refusal),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            a.push(KeyValue::new(k, v.clone()));
        }
    }
    if r.attempts > 1 {
        a.push(KeyValue::new("tally.attempts", i64::from(r.attempts)));
    }
    for (k, v) in &r.properties {
        a.push(KeyValue::new(format!("tally.property.{k}"), v.clone()));
    }

    let mut events = started.events;
    if let Some(t) = r.ttft_ms {
        events.push(Event::new(
            "tally.first_token",
            start + Duration::from_millis(t),
            Vec::new(),
            0,
        ));
    }
    // The bodies are on the record only when `bodies` is on (`Tracer::end`).
    if let Some(b) = &r.request_body {
        events.push(Event::new(
            "gen_ai.content.prompt",
            start,
            vec![KeyValue::new("gen_ai.prompt", b.clone())],
            0,
        ));
    }
    if let Some(b) = &r.response_body {
        events.push(Event::new(
            "gen_ai.content.completion",
            end,
            vec![KeyValue::new("gen_ai.completion", b.clone())],
            0,
        ));
    }
    events.sort_by_key(|e| e.timestamp.duration_since(UNIX_EPOCH).unwrap_or_default());
    let mut span_events = SpanEvents::default();
    span_events.events = events;

    let status = match (&error, &r.error) {
        (Some(_), Some(message)) => Status::error(message.clone()),
        (Some(e), None) => Status::error(e.clone()),
        (None, _) => Status::Unset,
    };
    let (parent_span_id, parent_span_is_remote) = match &started.parent {
        Some(p) => (p.span_id(), true),
        None => (SpanId::INVALID, false),
    };
    SpanData {
        span_context: started.context,
        parent_span_id,
        parent_span_is_remote,
        span_kind: SpanKind::Client,
        name: Cow::Owned(name),
        start_time: start,
        end_time: end,
        attributes: a,
        dropped_attributes_count: 0,
        events: span_events,
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}

/// `gen_ai.operation.name` from the path: the conventions' names where one fits, the path's
/// last segment otherwise (`models`, `files`, …), so a span is never misnamed as a chat.
pub(crate) fn operation(endpoint: &str) -> &str {
    let p = endpoint.trim_end_matches('/');
    if p.ends_with("/chat/completions")
        || p.ends_with("/messages")
        || p.ends_with("/responses")
        || p.ends_with("/converse")
        || p.ends_with("/converse-stream")
    {
        "chat"
    } else if p.ends_with("/embeddings")
        || p.contains(":embedContent")
        || p.contains(":batchEmbedContents")
    {
        "embeddings"
    } else if p.ends_with("/completions") {
        "text_completion"
    } else if p.contains(":generateContent") || p.contains(":streamGenerateContent") {
        "generate_content"
    } else if p.ends_with("/invoke") || p.ends_with("/invoke-with-response-stream") {
        "invoke"
    } else {
        p.rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("request")
    }
}

/// `error.type`: Tally's refusal code, the HTTP status of an error answer, or `incomplete` for
/// an answer that broke off (its record's `error` says how). `None` for a success.
fn error_type(r: &Record) -> Option<String> {
    if let Some(code) = &r.refusal {
        return Some(code.clone());
    }
    if r.status >= 400 {
        return Some(r.status.to_string());
    }
    r.error.as_ref().map(|_| "incomplete".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_follow_the_conventions_names() {
        assert_eq!(operation("/v1/chat/completions"), "chat");
        assert_eq!(operation("/v1/messages"), "chat");
        assert_eq!(operation("/v1/embeddings"), "embeddings");
        assert_eq!(operation("/v1/completions"), "text_completion");
        assert_eq!(
            operation("/v1beta/models/gemini-2.5-flash:streamGenerateContent"),
            "generate_content"
        );
        assert_eq!(operation("/model/amazon.nova-lite-v1:0/converse"), "chat");
        assert_eq!(operation("/v1/models"), "models");
    }

    #[test]
    fn error_type_names_refusals_statuses_and_broken_answers() {
        let mut r = Record::new(uuid::Uuid::now_v7(), 0);
        r.status = 200;
        assert_eq!(error_type(&r), None);
        r.error = Some("client disconnected before the response ended".into());
        assert_eq!(error_type(&r).as_deref(), Some("incomplete"));
        r.status = 429;
        assert_eq!(error_type(&r).as_deref(), Some("429"));
        r.refusal = Some("tally_budget_exceeded".into());
        assert_eq!(error_type(&r).as_deref(), Some("tally_budget_exceeded"));
    }
}
