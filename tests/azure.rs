//! #17, Azure OpenAI: the real `AzureOpenAI` client through Tally with only `azure_endpoint`
//! changed; deployments mapped to models; content-filter results kept; the `api-key` header
//! never stored.

use tally_proxy::ProviderConfig;

use crate::support::fake_upstream::{OPENAI_USAGE, WORDS};
use crate::support::*;

const KEY: &str = "azure-test-key-0123456789abcdefwxyz";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_azure_openai_client_works_unmodified_and_deployments_map_to_models() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start_with(&up.url(), |c| {
        c.providers.insert(
            "azure".into(),
            ProviderConfig {
                base_url: Some(up.url()),
                deployments: [("prod-4o".to_owned(), "gpt-4o".to_owned())].into(),
                ..Default::default()
            },
        );
    })
    .await;
    let proxy = format!("http://{}", tally.proxy);
    let results = run_sdk_script("azure.py", &[&proxy, KEY]).await;
    for (call, model) in [
        ("json", "gpt-4o"),
        ("stream", "gpt-4o"),
        ("unmapped", "gpt-4o-mini-2024-08-06"),
    ] {
        assert_eq!(results[call]["text"], WORDS.concat(), "{call}");
        let id = results[call]["id"].as_str().expect("Tally-Request-Id");
        let rec = tally.record(id).await;
        assert_eq!(rec["provider"], "azure", "{call}");
        assert_eq!(
            rec["model"], model,
            "{call}: mapped, else the response's model"
        );
        assert_eq!(rec["prompt_tokens"], OPENAI_USAGE.0, "{call}: {rec}");
        assert_eq!(rec["completion_tokens"], OPENAI_USAGE.1, "{call}");
        assert_eq!(rec["tokens_estimated"], false, "{call}");
        assert!(rec["cost_usd"].as_f64().is_some(), "{call}: priced");
        assert!(
            rec["api_key_hint"]
                .as_str()
                .expect("hint")
                .ends_with("…wxyz"),
            "{call}"
        );
        assert_eq!(rec["user_id"], "alice");
    }
    let rec = tally
        .record(results["json"]["id"].as_str().expect("id"))
        .await;
    assert_eq!(rec["properties"]["content_filter"], "safe", "{rec}");
    assert!(rec["properties"].get("content_filter_findings").is_none());
    assert_eq!(results["filtered"]["raised"], "content_filter");
    let rec = tally
        .record(results["filtered"]["id"].as_str().expect("id"))
        .await;
    assert_eq!(rec["status"], 400);
    assert_eq!(rec["properties"]["content_filter"], "filtered", "{rec}");
    assert_eq!(
        rec["properties"]["content_filter_findings"],
        "prompt.violence=medium(filtered)"
    );
    assert!(rec["error"]
        .as_str()
        .is_some_and(|e| e.contains("content management policy")));
    let received = up.received();
    assert_eq!(received.len(), 4);
    for r in &received {
        assert!(
            r.path_and_query.starts_with("/openai/deployments/"),
            "{}",
            r.path_and_query
        );
        assert!(r.path_and_query.contains("api-version=2024-10-21"));
        assert_eq!(
            r.headers.get("api-key").map(|v| v.as_bytes()),
            Some(KEY.as_bytes())
        );
    }
    let dir = tally.stop().await;
    let holding = files_holding(dir.path(), KEY);
    assert!(holding.is_empty(), "the key is in {holding:?}");
}
