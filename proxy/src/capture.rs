//! The bounded copy of a response body that Tally keeps for usage and logging.
//!
//! A body is forwarded untouched; what is kept is its head (up to `max_body_bytes`) and, past
//! that, its last 16 KiB, where JSON bodies keep their usage. A compressed body is decoded as it
//! passes, chunk by chunk, into the same bounded copy, so the usage at the end of a large gzip
//! answer (a 3 MB embeddings response, a long gzip stream) is read as exactly as an uncompressed
//! one. Decoding stops at [`DECODE_FACTOR`] × `max_body_bytes` of output, so a compression bomb
//! costs bounded CPU and no memory.

use std::collections::VecDeque;
use std::io::Write;

use bytes::Bytes;

/// How the upstream encoded the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
    /// Something we cannot decode (zstd, …): logged raw, usage not read.
    Other,
}

impl Encoding {
    pub(crate) fn from_header(value: Option<&str>) -> Self {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("identity") => Encoding::Identity,
            Some("gzip") | Some("x-gzip") => Encoding::Gzip,
            Some("deflate") => Encoding::Deflate,
            Some("br") => Encoding::Brotli,
            Some(_) => Encoding::Other,
        }
    }
}

/// Bytes kept from the end of a body that outgrew its capture, enough for a usage object.
const TAIL_BYTES: usize = 16 * 1024;

/// Compressed bytes decoded per write.
const DECODE_PIECE: usize = 256;

/// Most decoded bytes, as a multiple of `max_body_bytes`, before decoding stops.
pub(crate) const DECODE_FACTOR: usize = 64;

/// A bounded copy of a body: clones of the chunks (cheap, reference-counted) up to a limit,
/// and once past it, the last [`TAIL_BYTES`] (where JSON bodies keep their usage).
#[derive(Debug)]
pub(crate) struct Capture {
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
    pub(crate) truncated: bool,
    tail: VecDeque<Bytes>,
    tail_len: usize,
}

impl Capture {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
            limit,
            truncated: false,
            tail: VecDeque::new(),
            tail_len: 0,
        }
    }

    pub(crate) fn push(&mut self, chunk: &Bytes) {
        let room = self.limit - self.len;
        if chunk.len() <= room {
            self.chunks.push(chunk.clone());
            self.len += chunk.len();
            return;
        }
        if room > 0 {
            self.chunks.push(chunk.slice(..room));
            self.len += room;
        }
        self.truncated = true;
        self.tail.push_back(chunk.clone());
        self.tail_len += chunk.len();
        while self.tail.len() > 1
            && self.tail_len - self.tail.front().map_or(0, Bytes::len) >= TAIL_BYTES
        {
            if let Some(old) = self.tail.pop_front() {
                self.tail_len -= old.len();
            }
        }
    }

    /// As [`Capture::push`] for bytes that are not shared (decoded output): copies only what
    /// is kept, the head's room and at most [`TAIL_BYTES`] of the rest.
    pub(crate) fn push_slice(&mut self, data: &[u8]) {
        let room = self.limit - self.len;
        let (head, rest) = data.split_at(room.min(data.len()));
        if !head.is_empty() {
            self.chunks.push(Bytes::copy_from_slice(head));
            self.len += head.len();
        }
        if !rest.is_empty() {
            let keep = &rest[rest.len().saturating_sub(TAIL_BYTES)..];
            self.truncated = true;
            self.push(&Bytes::copy_from_slice(keep));
        }
    }

    /// The last bytes seen past the limit (at most one chunk more than [`TAIL_BYTES`]).
    pub(crate) fn tail(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.tail_len);
        for c in &self.tail {
            v.extend_from_slice(c);
        }
        v
    }

    pub(crate) fn into_bytes(self) -> Bytes {
        match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.into_iter().next().unwrap_or_default(),
            _ => {
                let mut v = Vec::with_capacity(self.len);
                for c in &self.chunks {
                    v.extend_from_slice(c);
                }
                v.into()
            }
        }
    }
}

