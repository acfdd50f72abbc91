//! The redactor on arbitrary text in every field it reads, with every detector on in each
//! mode: it runs on the ingest thread, where a panic would stop the storing of every record,
//! so it must never panic, whatever a body holds (bytes cut inside a UTF-8 character, half a
//! JSON escape, a PEM header without its end, digits for megabytes). The first byte picks the
//! mode; the rest is the text. The request-path guard (`[privacy.request]`), which runs on the
//! event loops, gets the same text: every secret detector blocking, the rest masking; a JSON
//! body it masks must stay JSON.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tally_ingest::{Record, RecordFilter};
use tally_privacy::{Mode, PatternConfig, PrivacyConfig, Redactor, WordsConfig};

fn redactors() -> &'static [Redactor; 3] {
    static R: OnceLock<[Redactor; 3]> = OnceLock::new();
    R.get_or_init(|| {
        [Mode::Mask, Mode::Hash, Mode::Drop].map(|mode| {
            let mut c = PrivacyConfig {
                redact_user_ids: true,
                ..PrivacyConfig::default()
            };
            for name in tally_privacy::detect::BUILTIN {
                c.detectors.insert(name.to_owned(), mode);
            }
            c.patterns.push(PatternConfig {
                name: "ticket".into(),
                regex: "TCK-[0-9]{6}".into(),
                mode,
            });
            c.words.push(WordsConfig {
                name: "codename".into(),
                words: vec!["bluebird".into(), "Project Falcon".into()],
                case_insensitive: true,
                mode,
            });
            Redactor::new(&c, Some(b"fuzz".to_vec())).expect("a valid config")
        })
    })
}

fn guard() -> &'static tally_privacy::RequestGuard {
    static G: OnceLock<tally_privacy::RequestGuard> = OnceLock::new();
    G.get_or_init(|| {
        let (block, mask): (Vec<&str>, Vec<&str>) = tally_privacy::detect::BUILTIN
            .iter()
            .partition(|n| tally_privacy::detect::is_secret(n));
        // Configured detectors that know nothing of JSON escapes: `.` and `[a-z]` take a
        // backslash or an escape's letter, and the words are escape-shaped.
        let patterns = [("handle", "[a-z0-9]+@corp"), ("ref", "ref.{3}")]
            .map(|(name, regex)| PatternConfig {
                name: name.into(),
                regex: regex.into(),
                mode: Mode::Mask,
            });
        let words = WordsConfig {
            name: "word".into(),
            words: vec!["nab".into(), "u00".into(), "tab".into()],
            case_insensitive: true,
            mode: Mode::Mask,
        };
        let c = PrivacyConfig {
            patterns: patterns.to_vec(),
            words: vec![words],
            request: tally_privacy::RequestConfig {
                block: block.into_iter().map(String::from).collect(),
                mask: mask
                    .into_iter()
                    .chain(["handle", "ref", "word"])
                    .map(String::from)
                    .collect(),
                ..Default::default()
            },
            ..PrivacyConfig::default()
        };
        tally_privacy::RequestGuard::new(&c)
            .expect("a valid config")
            .expect("a guard")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest).into_owned();
    let mut r = Record::new(uuid::Uuid::nil(), 0);
    r.request_body = Some(text.clone());
    r.response_body = Some(format!("{{\"content\":\"{text}\"}}"));
    r.error = Some(text.clone());
    r.user_id = Some(text.clone());
    r.properties.insert("p".into(), text);
    redactors()[usize::from(pick) % 3].filter(&mut r);

    let body = String::from_utf8_lossy(rest);
    let _ = guard().check(&body, pick % 2 == 0);
    let json = serde_json::json!({ "messages": [{ "role": "user", "content": &*body }] }).to_string();
    if let tally_privacy::Verdict::Masked { text, .. } = guard().check(&json, true) {
        assert!(
            serde_json::from_str::<serde_json::Value>(&text).is_ok(),
            "masking broke the JSON: {text}"
        );
    }
});
