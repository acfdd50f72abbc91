//! The fake upstream's AWS Bedrock runtime: `Converse`, `ConverseStream`, `InvokeModel` and
//! `InvokeModelWithResponseStream`, shaped as the Bedrock API reference documents them, streams
//! in AWS's binary event stream (prelude, headers, payload, both CRC-32s), and every request's
//! SigV4 signature recomputed with [`ACCESS_KEY`] / [`SECRET_KEY`]: a wrong one is refused as
//! AWS refuses it.
//!
//! Both the frames and the signature check are written here from the specifications, not with
//! the libraries Tally uses, so a bug in those cannot hide itself; boto3, which parses these
//! frames with its own CRC checks, vouches for the framing.
//!
//! Modes (`x-fake-mode`): `corrupt-crc` flips the message CRC of a `ConverseStream`'s third
//! frame; `error429` is a throttled 429; `throttle-event` ends a stream with a `throttlingException` frame; `tools` answers
//! `Converse` and `ConverseStream` with the calls of [`TOOL_CALLS`], a stream opening each
//! `toolUse` block with `contentBlockStart` and sending its input in two pieces.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{request::Parts, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::fake_upstream::{argument_pieces, full, sse_bytes, Body, TOOL_CALLS, WORDS};

/// The AWS credentials the fake Bedrock accepts signatures from.
pub const ACCESS_KEY: &str = "AKIATALLYFAKEBEDROCK";
/// Their secret.
pub const SECRET_KEY: &str = "fake/bedrock/secret+0123456789abcdefghijk";
/// The region it signs for.
pub const REGION: &str = "us-east-1";
/// Usage the fake reports: input (uncached), output, cache read, cache write.
pub const BEDROCK_USAGE: (u64, u64, u64, u64) = (17, 5, 8, 2);

/// Whether a path is Bedrock's.
pub fn serves(path: &str) -> bool {
    path.starts_with("/model/")
}

