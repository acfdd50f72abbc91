//! A streamed answer translated event by event: the upstream's decoder turns each event into
//! hub [`Delta`]s, and the client's encoder writes them out as its own events at once. Nothing
//! is held back but the state a dialect needs (which content block is open, the usage so far).

use crate::{anthropic, converse, gemini, openai, Delta, Dialect};

#[derive(Debug)]
enum Decoder {
    OpenAi(openai::Decoder),
    Anthropic(anthropic::Decoder),
    Gemini(gemini::Decoder),
    Converse(converse::Decoder),
}

#[derive(Debug)]
enum Encoder {
    OpenAi(openai::Encoder),
    Anthropic(anthropic::Encoder),
}

/// Translates one stream; see the module docs.
#[derive(Debug)]
pub struct StreamTranslator {
    decoder: Decoder,
    encoder: Encoder,
    model: String,
    deltas: Vec<Delta>,
    finished: bool,
}

impl StreamTranslator {
    /// A translator from `upstream`'s events to `client`'s. `include_usage` is the OpenAI
    /// client's `stream_options.include_usage` (Anthropic streams always carry usage);
    /// `model` names the model until the upstream says which answered.
    pub fn new(upstream: Dialect, client: Dialect, include_usage: bool, model: &str) -> Self {
        let decoder = match upstream {
            Dialect::OpenAi => Decoder::OpenAi(Default::default()),
            Dialect::Anthropic => Decoder::Anthropic(Default::default()),
            Dialect::Gemini => Decoder::Gemini(Default::default()),
            Dialect::Converse => Decoder::Converse(Default::default()),
        };
        let encoder = match client {
            Dialect::Anthropic => Encoder::Anthropic(anthropic::Encoder::new(model)),
            _ => Encoder::OpenAi(openai::Encoder::new(include_usage, model)),
        };
        Self {
            decoder,
            encoder,
            model: model.to_owned(),
            deltas: Vec::new(),
            finished: false,
        }
    }

    /// One upstream event: its type (SSE `event:` field, or an event-stream frame's
    /// `:event-type`) and payload. Appends the client's events to `out`.
    pub fn event(&mut self, kind: &str, data: &[u8], out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        let mut deltas = std::mem::take(&mut self.deltas);
        match &mut self.decoder {
            Decoder::OpenAi(d) => d.event(data, &mut deltas),
            Decoder::Anthropic(d) => d.event(data, &mut deltas),
            Decoder::Gemini(d) => d.event(data, &mut deltas),
            Decoder::Converse(d) => d.event(kind, data, &self.model, &mut deltas),
        }
        for d in deltas.drain(..) {
            match &mut self.encoder {
                Encoder::OpenAi(e) => e.delta(d, out),
                Encoder::Anthropic(e) => e.delta(d, out),
            }
        }
        self.deltas = deltas;
    }

    /// The upstream stream ended: appends the client's closing events (the usage chunk and
    /// `[DONE]`, or `message_delta` and `message_stop`). Later calls do nothing.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        match &mut self.encoder {
            Encoder::OpenAi(e) => e.finish(out),
            Encoder::Anthropic(e) => e.finish(out),
        }
    }
}
