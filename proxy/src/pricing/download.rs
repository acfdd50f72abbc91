//! Fetching a catalog for `tally prices update --from URL`, with the proxy's own TLS client
//! (rustls, Mozilla's roots): no second HTTP stack for one GET.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::PricingError;

/// LiteLLM's price file as its repository publishes it.
pub const LITELLM_URL: &str =
    "https://raw.githubusercontent.com/BerriAI/litellm/main/model_prices_and_context_window.json";

/// LiteLLM's file is about 3.5 MB; anything past this is not a price list.
const MAX_BYTES: usize = 64 << 20;

/// GETs `url` and returns its body as text, within a minute and [`MAX_BYTES`]. Redirects are
/// not followed: a price list should come from where it was asked for.
pub async fn download(url: &str) -> Result<String, PricingError> {
    let fail = |why: String| PricingError::Fetch {
        url: url.to_owned(),
        why,
    };
    let uri: http::Uri = url.parse().map_err(|e| fail(format!("{e}")))?;
    let connector =
        crate::client::connector(Duration::from_secs(10)).map_err(|e| fail(e.to_string()))?;
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
    let fetch = async {
        let resp = client.get(uri).await.map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {}", resp.status())));
        }
        let body = Limited::new(resp.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| fail("the body is not UTF-8".into()))
    };
    tokio::time::timeout(Duration::from_secs(60), fetch)
        .await
        .map_err(|_| fail("no answer within 60 s".into()))?
}
