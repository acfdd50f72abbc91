//! An incremental server-sent-events parser (the WHATWG event-stream grammar).
//!
//! Feed it the response body chunk by chunk, wherever the chunks happen to be cut; it calls back
//! once per complete event. Lines may end in LF, CR or CRLF (a CR at the end of one chunk and the
//! LF at the start of the next are one line ending), comment lines (`:`) are skipped, and several
//! `data:` lines join with `\n`. Buffers are reused across events, so steady-state parsing does
//! not allocate.

/// One dispatched event. Borrowed from the parser's buffers; copy what you keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event:` field, empty when absent (the spec's default type is `message`).
    pub event: &'a str,
    /// The `data:` lines joined with `\n`.
    pub data: &'a [u8],
}

/// Incremental parser state.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    event: String,
    data: Vec<u8>,
    has_data: bool,
    last_was_cr: bool,
    started: bool,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `chunk`, calling `on_event` for each event completed inside it.
    pub fn feed(&mut self, mut chunk: &[u8], mut on_event: impl FnMut(Event<'_>)) {
        if !self.started && !chunk.is_empty() {
            // A UTF-8 byte order mark may open the stream; it may itself be split, so only
            // strip it when whole (a split BOM is vanishingly rare and then reads as a field name).
            self.started = true;
            if let Some(rest) = chunk.strip_prefix(b"\xEF\xBB\xBF") {
                chunk = rest;
            }
        }
        while !chunk.is_empty() {
            if self.last_was_cr {
                self.last_was_cr = false;
                if chunk[0] == b'\n' {
                    chunk = &chunk[1..];
                    continue;
                }
            }
            match memchr::memchr2(b'\n', b'\r', chunk) {
                Some(i) => {
                    let (head, rest) = chunk.split_at(i);
                    self.last_was_cr = rest[0] == b'\r';
                    chunk = &rest[1..];
                    if self.line.is_empty() {
                        self.process_line(head, &mut on_event);
                    } else {
                        self.line.extend_from_slice(head);
                        let line = std::mem::take(&mut self.line);
                        self.process_line(&line, &mut on_event);
                        self.line = line;
                        self.line.clear();
                    }
                }
                None => {
                    self.line.extend_from_slice(chunk);
                    break;
                }
            }
        }
    }

    fn process_line(&mut self, line: &[u8], on_event: &mut impl FnMut(Event<'_>)) {
        if line.is_empty() {
            if self.has_data {
                on_event(Event {
                    event: &self.event,
                    data: &self.data,
                });
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.push_str(&String::from_utf8_lossy(value));
            }
            // `id` and `retry` do not matter for usage capture.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chunks(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, |e| {
                out.push((
                    e.event.to_owned(),
                    String::from_utf8_lossy(e.data).into_owned(),
                ))
            });
        }
        out
    }

    const STREAM: &[u8] = b": keep-alive comment\r\n\
event: message_start\r\n\
data: {\"a\":1}\r\n\
\r\n\
data: line one\n\
data: line two\n\
\n\
event: ping\rdata:no-space\r\r\
data: {\"usage\":{\"x\":\"\xC3\xA9\"}}\n\n\
data: [DONE]\n\n";

    fn expected() -> Vec<(String, String)> {
        vec![
            ("message_start".into(), "{\"a\":1}".into()),
            ("".into(), "line one\nline two".into()),
            ("ping".into(), "no-space".into()),
            ("".into(), "{\"usage\":{\"x\":\"é\"}}".into()),
            ("".into(), "[DONE]".into()),
        ]
    }

    #[test]
    fn parses_whole_stream() {
        assert_eq!(parse_chunks(&[STREAM]), expected());
    }

    #[test]
    fn every_single_split_point_gives_the_same_events() {
        for i in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(i);
            assert_eq!(parse_chunks(&[a, b]), expected(), "split at {i}");
        }
    }

    #[test]
    fn every_pair_of_split_points_gives_the_same_events() {
        for i in 0..=STREAM.len() {
            for j in i..=STREAM.len() {
                let (a, rest) = STREAM.split_at(i);
                let (b, c) = rest.split_at(j - i);
                assert_eq!(parse_chunks(&[a, b, c]), expected(), "split at {i},{j}");
            }
        }
    }

    #[test]
    fn byte_at_a_time() {
        let chunks: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse_chunks(&chunks), expected());
    }

    #[test]
    fn event_without_data_is_not_dispatched_and_unterminated_tail_waits() {
        assert_eq!(parse_chunks(&[b"event: x\n\n", b"data: partial"]), vec![]);
    }

    #[test]
    fn leading_bom_is_ignored() {
        assert_eq!(
            parse_chunks(&[b"\xEF\xBB\xBFdata: x\n\n"]),
            vec![("".into(), "x".into())]
        );
    }
}
