//! Tally's own error answers, in the shape the client's SDK expects from its provider, so an
//! SDK raises its usual exception with Tally's message rather than a parse error.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;

use crate::body::ResponseBody;
use crate::usage::WireFormat;

/// Builds an error response. `format` is the provider's wire format (OpenAI's shape when the
/// provider is unknown); `extra` fields are merged into the error object.
pub(crate) fn error_response(
    format: Option<WireFormat>,
    status: StatusCode,
    kind: &str,
    message: &str,
    extra: Option<serde_json::Value>,
) -> Response<ResponseBody> {
    let mut error = match format {
        Some(WireFormat::Anthropic) => json!({ "type": kind, "message": message }),
        _ => json!({ "message": message, "type": kind, "param": null, "code": kind }),
    };
    if let (Some(serde_json::Value::Object(extra)), Some(obj)) = (extra, error.as_object_mut()) {
        obj.extend(extra);
    }
    let body = match format {
        Some(WireFormat::Anthropic) => json!({ "type": "error", "error": error }),
        _ => json!({ "error": error }),
    };
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
