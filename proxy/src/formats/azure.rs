//! Azure OpenAI: OpenAI's request and response shapes (usage, streams, errors are read by the
//! OpenAI adapter), with three differences. Requests address a deployment, not a model
//! (`/openai/deployments/{deployment}/chat/completions?api-version=…`, or the body's `model`
//! on the newer `/openai/v1/…` surface), so the request names no model by itself: the
//! provider's `deployments` map does, else the response's `model` is recorded. The key travels
//! in `api-key` (or an Entra bearer token in `Authorization`). And Tally does not ask for stream
//! usage by default, because older `api-version`s refuse `stream_options`.
//!
//! Azure also runs a content filter and says what it found: `prompt_filter_results` and each
//! choice's `content_filter_results` (per chunk, in a stream), or, when it refused the prompt,
//! a 400 with `error.innererror.content_filter_result`. Each category is
//! `{"filtered": bool, "severity": "safe"|"low"|"medium"|"high"}` or
//! `{"filtered": bool, "detected": bool}`. The verdict and the findings that were not safe
//! become record properties (`content_filter`, `content_filter_findings`).

use serde_json::Value;

use super::openai::OpenAi;
use super::{ContentFilter, Format, Needle, Observed, RequestFacts};
use crate::sse::Event;

pub(super) struct Azure;

impl Format for Azure {
    fn key_headers(&self) -> &'static [&'static str] {
        &["api-key", "authorization"]
    }

    fn request(&self, path: &str, body: &[u8]) -> RequestFacts {
        let facts = OpenAi.request(path, body);
        let deployment = deployment(path)
            .map(str::to_owned)
            .or_else(|| facts.model.clone());
        RequestFacts {
            model: None,
            deployment,
            ..facts
        }
    }

    fn read_json(&self, body: &[u8]) -> Observed {
        let mut observed = OpenAi.read_json(body);
        if FILTER.find(body).is_some() {
            if let Ok(v) = serde_json::from_slice::<Value>(body) {
                read_filter(
                    &v,
                    observed.content_filter.get_or_insert_with(Default::default),
                );
            }
        }
        observed
    }

    fn on_event(&self, observed: &mut Observed, event: Event<'_>) {
        OpenAi.on_event(observed, event);
        // Every chunk of a filtered deployment's stream carries results; read the first, and
        // then only those that are not all safe.
        if FILTER.find(event.data).is_none() {
            return;
        }
        let notable = [&FILTERED, &LOW, &MEDIUM, &HIGH, &DETECTED]
            .iter()
            .any(|n| n.find(event.data).is_some());
        if observed.content_filter.is_some() && !notable {
            return;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(event.data) {
            read_filter(
                &v,
                observed.content_filter.get_or_insert_with(Default::default),
            );
        }
    }

    fn can_inject(&self, path: &str) -> bool {
        OpenAi.can_inject(path)
    }

    fn inject(&self, body: &[u8]) -> Option<bytes::Bytes> {
        OpenAi.inject(body)
    }

    fn strip_event(&self, event: &[u8], out: &mut bytes::BytesMut) {
        OpenAi.strip_event(event, out)
    }

    fn error_body(&self, code: &str, message: &str, details: Option<Value>) -> Value {
        OpenAi.error_body(code, message, details)
    }

    fn response_text(&self, body: &Value, out: &mut String) {
        OpenAi.response_text(body, out)
    }

    fn delta_text(&self, event: &str, data: &Value, out: &mut String) {
        OpenAi.delta_text(event, data, out)
    }

    fn held_key_header(&self) -> (&'static str, bool) {
        ("api-key", false)
    }
}

static FILTER: Needle = Needle::new(|| memchr::memmem::Finder::new(b"content_filter_result"));
static FILTERED: Needle = Needle::new(|| memchr::memmem::Finder::new(b"\"filtered\":true"));
static DETECTED: Needle = Needle::new(|| memchr::memmem::Finder::new(b"\"detected\":true"));
static LOW: Needle = Needle::new(|| memchr::memmem::Finder::new(b"\"low\""));
static MEDIUM: Needle = Needle::new(|| memchr::memmem::Finder::new(b"\"medium\""));
static HIGH: Needle = Needle::new(|| memchr::memmem::Finder::new(b"\"high\""));

