//! Reading and editing top-level JSON members the way the upstream will read them.
//!
//! Providers parse request bodies with Python's, Go's or JavaScript's JSON readers, and those
//! are more forgiving than `serde_json`'s derive: the last of two duplicate keys wins, a UTF-8
//! byte order mark is skipped, Python accepts `NaN` and `Infinity`, and a field of the wrong
//! type fails only that field's validation. Tally must read the model and the stream flag as
//! the upstream does, or a body it cannot read becomes a request it cannot price (and a
//! budget it cannot enforce). So the fields a format needs are collected by a map visitor
//! (duplicates overwrite, every other member is skipped without allocating), values are kept
//! as `serde_json::Value` and typed by the caller, and `NaN`/`Infinity` outside strings are
//! read as `null` on a second pass that only such bodies pay for.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserializer;
use serde_json::value::RawValue;
use serde_json::Value;

/// Most members one read can ask for.
pub const MAX_FIELDS: usize = 6;

/// Top-level members of a JSON object body, for the names a format asked for.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Fields {
    /// `(name, value)`; each name at most once, holding the last duplicate's value.
    values: [Option<(&'static str, Value)>; MAX_FIELDS],
    /// The body was a JSON object (possibly after the lenient fixes).
    pub object: bool,
}

impl Fields {
    /// The member's value, if the body had it.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values
            .iter()
            .flatten()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    /// The member as a string, if it is one.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }
}

/// A member name, borrowed from the input unless it had escapes. (`Cow<str>`'s own
/// `Deserialize` always allocates.)
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

struct Collect<'w> {
    wanted: &'w [&'static str],
}

type Collected = [Option<(&'static str, Value)>; MAX_FIELDS];

impl<'de> Visitor<'de> for Collect<'_> {
    type Value = Collected;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = Collected::default();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match self.wanted.iter().position(|w| *w == key) {
                // Each wanted name has its slot; a duplicate overwrites it.
                Some(i) if i < MAX_FIELDS => {
                    let v: Value = map.next_value()?;
                    values[i] = Some((self.wanted[i], v));
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(values)
    }
}

impl<'de> DeserializeSeed<'de> for Collect<'_> {
    type Value = Collected;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

fn collect(body: &[u8], wanted: &[&'static str]) -> Option<Collected> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let values = Collect { wanted }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(values)
}

/// Reads the `wanted` top-level members of `body` (at most [`MAX_FIELDS`]). Anything that is not
/// a JSON object, even leniently, gives empty [`Fields`] with `object == false`.
pub fn fields(body: &[u8], wanted: &[&'static str]) -> Fields {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let values = collect(body, wanted).or_else(|| collect(&non_finite_as_null(body)?, wanted));
    match values {
        Some(values) => Fields {
            values,
            object: true,
        },
        None => Fields::default(),
    }
}

/// `body` with every `NaN`, `Infinity` and `-Infinity` outside strings replaced by `null`, or
/// `None` when it has none (so a body that is simply broken is not parsed twice for nothing).
fn non_finite_as_null(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    let (mut in_string, mut escaped, mut changed) = (false, false, false);
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if in_string {
            out.push(b);
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        let rest = &body[i..];
        let token = [&b"-Infinity"[..], b"Infinity", b"NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t));
        match token {
            Some(t) => {
                out.extend_from_slice(b"null");
                i += t.len();
                changed = true;
            }
            None => {
                in_string = b == b'"';
                out.push(b);
                i += 1;
            }
        }
    }
    changed.then_some(out)
}

/// One top-level member of a JSON object, by byte positions in the text it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member<'a> {
    /// The key, unescaped.
    pub key: Cow<'a, str>,
    /// From the key's opening quote to the end of the value.
    pub span: Range<usize>,
    /// The value's bytes.
    pub value: Range<usize>,
}

/// The members of one object, kept on the stack for the usual handful (an OpenAI chunk has
/// about eight): this runs on every event of a stream whose usage Tally asked for.
pub type Members<'a> = smallvec::SmallVec<[Member<'a>; 12]>;

struct Spans<'a> {
    base: &'a [u8],
}

impl<'de> Visitor<'de> for Spans<'de> {
    type Value = Members<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let text = self.base;
        let not_object = || serde::de::Error::custom("not an object");
        // Between two members there is only whitespace and one comma, so each key starts at
        // the first byte after the previous value (or the opening brace) that is neither.
        let mut prev_end = text
            .iter()
            .position(|b| *b == b'{')
            .ok_or_else(not_object)?
            + 1;
        let mut out = Members::new();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let raw: &'de RawValue = map.next_value()?;
            let value = raw.get().as_bytes();
            // A borrowed RawValue is a slice of the input: its offset is its position.
            let start = value.as_ptr() as usize - text.as_ptr() as usize;
            let key_start = prev_end
                + text[prev_end..]
                    .iter()
                    .position(|b| !(b.is_ascii_whitespace() || *b == b','))
                    .ok_or_else(not_object)?;
            prev_end = start + value.len();
            out.push(Member {
                key,
                span: key_start..prev_end,
                value: start..prev_end,
            });
        }
        Ok(out)
    }
}

