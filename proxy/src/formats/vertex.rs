//! Vertex AI's Gemini endpoints (`/v1/projects/{p}/locations/{l}/publishers/google/models/
//! {m}:generateContent`, `:streamGenerateContent`, …): the Gemini API's bodies and streams
//! under a project and a location, authenticated by an OAuth access token. Everything is read
//! by the Gemini adapter; this one adds the key header and the project and location, which
//! become record properties (`vertex_project`, `vertex_location`).

use serde_json::Value;

use super::gemini::Gemini;
use super::{Format, Observed, RequestFacts};
use crate::sse::Event;

pub(super) struct Vertex;

impl Format for Vertex {
    fn key_headers(&self) -> &'static [&'static str] {
        &["authorization"]
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
    }
}
