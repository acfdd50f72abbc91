//! An incremental reader of AWS's binary event stream (`application/vnd.amazon.eventstream`),
//! the framing of Bedrock's `ConverseStream` and `InvokeModelWithResponseStream`.
//!
//! Each frame is a prelude (total length, headers length, prelude CRC), typed headers, a payload
//! and a CRC of the whole message. The frame decoding and both CRC checks are AWS's own
//! (`aws-smithy-eventstream`, what the Rust SDK reads these streams with); this module only cuts
//! the forwarded chunks into frames and hands each on as an [`Event`]: its `:event-type` (or,
//! for an exception, its `:exception-type`) and its payload.
//!
//! A frame that fails its CRC cannot be skipped reliably (its length may be the corrupt part),
//! so the reader stops there and says why; the bytes themselves are forwarded regardless.

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::Message;
use bytes::BytesMut;

use crate::sse::Event;

/// The protocol's limit on one message (16 MiB of payload, 128 KiB of headers): a frame
/// claiming more is corrupt, and waiting for it would buffer the stream without bound.
const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024 + 128 * 1024 + 16;

/// Incremental reader state; see the module docs.
#[derive(Debug, Default)]
pub struct EventStreamParser {
    buffer: BytesMut,
    decoder: MessageFrameDecoder,
    frames: u64,
    failed: Option<String>,
}

impl EventStreamParser {
    /// A reader at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `chunk`, calling `on_event` for each frame completed inside it. Returns the reason
    /// the stream became unreadable, once, at the chunk where it did.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(Event<'_>)) -> Option<String> {
        if self.failed.is_some() {
            return None;
        }
        self.buffer.extend_from_slice(chunk);
        loop {
            match self.decoder.decode_frame(&mut self.buffer) {
                Ok(DecodedFrame::Complete(message)) => {
                    self.frames += 1;
                    dispatch(&message, &mut on_event);
                }
                Ok(DecodedFrame::Incomplete) if self.buffer.len() > MAX_FRAME_BYTES => {
                    return self.fail("a frame longer than the protocol allows".to_owned());
                }
                Ok(DecodedFrame::Incomplete) => return None,
                Err(e) => return self.fail(e.to_string()),
            }
        }
    }

    fn fail(&mut self, why: String) -> Option<String> {
        let why = format!(
            "the event stream is corrupt at frame {}: {why}; usage is what the {} frames before it said",
            self.frames + 1,
            self.frames
        );
        self.buffer = BytesMut::new();
        self.failed = Some(why.clone());
        Some(why)
    }

    /// Frames read so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Bytes received after the last complete frame: a stream cut mid-frame.
    pub fn pending(&self) -> bool {
        !self.buffer.is_empty()
    }
}

/// The event a frame carries. An `exception` message is named by its `:exception-type`
/// (`throttlingException`, `modelStreamErrorException`, …); an `error` message (the protocol's
/// own, rarely sent) by `:error-code`, with its `:error-message` as the data.
fn dispatch(message: &Message, on_event: &mut impl FnMut(Event<'_>)) {
    let header = |name: &str| {
        message
            .headers()
            .iter()
            .find(|h| h.name().as_str() == name)
            .and_then(|h| h.value().as_string().ok())
            .map(|s| s.as_str())
    };
    let event = match header(":message-type") {
        Some("exception") => header(":exception-type").unwrap_or("exception"),
        Some("error") => {
            let code = header(":error-code").unwrap_or("error");
            let text = header(":error-message").unwrap_or(code);
            on_event(Event {
                event: code,
                data: text.as_bytes(),
            });
            return;
        }
        _ => header(":event-type").unwrap_or(""),
    };
    on_event(Event {
        event,
        data: message.payload(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::{Header, HeaderValue};

    fn frame(event: &str, payload: &str) -> Vec<u8> {
        let m = Message::new(payload.as_bytes().to_vec())
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String("event".into()),
            ))
            .add_header(Header::new(
                ":event-type",
                HeaderValue::String(event.to_owned().into()),
            ))
            .add_header(Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ));
        let mut out = Vec::new();
        write_message_to(&m, &mut out).expect("frame");
        out
    }

    #[test]
    fn frames_are_read_wherever_the_chunks_are_cut() {
        let mut stream = frame("messageStart", r#"{"role":"assistant"}"#);
        stream.extend(frame("metadata", r#"{"usage":{"inputTokens":3}}"#));
        for cut in [1, 3, 7, 12, 50, stream.len()] {
            let mut p = EventStreamParser::new();
            let mut seen = Vec::new();
            for piece in stream.chunks(cut) {
                let failed = p.feed(piece, |e| {
                    seen.push((e.event.to_owned(), e.data.to_vec()));
                });
                assert_eq!(failed, None);
            }
            assert_eq!(seen.len(), 2, "cut at {cut}");
            assert_eq!(seen[1].0, "metadata");
            assert_eq!(seen[1].1, br#"{"usage":{"inputTokens":3}}"#);
            assert!(!p.pending());
        }
    }

    #[test]
    fn a_corrupt_crc_stops_the_reader_and_says_where() {
        let mut stream = frame("messageStart", r#"{"role":"assistant"}"#);
        let mut second = frame("metadata", r#"{"usage":{"inputTokens":3}}"#);
        let last = second.len() - 1;
        second[last] ^= 0xff;
        stream.extend(second);
        stream.extend(frame("metadata", "{}"));
        let mut p = EventStreamParser::new();
        let mut seen = 0;
        let failed = p.feed(&stream, |_| seen += 1).expect("a failure");
        assert_eq!(seen, 1);
        assert!(failed.contains("frame 2"), "{failed}");
        assert_eq!(p.feed(b"more", |_| seen += 1), None, "reported once");
        assert_eq!(seen, 1);
    }

    #[test]
    fn an_impossible_length_does_not_buffer_forever() {
        let mut p = EventStreamParser::new();
        // A prelude claiming 4 GiB, then data that never completes it.
        let mut first = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
        first.extend(vec![0u8; 1024]);
        assert_eq!(p.feed(&first, |_| {}), None);
        let big = vec![0u8; 1024 * 1024];
        let mut failed = None;
        for _ in 0..20 {
            if let Some(f) = p.feed(&big, |_| {}) {
                failed = Some(f);
                break;
            }
        }
        assert!(failed.is_some());
    }
}