/// The members of the JSON object `text` with their positions, or `None` when `text` is not
/// exactly one JSON object (surrounding whitespace allowed).
pub fn members(text: &[u8]) -> Option<Members<'_>> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let members = de.deserialize_map(Spans { base: text }).ok()?;
    de.end().ok()?;
    Some(members)
}

/// The bytes to cut from the object text so that `members[i]` is gone and the rest stays valid
/// JSON, byte for byte otherwise: the member and the comma after it, or, for the last member,
/// the comma before it.
pub fn removal(members: &[Member<'_>], i: usize) -> Range<usize> {
    match (members.get(i + 1), i.checked_sub(1).map(|p| &members[p])) {
        (Some(next), _) => members[i].span.start..next.span.start,
        (None, Some(prev)) => prev.span.end..members[i].span.end,
        (None, None) => members[i].span.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WANTED: &[&str] = &["model", "stream"];

    #[test]
    fn the_last_duplicate_wins_as_in_python_go_and_js() {
        let f = fields(
            br#"{"model":"a","stream":true,"stream":false,"model":"gpt-4o-mini"}"#,
            WANTED,
        );
        assert_eq!(f.str("model"), Some("gpt-4o-mini"));
        assert_eq!(f.get("stream"), Some(&Value::Bool(false)));
        assert!(f.object);
    }

    #[test]
    fn bom_nan_and_wrong_types_do_not_blank_the_other_fields() {
        let f = fields(b"\xEF\xBB\xBF{\"model\":\"m\"}", WANTED);
        assert_eq!(f.str("model"), Some("m"));
        let f = fields(
            br#"{"temperature":NaN,"top_p":-Infinity,"model":"m","note":"NaN stays"}"#,
            &["model", "note"],
        );
        assert_eq!(f.str("model"), Some("m"));
        assert_eq!(f.str("note"), Some("NaN stays"));
        let f = fields(br#"{"model":"m","stream":"yes"}"#, WANTED);
        assert_eq!(f.str("model"), Some("m"));
        assert_eq!(f.get("stream").and_then(Value::as_bool), None);
    }

    #[test]
    fn non_objects_read_as_nothing() {
        for body in [&b"[1,2]"[..], b"", b"\xff\x00", b"{\"model\":", b"{} {}"] {
            let f = fields(body, WANTED);
            assert!(!f.object, "{body:?}");
            assert_eq!(f.get("model"), None);
        }
    }

    #[test]
    fn member_positions_allow_exact_removal() {
        for (text, key, expected) in [
            (r#"{"a":1,"usage":null}"#, "usage", r#"{"a":1}"#),
            (r#"{"usage":null,"a":1}"#, "usage", r#"{"a":1}"#),
            (r#"{"a":1,"usage":null,"b":2}"#, "usage", r#"{"a":1,"b":2}"#),
            (
                r#"{ "a" : 1 , "usage" : null , "b": [ ] }"#,
                "usage",
                r#"{ "a" : 1 , "b": [ ] }"#,
            ),
            (r#"{ "a": 1,  "usage": null }"#, "usage", r#"{ "a": 1 }"#),
            (r#"{"usage":null}"#, "usage", r#"{}"#),
            (r#"{"\u0075sage":null,"a":"x"}"#, "usage", r#"{"a":"x"}"#),
        ] {
            let m = members(text.as_bytes()).expect(text);
            assert!(!m.spilled(), "kept on the stack");
            let i = m.iter().position(|m| m.key == key).expect("key");
            let cut = removal(&m, i);
            let mut out = text.as_bytes().to_vec();
            out.drain(cut);
            assert_eq!(String::from_utf8(out).expect("utf8"), expected, "{text}");
        }
        assert!(members(b"[1]").is_none());
        assert!(members(b"{\"a\":1} x").is_none());
    }
}
