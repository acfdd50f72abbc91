//! What translating costs: one request body, one whole answer, and one stream event, for each
//! pair the unified API serves. `cargo bench --bench translate`.

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use std::hint::black_box;
use tally_translate::{request, response, Dialect, StreamTranslator};

fn bodies(c: &mut Criterion) {
    let hub = json!({
        "model": "x",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the weather in Paris and Rome? Answer briefly, with the temperature in Celsius."},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": "24C"},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "temperature": 0.2, "max_tokens": 200, "stream": true,
    });
    for target in [Dialect::Anthropic, Dialect::Gemini, Dialect::Converse] {
        c.bench_function(&format!("request openai->{}", target.name()), |b| {
            b.iter(|| request(Dialect::OpenAi, target, black_box(&hub), "m"))
        });
    }
    let claude = json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "text", "text": "It is 18C in Paris and 24C in Rome."}],
        "stop_reason": "end_turn", "usage": {"input_tokens": 120, "output_tokens": 14},
    })
    .to_string();
    c.bench_function("response anthropic->openai", |b| {
        b.iter(|| {
            response(
                Dialect::Anthropic,
                Dialect::OpenAi,
                black_box(claude.as_bytes()),
                "m",
            )
        })
    });
}

fn events(c: &mut Criterion) {
    let text = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " Paris is"}}).to_string();
    let mut t = StreamTranslator::new(Dialect::Anthropic, Dialect::OpenAi, true, "m");
    let mut out = Vec::with_capacity(4096);
    c.bench_function("event anthropic->openai (text delta)", |b| {
        b.iter(|| {
            out.clear();
            t.event("content_block_delta", black_box(text.as_bytes()), &mut out);
        })
    });
    let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "model": "gpt-x",
        "choices": [{"index": 0, "delta": {"content": " Paris is"}, "finish_reason": null}]})
    .to_string();
    let mut t = StreamTranslator::new(Dialect::OpenAi, Dialect::Anthropic, false, "m");
    c.bench_function("event openai->anthropic (text delta)", |b| {
        b.iter(|| {
            out.clear();
            t.event("", black_box(chunk.as_bytes()), &mut out);
        })
    });
    let gemini =
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": " Paris is"}]}}],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 3}})
        .to_string();
    let mut t = StreamTranslator::new(Dialect::Gemini, Dialect::OpenAi, true, "m");
    c.bench_function("event gemini->openai (text chunk)", |b| {
        b.iter(|| {
            out.clear();
            t.event("", black_box(gemini.as_bytes()), &mut out);
        })
    });
}

criterion_group!(benches, bodies, events);
criterion_main!(benches);
