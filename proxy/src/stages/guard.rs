//! The privacy guard on the request path (`[privacy.request]`, opt-in): a body holding what a
//! blocking detector finds is refused with 400 naming the detector; what a masking detector
//! finds is replaced before the body is forwarded, so the provider never sees it. The
//! detectors and their cost are `tally_privacy::RequestGuard`'s; this is the phase.
//!
//! It reads the body head the body-head phase already holds, so it adds no buffering. A body
//! larger than that head cannot be read whole without holding the stream back; the policy
//! (`unchecked`) refuses it with 413 or forwards it unchecked. A body that is not UTF-8 is
//! still searched (as lossy text), and refused when something would need masking, since bytes
//! that are not text cannot be rewritten safely.

use bytes::Bytes;
use http::header::HeaderValue;
use http::StatusCode;
use serde_json::json;
use tally_privacy::{Unchecked, Verdict};

use crate::phases::request_body::BodyHead;
use crate::phases::{Ctx, Refusal};

/// Names, on the answer, the detectors whose findings were masked before forwarding.
pub const MASKED_HEADER: &str = "tally-privacy-masked";

/// The guard phase. Without `[privacy.request]` it costs one branch.
pub(crate) fn check(ctx: &mut Ctx, destination: &str, head: &mut BodyHead) -> Result<(), Refusal> {
    let Some(guard) = ctx
        .shared
        .stages
        .guard
        .clone()
        .filter(|g| g.applies_to(destination))
    else {
        return Ok(());
    };
    if !head.complete() {
        return match guard.unchecked() {
            Unchecked::Forward => Ok(()),
            Unchecked::Refuse => Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "tally_privacy_unchecked",
                format!(
                    "the request body is larger than {} bytes, the most the privacy guard reads; \
                     it was not forwarded (set privacy.request.unchecked = \"forward\" to let such bodies through unchecked)",
                    ctx.shared.settings.max_body_bytes
                ),
            )),
        };
    }
    let (text, utf8) = match std::str::from_utf8(&head.bytes) {
        Ok(t) => (std::borrow::Cow::Borrowed(t), true),
        Err(_) => (String::from_utf8_lossy(&head.bytes), false),
    };
    match guard.check(&text, utf8) {
        Verdict::Clean => Ok(()),
        Verdict::Blocked { detector, masked } => {
            // What was refused is not stored either: the record keeps the masked body.
            ctx.exchange.state().request_head = if utf8 {
                Bytes::from(masked)
            } else {
                Bytes::new()
            };
            Err(blocked(
                detector,
                format!("the request was refused by the privacy policy: it contains a value the {detector} detector finds"),
            ))
        }
        Verdict::Unmaskable { detector } => {
            ctx.exchange.state().request_head = Bytes::new();
            Err(blocked(
                detector,
                format!(
                    "the request contains a value the {detector} detector masks, in a body that is not UTF-8 text, so it cannot be masked; it was not forwarded"
                ),
            ))
        }
        Verdict::Masked { text, detectors } => {
            if head.facts.json && serde_json::from_str::<serde::de::IgnoredAny>(&text).is_err() {
                // The detectors step over JSON escapes and quotes, and the `privacy` fuzz target
                // checks that masked JSON stays JSON (it found a `\uXXXX` case once). Should
                // another slip through, the request is refused, not forwarded broken or unmasked.
                ctx.exchange.state().request_head = Bytes::new();
                return Err(blocked(
                    detectors[0],
                    "masking the request body left it invalid JSON; it was not forwarded".into(),
                ));
            }
            let masked = Bytes::from(text);
            let s = ctx.exchange.state();
            s.request_head = masked.clone();
            s.record.request_bytes = masked.len() as u64;
            head.bytes = masked;
            if let Ok(v) = HeaderValue::from_str(&detectors.join(", ")) {
                ctx.response_headers.insert(MASKED_HEADER, v);
            }
            Ok(())
        }
    }
}

fn blocked(detector: &str, message: String) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, "tally_privacy_blocked", message)
        .details(json!({ "detector": detector }))
}