/// Adds what one response object (or stream chunk, or error) says about the filter.
fn read_filter(v: &Value, into: &mut ContentFilter) {
    let mut sets: Vec<(&str, &Value)> = Vec::new();
    for p in v
        .get("prompt_filter_results")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        sets.extend(p.get("content_filter_results").map(|r| ("prompt", r)));
    }
    for c in v
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        sets.extend(c.get("content_filter_results").map(|r| ("completion", r)));
        if c.get("finish_reason").and_then(Value::as_str) == Some("content_filter") {
            into.filtered = true;
        }
    }
    if let Some(r) = v.pointer("/error/innererror/content_filter_result") {
        sets.push(("prompt", r));
    }
    if v.pointer("/error/code").and_then(Value::as_str) == Some("content_filter") {
        into.filtered = true;
    }
    for (part, results) in sets {
        let Some(categories) = results.as_object() else {
            continue;
        };
        for (category, r) in categories {
            let filtered = r.get("filtered").and_then(Value::as_bool) == Some(true);
            let finding = match (r.get("severity").and_then(Value::as_str), r.get("detected")) {
                (Some(s), _) if s != "safe" => Some(s.to_owned()),
                (_, Some(Value::Bool(true))) => Some("detected".to_owned()),
                _ => None,
            };
            into.filtered |= filtered;
            if let Some(f) = finding {
                let acted = if filtered { "(filtered)" } else { "" };
                into.findings
                    .insert(format!("{part}.{category}={f}{acted}"));
            }
        }
    }
}

/// `prod-4o` from `/openai/deployments/prod-4o/chat/completions`.
fn deployment(path: &str) -> Option<&str> {
    let rest = path.split_once("/deployments/")?.1;
    let name = rest.split('/').next()?;
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployment_comes_from_the_path_or_the_v1_body() {
        let f = Azure.request(
            "/openai/deployments/prod-4o/chat/completions",
            br#"{"messages":[],"stream":true}"#,
        );
        assert_eq!(
            (f.model, f.deployment.as_deref(), f.stream),
            (None, Some("prod-4o"), true)
        );
        let f = Azure.request(
            "/openai/v1/chat/completions",
            br#"{"model":"my-dep","messages":[]}"#,
        );
        assert_eq!((f.model, f.deployment.as_deref()), (None, Some("my-dep")));
        assert_eq!(deployment("/openai/deployments//x"), None);
    }

    /// The shapes of learn.microsoft.com/azure/ai-foundry/openai/concepts/content-filter.
    #[test]
    fn content_filter_results_become_a_verdict() {
        let safe = br#"{"id":"chatcmpl-1","model":"gpt-4o-2024-08-06","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"Hi"},
            "content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},
            "protected_material_text":{"filtered":false,"detected":false}}}],
            "prompt_filter_results":[{"prompt_index":0,"content_filter_results":{"jailbreak":{"filtered":false,"detected":false},"violence":{"filtered":false,"severity":"safe"}}}],
            "usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;
        let o = Azure.read_json(safe);
        assert_eq!(
            o.content_filter.as_ref().map(ContentFilter::verdict),
            Some("safe")
        );
        assert_eq!(o.tokens.map(|t| t.prompt), Some(5));

        let refused = br#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","type":null,"param":"prompt","code":"content_filter","status":400,
            "innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"hate":{"filtered":false,"severity":"safe"},
            "jailbreak":{"filtered":false,"detected":true},"violence":{"filtered":true,"severity":"medium"}}}}}"#;
        let f = Azure.read_json(refused).content_filter.expect("filter");
        assert_eq!(f.verdict(), "filtered");
        let findings: Vec<&str> = f.findings.iter().map(String::as_str).collect();
        assert_eq!(
            findings,
            [
                "prompt.jailbreak=detected",
                "prompt.violence=medium(filtered)"
            ]
        );

        let mut o = Observed::default();
        let first = br#"{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}}}]}"#;
        let later = br#"{"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null,"content_filter_results":{"sexual":{"filtered":false,"severity":"low"}}}],"id":"c","model":"gpt-4o"}"#;
        Azure.on_event(
            &mut o,
            Event {
                event: "",
                data: first,
            },
        );
        assert_eq!(
            o.content_filter.as_ref().map(ContentFilter::verdict),
            Some("safe")
        );
        Azure.on_event(
            &mut o,
            Event {
                event: "",
                data: later,
            },
        );
        assert_eq!(
            o.content_filter.as_ref().map(ContentFilter::verdict),
            Some("flagged")
        );
    }
}
