use super::*;

fn stream(format: WireFormat, text: &str) -> Observed {
    let mut o = StreamObserver::new(format);
    // Cut into 7-byte chunks so no event arrives whole.
    for c in text.as_bytes().chunks(7) {
        o.feed(c);
    }
    o.finish()
}

fn tokens(
    prompt: u64,
    completion: u64,
    cache_read: u64,
    cache_write: u64,
    reasoning: u64,
) -> Option<Tokens> {
    Some(Tokens {
        prompt,
        completion,
        cache_read,
        cache_write,
        cache_write_1h: 0,
        reasoning,
    })
}

#[test]
fn openai_chat_json() {
    let o = from_json(
        WireFormat::OpenAi,
        br#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-2024-08-06",
            "choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],
            "usage":{"prompt_tokens":20,"completion_tokens":30,"total_tokens":50,
              "prompt_tokens_details":{"cached_tokens":8},
              "completion_tokens_details":{"reasoning_tokens":12}}}"#,
    );
    assert_eq!(o.tokens, tokens(20, 30, 8, 0, 12));
    assert_eq!(o.response_model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(o.body_id.as_deref(), Some("chatcmpl-1"));
}

#[test]
fn openai_embeddings_and_legacy_completions_json() {
    let e = from_json(
        WireFormat::OpenAi,
        br#"{"object":"list","data":[{"embedding":[0.1]}],"model":"text-embedding-3-small",
            "usage":{"prompt_tokens":7,"total_tokens":7}}"#,
    );
    assert_eq!(e.tokens, tokens(7, 0, 0, 0, 0));
    let c = from_json(
        WireFormat::OpenAi,
        br#"{"id":"cmpl-1","object":"text_completion","model":"gpt-3.5-turbo-instruct",
            "choices":[{"text":"x"}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
    );
    assert_eq!(c.tokens, tokens(3, 4, 0, 0, 0));
}

#[test]
fn openai_responses_api_json() {
    let o = from_json(
        WireFormat::OpenAi,
        br#"{"id":"resp_1","object":"response","model":"o4-mini-2025-04-16","output":[],
            "usage":{"input_tokens":100,"input_tokens_details":{"cached_tokens":40},
              "output_tokens":50,"output_tokens_details":{"reasoning_tokens":20},"total_tokens":150}}"#,
    );
    assert_eq!(o.tokens, tokens(100, 50, 40, 0, 20));
    assert_eq!(o.body_id.as_deref(), Some("resp_1"));
}

#[test]
fn openai_error_body() {
    let o = from_json(
        WireFormat::OpenAi,
        br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
    );
    assert_eq!(o.error.as_deref(), Some("Rate limit reached"));
    assert_eq!(o.tokens, None);
}

