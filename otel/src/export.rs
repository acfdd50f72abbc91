//! The export thread: takes finished requests off the queue, makes them spans and sends them.
//!
//! It runs its own single-threaded runtime (the OTLP clients need Tokio) on its own thread, so
//! an export that waits on a slow collector waits there and nowhere else. It looks at the
//! queue on a tick instead of waiting on it, for the reason the ingest worker does: a
//! `try_send` on the request path then never has a sleeping receiver to wake.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use opentelemetry_sdk::Resource;
use tally_ingest::RecordFilter;

use crate::{Finished, OtelConfig, OtelError, OtelMetrics, Protocol};

/// How often the queue is looked at.
const TICK: Duration = Duration::from_millis(100);

/// The longest a span waits for its batch to fill.
const MAX_WAIT: Duration = Duration::from_secs(1);

/// The export thread's handle. [`Exporter::shutdown`] exports what is queued (within the
/// export timeout) and stops it.
pub struct Exporter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    pub(crate) fn spawn(
        config: &OtelConfig,
        rx: Receiver<Finished>,
        filter: Option<Arc<dyn RecordFilter>>,
        metrics: OtelMetrics,
    ) -> Result<Self, OtelError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let config = config.clone();
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tally-otlp".to_owned())
            .spawn(move || {
                // Building and encoding a batch is a burst of CPU; the proxy's loops come first.
                tally_ingest::background_priority();
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(OtelError::Build(e.to_string())));
                        return;
                    }
                };
                rt.block_on(async move {
                    // Built here: the gRPC channel needs the runtime it will run on.
                    let exporter = match build(&config) {
                        Ok(e) => {
                            let _ = ready_tx.send(Ok(()));
                            e
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let loop_ = Loop {
                        exporter,
                        rx,
                        filter,
                        metrics,
                        stop: stopping,
                        batch_size: config.batch_size,
                        timeout: config.timeout(),
                        scope: InstrumentationScope::builder("tally")
                            .with_version(env!("CARGO_PKG_VERSION"))
                            .build(),
                    };
                    loop_.run().await;
                });
            })
            .map_err(|e| OtelError::Build(e.to_string()))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(OtelError::Build("the export thread died".to_owned())),
        }
    }

    /// Exports what is queued, giving the collector one export timeout for all of it (what is
    /// left then is counted as dropped, `reason="shutdown"`), and stops the thread. Blocks.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn build(config: &OtelConfig) -> Result<opentelemetry_otlp::SpanExporter, OtelError> {
    let endpoint = config.endpoint.clone().unwrap_or_default();
    let timeout = config.timeout();
    let built = match config.protocol {
        Protocol::HttpProtobuf => {
            let headers: HashMap<String, String> = config
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
            http.enforce_http(false);
            http.set_nodelay(true);
            http.set_connect_timeout(Some(timeout));
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
                .map_err(|e| OtelError::Build(e.to_string()))?
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            let client = opentelemetry_http::hyper::HyperClient::new(https, timeout, None);
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(http_endpoint(&endpoint))
                .with_timeout(timeout)
                .with_headers(headers)
                .with_http_client(client)
                .build()
        }
        Protocol::Grpc => {
            let mut headers = http::HeaderMap::new();
            for (k, v) in &config.headers {
                // Checked by `validate`.
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_bytes(k.as_bytes()),
                    http::HeaderValue::from_str(v),
                ) {
                    headers.insert(k, v);
                }
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(timeout)
                .with_metadata(
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers),
                )
                .build()
        }
    };
    let mut exporter = built.map_err(|e| OtelError::Build(e.to_string()))?;
    exporter.set_resource(
        &Resource::builder_empty()
            .with_service_name(config.service_name.clone())
            .build(),
    );
    Ok(exporter)
}

/// The collector's base URL gets the traces path; a URL with a path is taken as it is.
pub(crate) fn http_endpoint(endpoint: &str) -> String {
    match endpoint.parse::<http::Uri>() {
        Ok(u) if matches!(u.path(), "" | "/") => {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        }
        _ => endpoint.to_owned(),
    }
}

struct Loop {
    exporter: opentelemetry_otlp::SpanExporter,
    rx: Receiver<Finished>,
    filter: Option<Arc<dyn RecordFilter>>,
    metrics: OtelMetrics,
    stop: Arc<AtomicBool>,
    batch_size: usize,
    timeout: Duration,
    scope: InstrumentationScope,
}

impl Loop {
    async fn run(self) {
        // Spans are built as they are taken off the queue, a tick's worth at a time, so the
        // export of a full batch is not also a burst of building it.
        let mut batch: Vec<SpanData> = Vec::with_capacity(self.batch_size);
        let mut oldest: Option<Instant> = None;
        let mut deadline: Option<Instant> = None;
        loop {
            if deadline.is_none() && self.stop.load(Ordering::Acquire) {
                deadline = Some(Instant::now() + self.timeout);
            }
            while batch.len() < self.batch_size {
                match self.rx.try_recv() {
                    Ok(f) => {
                        oldest.get_or_insert_with(Instant::now);
                        batch.push(self.build(f));
                    }
                    Err(_) => break,
                }
            }
            if let Some(d) = deadline {
                if batch.is_empty() {
                    break;
                }
                if Instant::now() >= d {
                    let left = batch.len() + self.rx.try_iter().count();
                    self.metrics.dropped("shutdown", left as u64);
                    tracing::warn!(
                        spans = left,
                        "the OTLP collector did not take every span before shutdown"
                    );
                    break;
                }
            }
            let due = batch.len() >= self.batch_size
                || oldest.is_some_and(|t| t.elapsed() >= MAX_WAIT)
                || (deadline.is_some() && !batch.is_empty());
            if due {
                self.export(std::mem::take(&mut batch)).await;
                oldest = None;
                continue;
            }
            tokio::time::sleep(TICK).await;
        }
        let _ = self.exporter.shutdown();
    }

    /// The store's redaction over the record, then its span.
    fn build(&self, mut f: Finished) -> SpanData {
        if let Some(filter) = &self.filter {
            filter.filter(&mut f.record);
        }
        crate::span::span(f, &self.scope)
    }

    async fn export(&self, spans: Vec<SpanData>) {
        let n = spans.len() as u64;
        // The exporter has its own timeout; this one bounds its retries too.
        let limit = self.timeout + self.timeout;
        match tokio::time::timeout(limit, self.exporter.export(spans)).await {
            Ok(Ok(())) => {
                self.metrics.exported.inc_by(n);
            }
            Ok(Err(e)) => {
                self.metrics.dropped("export_failed", n);
                tracing::warn!(spans = n, error = %e, "OTLP export failed; spans dropped");
            }
            Err(_) => {
                self.metrics.dropped("export_failed", n);
                tracing::warn!(
                    spans = n,
                    timeout_ms = limit.as_millis() as u64,
                    "OTLP export timed out; spans dropped"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_collector_url_gets_the_traces_path() {
        assert_eq!(
            http_endpoint("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            http_endpoint("http://127.0.0.1:4318/"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            http_endpoint("https://otel.example/custom/traces"),
            "https://otel.example/custom/traces"
        );
    }
}