/// An incremental decoder writing into a buffer that is emptied after every chunk.
enum Inner {
    Gzip(flate2::write::MultiGzDecoder<Vec<u8>>),
    Zlib(flate2::write::ZlibDecoder<Vec<u8>>),
    RawDeflate(flate2::write::DeflateDecoder<Vec<u8>>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Vec<u8>>>),
}

impl Inner {
    /// Decodes `chunk` and flushes, so everything it decodes to is in the output buffer now
    /// (the decoders otherwise keep the last output until more input arrives).
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        match self {
            Inner::Gzip(d) => d.write_all(chunk).and_then(|()| d.flush()),
            Inner::Zlib(d) => d.write_all(chunk).and_then(|()| d.flush()),
            Inner::RawDeflate(d) => d.write_all(chunk).and_then(|()| d.flush()),
            Inner::Brotli(d) => d.write_all(chunk).and_then(|()| d.flush()),
        }
    }

    fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Inner::Gzip(d) => d.get_mut(),
            Inner::Zlib(d) => d.get_mut(),
            Inner::RawDeflate(d) => d.get_mut(),
            Inner::Brotli(d) => d.get_mut(),
        }
    }
}

/// Decodes a compressed body as it passes.
pub(crate) struct Decoder {
    /// `None` until the first bytes say which deflate flavour it is, and after decoding stopped.
    inner: Option<Inner>,
    encoding: Encoding,
    decoded: usize,
    max: usize,
    /// Why decoding stopped early, if it did.
    pub(crate) stopped: Option<&'static str>,
    /// The first byte of a deflate body, when it came alone: two are needed to tell zlib from
    /// raw deflate.
    first: Option<u8>,
}

impl Decoder {
    /// A decoder for `encoding`, or `None` when there is nothing to decode (identity) or no way
    /// to (zstd and the like).
    pub(crate) fn new(encoding: Encoding, max_body_bytes: usize) -> Option<Self> {
        let inner = match encoding {
            Encoding::Identity | Encoding::Other => return None,
            Encoding::Gzip => Some(Inner::Gzip(flate2::write::MultiGzDecoder::new(Vec::new()))),
            Encoding::Brotli => Some(Inner::Brotli(Box::new(
                brotli_decompressor::DecompressorWriter::new(Vec::new(), 4096),
            ))),
            Encoding::Deflate => None,
        };
        Some(Self {
            inner,
            encoding,
            decoded: 0,
            max: max_body_bytes.saturating_mul(DECODE_FACTOR),
            stopped: None,
            first: None,
        })
    }

    /// Decodes `chunk` and hands what came out to `out`.
    pub(crate) fn feed(&mut self, chunk: &[u8], mut out: impl FnMut(&[u8])) {
        if self.stopped.is_some() || chunk.is_empty() {
            return;
        }
        if self.inner.is_none() && self.encoding == Encoding::Deflate {
            // "deflate" is zlib-wrapped per RFC 9110, but raw deflate is common in the wild:
            // a zlib stream opens with a CMF/FLG pair that is a multiple of 31.
            let (b0, b1) = match (self.first, chunk) {
                (Some(b0), [b1, ..]) => (b0, *b1),
                (None, [b0, b1, ..]) => (*b0, *b1),
                (None, [b0]) => {
                    self.first = Some(*b0);
                    return;
                }
                _ => return,
            };
            let zlib = b0 & 0x0f == 8 && (u16::from(b0) << 8 | u16::from(b1)) % 31 == 0;
            let mut inner = if zlib {
                Inner::Zlib(flate2::write::ZlibDecoder::new(Vec::new()))
            } else {
                Inner::RawDeflate(flate2::write::DeflateDecoder::new(Vec::new()))
            };
            if let Some(b0) = self.first.take() {
                // Cannot fail: the decoder has seen nothing yet.
                let _ = inner.write(&[b0]);
            }
            self.inner = Some(inner);
        }
        // Small pieces bound what one write can expand to (deflate's ratio tops out near
        // 1,000:1), so a bomb never holds more than a few hundred KiB at once.
        for piece in chunk.chunks(DECODE_PIECE) {
            let Some(inner) = self.inner.as_mut() else {
                return;
            };
            let result = inner.write(piece);
            let buf = inner.output();
            self.decoded += buf.len();
            if !buf.is_empty() {
                out(buf);
                buf.clear();
            }
            if let Err(e) = result {
                tracing::debug!(error = %e, "could not decode a compressed response; usage stops here");
                self.stop("the compressed body could not be decoded");
            } else if self.decoded > self.max {
                self.stop("the decoded body passed the decode limit");
            }
        }
    }

