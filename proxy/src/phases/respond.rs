//! The respond phase: the one exit every request leaves by.
//!
//! An upstream answer goes to the client through the tee, which shows every frame to the
//! exchange and finishes the record when the body ends; a cached answer is replayed through the
//! same tee; a refusal is rendered in the client's error shape and recorded here. Whatever the
//! answer, it carries the headers the stages added.

use http::header::{self, HeaderMap};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::send::strip_hop_by_hop;
use super::{Answer, Ctx, Refusal};
use crate::body::{ResponseBody, StripUsage, TeeBody};
use crate::exchange::{Encoding, Exchange};
use crate::metrics::RefusalLabels;
use crate::stages;

pub(crate) fn respond(ctx: Ctx, answer: Result<Answer, Refusal>) -> Response<ResponseBody> {
    let Ctx {
        shared,
        mut exchange,
        response_headers,
        ..
    } = ctx;
    let mut resp = match answer {
        Ok(Answer::Upstream(resp)) => upstream(&shared, exchange, resp),
        Ok(Answer::Cached(entry)) => {
            let (status, headers, body) = stages::cache::replay(&mut exchange, &entry);
            tee(&shared, exchange, status, headers, body)
        }
        Err(refusal) => {
            shared
                .metrics
                .refusals
                .get_or_create(&RefusalLabels { code: refusal.code })
                .inc();
            let format = exchange.state().format;
            exchange.refuse(&refusal);
            refusal.render(format)
        }
    };
    for (name, value) in response_headers {
        if let Some(name) = name {
            resp.headers_mut().insert(name, value);
        }
    }
    resp
}

pub(crate) fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim_start)
        .is_some_and(|v| {
            v.starts_with("text/event-stream")
                || v.starts_with("application/vnd.amazon.eventstream")
        })
}

fn upstream(
    shared: &crate::Shared,
    mut exchange: Exchange,
    resp: Response<Incoming>,
) -> Response<ResponseBody> {
    let (mut parts, incoming) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    exchange.state().record.provider_request_id = ["x-request-id", "request-id"]
        .iter()
        .find_map(|h| parts.headers.get(*h))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    tee(shared, exchange, parts.status, parts.headers, incoming)
}

/// Wraps `body` in the tee (and, when Tally asked for usage the client did not, in the strip
/// that hides it again).
fn tee<B>(
    shared: &crate::Shared,
    mut exchange: Exchange,
    status: StatusCode,
    mut headers: HeaderMap,
    body: B,
) -> Response<ResponseBody>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<crate::body::BoxError>,
{
    let is_sse = is_event_stream(&headers);
    exchange.responded(status.as_u16(), &mut headers, is_sse);
    let s = exchange.state();
    let strip = s.injected && is_sse && s.encoding == Encoding::Identity;
    let format = s.format.unwrap_or(crate::formats::WireFormat::OpenAi);
    let tee = TeeBody::new(body, exchange, shared.settings.idle_timeout);
    let body = if strip {
        headers.remove(header::CONTENT_LENGTH);
        StripUsage::new(tee, format).boxed_unsync()
    } else {
        tee.boxed_unsync()
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}
