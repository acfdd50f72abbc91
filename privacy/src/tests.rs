use std::collections::BTreeMap;

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tally_ingest::{Record, RecordFilter};

use super::*;

fn config(toml_text: &str) -> PrivacyConfig {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}\n{toml_text}"))
}

fn redactor(toml_text: &str) -> Redactor {
    Redactor::new(&config(toml_text), Some(b"test-key".to_vec())).expect("valid config")
}

fn error(toml_text: &str, key: Option<&[u8]>) -> String {
    match Redactor::new(&config(toml_text), key.map(<[u8]>::to_vec)) {
        Ok(_) => panic!("accepted:\n{toml_text}"),
        Err(e) => e.to_string(),
    }
}

fn record(body: &str) -> Record {
    Record {
        provider: "openai".into(),
        user_id: Some("alice@example.com".into()),
        properties: BTreeMap::from([
            ("tenant".to_owned(), "acme".to_owned()),
            ("contact".to_owned(), "call +1 415-555-2671".to_owned()),
        ]),
        request_body: Some(body.into()),
        response_body: Some(format!("echo: {body}")),
        ..Record::new(uuid::Uuid::now_v7(), 1_700_000_000_000)
    }
}

fn filtered(r: &Redactor, mut rec: Record) -> Record {
    r.filter(&mut rec);
    rec
}

const OPENAI_KEY: &str = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7cDe0f";

