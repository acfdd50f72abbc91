//! Token estimates for responses that carry no usage (OpenAI-compatible streams without
//! `include_usage`, truncated bodies). Records built from these are marked `tokens_estimated`.
//!
//! The encoding follows the model family: `o200k_base` for GPT-4o, GPT-4.1, GPT-5 and the o-series;
//! `cl100k_base` for everything else, which is exact for GPT-4/3.5 and embeddings and a fair
//! approximation for other vendors' models (whose tokenizers are not public or not bundled).

use serde_json::Value;
use tally_ingest::Tokens;
use tiktoken_rs::CoreBPE;

use crate::formats::{collect_strings, WireFormat};

/// Per-message framing overhead in OpenAI's counting recipe (role markers and separators).
const TOKENS_PER_MESSAGE: u64 = 3;
/// Tokens that prime every reply.
const REPLY_PRIMING_TOKENS: u64 = 3;

fn bpe_for(model: &str) -> &'static CoreBPE {
    let m = model.to_ascii_lowercase();
    let m = m.rsplit('/').next().unwrap_or(&m);
    let o200k = [
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "chatgpt-4o",
        "gpt-oss",
        "o1",
        "o3",
        "o4",
    ];
    if o200k.iter().any(|p| m.starts_with(p)) {
        tiktoken_rs::o200k_base_singleton()
    } else {
        tiktoken_rs::cl100k_base_singleton()
    }
}

/// Loads both encodings so the first estimate does not pay for it. Takes about a second of CPU;
/// call it off the request path.
pub fn warm_up() {
    let _ = tiktoken_rs::o200k_base_singleton();
    let _ = tiktoken_rs::cl100k_base_singleton();
}

/// Counts tokens of `text` with the encoding of `model`'s family.
pub fn count(model: &str, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    bpe_for(model).encode_ordinary(text).len() as u64
}

/// Estimates prompt and completion tokens from the logged request and response bodies.
/// `response_complete` is false when the captured response was truncated; the estimate then
/// covers only what was captured.
pub fn estimate(
    format: WireFormat,
    model: &str,
    request_body: &[u8],
    response_body: &[u8],
    stream: bool,
) -> Tokens {
    let (prompt_text, messages) = prompt_text(request_body);
    let completion_text = if stream {
        stream_text(format, response_body)
    } else {
        serde_json::from_slice::<Value>(response_body)
            .map(|v| json_text(format, &v))
            .unwrap_or_default()
    };
    let framing = if messages > 0 {
        messages * TOKENS_PER_MESSAGE + REPLY_PRIMING_TOKENS
    } else {
        0
    };
    Tokens {
        prompt: count(model, &prompt_text) + framing,
        completion: count(model, &completion_text),
        ..Tokens::default()
    }
}

/// Concatenates the text a model reads from a request body, and counts its messages.
pub(crate) fn prompt_text(body: &[u8]) -> (String, u64) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return (String::new(), 0);
    };
    let mut out = String::new();
    let mut messages = 0;
    // OpenAI's and Anthropic's members, then Gemini's (`contents`, `systemInstruction`, and
    // the embeddings' `content` and batch `requests`); Bedrock's Converse uses `messages`
    // and `system` too.
    for key in [
        "system",
        "instructions",
        "prompt",
        "input",
        "messages",
        "contents",
        "systemInstruction",
        "system_instruction",
        "content",
        "requests",
    ] {
        if let Some(part) = v.get(key) {
            if key == "messages" {
                messages = part.as_array().map_or(0, |a| a.len() as u64);
            }
            collect_strings(part, &mut out);
        }
    }
    (out, messages)
}

/// The generated text of a complete JSON response.
fn json_text(format: WireFormat, v: &Value) -> String {
    let mut out = String::new();
    format.adapter().response_text(v, &mut out);
    out
}

/// The generated text of an event stream: the content deltas of its events.
fn stream_text(format: WireFormat, body: &[u8]) -> String {
    let adapter = format.adapter();
    let mut out = String::new();
    crate::formats::each_event(format, body, |event| {
        if let Ok(v) = serde_json::from_slice::<Value>(event.data) {
            adapter.delta_text(event.event, &v, &mut out);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_known_strings_with_the_right_encoding() {
        // "hello world" is two tokens in both encodings; the emoji string differs between them.
        assert_eq!(count("gpt-4o", "hello world"), 2);
        assert_eq!(count("gpt-3.5-turbo", "hello world"), 2);
        assert_eq!(count("gpt-4o", ""), 0);
        let text = "Tokenization différente: 東京タワー 🎉🎉";
        assert_ne!(count("gpt-4o", text), count("gpt-4", text));
    }

    #[test]
    fn estimates_chat_stream() {
        let req = br#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hello world"}]}"#;
        let resp = b"data: {\"choices\":[{\"delta\":{\"content\":\"hello\"}}]}\n\n\
                     data: {\"choices\":[{\"delta\":{\"content\":\" world\"}}]}\n\ndata: [DONE]\n\n";
        let t = estimate(WireFormat::OpenAi, "gpt-4o-mini", req, resp, true);
        // "hello world\n" = 3 tokens, + 1 message * 3 + 3 priming.
        assert_eq!(t.prompt, count("gpt-4o-mini", "hello world\n") + 6);
        assert_eq!(t.completion, 2);
    }

    #[test]
    fn estimates_anthropic_json_and_tolerates_garbage() {
        let req = br#"{"model":"claude-haiku-4-5","system":"be brief","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#;
        let resp = br#"{"content":[{"type":"text","text":"hello world"}]}"#;
        let t = estimate(WireFormat::Anthropic, "claude-haiku-4-5", req, resp, false);
        assert!(t.prompt > 6);
        assert_eq!(t.completion, count("claude", "hello world\n"));
        let g = estimate(WireFormat::Anthropic, "x", b"\xff\x00", b"{{", false);
        assert_eq!((g.prompt, g.completion), (0, 0));
    }
}
