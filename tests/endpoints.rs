//! #17, more endpoints: the real openai SDK on what is billed by the unit (images by size and
//! quality, speech by the character, transcription by the minute, measured or estimated), what
//! is free (moderations), and the Responses API's background mode, billed once.

use serde_json::Value;

use crate::support::fake_upstream::RESPONSES_USAGE;
use crate::support::*;

fn close(got: &Value, want: f64, what: &str) {
    let got = got
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: no cost in {got}"));
    assert!((got - want).abs() < 1e-12, "{what}: cost {got} != {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_unit_endpoints_are_priced_by_what_they_make() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let proxy = format!("http://{}", tally.proxy);
    let out = run_sdk_script("units.py", &[&proxy, "sk-units-test-0123456789wxyz"]).await;
    let rec = |name: &str| {
        let id = out[name]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no Tally-Request-Id"))
            .to_owned();
        let tally = &tally;
        async move { tally.record(&id).await }
    };

    assert_eq!(out["dalle"]["images"], 2);
    let r = rec("dalle").await;
    // prices.toml: dall-e-3 hd 1792x1024, $0.12 an image.
    close(&r["cost_usd"], 0.24, "dall-e-3");
    assert_eq!(r["properties"]["billed_images"], "2", "{r}");
    assert_eq!(r["properties"]["image_size"], "1792x1024");
    assert_eq!(r["properties"]["image_quality"], "hd");
    assert_eq!(r["tokens_estimated"], false, "nothing to estimate: {r}");

    let r = rec("gpt_image").await;
    assert_eq!(
        (r["prompt_tokens"].as_u64(), r["completion_tokens"].as_u64()),
        (Some(12), Some(1056))
    );
    close(
        &r["cost_usd"],
        (12.0 * 5.0 + 1056.0 * 40.0) / 1e6,
        "gpt-image-1",
    );

    assert!(out["speech"]["bytes"].as_u64().is_some_and(|n| n > 0));
    let r = rec("speech").await;
    let chars = "Hello from Tally, twenty-nine chars!".chars().count();
    assert_eq!(r["properties"]["billed_characters"], chars.to_string());
    close(&r["cost_usd"], chars as f64 * 15.0 / 1e6, "tts-1");

    // whisper-1's plain answer has no duration: 9 words at 2.5 words a second, flagged.
    let r = rec("transcribe").await;
    assert_eq!(r["model"], "whisper-1", "the model from the multipart form");
    assert_eq!(r["properties"]["billed_audio_seconds"], "3.6", "{r}");
    assert_eq!(r["properties"]["billed_audio_seconds_estimated"], "true");
    close(&r["cost_usd"], 3.6 / 60.0 * 0.006, "whisper-1 estimated");
    let r = rec("transcribe_verbose").await;
    assert_eq!(out["transcribe_verbose"]["duration"], 4.5);
    assert_eq!(r["properties"]["billed_audio_seconds"], "4.5");
    assert!(r["properties"]
        .get("billed_audio_seconds_estimated")
        .is_none());
    close(&r["cost_usd"], 4.5 / 60.0 * 0.006, "whisper-1 measured");

    let r = rec("moderation").await;
    assert_eq!(r["cost_usd"], 0.0, "moderations are free: {r}");
    assert_eq!(r["tokens_estimated"], false);

    // Background mode: the creation costs nothing yet, the first retrieval that sees the
    // response finished is billed, the next one is not.
    assert_eq!(out["background"]["status"], "queued");
    let r = rec("background").await;
    assert_eq!(r["cost_usd"], 0.0, "{r}");
    assert!(r["prompt_tokens"].is_null());
    assert_eq!(r["properties"]["billed_on"], "retrieval");
    let (p, c, cached, _) = RESPONSES_USAGE;
    let r = rec("retrieve_first").await;
    assert_eq!(r["prompt_tokens"], p, "{r}");
    close(
        &r["cost_usd"],
        ((p - cached) as f64 * 2.5 + cached as f64 * 1.25 + c as f64 * 10.0) / 1e6,
        "the first finished retrieval",
    );
    let r = rec("retrieve_second").await;
    assert_eq!(r["cost_usd"], 0.0, "{r}");
    assert!(r["prompt_tokens"].is_null());
    assert_eq!(r["tokens_estimated"], false);
    tally.stop().await;
}
