//! The SSE parser on arbitrary bytes, cut at an arbitrary point: it never panics, and the cut
//! never changes the events.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_proxy::sse::SseParser;

fn parse(chunks: &[&[u8]]) -> Vec<(String, Vec<u8>)> {
    let mut p = SseParser::new();
    let mut out = Vec::new();
    for c in chunks {
        p.feed(c, |e| out.push((e.event.to_owned(), e.data.to_vec())));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let at = usize::from(cut).min(body.len());
    let (a, b) = body.split_at(at);
    // A byte order mark is stripped only when whole at the start, so a cut inside it may
    // legitimately differ; everything else must not.
    if at > 0 && at < 3 && body.starts_with(b"\xEF\xBB\xBF") {
        return;
    }
    assert_eq!(parse(&[body]), parse(&[a, b]));
});
