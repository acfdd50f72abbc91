//! Property tests: parsing a stream gives the same result wherever the network cut it into
//! chunks, whatever line endings and comments it uses. Deterministic split tests live next to
//! the parser; these generate the streams and the cuts.

use proptest::prelude::*;
use tally_proxy::formats::{StreamObserver, WireFormat};
use tally_proxy::sse::SseParser;

/// One generated event: optional type, data lines, and the line ending and comment noise used
/// to write it.
#[derive(Debug, Clone)]
struct GenEvent {
    kind: Option<String>,
    data: Vec<String>,
    ending: &'static str,
    comment: bool,
}

fn ending() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("\n"), Just("\r\n"), Just("\r")]
}

fn event() -> impl Strategy<Value = GenEvent> {
    (
        proptest::option::of("[a-z_]{1,12}"),
        // Data lines: any text without line breaks (UTF-8 included).
        proptest::collection::vec("[^\r\n]{0,40}", 1..4),
        ending(),
        any::<bool>(),
    )
        .prop_map(|(kind, data, ending, comment)| GenEvent {
            kind,
            data,
            ending,
            comment,
        })
}

fn write(events: &[GenEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        let nl = e.ending;
        if e.comment {
            out.extend_from_slice(format!(": keep-alive{nl}").as_bytes());
        }
        if let Some(k) = &e.kind {
            out.extend_from_slice(format!("event: {k}{nl}").as_bytes());
        }
        for d in &e.data {
            out.extend_from_slice(format!("data: {d}{nl}").as_bytes());
        }
        out.extend_from_slice(nl.as_bytes());
    }
    out
}

/// Cuts `bytes` at the given (sorted, deduplicated) positions.
fn cut(bytes: &[u8], mut points: Vec<usize>) -> Vec<&[u8]> {
    points.retain(|p| *p <= bytes.len());
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    let mut last = 0;
    for p in points {
        out.push(&bytes[last..p]);
        last = p;
    }
    out.push(&bytes[last..]);
    out
}

fn parse(chunks: &[&[u8]]) -> Vec<(String, Vec<u8>)> {
    let mut p = SseParser::new();
    let mut out = Vec::new();
    for c in chunks {
        p.feed(c, |e| out.push((e.event.to_owned(), e.data.to_vec())));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn sse_events_do_not_depend_on_chunk_boundaries(
        events in proptest::collection::vec(event(), 1..12),
        points in proptest::collection::vec(0usize..4096, 0..24),
    ) {
        let bytes = write(&events);
        let expected: Vec<(String, Vec<u8>)> = events
            .iter()
            .map(|e| {
                // The spec strips one space after the colon; generated data may start with
                // more spaces, which stay.
                let data = e.data.join("\n").into_bytes();
                (e.kind.clone().unwrap_or_default(), data)
            })
            .collect();
        prop_assert_eq!(parse(&[&bytes]), expected.clone());
        prop_assert_eq!(parse(&cut(&bytes, points)), expected);
    }

    #[test]
    fn openai_stream_usage_does_not_depend_on_chunk_boundaries(
        words in proptest::collection::vec("[a-zA-Z ]{1,10}", 1..30),
        prompt in 0u64..1_000_000,
        completion in 0u64..1_000_000,
        cached in 0u64..1_000,
        crlf in any::<bool>(),
        points in proptest::collection::vec(0usize..8192, 0..40),
    ) {
        let nl = if crlf { "\r\n" } else { "\n" };
        let mut s = String::new();
        for w in &words {
            s.push_str(&format!(
                "data: {{\"id\":\"c1\",\"model\":\"gpt-4o-mini\",\"choices\":[{{\"delta\":{{\"content\":\"{w}\"}}}}],\"usage\":null}}{nl}{nl}"
            ));
        }
        s.push_str(&format!(
            "data: {{\"id\":\"c1\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion},\"total_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":{cached}}}}}}}{nl}{nl}data: [DONE]{nl}{nl}",
            prompt + completion
        ));
        let bytes = s.into_bytes();
        let mut whole = StreamObserver::new(WireFormat::OpenAi);
        whole.feed(&bytes);
        let whole = whole.finish();
        let mut split = StreamObserver::new(WireFormat::OpenAi);
        for c in cut(&bytes, points) {
            split.feed(c);
        }
        let split = split.finish();
        let t = whole.tokens.expect("usage found");
        prop_assert_eq!((t.prompt, t.completion, t.cache_read), (prompt, completion, cached));
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn anthropic_stream_usage_does_not_depend_on_chunk_boundaries(
        input in 0u64..100_000,
        cache_read in 0u64..100_000,
        output in 0u64..100_000,
        deltas in 0usize..30,
        points in proptest::collection::vec(0usize..8192, 0..40),
    ) {
        let mut s = format!(
            "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_1\",\"model\":\"claude-haiku-4-5\",\"usage\":{{\"input_tokens\":{input},\"cache_read_input_tokens\":{cache_read},\"output_tokens\":1}}}}}}\n\n"
        );
        for i in 0..deltas {
            s.push_str(&format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"w{i}\"}}}}\n\n"));
        }
        s.push_str(&format!("event: message_delta\ndata: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":{output}}}}}\n\nevent: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"));
        let bytes = s.into_bytes();
        let mut whole = StreamObserver::new(WireFormat::Anthropic);
        whole.feed(&bytes);
        let whole = whole.finish();
        let mut split = StreamObserver::new(WireFormat::Anthropic);
        for c in cut(&bytes, points) {
            split.feed(c);
        }
        let t = whole.tokens.expect("usage found");
        prop_assert_eq!(t.completion, output);
        prop_assert_eq!(t.cache_read, cache_read);
        prop_assert_eq!(t.prompt, input + cache_read);
        prop_assert_eq!(whole, split.finish());
    }
}
