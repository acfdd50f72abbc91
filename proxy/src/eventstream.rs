//! An incremental reader of AWS's binary event stream (`application/vnd.amazon.eventstream`),
//! the framing of Bedrock's `ConverseStream` and `InvokeModelWithResponseStream`.
//!
//! Each frame is a prelude (total length, headers length, CRC-32 of those eight bytes), typed
//! headers, a payload, and a CRC-32 of everything before it. This reader checks both CRCs and
//! hands each frame on as an [`Event`]: its `:event-type` (or, for an exception, its
//! `:exception-type`) and its payload, both borrowed from the chunk where the frame is whole,
//! so a stream read in whole frames costs no allocation.
//!
//! Written here rather than with AWS's `aws-smithy-eventstream` decoder: that one copies the
//! payload and every header name and value into new allocations per frame, and measured 7x the
//! SSE formats' cost per event (BENCHMARKS.md, "Bedrock"). The format is small and fixed; a
//! test decodes the same frames with AWS's decoder and compares, and the fuzz target runs it.
//!
//! A frame that fails its CRC cannot be skipped reliably (its length may be the corrupt part),
//! so the reader stops there and says why; the bytes themselves are forwarded regardless.

use crate::sse::Event;

/// The protocol's limit on one message (16 MiB of payload, 128 KiB of headers): a frame
/// claiming more is corrupt, and waiting for it would buffer the stream without bound.
const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024 + 128 * 1024 + 16;

/// Prelude (12) plus message CRC (4): the smallest frame.
const MIN_FRAME_BYTES: usize = 16;

/// Incremental reader state; see the module docs.
#[derive(Debug, Default)]
pub struct EventStreamParser {
    /// The start of a frame that did not fit in the chunks so far.
    partial: Vec<u8>,
    frames: u64,
    failed: bool,
}