/// Answers one Bedrock request.
pub fn respond(parts: &Parts, body: &Bytes, mode: &str) -> Response<Body> {
    if let Err(why) = verify_sigv4(parts, body) {
        let mut r = full(
            StatusCode::FORBIDDEN,
            "application/json",
            json!({ "message": why }).to_string(),
        );
        r.headers_mut().insert(
            "x-amzn-errortype",
            "InvalidSignatureException:http://internal.amazon.com/coral/com.amazon.coral.service/"
                .parse()
                .expect("header"),
        );
        return r;
    }
    if mode == "error429" {
        // As Bedrock throttles: the error type in a header, the message in the body.
        let mut r = full(
            StatusCode::TOO_MANY_REQUESTS,
            "application/json",
            json!({"message": "Too many requests, please wait before trying again."}).to_string(),
        );
        r.headers_mut().insert(
            "x-amzn-errortype",
            "ThrottlingException".parse().expect("header"),
        );
        return r;
    }
    let path = parts.uri.path();
    let mut segments = path.trim_start_matches('/').split('/');
    let (_, model, operation) = (
        segments.next(),
        segments.next().unwrap_or(""),
        segments.next(),
    );
    let model = model.replace("%3A", ":");
    let (input, output, read, write) = BEDROCK_USAGE;
    let usage = json!({"inputTokens": input, "outputTokens": output, "totalTokens": input + output + read + write,
        "cacheReadInputTokens": read, "cacheWriteInputTokens": write});
    let text = WORDS.concat();
    match operation.unwrap_or("") {
        "converse" if mode == "tools" => {
            let blocks: Vec<Value> = TOOL_CALLS
                .iter()
                .map(|(id, name, args)| {
                    let input: Value = serde_json::from_str(args).expect("json");
                    json!({"toolUse": {"toolUseId": id, "name": name, "input": input}})
                })
                .collect();
            full(
                StatusCode::OK,
                "application/json",
                json!({"output": {"message": {"role": "assistant", "content": blocks}},
                    "stopReason": "tool_use", "usage": usage, "metrics": {"latencyMs": 120}})
                .to_string(),
            )
        }
        "converse-stream" if mode == "tools" => {
            let mut frames = vec![event("messageStart", &json!({"role": "assistant"}))];
            for (i, (id, name, args)) in TOOL_CALLS.iter().enumerate() {
                frames.push(event(
                    "contentBlockStart",
                    &json!({"contentBlockIndex": i,
                    "start": {"toolUse": {"toolUseId": id, "name": name}}}),
                ));
                for piece in argument_pieces(args) {
                    frames.push(event(
                        "contentBlockDelta",
                        &json!({"contentBlockIndex": i,
                        "delta": {"toolUse": {"input": piece}}}),
                    ));
                }
                frames.push(event("contentBlockStop", &json!({"contentBlockIndex": i})));
            }
            frames.push(event("messageStop", &json!({"stopReason": "tool_use"})));
            frames.push(event(
                "metadata",
                &json!({"usage": usage, "metrics": {"latencyMs": 120}}),
            ));
            sse_bytes(frames, "application/vnd.amazon.eventstream")
        }
        "converse" => full(
            StatusCode::OK,
            "application/json",
            json!({"output": {"message": {"role": "assistant", "content": [{"text": text}]}},
                "stopReason": "end_turn", "usage": usage, "metrics": {"latencyMs": 120}})
            .to_string(),
        ),
        "converse-stream" => {
            // Text blocks open with their first delta: `contentBlockStart` is only for tool use.
            let mut frames = vec![event("messageStart", &json!({"role": "assistant"}))];
            for w in WORDS {
                frames.push(event(
                    "contentBlockDelta",
                    &json!({"contentBlockIndex": 0, "delta": {"text": w}}),
                ));
            }
            frames.push(event("contentBlockStop", &json!({"contentBlockIndex": 0})));
            frames.push(event("messageStop", &json!({"stopReason": "end_turn"})));
            if mode == "throttle-event" {
                frames.push(exception(
                    "throttlingException",
                    "Too many tokens, please wait before trying again.",
                ));
            } else {
                frames.push(event(
                    "metadata",
                    &json!({"usage": usage, "metrics": {"latencyMs": 120}}),
                ));
            }
            if mode == "corrupt-crc" {
                let f = &mut frames[2];
                let last = f.len() - 1;
                f[last] ^= 0x5a;
            }
            sse_bytes(frames, "application/vnd.amazon.eventstream")
        }
        "invoke" => {
            let v = json!({"id": "msg_bdrk_fake", "type": "message", "role": "assistant",
                "model": "claude-3-haiku-20240307", "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "usage": {"input_tokens": input, "output_tokens": output,
                "cache_read_input_tokens": read, "cache_creation_input_tokens": write}});
            let mut r = full(StatusCode::OK, "application/json", v.to_string());
            for (h, n) in [
                ("x-amzn-bedrock-input-token-count", input),
                ("x-amzn-bedrock-output-token-count", output),
                ("x-amzn-bedrock-cache-read-input-token-count", read),
                ("x-amzn-bedrock-cache-write-input-token-count", write),
            ] {
                r.headers_mut()
                    .insert(h, n.to_string().parse().expect("count"));
            }
            r
        }
        "invoke-with-response-stream" => {
            let claude = |v: Value| {
                use base64::Engine;
                let b64 = base64::engine::general_purpose::STANDARD.encode(v.to_string());
                event("chunk", &json!({"bytes": b64}))
            };
            let mut frames = vec![claude(json!({"type": "message_start", "message": {
                "id": "msg_bdrk_stream", "type": "message", "role": "assistant", "model": "claude-3-haiku-20240307",
                "content": [], "stop_reason": null, "usage": {"input_tokens": input, "output_tokens": 1,
                "cache_read_input_tokens": read, "cache_creation_input_tokens": write}}}))];
            frames.push(claude(
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ));
            for w in WORDS {
                frames.push(claude(json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": w}})));
            }
            frames.push(claude(json!({"type": "content_block_stop", "index": 0})));
            frames.push(claude(json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": output}})));
            frames.push(claude(json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": {
                "inputTokenCount": input, "outputTokenCount": output, "invocationLatency": 300,
                "firstByteLatency": 90, "cacheReadInputTokenCount": read, "cacheWriteInputTokenCount": write}})));
            sse_bytes(frames, "application/vnd.amazon.eventstream")
        }
        other => full(
            StatusCode::NOT_FOUND,
            "application/json",
            json!({ "message": format!("unknown operation {other:?} for {model}") }).to_string(),
        ),
    }
}