    fn stop(&mut self, why: &'static str) {
        self.inner = None;
        self.stopped = Some(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_encoding_names() {
        assert_eq!(Encoding::from_header(None), Encoding::Identity);
        assert_eq!(Encoding::from_header(Some("GZIP")), Encoding::Gzip);
        assert_eq!(Encoding::from_header(Some("br")), Encoding::Brotli);
        assert_eq!(Encoding::from_header(Some("zstd")), Encoding::Other);
    }

    #[test]
    fn decoded_output_is_copied_only_as_far_as_it_is_kept() {
        let mut c = Capture::new(4);
        c.push_slice(b"ab");
        c.push_slice(&vec![b'x'; 100_000]);
        c.push_slice(b"yz");
        assert!(c.truncated);
        let tail = c.tail();
        assert!(tail.len() <= TAIL_BYTES + 2 && tail.ends_with(b"xyz"));
        assert_eq!(&c.into_bytes()[..], b"abxx");
    }

    #[test]
    fn capture_is_bounded_and_flags_truncation() {
        let mut c = Capture::new(5);
        c.push(&Bytes::from_static(b"abc"));
        c.push(&Bytes::from_static(b"defg"));
        c.push(&Bytes::from_static(b"h"));
        assert!(c.truncated);
        assert_eq!(c.tail(), b"defgh");
        assert_eq!(&c.into_bytes()[..], b"abcde");
    }

    fn decode_all(encoding: Encoding, body: &[u8], chunk: usize, max: usize) -> (Vec<u8>, bool) {
        let mut d = Decoder::new(encoding, max).expect("decoder");
        let mut out = Vec::new();
        for c in body.chunks(chunk) {
            d.feed(c, |b| out.extend_from_slice(b));
        }
        (out, d.stopped.is_some())
    }

    #[test]
    fn every_encoding_decodes_incrementally_whatever_the_chunking() {
        let plain: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let gzip = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&plain).expect("gzip");
            e.finish().expect("gzip")
        };
        let zlib = {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&plain).expect("zlib");
            e.finish().expect("zlib")
        };
        let raw = {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&plain).expect("deflate");
            e.finish().expect("deflate")
        };
        for (encoding, body) in [
            (Encoding::Gzip, &gzip),
            (Encoding::Deflate, &zlib),
            (Encoding::Deflate, &raw),
        ] {
            for chunk in [1, 7, 4096, usize::MAX] {
                let (out, stopped) = decode_all(encoding, body, chunk.min(body.len()), 1 << 20);
                assert!(!stopped, "{encoding:?} {chunk}");
                assert!(out == plain, "{encoding:?} in chunks of {chunk}");
            }
        }
    }

    #[test]
    fn a_bomb_stops_at_the_decode_limit() {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&vec![0u8; 8 << 20]).expect("gzip");
        let bomb = e.finish().expect("gzip");
        let (out, stopped) = decode_all(Encoding::Gzip, &bomb, 1024, 1024);
        assert!(stopped);
        assert!(
            out.len() <= 1024 * DECODE_FACTOR + 512 * 1024,
            "{}",
            out.len()
        );
        let (_, stopped) = decode_all(Encoding::Gzip, b"not gzip at all", 4, 1024);
        assert!(
            stopped,
            "garbage stops the decoder instead of failing the stream"
        );
        assert!(Decoder::new(Encoding::Identity, 1).is_none());
        assert!(Decoder::new(Encoding::Other, 1).is_none());
    }
}