impl EventStreamParser {
    /// A reader at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `chunk`, calling `on_event` for each frame completed inside it. Returns the reason
    /// the stream became unreadable, once, at the chunk where it did.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(Event<'_>)) -> Option<String> {
        if self.failed || chunk.is_empty() {
            return None;
        }
        let result = if self.partial.is_empty() {
            let r = frames(chunk, &mut self.frames, &mut on_event);
            if let Ok(used) = r {
                self.partial.extend_from_slice(&chunk[used..]);
            }
            r
        } else {
            let mut buffer = std::mem::take(&mut self.partial);
            buffer.extend_from_slice(chunk);
            let r = frames(&buffer, &mut self.frames, &mut on_event);
            if let Ok(used) = r {
                buffer.drain(..used);
                self.partial = buffer;
            }
            r
        };
        let why = result.err()?;
        self.failed = true;
        self.partial = Vec::new();
        Some(format!(
            "the event stream is corrupt at frame {}: {why}; usage is what the {} frames before it said",
            self.frames + 1,
            self.frames
        ))
    }

    /// Frames read so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Bytes received after the last complete frame: a stream cut mid-frame.
    pub fn pending(&self) -> bool {
        !self.partial.is_empty()
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads every whole frame at the start of `data`; returns the bytes they took.
fn frames(
    data: &[u8],
    count: &mut u64,
    on_event: &mut impl FnMut(Event<'_>),
) -> Result<usize, String> {
    let mut at = 0;
    while data.len() - at >= 12 {
        let rest = &data[at..];
        let total = be32(rest) as usize;
        let headers_len = be32(&rest[4..]) as usize;
        if be32(&rest[8..]) != crc32fast::hash(&rest[..8]) {
            return Err("the prelude's checksum does not match".to_owned());
        }
        if !(MIN_FRAME_BYTES..=MAX_FRAME_BYTES).contains(&total)
            || headers_len > total - MIN_FRAME_BYTES
        {
            return Err(format!(
                "impossible lengths (frame {total} bytes, headers {headers_len})"
            ));
        }
        if rest.len() < total {
            break;
        }
        let frame = &rest[..total];
        if be32(&frame[total - 4..]) != crc32fast::hash(&frame[..total - 4]) {
            return Err("the message's checksum does not match".to_owned());
        }
        let headers = &frame[12..12 + headers_len];
        let payload = &frame[12 + headers_len..total - 4];
        dispatch(headers, payload, on_event)?;
        *count += 1;
        at += total;
    }
    Ok(at)
}

/// The string headers a frame is dispatched by.
#[derive(Default)]
struct Names<'a> {
    message_type: Option<&'a str>,
    event_type: Option<&'a str>,
    exception_type: Option<&'a str>,
    error_code: Option<&'a str>,
    error_message: Option<&'a str>,
}

/// The event a frame carries. An `exception` message is named by its `:exception-type`
/// (`throttlingException`, `modelStreamErrorException`, …); an `error` message (the protocol's
/// own, rarely sent) by `:error-code`, with its `:error-message` as the data.
fn dispatch(
    mut headers: &[u8],
    payload: &[u8],
    on_event: &mut impl FnMut(Event<'_>),
) -> Result<(), String> {
    let bad = || "a header is malformed".to_owned();
    let mut names = Names::default();
    while !headers.is_empty() {
        let name_len = usize::from(headers[0]);
        let name = headers.get(1..1 + name_len).ok_or_else(bad)?;
        let kind = *headers.get(1 + name_len).ok_or_else(bad)?;
        let value_at = 2 + name_len;
        // Value sizes by type: bool true/false, byte, int16, int32, int64, bytes, string,
        // timestamp, uuid.
        let (len, skip) = match kind {
            0 | 1 => (0, 0),
            2 => (1, 0),
            3 => (2, 0),
            4 => (4, 0),
            5 | 8 => (8, 0),
            9 => (16, 0),
            6 | 7 => {
                let l = headers.get(value_at..value_at + 2).ok_or_else(bad)?;
                (usize::from(u16::from_be_bytes([l[0], l[1]])), 2)
            }
            _ => return Err(format!("a header has unknown type {kind}")),
        };
        let value = headers
            .get(value_at + skip..value_at + skip + len)
            .ok_or_else(bad)?;
        if kind == 7 {
            let text = std::str::from_utf8(value).map_err(|_| bad())?;
            let slot = match name {
                b":message-type" => &mut names.message_type,
                b":event-type" => &mut names.event_type,
                b":exception-type" => &mut names.exception_type,
                b":error-code" => &mut names.error_code,
                b":error-message" => &mut names.error_message,
                _ => &mut None,
            };
            *slot = Some(text);
        }
        headers = &headers[value_at + skip + len..];
    }
    let (event, data) = match names.message_type {
        Some("exception") => (names.exception_type.unwrap_or("exception"), payload),
        Some("error") => {
            let code = names.error_code.unwrap_or("error");
            (code, names.error_message.unwrap_or(code).as_bytes())
        }
        _ => (names.event_type.unwrap_or(""), payload),
    };
    on_event(Event { event, data });
    Ok(())
}

/// One event frame as AWS writes it (with the SDK's own encoder), for tests.
#[cfg(test)]
pub(crate) fn frame(event: &str, payload: &str) -> Vec<u8> {
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
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

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};

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
        // A prelude (with a valid checksum) claiming 4 GiB.
        let mut first = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        first.extend(crc32fast::hash(&first).to_be_bytes());
        first.extend(vec![0u8; 1024]);
        let failed = EventStreamParser::new().feed(&first, |_| {});
        assert!(failed.is_some_and(|f| f.contains("impossible lengths")));
    }

    /// The same frames through AWS's own decoder and this one: the same events, in order.
    #[test]
    fn frames_read_as_aws_reads_them() {
        use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
        let mut stream = Vec::new();
        let typed = Message::new(b"{}".to_vec())
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String("event".into()),
            ))
            .add_header(Header::new("flag", HeaderValue::Bool(true)))
            .add_header(Header::new("n", HeaderValue::Int64(-7)))
            .add_header(Header::new(
                "raw",
                HeaderValue::ByteArray(vec![1, 2, 3].into()),
            ))
            .add_header(Header::new("id", HeaderValue::Uuid(42)))
            .add_header(Header::new(
                ":event-type",
                HeaderValue::String("typed".into()),
            ));
        write_message_to(&typed, &mut stream).expect("frame");
        stream.extend(frame("metadata", r#"{"usage":{"inputTokens":3}}"#));
        let exception = Message::new(br#"{"message":"slow down"}"#.to_vec())
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String("exception".into()),
            ))
            .add_header(Header::new(
                ":exception-type",
                HeaderValue::String("throttlingException".into()),
            ));
        write_message_to(&exception, &mut stream).expect("frame");
        let mut ours = Vec::new();
        assert_eq!(
            EventStreamParser::new().feed(&stream, |e| ours
                .push((e.event.to_owned(), e.data.to_vec()))),
            None
        );
        let mut theirs = Vec::new();
        let mut buf = bytes::Bytes::from(stream);
        let mut d = MessageFrameDecoder::new();
        while let Ok(DecodedFrame::Complete(m)) = d.decode_frame(&mut buf) {
            let header = |n: &str| {
                m.headers()
                    .iter()
                    .find(|h| h.name().as_str() == n)
                    .and_then(|h| h.value().as_string().ok())
                    .map(|s| s.as_str().to_owned())
            };
            let name = match header(":message-type").as_deref() {
                Some("exception") => header(":exception-type"),
                _ => header(":event-type"),
            };
            theirs.push((name.unwrap_or_default(), m.payload().to_vec()));
        }
        assert_eq!(ours.len(), 3);
        assert_eq!(ours, theirs);
    }
}
