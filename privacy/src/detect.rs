//! The detectors: where in a text each kind of value is.
//!
//! Texts are stored bodies, which are mostly raw JSON (and SSE streams of JSON). Two things
//! follow. A value often sits right after an escape (`\nbob@example.com`), where the escape's
//! letter makes a word character next to it, so `\b` would miss it: boundaries are checked by
//! hand and an escape's letter counts as a boundary. And a replacement must not split an
//! escape or a quote, so every match ends on a character of its own kind.
//!
//! Candidates are found with regexes; a candidate counts only once its own check passes: Luhn
//! for cards, the IBAN checksum (`iban_validate`), the phone number plan of its country
//! (`phonenumber`, Google's libphonenumber metadata), the SSA's rules for SSNs, the standard
//! library's address parsers for IPs. Secrets share one regex whose alternatives all start with
//! a literal prefix, so finding none costs one fast prefilter pass over the text.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::Regex;

/// A value found in a text: its byte range and which detector found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    /// Start, in bytes.
    pub start: usize,
    /// End (exclusive), in bytes.
    pub end: usize,
    /// Index of the detector in [`Detectors::names`].
    pub detector: usize,
}

/// The built-in detectors, in the order of their indexes.
pub const BUILTIN: [&str; 14] = [
    "email",
    "phone",
    "card",
    "iban",
    "ssn",
    "ip",
    "openai_key",
    "anthropic_key",
    "aws_key",
    "github_token",
    "google_api_key",
    "slack_token",
    "jwt",
    "private_key",
];

/// Which of [`BUILTIN`] are secrets (masked by default); the rest are personal data.
pub fn is_secret(name: &str) -> bool {
    BUILTIN[6..].contains(&name)
}

const EMAIL: usize = 0;
const PHONE: usize = 1;
const CARD: usize = 2;
const IBAN: usize = 3;
const SSN: usize = 4;
const IP: usize = 5;
const OPENAI: usize = 6;
const ANTHROPIC: usize = 7;
const AWS: usize = 8;
const GITHUB: usize = 9;
const GOOGLE: usize = 10;
const SLACK: usize = 11;
const JWT: usize = 12;
const PRIVATE_KEY: usize = 13;

fn re(pattern: &str) -> Regex {
    #[allow(clippy::expect_used)]
    Regex::new(pattern).expect("built-in patterns compile (unit-tested)")
}

