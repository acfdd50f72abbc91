//! #17, AWS Bedrock: the real boto3 client through Tally with only `endpoint_url` changed; each
//! request signed again with the credentials Tally holds (the fake checks every signature);
//! event streams byte for byte with exact usage; a corrupt frame forwarded and recorded.

use http::{HeaderMap, Method};
use serde_json::json;
use tally_proxy::credentials::aws::{AwsConfig, AwsSigner};
use tally_proxy::providers::SecretSource;

use crate::support::fake_bedrock::{with_bedrock, ACCESS_KEY, BEDROCK_USAGE, REGION, SECRET_KEY};
use crate::support::fake_upstream::WORDS;
use crate::support::*;

/// What boto3 signs with for Tally's host: not the credentials the upstream accepts.
const CLIENT_KEY: &str = "AKIACLIENTSIDEONLY00";
const CLIENT_SECRET: &str = "client-side-secret-never-forwarded-0123";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_works_unmodified_and_every_request_is_signed_again() {
    let up = FakeUpstream::start().await;
    let keys = tempfile::tempdir().expect("dir");
    let tally = TestTally::start_with(&up.url(), |c| {
        with_bedrock(c, &up.url(), keys.path(), SECRET_KEY)
    })
    .await;
    let proxy = format!("http://{}", tally.proxy);
    let results = run_sdk_script("bedrock.py", &[&proxy, CLIENT_KEY, CLIENT_SECRET]).await;
    let (input, output, read, write) = BEDROCK_USAGE;
    assert_eq!(results["converse"]["usage"]["inputTokens"], input);
    assert_eq!(results["converse_stream"]["usage"]["outputTokens"], output);
    for (call, stream) in [
        ("converse", false),
        ("converse_stream", true),
        ("invoke", false),
        ("invoke_stream", true),
    ] {
        assert_eq!(results[call]["text"], WORDS.concat(), "{call}");
        let id = results[call]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{call}: boto3 saw no Tally-Request-Id"));
        let rec = tally.record(id).await;
        assert_eq!(rec["provider"], "bedrock", "{call}");
        assert_eq!(
            rec["model"], "anthropic.claude-3-haiku-20240307-v1:0",
            "{call}"
        );
        assert_eq!(rec["stream"], stream, "{call}");
        assert_eq!(rec["status"], 200, "{call}");
        assert!(rec["error"].is_null(), "{call}: {}", rec["error"]);
        assert_eq!(rec["prompt_tokens"], input + read + write, "{call}: {rec}");
        assert_eq!(rec["completion_tokens"], output, "{call}");
        assert_eq!(rec["cache_read_tokens"], read, "{call}");
        assert_eq!(rec["cache_write_tokens"], write, "{call}");
        assert_eq!(rec["tokens_estimated"], false, "{call}");
        // prices.toml: claude-3-haiku $0.25 in, $0.03 cache read, $0.30 cache write, $1.25 out.
        let cost =
            (input as f64 * 0.25 + read as f64 * 0.03 + write as f64 * 0.30 + output as f64 * 1.25)
                / 1e6;
        let got = rec["cost_usd"].as_f64().expect("priced");
        assert!((got - cost).abs() < 1e-12, "{call}: cost {got} != {cost}");
        assert_eq!(rec["user_id"], "alice", "{call}");
        assert_eq!(rec["session_id"], "s-b", "{call}");
        assert_eq!(
            rec["api_key_hint"], "…ROCK",
            "{call}: the hint of the key Tally signed with"
        );
    }
    let received = up.received();
    assert_eq!(received.len(), 4, "the fake refuses any bad signature");
    for r in &received {
        let auth = r.headers["authorization"].to_str().expect("ascii");
        assert!(
            auth.contains(&format!("Credential={ACCESS_KEY}/")),
            "{auth}"
        );
        assert!(!r.headers.contains_key("tally-user-id"));
    }
    let dir = tally.stop().await;
    for secret in [SECRET_KEY, CLIENT_SECRET] {
        let holding = files_holding(dir.path(), secret);
        assert!(holding.is_empty(), "a secret is in {holding:?}");
    }
}

