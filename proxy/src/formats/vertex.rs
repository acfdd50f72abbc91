//! Vertex AI's Gemini endpoints (`/v1/projects/{p}/locations/{l}/publishers/google/models/
//! {m}:generateContent`, `:streamGenerateContent`, …): the Gemini API's bodies and streams
//! under a project and a location, authenticated by an OAuth access token. Everything is read
//! by the Gemini adapter; this one adds the key header and the project and location, which
//! become record properties (`vertex_project`, `vertex_location`).
//!
//! Claude on Vertex (`…/publishers/anthropic/models/{m}:rawPredict` and `:streamRawPredict`)
//! speaks Anthropic's Messages bodies and streams instead, with the model in the path: a
//! request on such a path is read by [`VertexAnthropic`], chosen in the route phase through
//! [`Format::for_path`].

use serde_json::Value;

use super::anthropic::Anthropic;
use super::gemini::{self, Gemini};
use super::{Format, Observed, RequestFacts, WireFormat};
use crate::sse::Event;

pub(super) struct Vertex;

fn path_properties(path: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut segments = path.split('/');
    while let Some(s) = segments.next() {
        let name = match s {
            "projects" => "vertex_project",
            "locations" => "vertex_location",
            _ => continue,
        };
        if let Some(v) = segments.next().filter(|v| !v.is_empty()) {
            out.push((name, v.to_owned()));
        }
    }
    out
}

impl Format for Vertex {
    fn key_headers(&self) -> &'static [&'static str] {
        &["authorization"]
    }

    fn for_path(&self, path: &str) -> Option<WireFormat> {
        path.contains("/publishers/anthropic/")
            .then_some(WireFormat::VertexAnthropic)
    }

    fn request(&self, path: &str, body: &[u8]) -> RequestFacts {
        Gemini.request(path, body)
    }

    fn read_json(&self, body: &[u8]) -> Observed {
        Gemini.read_json(body)
    }

    fn on_event(&self, observed: &mut Observed, event: Event<'_>) {
        Gemini.on_event(observed, event)
    }

    fn error_body(&self, code: &str, message: &str, details: Option<Value>) -> Value {
        Gemini.error_body(code, message, details)
    }

    fn response_text(&self, body: &Value, out: &mut String) {
        Gemini.response_text(body, out)
    }

    fn delta_text(&self, event: &str, data: &Value, out: &mut String) {
        Gemini.delta_text(event, data, out)
    }

    fn tail_keys(&self) -> (&'static [&'static str], &'static str) {
        Gemini.tail_keys()
    }

    fn path_properties(&self, path: &str) -> Vec<(&'static str, String)> {
        path_properties(path)
    }
}

/// Claude on Vertex: Anthropic's Messages API with the model and the stream flag in the path.
pub(super) struct VertexAnthropic;

impl Format for VertexAnthropic {
    fn key_headers(&self) -> &'static [&'static str] {
        &["authorization"]
    }

    fn request(&self, path: &str, body: &[u8]) -> RequestFacts {
        let (model, method) = gemini::model_and_method(path);
        RequestFacts {
            model: model.map(str::to_owned),
            stream: method == Some("streamRawPredict"),
            ..Anthropic.request(path, body)
        }
    }

    fn read_json(&self, body: &[u8]) -> Observed {
        Anthropic.read_json(body)
    }

    fn on_event(&self, observed: &mut Observed, event: Event<'_>) {
        Anthropic.on_event(observed, event)
    }

    fn error_body(&self, code: &str, message: &str, details: Option<Value>) -> Value {
        Anthropic.error_body(code, message, details)
    }

    fn response_text(&self, body: &Value, out: &mut String) {
        Anthropic.response_text(body, out)
    }

    fn delta_text(&self, event: &str, data: &Value, out: &mut String) {
        Anthropic.delta_text(event, data, out)
    }

    fn path_properties(&self, path: &str) -> Vec<(&'static str, String)> {
        path_properties(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_and_location_come_from_the_path() {
        let path = "/v1beta1/projects/acme-prod/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent";
        assert_eq!(
            Vertex.path_properties(path),
            vec![
                ("vertex_project", "acme-prod".to_owned()),
                ("vertex_location", "us-central1".to_owned())
            ]
        );
        let facts = Vertex.request(path, b"{}");
        assert_eq!(facts.model.as_deref(), Some("gemini-2.0-flash"));
        let claude = "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5:streamRawPredict";
        assert_eq!(Vertex.for_path(claude), Some(WireFormat::VertexAnthropic));
        assert_eq!(Vertex.for_path(path), None);
        let facts = VertexAnthropic.request(
            claude,
            br#"{"anthropic_version":"vertex-2023-10-16","stream":true}"#,
        );
        assert_eq!(
            (facts.model.as_deref(), facts.stream),
            (Some("claude-sonnet-4-5"), true)
        );
    }
}