static EMAIL_RE: LazyLock<Regex> =
    LazyLock::new(|| re(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}"));
// A phone candidate: an optional +country code, then digit groups with the separators people
// write. Plain digit runs without a separator or a + are not candidates: ids, order numbers
// and timestamps look exactly like them.
static PHONE_RE: LazyLock<Regex> = LazyLock::new(|| {
    re(concat!(
        // +country (with the trunk zero some write as "(0)"), (area), then groups.
        r"(?:(?:\+\d{1,3}(?: ?\(0\))?[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{1,5}(?:[ .-]\d{1,8}){1,5}",
        // (area) and the rest in one run: "(0117)4960893".
        r"|\(\d{1,5}\)[ .-]?\d{3,10}",
        // +country and the rest in one run.
        r"|\+\d{1,3}(?: ?\(0\))? ?\d{6,14})",
        // An extension stays with its number.
        r"(?: ?(?:x|ext\.?) ?\d{1,6})?"
    ))
});
static CARD_RE: LazyLock<Regex> = LazyLock::new(|| re(r"\d(?:[ -]?\d){12,18}"));
static IBAN_RE: LazyLock<Regex> =
    LazyLock::new(|| re(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?"));
static SSN_RE: LazyLock<Regex> = LazyLock::new(|| re(r"\d{3}-\d{2}-\d{4}"));
static IPV4_RE: LazyLock<Regex> = LazyLock::new(|| re(r"\d{1,3}(?:\.\d{1,3}){3}"));
static IPV6_RE: LazyLock<Regex> =
    LazyLock::new(|| re(r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}"));
// Every alternative starts with a literal, so the regex engine's prefilter skips text that
// holds none of them. Which secret it is follows from the prefix (`secret_kind`).
static SECRETS_RE: LazyLock<Regex> = LazyLock::new(|| {
    re(concat!(
        r"sk-ant-[A-Za-z0-9_-]{20,}",
        r"|sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}",
        r"|(?:AKIA|ASIA)[A-Z0-9]{16}",
        r"|gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}",
        r"|AIza[0-9A-Za-z_-]{35}",
        r"|xox[abposr]-[0-9A-Za-z-]{10,250}",
        r"|eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,}",
        r"|-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----",
        // An AWS secret access key is 40 characters of base64 with no prefix of its own; it
        // counts where it is labelled as one (next to an access key id: `aws_secret_near`).
        r"|(?i:aws_?secret_?access_?key|secret_?access_?key|aws_?secret_?key)",
    ))
});
static AWS_LABELLED_RE: LazyLock<Regex> =
    LazyLock::new(|| re(r#"^(?i:[a-z_]*key)\\?["']?\s*(?:[:=]|=>)\s*\\?["']?([A-Za-z0-9/+]{40})"#));
static AWS_SECRET_RE: LazyLock<Regex> = LazyLock::new(|| re(r"[A-Za-z0-9/+]{40}"));
static PEM_END_RE: LazyLock<Regex> =
    LazyLock::new(|| re(r"-----END [A-Z0-9 ]{0,40}PRIVATE KEY-----"));

/// How far from an AWS access key id its secret is looked for, in bytes either side.
const AWS_SECRET_WINDOW: usize = 256;

/// A configured regex detector.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// The detector's name.
    pub name: String,
    /// What it matches.
    pub regex: Regex,
}

/// A configured word list: whole words, ASCII case-insensitive unless asked otherwise.
#[derive(Debug, Clone)]
pub struct Words {
    /// The detector's name.
    pub name: String,
    /// The compiled list.
    pub matcher: AhoCorasick,
}

impl Words {
    /// Compiles `words` into one automaton.
    pub fn new(
        name: String,
        words: &[String],
        case_insensitive: bool,
    ) -> Result<Self, aho_corasick::BuildError> {
        let matcher = AhoCorasickBuilder::new()
            .ascii_case_insensitive(case_insensitive)
            .match_kind(MatchKind::LeftmostLongest)
            .build(words.iter().filter(|w| !w.is_empty()))?;
        Ok(Self { name, matcher })
    }
}

/// Every detector: the built-in ones, then configured patterns, then word lists.
#[derive(Debug, Clone)]
pub struct Detectors {
    names: Vec<String>,
    patterns: Vec<Pattern>,
    words: Vec<Words>,
    region: phonenumber::country::Id,
}

impl Detectors {
    /// The built-in detectors plus the configured ones; phone numbers without a `+` are read
    /// as numbers of `region`.
    pub fn new(
        patterns: Vec<Pattern>,
        words: Vec<Words>,
        region: phonenumber::country::Id,
    ) -> Self {
        // Compile the built-in regexes now, not on the first record.
        for r in [
            &EMAIL_RE,
            &PHONE_RE,
            &CARD_RE,
            &IBAN_RE,
            &SSN_RE,
            &IPV4_RE,
            &IPV6_RE,
            &SECRETS_RE,
            &AWS_LABELLED_RE,
            &AWS_SECRET_RE,
            &PEM_END_RE,
        ] {
            LazyLock::force(r);
        }
        let names = BUILTIN
            .iter()
            .map(|s| (*s).to_owned())
            .chain(patterns.iter().map(|p| p.name.clone()))
            .chain(words.iter().map(|w| w.name.clone()))
            .collect();
        Self {
            names,
            patterns,
            words,
            region,
        }
    }

    /// The country phone numbers without a `+` are read in.
    pub fn region(&self) -> phonenumber::country::Id {
        self.region
    }

    /// Detector names by index.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The index of a detector by name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Finds what the detectors `on` (indexed as [`Detectors::names`]) see in `text`, in
    /// order, without overlaps: where two findings overlap, the one starting first wins, and
    /// of two starting together the longer.
    pub fn find(&self, text: &str, on: &[bool]) -> Vec<Finding> {
        let mut found = Vec::new();
        let is = |i: usize| on.get(i).copied().unwrap_or(false);
        if (OPENAI..=PRIVATE_KEY).any(is) {
            secrets(text, &mut |f| {
                if is(f.detector) {
                    found.push(f)
                }
            });
        }
        if is(EMAIL) && memchr::memchr(b'@', text.as_bytes()).is_some() {
            emails(text, &mut found);
        }
        let has_digit = text.bytes().any(|b| b.is_ascii_digit());
        if has_digit {
            if is(CARD) {
                cards(text, &mut found);
            }
            if is(IBAN) {
                ibans(text, &mut found);
            }
            if is(SSN) {
                ssns(text, &mut found);
            }
            if is(PHONE) {
                phones(text, self.region, &mut found);
            }
        }
        if is(IP) {
            ips(text, has_digit, &mut found);
        }
        for (i, p) in self.patterns.iter().enumerate() {
            if is(BUILTIN.len() + i) {
                for m in p.regex.find_iter(text) {
                    if !m.is_empty() {
                        found.push(finding(m.start(), m.end(), BUILTIN.len() + i));
                    }
                }
            }
        }
        let first_word = BUILTIN.len() + self.patterns.len();
        for (i, w) in self.words.iter().enumerate() {
            if is(first_word + i) {
                for m in w.matcher.find_iter(text) {
                    if left_ok(text, m.start()) && right_ok(text, m.end()) {
                        found.push(finding(m.start(), m.end(), first_word + i));
                    }
                }
            }
        }
        if memchr::memchr(b'\\', text.as_bytes()).is_some() {
            off_escapes(text, &mut found);
        }
        resolve_overlaps(found)
    }
}

/// Moves every finding's ends off the inside of a JSON escape, whichever detector made it
/// (configured patterns and word lists know nothing of escapes): a replacement that starts
/// after an escape's backslash, or ends inside `\uXXXX`, would leave a broken escape and
/// broken JSON. The start moves past the escape, the end back before it; a finding left empty
/// is dropped. The built-in finders also step over an escape before they validate a candidate
/// (`skip_escape`), which is about finding the value at all; this is about never breaking
/// the text.
fn off_escapes(text: &str, found: &mut Vec<Finding>) {
    let b = text.as_bytes();
    found.retain_mut(|f| {
        if let Some((at, len)) = escape_covering(b, f.start) {
            if at < f.start {
                f.start = at + len;
            }
        }
        if let Some((at, len)) = f.end.checked_sub(1).and_then(|i| escape_covering(b, i)) {
            if at + len > f.end {
                f.end = at;
            }
        }
        f.start < f.end
    });
}

/// The JSON escape that byte `i` belongs to, if any: where its backslash is, and its length
/// (2, or 6 for `\uXXXX`).
fn escape_covering(b: &[u8], i: usize) -> Option<(usize, usize)> {
    // The nearest backslash at or before `i`, at most five bytes back (`\uXXXX`).
    let at = (i.saturating_sub(5)..=i)
        .rev()
        .find(|&j| b.get(j) == Some(&b'\\'))?;
    // After an odd run of backslashes, this one is the second half of `\\`.
    let run = b[..at].iter().rev().take_while(|&&c| c == b'\\').count();
    let (start, len) = if run % 2 == 1 {
        (at - 1, 2)
    } else if b.get(at + 1) == Some(&b'u')
        && b.get(at + 2..at + 6)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    {
        (at, 6)
    } else {
        (at, 2)
    };
    (i < start + len).then_some((start, len))
}

fn finding(start: usize, end: usize, detector: usize) -> Finding {
    Finding {
        start,
        end,
        detector,
    }
}

fn resolve_overlaps(mut found: Vec<Finding>) -> Vec<Finding> {
    if found.len() < 2 {
        return found;
    }
    found.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    let mut kept: Vec<Finding> = Vec::with_capacity(found.len());
    for f in found {
        if kept.last().is_none_or(|k| f.start >= k.end) {
            kept.push(f);
        }
    }
    kept
}

/// Whether a value may start at `start`: at the text's start, after a character that is not
/// a letter, digit or `_`, or right after a JSON escape (`\n`, `\t`, `\"`, `\uXXXX`).
fn left_ok(text: &str, start: usize) -> bool {
    let b = text.as_bytes();
    if start == 0 {
        return true;
    }
    let prev = b[start - 1];
    if !(prev.is_ascii_alphanumeric() || prev == b'_') {
        return true;
    }
    // `\n` + value: the letter belongs to the escape.
    if start >= 2 && b[start - 2] == b'\\' && matches!(prev, b'n' | b'r' | b't' | b'b' | b'f') {
        return true;
    }
    // `\u00a0` + value.
    start >= 6
        && b[start - 6] == b'\\'
        && b[start - 5] == b'u'
        && b[start - 4..start].iter().all(u8::is_ascii_hexdigit)
}

/// Whether a value may end at `end`: at the text's end or before a character that is not a
/// letter, digit or `_`.
fn right_ok(text: &str, end: usize) -> bool {
    text.as_bytes()
        .get(end)
        .is_none_or(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
}

/// Moves a match's start past a JSON escape it swallowed: `\nbob@…` → `bob@…`, and
/// `\u0001bob@…` → `bob@…` (the fuzz target found the second: a control character before an
/// address, masked with its `u0001`, left a lone `\` that broke the JSON).
fn skip_escape(text: &str, start: usize) -> usize {
    let b = text.as_bytes();
    if start == 0 || b[start - 1] != b'\\' {
        return start;
    }
    match b.get(start) {
        Some(b'n' | b'r' | b't' | b'b' | b'f') => start + 1,
        Some(b'u')
            if b.get(start + 1..start + 5)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
        {
            start + 5
        }
        _ => start,
    }
}

fn emails(text: &str, found: &mut Vec<Finding>) {
    for m in EMAIL_RE.find_iter(text) {
        let start = skip_escape(text, m.start());
        let local = &text[start..];
        // The local part must not start or end with a dot, nor be empty after the escape.
        if local.starts_with(['.', '@']) || text[start..m.end()].contains(".@") {
            continue;
        }
        if left_ok(text, start) && right_ok(text, m.end()) {
            found.push(finding(start, m.end(), EMAIL));
        }
    }
}

fn digits_of(s: &str) -> impl Iterator<Item = u32> + '_ {
    s.bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| u32::from(b - b'0'))
}

/// The Luhn checksum, as card numbers carry it.
pub fn luhn(number: &str) -> bool {
    let digits: Vec<u32> = digits_of(number).collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| match (i % 2, d * 2) {
            (1, x) if x > 9 => x - 9,
            (1, x) => x,
            _ => d,
        })
        .sum();
    !digits.is_empty() && sum.is_multiple_of(10)
}

fn number_ok(text: &str, start: usize, end: usize) -> bool {
    let b = text.as_bytes();
    let digit_or_letter = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let before = start.checked_sub(1).map(|i| b[i]);
    // `1.5` / `-` joined on a digit (a decimal, a longer dashed id) is not a boundary.
    let joined_before =
        start >= 2 && matches!(b[start - 1], b'.' | b'-') && b[start - 2].is_ascii_digit();
    let joined_after = b.get(end).is_some_and(|&c| matches!(c, b'.' | b'-'))
        && b.get(end + 1).is_some_and(u8::is_ascii_digit);
    (before.is_none_or(|c| !digit_or_letter(c)) || left_ok(text, start))
        && right_ok(text, end)
        && !joined_before
        && !joined_after
}

fn cards(text: &str, found: &mut Vec<Finding>) {
    for m in CARD_RE.find_iter(text) {
        let s = m.as_str();
        // Issuer identification: cards start with 2–6 (Mastercard 2 and 5, Amex and Diners 3,
        // Visa 4, Discover 6); one separator style throughout.
        if !(b'2'..=b'6').contains(&s.as_bytes()[0]) || (s.contains(' ') && s.contains('-')) {
            continue;
        }
        // The pattern may have taken a following group of digits (a year, a count): try the
        // shorter spans ending at each separator too, longest first.
        let ends = s
            .match_indices([' ', '-'])
            .map(|(i, _)| i)
            .chain([s.len()])
            .collect::<Vec<_>>();
        for &e in ends.iter().rev() {
            let n = digits_of(&s[..e]).count();
            if n < 13 {
                break;
            }
            if issuer_length_ok(s.as_bytes()[0], n)
                && luhn(&s[..e])
                && number_ok(text, m.start(), m.start() + e)
            {
                found.push(finding(m.start(), m.start() + e, CARD));
                break;
            }
        }
    }
}

/// Lengths the issuers use by first digit: Diners 14, Amex 15, 16 for most, 17–19 for some
/// Visa, Maestro, UnionPay and JCB. Thirteen digits (the retired short Visa) are left out:
/// one barcode in ten passes Luhn, and EAN-13 barcodes are far more common in text.
fn issuer_length_ok(first: u8, digits: usize) -> bool {
    match digits {
        14 | 15 => first == b'3',
        16 => (b'2'..=b'6').contains(&first),
        17..=19 => (b'3'..=b'6').contains(&first),
        _ => false,
    }
}

fn ibans(text: &str, found: &mut Vec<Finding>) {
    for m in IBAN_RE.find_iter(text) {
        if !left_ok(text, m.start()) {
            continue;
        }
        // The pattern may take a following word in capitals as a last group; try shorter
        // spans, group by group, until one is a valid IBAN.
        let mut end = m.end();
        while end > m.start() + 15 {
            let candidate: String = text[m.start()..end].chars().filter(|c| *c != ' ').collect();
            if right_ok(text, end) && candidate.parse::<iban::Iban>().is_ok() {
                found.push(finding(m.start(), end, IBAN));
                break;
            }
            match text[m.start()..end].rfind(' ') {
                Some(space) => end = m.start() + space,
                None => break,
            }
        }
    }
}

fn ssns(text: &str, found: &mut Vec<Finding>) {
    for m in SSN_RE.find_iter(text) {
        let s = m.as_str().as_bytes();
        let area =
            (u32::from(s[0] - b'0') * 100) + (u32::from(s[1] - b'0') * 10) + u32::from(s[2] - b'0');
        let group = &s[4..6];
        let serial = &s[7..11];
        // The SSA never issues area 000, 666 or 900–999, group 00 or serial 0000.
        if area == 0 || area == 666 || area >= 900 || group == b"00" || serial == b"0000" {
            continue;
        }
        if number_ok(text, m.start(), m.end()) {
            found.push(finding(m.start(), m.end(), SSN));
        }
    }
}

fn looks_like_date_or_time(s: &str) -> bool {
    let b = s.as_bytes();
    // 2024-05-13, 2024.05.13, 13-05-2024 and the like.
    let groups: Vec<&str> = s.split(['-', '.', ' ', '/']).collect();
    let year_first =
        groups.len() == 3 && groups[0].len() == 4 && groups[1].len() == 2 && groups[2].len() == 2;
    let year_last =
        groups.len() == 3 && groups[0].len() == 2 && groups[1].len() == 2 && groups[2].len() == 4;
    (year_first || year_last) && !b.contains(&b'+')
}

fn phones(text: &str, region: phonenumber::country::Id, found: &mut Vec<Finding>) {
    for m in PHONE_RE.find_iter(text) {
        let s = m.as_str();
        let n = digits_of(s).count();
        if !(7..=15).contains(&n) || looks_like_date_or_time(s) {
            continue;
        }
        let start = m.start();
        // A colon next to it makes it part of a time: `19:05:57.498202`.
        let b = text.as_bytes();
        let timed = start.checked_sub(1).is_some_and(|i| b[i] == b':')
            || b.get(m.end()).is_some_and(|&c| c == b':');
        if timed || !number_ok(text, start, m.end()) {
            continue;
        }
        let region = if s.starts_with('+') {
            None
        } else {
            Some(region)
        };
        if let Ok(number) = phonenumber::parse(region, s) {
            if phonenumber::is_valid(&number) {
                found.push(finding(start, m.end(), PHONE));
            }
        }
    }
}

fn ips(text: &str, has_digit: bool, found: &mut Vec<Finding>) {
    if has_digit && memchr::memchr(b'.', text.as_bytes()).is_some() {
        for m in IPV4_RE.find_iter(text) {
            if m.as_str().parse::<Ipv4Addr>().is_ok() && number_ok(text, m.start(), m.end()) {
                found.push(finding(m.start(), m.end(), IP));
            }
        }
    }
    if memchr::memmem::find(text.as_bytes(), b":").is_some() {
        for m in IPV6_RE.find_iter(text) {
            // `\b` and `\f` end in hex digits: `\bfe80::1` must not take the escape's letter.
            let start = skip_escape(text, m.start());
            let s = &text[start..m.end()];
            // `std::fs`, `12:30:45`: too few hex digits to be an address anyone wrote out.
            let hex = s.bytes().filter(u8::is_ascii_hexdigit).count();
            if hex >= 4
                && s.parse::<Ipv6Addr>().is_ok()
                && left_ok(text, start)
                && text
                    .as_bytes()
                    .get(m.end())
                    .is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == b':' || *c == b'_'))
            {
                found.push(finding(start, m.end(), IP));
            }
        }
    }
}

fn secrets(text: &str, push: &mut dyn FnMut(Finding)) {
    let mut aws_ids: Vec<(usize, usize)> = Vec::new();
    // The end of the last private key: a BEGIN line inside it is part of it, and is not
    // searched from again (a body of repeated BEGIN lines would otherwise cost n²).
    let mut pem_until = 0;
    for m in SECRETS_RE.find_iter(text) {
        if m.start() < pem_until {
            continue;
        }
        let s = m.as_str();
        let lower = s.get(..6).unwrap_or(s).to_ascii_lowercase();
        if lower.starts_with("aws") || lower.starts_with("secret") {
            // A secret-access-key label (inside a longer name too): the value after it.
            if let Some(c) = AWS_LABELLED_RE
                .captures(&text[m.start()..])
                .and_then(|c| c.get(1))
            {
                let (a, b) = (m.start() + c.start(), m.start() + c.end());
                if right_ok(text, b) {
                    push(finding(a, b, AWS));
                }
            }
            continue;
        }
        if !left_ok(text, m.start()) {
            continue;
        }
        if s.starts_with("-----BEGIN") {
            pem_until = pem_end(text, m.end());
            push(finding(m.start(), pem_until, PRIVATE_KEY));
            continue;
        }
        if !right_ok(text, m.end()) {
            continue;
        }
        let detector = if s.starts_with("sk-ant-") {
            ANTHROPIC
        } else if s.starts_with("sk-") {
            // Slugs like `sk-this-is-long-enough` are not keys: a random key has digits.
            if !s.bytes().any(|b| b.is_ascii_digit()) {
                continue;
            }
            OPENAI
        } else if s.starts_with("AKIA") || s.starts_with("ASIA") {
            aws_ids.push((m.start(), m.end()));
            AWS
        } else if s.starts_with("gh") || s.starts_with("github_pat_") {
            GITHUB
        } else if s.starts_with("AIza") {
            GOOGLE
        } else if s.starts_with("xox") {
            SLACK
        } else {
            JWT
        };
        push(finding(m.start(), m.end(), detector));
    }
    for (a, b) in aws_ids {
        aws_secret_near(text, a, b, push);
    }
}

/// A secret key next to an access key id, in the shape credentials files and code hold them.
fn aws_secret_near(text: &str, id_start: usize, id_end: usize, push: &mut dyn FnMut(Finding)) {
    let from = floor_char(text, id_start.saturating_sub(AWS_SECRET_WINDOW));
    let to = ceil_char(text, (id_end + AWS_SECRET_WINDOW).min(text.len()));
    for m in AWS_SECRET_RE.find_iter(&text[from..to]) {
        let (a, b) = (from + m.start(), from + m.end());
        let s = m.as_str();
        let mixed = s.bytes().any(|c| c.is_ascii_lowercase())
            && s.bytes().any(|c| c.is_ascii_uppercase())
            && s.bytes().any(|c| c.is_ascii_digit());
        let bounded =
            text.as_bytes().get(b).is_none_or(|c| {
                !(c.is_ascii_alphanumeric() || *c == b'/' || *c == b'+' || *c == b'=')
            }) && (a == 0 || !matches!(text.as_bytes()[a - 1], b'/' | b'+') && left_ok(text, a));
        if mixed && bounded {
            push(finding(a, b, AWS));
        }
    }
}

/// Where a PEM key that starts before `from` ends: after its END line, or, when the END line
/// is missing (a truncated body), at the end of the JSON string it sits in.
fn pem_end(text: &str, from: usize) -> usize {
    // Not past the string it started in.
    let closing = json_string_end(text, from);
    match PEM_END_RE.find(&text[from..closing]) {
        Some(m) => from + m.end(),
        None => closing,
    }
}

/// The offset of the next unescaped `"` at or after `from`, or the text's end.
fn json_string_end(text: &str, from: usize) -> usize {
    let b = text.as_bytes();
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i,
            _ => i += 1,
        }
    }
    b.len()
}