#[test]
fn openai_chat_stream_with_usage_chunk() {
    let o = stream(
        WireFormat::OpenAi,
        "data: {\"id\":\"c1\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
         data: {\"id\":\"c1\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n\
         data: [DONE]\n\n",
    );
    assert_eq!(o.tokens, tokens(9, 2, 0, 0, 0));
    assert_eq!(o.response_model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
}

#[test]
fn openai_chat_stream_without_usage_has_model_but_no_tokens() {
    let o = stream(
        WireFormat::OpenAi,
        "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\": {\"}}]}\n\ndata: [DONE]\n\n",
    );
    assert_eq!(o.tokens, None);
    assert_eq!(o.response_model.as_deref(), Some("m"));
}

#[test]
fn openai_responses_stream() {
    let o = stream(
        WireFormat::OpenAi,
        "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_9\",\"model\":\"gpt-4.1\",\"usage\":null}}\n\n\
         event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n\
         event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_9\",\"model\":\"gpt-4.1\",\"usage\":{\"input_tokens\":11,\"output_tokens\":3,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens_details\":{\"reasoning_tokens\":0}}}}\n\n",
    );
    assert_eq!(o.tokens, tokens(11, 3, 0, 0, 0));
    assert_eq!(o.response_model.as_deref(), Some("gpt-4.1"));
    assert_eq!(o.body_id.as_deref(), Some("resp_9"));
}

#[test]
fn deepseek_cache_hit_field() {
    let o = from_json(
        WireFormat::OpenAi,
        br#"{"model":"deepseek-chat","usage":{"prompt_tokens":50,"completion_tokens":5,"prompt_cache_hit_tokens":32,"prompt_cache_miss_tokens":18}}"#,
    );
    assert_eq!(o.tokens, tokens(50, 5, 32, 0, 0));
}

#[test]
fn anthropic_json_counts_cache_in_prompt() {
    let o = from_json(
        WireFormat::Anthropic,
        br#"{"id":"msg_1","type":"message","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"hi"}],
            "usage":{"input_tokens":10,"cache_creation_input_tokens":100,"cache_read_input_tokens":1000,"output_tokens":25}}"#,
    );
    assert_eq!(o.tokens, tokens(1110, 25, 1000, 100, 0));
    assert_eq!(o.body_id.as_deref(), Some("msg_1"));
}

#[test]
fn anthropic_stream_merges_start_and_delta() {
    let o = stream(
        WireFormat::Anthropic,
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":4,\"output_tokens\":1}}}\n\n\
         event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
         event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":42}}\n\n\
         event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    assert_eq!(o.tokens, tokens(16, 42, 4, 0, 0));
    assert_eq!(o.response_model.as_deref(), Some("claude-haiku-4-5"));
}

#[test]
fn anthropic_stream_error_event() {
    let o = stream(
        WireFormat::Anthropic,
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
    );
    assert_eq!(o.error.as_deref(), Some("Overloaded"));
}

#[test]
fn garbage_yields_nothing() {
    assert_eq!(
        from_json(WireFormat::OpenAi, b"\x00\xffnot json"),
        Observed::default()
    );
    assert_eq!(
        stream(WireFormat::Anthropic, "data: {{{{\n\n"),
        Observed::default()
    );
}

#[test]
fn usage_object_detection() {
    use super::openai::has_usage_object;
    assert!(has_usage_object(br#"{"usage" : {"a":1}}"#));
    assert!(!has_usage_object(br#"{"usage":null}"#));
    assert!(!has_usage_object(br#"{"x":"usage"}"#));
}

#[test]
fn truncated_json_recovers_model_id_and_usage() {
    let body = br#"{"id":"emb-1","object":"list","model":"text-embedding-3-large","data":[{"embedding":[0.1,0.2,0.3,0.4,0.5]}],"usage":{"prompt_tokens":77,"total_tokens":77}}"#;
    let head = &body[..70];
    let tail = &body[body.len() - 60..];
    let o = from_truncated_json(WireFormat::OpenAi, head, tail);
    assert_eq!(o.tokens, tokens(77, 0, 0, 0, 0));
    assert_eq!(o.response_model.as_deref(), Some("text-embedding-3-large"));
    assert_eq!(o.body_id.as_deref(), Some("emb-1"));
    // A tail cut inside the usage object yields no usage rather than a wrong one.
    let o = from_truncated_json(WireFormat::OpenAi, head, &body[body.len() - 20..]);
    assert_eq!(o.tokens, None);
}

#[test]
fn each_format_marks_the_end_of_its_stream() {
    for (format, text) in [
        (
            WireFormat::OpenAi,
            "data: {\"choices\":[]}\n\ndata: [DONE]\n\n",
        ),
        (
            WireFormat::OpenAi,
            "event: response.completed\ndata: {\"response\":{\"usage\":null}}\n\n",
        ),
        (
            WireFormat::OpenAi,
            "event: response.incomplete\ndata: {\"response\":{}}\n\n",
        ),
        (
            WireFormat::OpenAi,
            "event: response.failed\ndata: {\"response\":{}}\n\n",
        ),
        (
            WireFormat::Anthropic,
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ),
    ] {
        assert!(stream(format, text).ended, "{text}");
    }
    for (format, text) in [
        (WireFormat::OpenAi, "data: {\"choices\":[]}\n\n"),
        (
            WireFormat::OpenAi,
            "event: response.in_progress\ndata: {\"response\":{}}\n\n",
        ),
        (
            WireFormat::Anthropic,
            "event: message_delta\ndata: {\"usage\":{\"output_tokens\":3}}\n\n",
        ),
        // `[DONE]` means nothing to Anthropic, and is not an end inside a JSON string.
        (WireFormat::Anthropic, "data: [DONE]\n\n"),
        (WireFormat::OpenAi, "data: \"[DONE]\"\n\n"),
    ] {
        assert!(!stream(format, text).ended, "{text}");
    }
}

#[test]
fn anthropic_message_start_usage_is_not_final() {
    let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n";
    let o = stream(WireFormat::Anthropic, start);
    assert_eq!(o.tokens, tokens(12, 1, 0, 0, 0));
    assert!(!o.usage_final, "output_tokens 1 is a placeholder");
    let delta = "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\n";
    let o = stream(WireFormat::Anthropic, &format!("{start}{delta}"));
    assert_eq!(o.tokens, tokens(12, 42, 0, 0, 0));
    assert!(o.usage_final);
    assert!(from_json(WireFormat::OpenAi, br#"{"usage":{"prompt_tokens":1}}"#).usage_final);
}