#[test]
fn defaults_mask_secrets_and_leave_personal_data() {
    let r = redactor("");
    let body = format!(r#"{{"content":"key {OPENAI_KEY} mail bob@example.com"}}"#);
    let rec = filtered(&r, record(&body));
    let stored = rec.request_body.expect("kept");
    assert_eq!(
        stored,
        r#"{"content":"key [OPENAI_KEY] mail bob@example.com"}"#
    );
    assert!(!rec.response_body.expect("kept").contains(OPENAI_KEY));
    assert_eq!(rec.user_id.as_deref(), Some("alice@example.com"));
    assert_eq!(rec.properties["contact"], "call +1 415-555-2671");
}

#[test]
fn mask_and_hash_by_detector_and_equal_values_hash_alike() {
    let r = redactor(
        r#"
        [detectors]
        email = "hash"
        phone = "mask"
        card = "mask"
        "#,
    );
    let rec = filtered(
        &r,
        record("Bob@Example.com paid 4111 1111 1111 1111, bob@example.com, call (415) 555-2671"),
    );
    let stored = rec.request_body.expect("kept");
    assert!(stored.contains("paid [CARD],"), "{stored}");
    assert!(stored.ends_with("call [PHONE]"), "{stored}");
    // Hashes are over the normalized value: case does not split one address into two.
    let hashes: Vec<&str> = stored.matches("[EMAIL:").collect();
    assert_eq!(hashes.len(), 2, "{stored}");
    let first = &stored[..stored.find(' ').expect("space")];
    assert_eq!(first.len(), "[EMAIL:".len() + 12 + 1, "{first}");
    assert_eq!(stored.matches(first).count(), 2, "{stored}");
    // Properties are rewritten too.
    assert_eq!(rec.properties["contact"], "call [PHONE]");

    // The same value under another key hashes differently: a digest is useless without it.
    let other = Redactor::new(
        &config("[detectors]\nemail = \"hash\""),
        Some(b"another-key".to_vec()),
    )
    .expect("valid");
    let stored_other = filtered(&other, record("bob@example.com"))
        .request_body
        .expect("kept");
    assert_ne!(stored_other, first);
    assert!(stored_other.starts_with("[EMAIL:"), "{stored_other}");
}

#[test]
fn drop_removes_the_body_the_property_and_keeps_an_error_placeholder() {
    let r = redactor("[detectors]\nssn = \"drop\"\nphone = \"drop\"");
    let mut rec = record("my ssn is 078-05-1121 thanks");
    rec.error = Some("upstream said: 078-05-1121 is invalid".into());
    let rec = filtered(&r, rec);
    assert_eq!(rec.request_body, None);
    assert_eq!(rec.response_body, None);
    assert_eq!(rec.error.as_deref(), Some("[redacted]"));
    assert!(!rec.properties.contains_key("contact"));
    assert_eq!(rec.properties["tenant"], "acme");
}

#[test]
fn user_ids_only_when_asked() {
    let r = redactor("redact_user_ids = true\n[detectors]\nemail = \"mask\"");
    let rec = filtered(&r, record("hi"));
    assert_eq!(rec.user_id.as_deref(), Some("[EMAIL]"));
    let r = redactor("[detectors]\nemail = \"mask\"");
    let rec = filtered(&r, record("hi"));
    assert_eq!(rec.user_id.as_deref(), Some("alice@example.com"));
}

#[test]
fn scopes_by_provider_property_and_key_override_in_order() {
    let r = redactor(
        r#"
        [detectors]
        email = "mask"

        [[scopes]]
        provider = "anthropic"
        detectors = { email = "off" }

        [[scopes]]
        property = "tenant=acme"
        detectors = { email = "drop" }
        redact_user_ids = true

        [[scopes]]
        key = "ci-bot"
        detectors = { email = "off", openai_key = "off" }
        "#,
    );
    let body = "write to bob@example.com";
    // Tenant acme: drop, and its user ids are looked at.
    let rec = filtered(&r, record(body));
    assert_eq!(rec.request_body, None);
    assert_eq!(rec.user_id, None);
    // Another tenant: the global mask.
    let mut other = record(body);
    other.properties.insert("tenant".into(), "globex".into());
    let rec = filtered(&r, other);
    assert_eq!(rec.request_body.as_deref(), Some("write to [EMAIL]"));
    assert_eq!(rec.user_id.as_deref(), Some("alice@example.com"));
    // Anthropic and another tenant: off.
    let mut anthropic = record(body);
    anthropic.provider = "anthropic".into();
    anthropic.properties.clear();
    assert_eq!(filtered(&r, anthropic).request_body.as_deref(), Some(body));
    // The ci-bot key, by name or id, even in tenant acme: the later scope wins.
    for (name, id) in [(Some("ci-bot"), None), (None, Some("ci-bot"))] {
        let mut keyed = record(&format!("{body} {OPENAI_KEY}"));
        keyed.key_name = name.map(Into::into);
        keyed.key_id = id.map(Into::into);
        let rec = filtered(&r, keyed);
        assert_eq!(
            rec.request_body.as_deref(),
            Some(format!("{body} {OPENAI_KEY}").as_str())
        );
    }
}

#[test]
fn configured_patterns_and_words() {
    let r = redactor(
        r#"
        [[patterns]]
        name = "ticket"
        regex = 'TCK-[0-9]{6}'

        [[words]]
        name = "codename"
        words = ["Project Falcon", "bluebird"]
        mode = "mask"
        "#,
    );
    let rec = filtered(
        &r,
        record("TCK-123456 is about project falcon and Bluebird, not bluebirds"),
    );
    assert_eq!(
        rec.request_body.as_deref(),
        Some("[TICKET] is about [CODENAME] and [CODENAME], not bluebirds")
    );
}

#[test]
fn bad_configs_say_what_is_wrong() {
    assert!(error("[detectors]\nemial = \"mask\"", None).contains("unknown detector \"emial\""));
    assert!(error("[detectors]\nemail = \"hash\"", None).contains("hmac_key"));
    assert!(error("[detectors]\nemail = \"hash\"", Some(b"")).contains("hmac_key"));
    assert!(error(
        "[[scopes]]\nprovider = \"x\"\ndetectors = { ip = \"hash\" }",
        None
    )
    .contains("hmac_key"));
    assert!(error("[[patterns]]\nname = \"t\"\nregex = '('", None).contains("invalid regex"));
    assert!(error("[[patterns]]\nname = \"email\"\nregex = 'x'", None).contains("used twice"));
    assert!(error("[[patterns]]\nname = \"a b\"\nregex = 'x'", None).contains("letters"));
    assert!(error("[[words]]\nname = \"w\"\nwords = [\" \"]", None).contains("empty"));
    assert!(
        error("[[scopes]]\ndetectors = { email = \"mask\" }", None).contains("names no provider")
    );
    assert!(error("[[scopes]]\nproperty = \"tenant\"", None).contains("key=value"));
    assert!(error("phone_region = \"Narnia\"", None).contains("phone_region"));
    // Unknown keys and modes are the parser's to refuse.
    assert!(toml::from_str::<PrivacyConfig>("detector = {}").is_err());
    assert!(toml::from_str::<PrivacyConfig>("[detectors]\nemail = \"block\"").is_err());
}

#[test]
fn counts_what_it_redacted_by_detector_and_mode() {
    let r = redactor("[detectors]\nemail = \"hash\"\nip = \"drop\"");
    let mut registry = Registry::with_prefix("tally");
    r.register(&mut registry);
    filtered(
        &r,
        record(&format!("a@example.com b@example.com {OPENAI_KEY}")),
    );
    filtered(&r, record("from 10.1.2.3"));
    let mut text = String::new();
    encode(&mut text, &registry).expect("encode");
    // Request and response bodies each held both addresses and the key.
    assert!(
        text.contains(r#"tally_redactions_total{detector="email",mode="hash"} 4"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tally_redactions_total{detector="openai_key",mode="mask"} 2"#),
        "{text}"
    );
    // A drop stops at the first finding of a text: once per body.
    assert!(
        text.contains(r#"tally_redactions_total{detector="ip",mode="drop"} 2"#),
        "{text}"
    );
}

#[test]
fn text_without_findings_is_left_as_is() {
    let r =
        redactor("[detectors]\nemail = \"mask\"\ncard = \"mask\"\nphone = \"mask\"\nip = \"mask\"");
    let mut rec = record(
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"2+2 at 10:30 on 2024-05-01, order 12345, v1.2.3.4"}]}"#,
    );
    rec.properties.remove("contact");
    let after = filtered(&r, rec.clone());
    assert_eq!(after, rec);
}

/// What `tally purge` looks for: a user id or property value as the client sent it and as
/// each policy stores it, so a purge by the sent value finds redacted records.
#[test]
fn stored_forms_are_what_the_filter_writes() {
    let r = redactor(
        r#"
redact_user_ids = true
detectors = { email = "hash" }
[[scopes]]
provider = "selfhosted"
detectors = { email = "mask" }
"#,
    );
    let stored = filtered(&r, record("hi")).user_id.expect("kept");
    let forms = r.stored_forms("alice@example.com", true);
    assert_eq!(forms[0], "alice@example.com");
    assert!(forms.contains(&stored), "{forms:?} lacks {stored}");
    assert!(
        forms.contains(&"[EMAIL]".to_owned()),
        "the scope's form: {forms:?}"
    );
    assert_eq!(forms.len(), 3);
    // Without redact_user_ids a user id is stored as sent; property values are redacted anyway.
    let plain = redactor(r#"detectors = { email = "hash" }"#);
    assert_eq!(
        plain.stored_forms("alice@example.com", true),
        ["alice@example.com"]
    );
    assert_eq!(plain.stored_forms("alice@example.com", false).len(), 2);
    assert_eq!(plain.stored_forms("acme", false), ["acme"]);
}