/// The headers a client signing for `url` would send: Tally's own signer, standing in for
/// boto3 on a direct call to the fake.
fn signed(url: &str, body: &[u8]) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().expect("dir");
    let (id, key) = (dir.path().join("id"), dir.path().join("key"));
    std::fs::write(&id, ACCESS_KEY).expect("id");
    std::fs::write(&key, SECRET_KEY).expect("key");
    let config = AwsConfig {
        access_key_id: Some(SecretSource::File(id)),
        secret_access_key: Some(SecretSource::File(key)),
        ..Default::default()
    };
    let signer = AwsSigner::resolve("direct", REGION.into(), &config);
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/json".parse().expect("ct"));
    signer
        .sign(&Method::POST, &url.parse().expect("uri"), &mut h, body)
        .expect("signed");
    // post_json sends the content type itself.
    h.remove("content-type");
    h.iter()
        .map(|(k, v)| (k.to_string(), v.to_str().expect("ascii").to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_pass_byte_for_byte_and_a_corrupt_frame_is_recorded() {
    let up = FakeUpstream::start().await;
    let keys = tempfile::tempdir().expect("dir");
    let tally = TestTally::start_with(&up.url(), |c| {
        with_bedrock(c, &up.url(), keys.path(), SECRET_KEY)
    })
    .await;
    let body = json!({"messages": [{"role": "user", "content": [{"text": "Say hello"}]}]});
    let path = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream";
    for mode in ["", "corrupt-crc", "throttle-event"] {
        let direct_url = format!("{}{path}", up.url());
        let headers = signed(&direct_url, body.to_string().as_bytes());
        let mut h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        h.push(("x-fake-mode", mode));
        let (ds, dh, direct) = post_json(&direct_url, &h, &body).await;
        assert_eq!(
            ds.as_u16(),
            200,
            "{mode}: {}",
            String::from_utf8_lossy(&direct)
        );
        let (ps, ph, proxied) = post_json(
            &tally.url(&format!("/bedrock{path}")),
            &[("x-fake-mode", mode)],
            &body,
        )
        .await;
        assert_eq!(ps.as_u16(), 200, "{mode}");
        assert_eq!(direct, proxied, "{mode}: bytes differ");
        assert_eq!(
            ph.get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/vnd.amazon.eventstream"[..])
        );
        assert_eq!(dh.get("content-type"), ph.get("content-type"));
        let rec = tally.record(&request_id(&ph)).await;
        assert_eq!(rec["stream"], true, "{mode}");
        match mode {
            "" => {
                assert!(rec["error"].is_null(), "{}", rec["error"]);
                assert_eq!(rec["completion_tokens"], BEDROCK_USAGE.1);
                assert_eq!(rec["tokens_estimated"], false);
            }
            "corrupt-crc" => {
                let e = rec["error"].as_str().expect("an error");
                assert!(e.contains("corrupt at frame 3"), "{e}");
                assert!(e.contains("2 frames before it"), "{e}");
                // The usage frame was past the corruption: estimated from what was read.
                assert_eq!(rec["tokens_estimated"], true, "{rec}");
                assert_eq!(
                    rec["completion_tokens"], 1,
                    "the one delta before it: {rec}"
                );
                assert!(rec["prompt_tokens"].as_u64().is_some_and(|p| p > 0));
            }
            _ => {
                let e = rec["error"].as_str().expect("an error");
                assert!(e.starts_with("throttlingException: Too many tokens"), "{e}");
            }
        }
    }
    tally.stop().await;
}

/// A signature made with the wrong secret is refused by the fake as AWS refuses it; missing
/// credentials are Tally's own 401 naming the settings, and the upstream is not called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_credentials_are_clear_errors() {
    let up = FakeUpstream::start().await;
    let keys = tempfile::tempdir().expect("dir");
    let tally = TestTally::start_with(&up.url(), |c| {
        with_bedrock(c, &up.url(), keys.path(), "not-the-secret-the-fake-knows")
    })
    .await;
    let body = json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]});
    let url = tally.url("/bedrock/model/amazon.nova-lite-v1%3A0/converse");
    let (status, _, answer) = post_json(&url, &[], &body).await;
    assert_eq!(status.as_u16(), 403);
    assert!(contains(&answer, "signature we calculated does not match"));
    tally.stop().await;

    let tally = TestTally::start_with(&up.url(), |c| {
        with_bedrock(c, &up.url(), keys.path(), SECRET_KEY);
        c.providers
            .get_mut("bedrock")
            .expect("bedrock")
            .aws_secret_access_key = None;
    })
    .await;
    let before = up.received().len();
    let url = tally.url("/bedrock/model/amazon.nova-lite-v1%3A0/converse");
    let (status, headers, answer) = post_json(&url, &[], &body).await;
    assert_eq!(status.as_u16(), 401);
    let v: serde_json::Value = serde_json::from_slice(&answer).expect("json");
    assert_eq!(v["__type"], "tally_missing_credentials", "{v}");
    let message = v["message"].as_str().expect("message");
    assert!(
        message.contains("providers.bedrock.aws_secret_access_key"),
        "{message}"
    );
    assert_eq!(up.received().len(), before, "nothing was sent upstream");
    let rec = tally.record(&request_id(&headers)).await;
    assert_eq!(rec["refusal"], "tally_missing_credentials");
    tally.stop().await;
}