/// Points `bedrock` at the fake, with credentials in files under `dir`.
pub fn with_bedrock(c: &mut tally::Config, upstream: &str, dir: &std::path::Path, secret: &str) {
    let id = dir.join("aws_access_key_id");
    let key = dir.join("aws_secret_access_key");
    std::fs::write(&id, ACCESS_KEY).expect("id file");
    std::fs::write(&key, format!("{secret}\n")).expect("secret file");
    c.providers.insert(
        "bedrock".into(),
        tally_proxy::ProviderConfig {
            base_url: Some(upstream.to_owned()),
            region: Some(REGION.into()),
            aws_access_key_id: Some(tally_proxy::providers::SecretSource::File(id)),
            aws_secret_access_key: Some(tally_proxy::providers::SecretSource::File(key)),
            ..Default::default()
        },
    );
}

/// One event-stream message: `:event-type`, `:content-type`, `:message-type` headers and a
/// JSON payload padded with `p`, as Bedrock pads them.
pub fn event(kind: &str, payload: &Value) -> Vec<u8> {
    let mut payload = payload.clone();
    payload["p"] = json!("abcdefghijklmnopqrstuvwxyzABCDEFGH");
    frame(
        &[
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

fn exception(kind: &str, message: &str) -> Vec<u8> {
    frame(
        &[
            (":exception-type", kind),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        json!({ "message": message }).to_string().as_bytes(),
    )
}

/// The framing of docs.aws.amazon.com/transcribe/latest/dg/streaming-setting-up.html (the
/// event-stream encoding every AWS streaming API shares): big-endian lengths, string headers
/// (type 7), CRC-32 of the prelude and of the whole message.
fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(name.len() as u8);
        h.extend_from_slice(name.as_bytes());
        h.push(7);
        h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        h.extend_from_slice(value.as_bytes());
    }
    let total = 12 + h.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("any key length");
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// SigV4 as docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html defines it,
/// for a service other than S3 (so each path segment is URI-encoded again).
fn verify_sigv4(parts: &Parts, body: &[u8]) -> Result<(), String> {
    let mismatch = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.";
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
    let auth = header("authorization").ok_or("Missing Authentication Token")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("Authorization header requires AWS4-HMAC-SHA256")?;
    let field = |name: &str| {
        rest.split(',')
            .find_map(|p| p.trim().strip_prefix(name))
            .ok_or_else(|| format!("Authorization header lacks {name}"))
    };
    let credential = field("Credential=")?;
    let signed_headers = field("SignedHeaders=")?;
    let signature = field("Signature=")?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [key, date, region, service, "aws4_request"] = scope[..] else {
        return Err(format!("malformed credential scope {credential}"));
    };
    if key != ACCESS_KEY {
        return Err("The security token included in the request is invalid.".into());
    }
    if (region, service) != (REGION, "bedrock") {
        return Err(format!(
            "Credential should be scoped to a valid region and service, not {region}/{service}"
        ));
    }
    let amz_date = header("x-amz-date").ok_or("missing x-amz-date")?;
    if !amz_date.starts_with(date) {
        return Err("x-amz-date does not match the credential scope".into());
    }
    if !signed_headers.split(';').any(|h| h == "host") {
        return Err("host must be signed".into());
    }
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let canonical_uri = parts
        .uri
        .path()
        .split('/')
        .map(encode)
        .collect::<Vec<_>>()
        .join("/");
    let mut query: Vec<(String, String)> = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut canonical_headers = String::new();
    for name in signed_headers.split(';') {
        let values: Vec<String> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(format!("signed header {name} is not in the request"));
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let payload_hash = hex::encode(Sha256::digest(body));
    let canonical = format!(
        "{}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}",
        parts.method
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let k = hmac(format!("AWS4{SECRET_KEY}").as_bytes(), date);
    let k = hmac(&k, region);
    let k = hmac(&k, service);
    let k = hmac(&k, "aws4_request");
    let expected = hex::encode(hmac(&k, &to_sign));
    if expected != signature {
        return Err(mismatch.into());
    }
    Ok(())
}
