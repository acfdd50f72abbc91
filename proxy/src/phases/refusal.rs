//! The one way a request ends without its upstream's answer.
//!
//! Every phase that can stop a request returns a [`Refusal`]. The respond phase renders it in
//! the error shape of the client's wire format (so its SDK raises its usual exception with
//! Tally's message) and records it at that one exit.
//!
//! **What a refused request's record holds.** `status` is the upstream's status, so a refusal
//! records `0`: the upstream never answered (most never heard of the request). The code of
//! Tally's own answer is in `refusal` (`tally_budget_exceeded`, `tally_upstream_unreachable`,
//! …), its message in `error`, and the HTTP status the client got follows from the code. By
//! the one error rule (`tally_ingest::IS_ERROR_SQL`) every refusal is an error.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::body::ResponseBody;
use crate::formats::WireFormat;

/// An answer Tally gives itself instead of forwarding; see the module docs.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// The status the client gets.
    pub(crate) status: StatusCode,
    /// Tally's error code: the error `type`/`code` in the body and the record's `refusal`.
    pub(crate) code: &'static str,
    /// What went wrong and what to do about it, for the client and the record.
    pub(crate) message: String,
    /// Extra fields of the error object (which header, which budget, …).
    pub(crate) details: Option<Value>,
    /// Headers of the answer (`Retry-After`, …); boxed, as few refusals have any and every
    /// phase's `Result` carries the type.
    pub(crate) headers: Option<Box<HeaderMap>>,
}

impl Refusal {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
            headers: None,
        }
    }

    pub(crate) fn details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub(crate) fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.get_or_insert_default().insert(name, value);
        self
    }

    /// The answer in `format`'s error shape (OpenAI's when the route is not known yet).
    pub(crate) fn render(self, format: Option<WireFormat>) -> Response<ResponseBody> {
        let adapter = format.unwrap_or(WireFormat::OpenAi).adapter();
        let body = adapter.error_body(self.code, &self.message, self.details);
        let mut resp = Response::new(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *resp.status_mut() = self.status;
        if let Some(headers) = self.headers {
            *resp.headers_mut() = *headers;
        }
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    }
}