fn floor_char(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// The value `hash` mode keys its HMAC with: equal values that are written differently hash
/// alike (an email in any case, a phone number as E.164, a card or IBAN without spaces).
pub fn normalize(detector: usize, value: &str, region: phonenumber::country::Id) -> String {
    match detector {
        EMAIL => value.to_ascii_lowercase(),
        PHONE => {
            let region = if value.starts_with('+') {
                None
            } else {
                Some(region)
            };
            phonenumber::parse(region, value)
                .map(|n| n.format().mode(phonenumber::Mode::E164).to_string())
                .unwrap_or_else(|_| value.to_owned())
        }
        CARD | SSN => value.chars().filter(char::is_ascii_digit).collect(),
        IBAN => value.chars().filter(|c| *c != ' ').collect(),
        IP => match value.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => value.to_owned(),
        },
        _ => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str, detector: &str) -> Vec<String> {
        let d = Detectors::new(Vec::new(), Vec::new(), phonenumber::country::Id::US);
        let i = d.index(detector).unwrap_or_else(|| panic!("{detector}"));
        let mut on = vec![false; d.names().len()];
        on[i] = true;
        d.find(text, &on)
            .into_iter()
            .map(|f| text[f.start..f.end].to_owned())
            .collect()
    }

    #[test]
    fn emails_inside_json_escapes_and_not_in_handles() {
        assert_eq!(
            found(
                r#"{"content":"write to\nbob.smith+tag@mail.example.co.uk today"}"#,
                "email"
            ),
            ["bob.smith+tag@mail.example.co.uk"]
        );
        assert_eq!(
            found("mail ALICE@EXAMPLE.COM.", "email"),
            ["ALICE@EXAMPLE.COM"]
        );
        assert!(found("@handle and user@localhost and a@b", "email").is_empty());
        // A control character before the address, as JSON writes it (found by fuzzing).
        assert_eq!(
            found(r#"{"content":"\u0001bob@x.io\tok"}"#, "email"),
            ["bob@x.io"]
        );
        // A backspace before an IPv6 address: `b` is a hex digit (found by fuzzing).
        assert_eq!(
            found(r#"{"content":"\b80::1ff:fe23:4567 ok"}"#, "ip"),
            ["80::1ff:fe23:4567"]
        );
    }

    /// Configured patterns and word lists know nothing of JSON escapes; whatever they match,
    /// a finding never starts or ends inside one, so a replacement cannot break the JSON.
    #[test]
    fn no_finding_starts_or_ends_inside_an_escape() {
        let pattern = |re: &str| Pattern {
            name: "p".into(),
            regex: Regex::new(re).expect("regex"),
        };
        let words = Words::new("w".into(), &["ab".into()], true).expect("words");
        let d = Detectors::new(
            vec![pattern(r"\w+@corp"), pattern(r"tok.."), pattern(r"00e9")],
            vec![words],
            phonenumber::country::Id::US,
        );
        // Only the configured detectors.
        let on: Vec<bool> = (0..d.names().len()).map(|i| i >= BUILTIN.len()).collect();
        let spans = |text: &str| -> Vec<String> {
            d.find(text, &on)
                .into_iter()
                .map(|f| text[f.start..f.end].to_owned())
                .collect()
        };
        // `\w+` takes the `n` of `\n`; `tok..` the backslash of `\"` or half of `\\`.
        assert_eq!(spans(r#""hi\nbob@corp""#), ["bob@corp"]);
        assert_eq!(spans(r#""a tok1\" b""#), ["tok1"]);
        assert_eq!(spans(r#""a tok1\\ b""#), ["tok1"]);
        // An escaped backslash before `n`: `\\n` is a backslash and a letter, not an escape.
        assert_eq!(spans(r#""c:\\nbob@corp""#), ["nbob@corp"]);
        // Wholly inside `\u00e9`: nothing is left once moved out of it.
        assert_eq!(spans(r#""caf\u00e9x""#), Vec::<String>::new());
        // A word right after `\t` is matched whole (the letter is a boundary).
        assert_eq!(spans(r#""x\tab y""#), ["ab"]);
    }

    #[test]
    fn cards_need_luhn_an_issuer_digit_and_boundaries() {
        assert_eq!(
            found("card 4111 1111 1111 1111 ok", "card"),
            ["4111 1111 1111 1111"]
        );
        assert_eq!(
            found(r#"pay\n5555-5555-5555-4444"#, "card"),
            ["5555-5555-5555-4444"]
        );
        assert_eq!(found("amex 378282246310005", "card"), ["378282246310005"]);
        // Luhn fails, or a 16-digit id inside a longer run, a decimal, a UUID, or mixed seps.
        assert!(found("4111 1111 1111 1112", "card").is_empty());
        assert!(found("id 94111111111111111111", "card").is_empty());
        assert!(found("1.4111111111111111", "card").is_empty());
        assert!(found("123e4567-e89b-12d3-a456-426614174000", "card").is_empty());
        assert!(found("4111 1111-1111 1111", "card").is_empty());
        // Starts with 1, 7, 8, 9 or 0: order numbers, not cards (this one passes Luhn).
        assert!(found("order 1000000000000008", "card").is_empty());
        // Thirteen digits: a barcode far more often than the retired short Visa, even when
        // Luhn passes; and an issuer's lengths (Amex is 15 digits and starts with 3).
        assert!(found("ean 4733539838757", "card").is_empty());
        assert!(found("5105 1051 0510 515", "card").is_empty());
    }

    #[test]
    fn luhn_matches_the_published_test_numbers() {
        for good in [
            "4111111111111111",
            "4012888888881881",
            "6011111111111117",
            "30569309025904",
        ] {
            assert!(luhn(good), "{good}");
        }
        for bad in ["4111111111111121", "1234567812345678", ""] {
            assert!(!luhn(bad), "{bad}");
        }
    }

    #[test]
    fn ibans_are_checksum_checked_and_a_following_word_is_not_taken() {
        assert_eq!(
            found("to DE89 3704 0044 0532 0130 00 THEN stop", "iban"),
            ["DE89 3704 0044 0532 0130 00"]
        );
        assert_eq!(
            found("GB82WEST12345698765432", "iban"),
            ["GB82WEST12345698765432"]
        );
        assert!(found("DE88 3704 0044 0532 0130 00", "iban").is_empty());
    }

    #[test]
    fn ssns_follow_the_ssa_rules() {
        assert_eq!(found("ssn 536-22-1234.", "ssn"), ["536-22-1234"]);
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "912-12-3456",
            "536-00-1234",
            "536-22-0000",
            "1536-22-1234",
        ] {
            assert!(found(bad, "ssn").is_empty(), "{bad}");
        }
    }

    #[test]
    fn phones_are_valid_numbers_with_separators_or_a_plus() {
        assert_eq!(
            found("call (415) 555-2671 now", "phone"),
            ["(415) 555-2671"]
        );
        assert_eq!(found("or +44 20 7946 0958.", "phone"), ["+44 20 7946 0958"]);
        assert_eq!(found(r#"\n+14155552671"#, "phone"), ["+14155552671"]);
        assert_eq!(found("415-555-2671", "phone"), ["415-555-2671"]);
        // The trunk zero in parentheses, an area in parentheses before one run, extensions.
        assert_eq!(
            found("ring +44(0)20 7946 0958 today", "phone"),
            ["+44(0)20 7946 0958"]
        );
        assert_eq!(found("or +49 (0)30 901820", "phone"), ["+49 (0)30 901820"]);
        assert_eq!(
            found("call (415)5552671 x204.", "phone"),
            ["(415)5552671 x204"]
        );
        assert_eq!(found("415-555-2671x99", "phone"), ["415-555-2671x99"]);
        // Part of a time.
        assert!(found("at 1981-07-11T19:05:57.498202", "phone").is_empty());
        // Dates, versions, plain ids and numbers no plan has.
        for bad in [
            "2024-05-13",
            "13.05.2024",
            "order 4155552671",
            "v1.2.3",
            "123-45",
            "000-000-0000",
            "10:30:00",
        ] {
            assert!(found(bad, "phone").is_empty(), "{bad}");
        }
    }

    #[test]
    fn ips_v4_and_v6_but_not_versions_times_or_paths() {
        assert_eq!(found("from 192.168.1.20, then", "ip"), ["192.168.1.20"]);
        assert_eq!(
            found("addr 2001:db8::8a2e:370:7334 x", "ip"),
            ["2001:db8::8a2e:370:7334"]
        );
        for bad in [
            "1.2.3.4.5",
            "999.1.1.1",
            "12:30:45",
            "std::fs::read",
            "a::b",
        ] {
            assert!(found(bad, "ip").is_empty(), "{bad}");
        }
    }

    #[test]
    fn secrets_by_their_prefixes() {
        let openai = "sk-proj-Ab3dEfGhIjKlMnOpQrStUvWxYz0123456789";
        let anthropic = "sk-ant-api03-Ab3dEfGhIjKlMnOpQrStUvWxYz0123456789-AA";
        assert_eq!(
            found(&format!(r#"{{"k":"{openai}"}}"#), "openai_key"),
            [openai]
        );
        assert_eq!(found(anthropic, "anthropic_key"), [anthropic]);
        assert!(found(anthropic, "openai_key").is_empty());
        assert!(found("task-management-system-design-2024", "openai_key").is_empty());
        assert!(found("sk-this-is-just-a-long-slug-name", "openai_key").is_empty());
        let gh = format!("ghp_{}", "a1B2c3D4e5".repeat(4));
        assert_eq!(found(&gh, "github_token"), [gh.as_str()]);
        let pat = format!("github_pat_11ABCDEFG0{}", "x".repeat(30));
        assert_eq!(found(&pat, "github_token"), [pat.as_str()]);
        let google = "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q";
        assert_eq!(found(google, "google_api_key"), [google]);
        let slack = "xoxb-1234567890-0987654321-AbCdEfGhIjKl";
        assert_eq!(found(slack, "slack_token"), [slack]);
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert_eq!(found(&format!("Bearer {jwt}"), "jwt"), [jwt]);
    }

    #[test]
    fn aws_keys_with_their_secret() {
        let text = r#"{"content":"aws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"}"#;
        let got = found(text, "aws_key");
        assert_eq!(
            got,
            [
                "AKIAIOSFODNN7EXAMPLE",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
            ]
        );
        // Labelled, with no access key id near it.
        let labelled = r#"SecretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY""#;
        assert_eq!(
            found(labelled, "aws_key"),
            ["wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"]
        );
        // A 40-character hash alone is not a secret key.
        assert!(found("sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709", "aws_key").is_empty());
    }

    #[test]
    fn private_keys_across_json_escapes_and_truncated() {
        let key =
            r"-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----";
        let text = format!(r#"{{"content":"here: {key}\nthanks"}}"#);
        assert_eq!(found(&text, "private_key"), [key]);
        let cut = r#"{"content":"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg"},"x":1"#;
        assert_eq!(
            found(cut, "private_key"),
            [r"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg"]
        );
        // BEGIN lines inside a key are part of it: one finding, to the END line.
        let nested = "-----BEGIN PRIVATE KEY-----\\n-----BEGIN PRIVATE KEY-----\\nMII\\n-----END PRIVATE KEY----- after";
        assert_eq!(
            found(nested, "private_key"),
            [&nested[..nested.len() - " after".len()]]
        );
    }

    #[test]
    fn configured_patterns_and_words() {
        let d = Detectors::new(
            vec![Pattern {
                name: "ticket".into(),
                regex: Regex::new(r"TCK-\d{6}").unwrap_or_else(|e| panic!("{e}")),
            }],
            vec![Words::new("codename".into(), &["bluebird".into()], true)
                .unwrap_or_else(|e| panic!("{e}"))],
            phonenumber::country::Id::US,
        );
        let on = vec![true; d.names().len()];
        let text = "TCK-123456 about Bluebird, not bluebirds";
        let got: Vec<_> = d
            .find(text, &on)
            .iter()
            .map(|f| (&text[f.start..f.end], d.names()[f.detector].as_str()))
            .collect();
        assert_eq!(got, [("TCK-123456", "ticket"), ("Bluebird", "codename")]);
    }

    #[test]
    fn overlaps_keep_the_first_and_longest() {
        let d = Detectors::new(Vec::new(), Vec::new(), phonenumber::country::Id::US);
        let on = vec![true; d.names().len()];
        // A card number is also a run of phone-like digits: one finding, the card.
        let text = "4111-1111-1111-1111";
        let got = d.find(text, &on);
        assert_eq!(got.len(), 1);
        assert_eq!(d.names()[got[0].detector], "card");
    }

    #[test]
    fn normalized_values_hash_alike() {
        let us = phonenumber::country::Id::US;
        assert_eq!(
            normalize(PHONE, "(415) 555-2671", us),
            normalize(PHONE, "+1 415 555 2671", us)
        );
        assert_eq!(normalize(EMAIL, "Bob@Example.com", us), "bob@example.com");
        assert_eq!(
            normalize(CARD, "4111 1111 1111 1111", us),
            "4111111111111111"
        );
    }
}
