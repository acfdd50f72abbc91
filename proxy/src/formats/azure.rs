//! Azure OpenAI: OpenAI's request and response shapes (usage, streams, errors are read by the
//! OpenAI adapter), with three differences. Requests address a deployment, not a model
//! (`/openai/deployments/{deployment}/chat/completions?api-version=…`, or the body's `model`
//! on the newer `/openai/v1/…` surface), so the request names no model by itself: the
//! provider's `deployments` map does, else the response's `model` is recorded. The key travels
//! in `api-key` (or an Entra bearer token in `Authorization`). And Tally does not ask for stream
//! usage by default, because older `api-version`s refuse `stream_options`.

use serde_json::Value;

use super::openai::OpenAi;
use super::{Format, Observed, RequestFacts};
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
        OpenAi.read_json(body)
    }

    fn on_event(&self, observed: &mut Observed, event: Event<'_>) {
        OpenAi.on_event(observed, event)
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
}
