//! Webhook delivery: the body for each format, the `Tally-Signature` header, and attempts with
//! exponential backoff. A delivery's outcome (delivered, or failed after every attempt) is
//! returned for the store; nothing here retries forever.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;

use crate::config::{url_hint, WebhookConfig, WebhookFormat};
use crate::event::Event;

/// The signature header: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub const SIGNATURE_HEADER: &str = "tally-signature";
/// The event id header, so a receiver can drop a repeated delivery.
pub const EVENT_ID_HEADER: &str = "tally-event-id";

/// The webhook HTTP client (HTTPS with the Mozilla roots, or plain HTTP).
pub type WebhookClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Builds the client.
pub fn client() -> Result<WebhookClient, rustls::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// `t=…,v1=…` for `body` sent at `unix_secs`.
pub fn sign(secret: &str, unix_secs: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(unix_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={unix_secs},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// How one delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The webhook, as [`url_hint`] shows it.
    pub webhook: String,
    /// Whether a 2xx came back.
    pub delivered: bool,
    /// Attempts made.
    pub attempts: u32,
    /// The last HTTP status, if any answer came.
    pub status: Option<u16>,
    /// The last error, when not delivered.
    pub error: Option<String>,
}

/// Attempt limits.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts in all.
    pub attempts: u32,
    /// First wait; doubles after each failure.
    pub backoff: Duration,
    /// Per-attempt timeout.
    pub timeout: Duration,
}

/// Delivers `event` to `hook`, retrying 5xx, 429, timeouts and connection errors.
pub async fn deliver(
    client: &WebhookClient,
    hook: &WebhookConfig,
    event: &Event,
    retry: Retry,
) -> Outcome {
    let body = Bytes::from(match hook.format {
        WebhookFormat::Json => event.to_json(),
        WebhookFormat::Slack => event.to_slack(),
    });
    let mut outcome = Outcome {
        webhook: url_hint(&hook.url),
        delivered: false,
        attempts: 0,
        status: None,
        error: None,
    };
    let mut wait = retry.backoff;
    loop {
        outcome.attempts += 1;
        match attempt(client, hook, event, body.clone(), retry.timeout).await {
            Ok(status) if status.is_success() => {
                outcome.delivered = true;
                outcome.status = Some(status.as_u16());
                outcome.error = None;
                return outcome;
            }
            Ok(status) => {
                outcome.status = Some(status.as_u16());
                outcome.error = Some(format!("receiver answered HTTP {}", status.as_u16()));
                let retriable = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
                if !retriable {
                    return outcome;
                }
            }
            Err(e) => {
                outcome.status = None;
                outcome.error = Some(e);
            }
        }
        if outcome.attempts >= retry.attempts {
            return outcome;
        }
        tracing::debug!(
            webhook = %outcome.webhook,
            attempt = outcome.attempts,
            error = outcome.error.as_deref().unwrap_or_default(),
            "webhook delivery failed; retrying"
        );
        tokio::time::sleep(wait).await;
        wait = wait.saturating_mul(2);
    }
}

async fn attempt(
    client: &WebhookClient,
    hook: &WebhookConfig,
    event: &Event,
    body: Bytes,
    timeout: Duration,
) -> Result<StatusCode, String> {
    let mut req = Request::post(&hook.url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, "tally-alerts")
        .header(EVENT_ID_HEADER, event.id.to_string());
    if let Some(secret) = &hook.secret {
        let now = chrono::Utc::now().timestamp();
        req = req.header(SIGNATURE_HEADER, sign(secret, now, &body));
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let send = async {
        let resp = client.request(req).await.map_err(|e| error_chain(&e))?;
        let status = resp.status();
        // Read the (small) answer so the connection can be reused.
        let _ = resp.into_body().collect().await;
        Ok(status)
    };
    match tokio::time::timeout(timeout, send).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // echo -n '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            sign("secret", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }

    #[test]
    fn url_hints_hide_the_path() {
        assert_eq!(
            url_hint("https://hooks.slack.com/services/T000/B000/XXXX"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            url_hint("http://127.0.0.1:9000/hook"),
            "http://127.0.0.1:9000/…"
        );
    }
}
