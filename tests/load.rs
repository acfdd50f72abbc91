//! Concurrency: many streams at once, every one recorded.

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams_lose_no_record() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let url = tally.url(if i % 2 == 0 {
            "/v1/chat/completions"
        } else {
            "/anthropic/v1/messages"
        });
        tasks.spawn(async move {
            let user = format!("user-{i}");
            let body = json!({"model": "gpt-4o-mini", "stream": true, "max_tokens": 5,
                              "messages": [{"role": "user", "content": "hi"}]});
            let (status, _, bytes) = post_json(
                &url,
                &[("Tally-User-Id", &user), ("x-fake-interval-ms", "5")],
                &body,
            )
            .await;
            assert_eq!(status, 200);
            assert!(!bytes.is_empty());
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("request task");
    }
    tally.wait_for_rows(200).await;
    let conn = rusqlite::Connection::open(&tally.db).expect("db");
    let (n, users, with_tokens): (i64, i64, i64) = conn
        .query_row(
            "SELECT count(*), count(DISTINCT user_id), count(prompt_tokens) FROM requests WHERE tokens_estimated = 0",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("query");
    assert_eq!((n, users, with_tokens), (200, 200, 200));
    assert_eq!(tally.metric("tally_records_dropped_total", "").await, 0.0);
    assert_eq!(tally.metric("tally_proxy_in_flight", "").await, 0.0);
    tally.stop().await;
}
