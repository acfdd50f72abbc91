//! GETs for the command line (`tally prices update --from URL`, `tally reconcile`), with the
//! proxy's own TLS client (rustls, Mozilla's roots): no second HTTP stack for a few GETs.

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
    let (status, body) = get(url, &[]).await.map_err(|why| PricingError::Fetch {
        url: url.to_owned(),
        why,
    })?;
    if !status.is_success() {
        return Err(PricingError::Fetch {
            url: url.to_owned(),
            why: format!("HTTP {status}"),
        });
    }
    Ok(body)
}

/// GETs `url` with `headers`: the status and the body as text (what went wrong otherwise),
/// within a minute and [`MAX_BYTES`].
pub async fn get(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(http::StatusCode, String), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let connector = crate::client::connector(Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
    let mut req = http::Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let fetch = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let text =
            String::from_utf8(body.to_vec()).map_err(|_| "the body is not UTF-8".to_owned())?;
        Ok((status, text))
    };
    tokio::time::timeout(Duration::from_secs(60), fetch)
        .await
        .map_err(|_| "no answer within 60 s".to_owned())?
}
