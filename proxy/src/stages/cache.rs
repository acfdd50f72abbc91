//! The response cache: exact-match answers for repeated requests, in memory or in Redis.
//!
//! The key is a SHA-256 over everything that can change the answer: where the request goes
//! (provider or router), method, path and query, the body bytes, the namespace header, the
//! few provider headers that select API behaviour, and the caller's API key (hashed). The key
//! is part of it so one team's cached answers are never served to another key; a cache shared
//! across keys would leak prompts and answers.
//!
//! Only complete 2xx answers are stored, as the bytes the upstream sent (an event stream
//! included), so a hit replays them byte for byte through the same tee as a live response and
//! the record gets the same usage and cost (the cost then becomes the saving).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tally_ingest::{CacheStatus, Record};

use super::redis::{Redis, RedisError};
use super::{Backend, StageError};
use crate::exchange::{Exchange, ResponseHead, StageHook};
use crate::headers::Attribution;
use crate::metrics::ResultLabels;
use crate::phases::send::Forward;
use crate::phases::Ctx;
use crate::ProxyMetrics;

/// Provider headers that change what the API does, and so belong in the key.
const VARY: &[&str] = &[
    "anthropic-version",
    "anthropic-beta",
    "openai-organization",
    "openai-project",
    "openai-beta",
];
/// Headers that carry the caller's key.
const KEY_HEADERS: &[&str] = &["authorization", "x-api-key", "api-key", "x-goog-api-key"];
/// Response headers a hit replays; the rest describe the original connection.
const REPLAYED: &[&str] = &["content-type", "content-encoding", INJECTED];
/// Marks a stored stream that carries the usage chunk Tally asked for (and hides from the
/// client); a replay hides it again. Never sent to a client.
pub(crate) const INJECTED: &str = "tally-injected-usage";

/// `[cache]` as written in the config file. The stage is always available to requests that
/// ask for it (`Tally-Cache: true`); `providers` switches it on for every request to them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `memory` (default) or `redis` (shared by several Tally replicas).
    pub backend: Backend,
    /// Memory backend: most bytes of cached responses kept; least recently used go first.
    pub max_bytes: u64,
    /// Responses larger than this are not cached.
    pub max_entry_bytes: usize,
    /// Time to live when the request names none, seconds.
    pub ttl_secs: u64,
    /// Longest time to live a request may ask for, seconds.
    pub max_ttl_secs: u64,
    /// Redis backend: `redis://host:6379/0`.
    pub redis_url: Option<String>,
    /// Redis backend: deadline for one lookup or store, milliseconds. A slow Redis is a miss.
    pub redis_timeout_ms: u64,
    /// Providers and routers whose requests are cached without the header (`Tally-Cache: false`
    /// still opts a request out).
    pub providers: Vec<String>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Memory,
            max_bytes: 256 * 1024 * 1024,
            max_entry_bytes: 8 * 1024 * 1024,
            ttl_secs: 24 * 3600,
            max_ttl_secs: 30 * 24 * 3600,
            redis_url: None,
            redis_timeout_ms: 250,
            providers: Vec::new(),
        }
    }
}

/// A cache key: SHA-256 of the request's identity.
pub(crate) type Key = [u8; 32];

/// A stored answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, Bytes)>,
    pub(crate) body: Bytes,
    ttl: Duration,
}

impl Entry {
    fn weight(&self) -> u32 {
        let h: usize = self.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        u32::try_from(64 + h + self.body.len()).unwrap_or(u32::MAX)
    }

    /// `TC1`, status, header count, each header (u16 name length, name, u32 value length,
    /// value), then the body. A hand-rolled frame because the body is most of it and must not
    /// be escaped or copied through a text format.
    fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.weight() as usize);
        b.put_slice(b"TC1");
        b.put_u16(self.status);
        b.put_u16(self.headers.len() as u16);
        for (n, v) in &self.headers {
            b.put_u16(n.len() as u16);
            b.put_slice(n.as_bytes());
            b.put_u32(v.len() as u32);
            b.put_slice(v);
        }
        b.put_slice(&self.body);
        b.freeze()
    }

    /// Reads [`Entry::encode`]'s frame; anything malformed is `None` (a miss), never a panic.
    fn decode(mut b: Bytes) -> Option<Self> {
        if b.len() < 7 || &b[..3] != b"TC1" {
            return None;
        }
        b.advance(3);
        let status = b.get_u16();
        let n = b.get_u16();
        let mut headers = Vec::with_capacity(n.into());
        for _ in 0..n {
            if b.remaining() < 2 {
                return None;
            }
            let nl = b.get_u16() as usize;
            if b.remaining() < nl + 4 {
                return None;
            }
            let name = String::from_utf8(b.split_to(nl).to_vec()).ok()?;
            let vl = b.get_u32() as usize;
            if b.remaining() < vl {
                return None;
            }
            headers.push((name, b.split_to(vl)));
        }
        Some(Self {
            status,
            headers,
            body: b,
            ttl: Duration::ZERO,
        })
    }
}

struct PerEntryTtl;

impl moka::Expiry<Key, Arc<Entry>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &Key,
        value: &Arc<Entry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

enum Store {
    Memory(moka::sync::Cache<Key, Arc<Entry>>),
    Redis(Redis),
}

/// The stage, built once from [`CacheConfig`].
pub struct ResponseCache {
    store: Store,
    max_entry_bytes: usize,
    ttl: Duration,
    max_ttl: Duration,
    always: HashSet<String>,
}

/// What a request asked of the cache.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CacheRequest<'a> {
    /// `Tally-Cache` / `Helicone-Cache-Enabled`, when sent.
    pub(crate) enabled: Option<bool>,
    /// `Tally-Cache-Ttl`, seconds.
    pub(crate) ttl_secs: Option<u64>,
    /// `Tally-Cache-Namespace` / `Tally-Cache-Seed` / `Helicone-Cache-Seed`.
    pub(crate) namespace: Option<&'a str>,
}

impl ResponseCache {
    /// Builds the stage. The Redis backend connects lazily, so this must run inside Tokio.
    pub fn build(c: &CacheConfig) -> Result<Self, StageError> {
        if c.max_entry_bytes == 0 || c.ttl_secs == 0 || c.max_ttl_secs == 0 {
            return Err(StageError::Invalid(
                "cache.max_entry_bytes, cache.ttl_secs and cache.max_ttl_secs must be greater than zero"
                    .into(),
            ));
        }
        let store = match c.backend {
            Backend::Memory => Store::Memory(
                moka::sync::Cache::builder()
                    .max_capacity(c.max_bytes)
                    .weigher(|_k: &Key, v: &Arc<Entry>| v.weight())
                    .expire_after(PerEntryTtl)
                    .build(),
            ),
            Backend::Redis => {
                let url = c.redis_url.as_deref().ok_or_else(|| {
                    StageError::Invalid("cache.backend = \"redis\" needs cache.redis_url".into())
                })?;
                Store::Redis(Redis::connect(
                    url,
                    Duration::from_millis(c.redis_timeout_ms.max(1)),
                    "cache",
                )?)
            }
        };
        Ok(Self {
            store,
            max_entry_bytes: c.max_entry_bytes,
            ttl: Duration::from_secs(c.ttl_secs),
            max_ttl: Duration::from_secs(c.max_ttl_secs),
            always: c.providers.iter().cloned().collect(),
        })
    }

    /// Whether this request uses the cache: its header decides, else the config's list.
    pub(crate) fn wanted(&self, scope: &str, req: &CacheRequest<'_>) -> bool {
        req.enabled.unwrap_or_else(|| self.always.contains(scope))
    }

    /// `Tally-Cache-Ttl`, else the request's `Cache-Control: max-age`, else the default;
    /// capped at `max_ttl_secs`.
    pub(crate) fn ttl(&self, req: &CacheRequest<'_>, headers: &HeaderMap) -> Duration {
        let max_age = headers
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|d| d.trim().strip_prefix("max-age="))
            .and_then(|s| s.trim().parse::<u64>().ok());
        req.ttl_secs
            .or(max_age)
            .map_or(self.ttl, Duration::from_secs)
            .min(self.max_ttl)
    }

    /// Largest response body that will be stored.
    pub(crate) fn max_entry_bytes(&self) -> usize {
        self.max_entry_bytes
    }

    /// The stored answer for `key`. A Redis failure is a miss (and an error for the caller to
    /// count), never a failed request.
    pub(crate) async fn get(&self, key: &Key) -> Result<Option<Arc<Entry>>, RedisError> {
        match &self.store {
            Store::Memory(m) => Ok(m.get(key)),
            Store::Redis(r) => {
                let k = redis_key(key);
                let raw: Option<Vec<u8>> = r
                    .run(|mut c| async move { redis::cmd("GET").arg(k).query_async(&mut c).await })
                    .await?;
                Ok(raw.and_then(|b| Entry::decode(b.into())).map(Arc::new))
            }
        }
    }

    /// Stores an answer. The Redis write runs in the background; the request never waits for
    /// it. Returns false when the entry cannot be stored (too big).
    pub(crate) fn put(
        &self,
        key: Key,
        status: u16,
        headers: &HeaderMap,
        body: Bytes,
        ttl: Duration,
        on_error: impl FnOnce(RedisError) + Send + 'static,
    ) -> bool {
        if body.len() > self.max_entry_bytes || ttl.is_zero() {
            return false;
        }
        let entry = Entry {
            status,
            headers: REPLAYED
                .iter()
                .filter_map(|n| {
                    headers
                        .get(*n)
                        .map(|v| ((*n).to_owned(), Bytes::copy_from_slice(v.as_bytes())))
                })
                .collect(),
            body,
            ttl,
        };
        match &self.store {
            Store::Memory(m) => m.insert(key, Arc::new(entry)),
            Store::Redis(r) => {
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    return false;
                };
                let r = r.clone();
                let k = redis_key(&key);
                let v = entry.encode();
                let ms = ttl.as_millis().min(u64::MAX as u128) as u64;
                rt.spawn(async move {
                    let set = r
                        .run(|mut c| async move {
                            redis::cmd("SET")
                                .arg(k)
                                .arg(&v[..])
                                .arg("PX")
                                .arg(ms)
                                .query_async::<()>(&mut c)
                                .await
                        })
                        .await;
                    if let Err(e) = set {
                        on_error(e);
                    }
                });
            }
        }
        true
    }
}

fn redis_key(key: &Key) -> String {
    let mut s = String::with_capacity(12 + 64);
    s.push_str("tally:cache:");
    for b in key {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The key of a request. `scope` is the provider or router name.
pub(crate) fn key(
    scope: &str,
    method: &Method,
    path_and_query: &str,
    namespace: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Key {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        // Length-prefixed, so no two different field lists hash the same bytes.
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(b"tally-cache-v1");
    field(scope.as_bytes());
    field(method.as_str().as_bytes());
    field(path_and_query.as_bytes());
    field(namespace.unwrap_or("").as_bytes());
    for name in VARY.iter().chain(KEY_HEADERS) {
        for v in headers.get_all(*name) {
            field(name.as_bytes());
            field(v.as_bytes());
        }
    }
    field(body);
    h.finalize().into()
}

/// Headers of a replayed answer, and whether its stream carries injected usage to strip.
fn replay_headers(entry: &Entry) -> (HeaderMap, bool) {
    let mut h = HeaderMap::new();
    for (n, v) in &entry.headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            h.insert(n, v);
        }
    }
    let injected = h.remove(INJECTED).is_some();
    (h, injected)
}

/// Response header of the cache stage: `HIT` or `MISS`.
pub const CACHE_HEADER: &str = "tally-cache";

/// The cache phase: a stored answer for this request, or `None` (then, when the request uses
/// the cache, the answer is collected to be stored). Only whole request bodies are cached,
/// and a failing backend is a miss.
pub(crate) async fn lookup(
    ctx: &mut Ctx,
    destination: &str,
    tags: &Attribution,
    forward: &Forward,
) -> Option<Arc<Entry>> {
    let cache = ctx.shared.stages.cache.clone()?;
    let req = CacheRequest {
        enabled: tags.cache,
        ttl_secs: tags.cache_ttl_secs,
        namespace: tags.cache_namespace.as_deref(),
    };
    if !(forward.head.complete() && cache.wanted(destination, &req)) {
        return None;
    }
    let parts = &forward.parts;
    let pq = match parts.uri.query() {
        Some(q) => format!("{}?{q}", forward.path),
        None => forward.path.clone(),
    };
    let key = key(
        destination,
        &parts.method,
        &pq,
        req.namespace,
        &parts.headers,
        &forward.head.bytes,
    );
    let found = cache.get(&key).await.unwrap_or_else(|e| {
        ctx.shared.metrics.stage_error("cache");
        tracing::warn!(error = %e, "cache lookup failed; treating it as a miss");
        None
    });
    let (result, header) = if found.is_some() {
        ("hit", "HIT")
    } else {
        ("miss", "MISS")
    };
    ctx.shared
        .metrics
        .cache_lookups
        .get_or_create(&ResultLabels { result })
        .inc();
    ctx.response_headers.insert(
        HeaderName::from_static(CACHE_HEADER),
        HeaderValue::from_static(header),
    );
    if found.is_none() {
        let ttl = cache.ttl(&req, &parts.headers);
        ctx.record().cache_status = CacheStatus::Miss;
        ctx.exchange.hook(Box::new(Fill {
            cache,
            key,
            ttl,
            headers: HeaderMap::new(),
            chunks: Vec::new(),
            len: 0,
            too_big: false,
        }));
    }
    found
}

/// A hit, ready to go through the same tee as a live answer: the stored bytes, so the record
/// gets the same usage (and its cost becomes the saving).
pub(crate) fn replay(
    exchange: &mut Exchange,
    entry: &Entry,
) -> (StatusCode, HeaderMap, http_body_util::Full<Bytes>) {
    let (headers, injected) = replay_headers(entry);
    let s = exchange.state();
    s.record.cache_status = CacheStatus::Hit;
    s.injected = injected;
    let status = StatusCode::from_u16(entry.status).unwrap_or(StatusCode::OK);
    (
        status,
        headers,
        http_body_util::Full::new(entry.body.clone()),
    )
}

/// A miss collecting its answer for the cache: clones of the chunks (reference-counted, not
/// copied) until the answer ends or outgrows the entry limit.
struct Fill {
    cache: Arc<ResponseCache>,
    key: Key,
    ttl: Duration,
    headers: HeaderMap,
    chunks: Vec<Bytes>,
    len: usize,
    too_big: bool,
}

impl StageHook for Fill {
    fn on_head(&mut self, head: &ResponseHead<'_>) {
        for h in [http::header::CONTENT_TYPE, http::header::CONTENT_ENCODING] {
            if let Some(v) = head.headers.get(&h) {
                self.headers.insert(h, v.clone());
            }
        }
        if head.injected {
            self.headers.insert(
                HeaderName::from_static(INJECTED),
                HeaderValue::from_static("1"),
            );
        }
    }

    fn on_data(&mut self, chunk: &Bytes) {
        if self.too_big {
            return;
        }
        self.len += chunk.len();
        if self.len > self.cache.max_entry_bytes() {
            self.too_big = true;
            self.chunks = Vec::new();
        } else {
            self.chunks.push(chunk.clone());
        }
    }

    fn on_finish(self: Box<Self>, record: &Record, complete: bool, metrics: &ProxyMetrics) {
        let ok = complete && (200..300).contains(&record.status) && record.error.is_none();
        if !ok || self.too_big {
            return;
        }
        let mut body = Vec::with_capacity(self.len);
        for c in &self.chunks {
            body.extend_from_slice(c);
        }
        let errors = metrics.clone();
        let stored = self.cache.put(
            self.key,
            record.status,
            &self.headers,
            body.into(),
            self.ttl,
            move |e| {
                errors.stage_error("cache");
                tracing::warn!(error = %e, "could not store a response in the cache");
            },
        );
        if stored {
            metrics.cache_stores.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_key_changes_with_everything_that_changes_the_answer() {
        let base = key("openai", &Method::POST, "/v1/chat", None, &hm(&[]), b"{}");
        assert_eq!(
            base,
            key("openai", &Method::POST, "/v1/chat", None, &hm(&[]), b"{}")
        );
        for other in [
            key("groq", &Method::POST, "/v1/chat", None, &hm(&[]), b"{}"),
            key("openai", &Method::GET, "/v1/chat", None, &hm(&[]), b"{}"),
            key(
                "openai",
                &Method::POST,
                "/v1/chat?x=1",
                None,
                &hm(&[]),
                b"{}",
            ),
            key(
                "openai",
                &Method::POST,
                "/v1/chat",
                Some("a"),
                &hm(&[]),
                b"{}",
            ),
            key(
                "openai",
                &Method::POST,
                "/v1/chat",
                None,
                &hm(&[("authorization", "Bearer other")]),
                b"{}",
            ),
            key(
                "openai",
                &Method::POST,
                "/v1/chat",
                None,
                &hm(&[("anthropic-version", "2023-06-01")]),
                b"{}",
            ),
            key("openai", &Method::POST, "/v1/chat", None, &hm(&[]), b"{ }"),
        ] {
            assert_ne!(base, other);
        }
        // Headers that do not change the answer leave the key alone.
        assert_eq!(
            base,
            key(
                "openai",
                &Method::POST,
                "/v1/chat",
                None,
                &hm(&[("user-agent", "x"), ("tally-user-id", "bob")]),
                b"{}"
            )
        );
    }

    #[test]
    fn entries_survive_the_redis_frame_and_garbage_is_a_miss() {
        let e = Entry {
            status: 200,
            headers: vec![(
                "content-type".into(),
                Bytes::from_static(b"text/event-stream"),
            )],
            body: Bytes::from_static(b"data: {}\n\ndata: [DONE]\n\n\x00\xff"),
            ttl: Duration::ZERO,
        };
        assert_eq!(Entry::decode(e.encode()), Some(e.clone()));
        let full = e.encode();
        for cut in 0..20 {
            // A truncated frame never panics; a cut inside the body still decodes (shorter).
            let _ = Entry::decode(full.slice(..cut.min(full.len())));
        }
        assert_eq!(Entry::decode(Bytes::from_static(b"nope")), None);
        assert_eq!(
            Entry::decode(Bytes::from_static(b"TC1\x00\xc8\x00\x05")),
            None
        );
    }

    #[test]
    fn ttl_comes_from_the_header_then_max_age_then_the_default_and_is_capped() {
        let c = ResponseCache::build(&CacheConfig {
            ttl_secs: 60,
            max_ttl_secs: 600,
            ..CacheConfig::default()
        })
        .expect("memory cache");
        let none = HeaderMap::new();
        let req = CacheRequest::default();
        assert_eq!(c.ttl(&req, &none), Duration::from_secs(60));
        let cc = hm(&[("cache-control", "no-transform, max-age=120")]);
        assert_eq!(c.ttl(&req, &cc), Duration::from_secs(120));
        let hdr = CacheRequest {
            ttl_secs: Some(5),
            ..req
        };
        assert_eq!(c.ttl(&hdr, &cc), Duration::from_secs(5));
        let big = CacheRequest {
            ttl_secs: Some(100_000),
            ..req
        };
        assert_eq!(c.ttl(&big, &none), Duration::from_secs(600));
    }

    #[test]
    fn the_memory_backend_evicts_by_bytes() {
        let c = ResponseCache::build(&CacheConfig {
            max_bytes: 10_000,
            max_entry_bytes: 5_000,
            ..CacheConfig::default()
        })
        .expect("memory cache");
        let Store::Memory(m) = &c.store else {
            panic!("memory")
        };
        for i in 0..20u8 {
            let stored = c.put(
                [i; 32],
                200,
                &HeaderMap::new(),
                Bytes::from(vec![i; 4_000]),
                Duration::from_secs(60),
                |_| {},
            );
            assert!(stored);
        }
        assert!(!c.put(
            [99; 32],
            200,
            &HeaderMap::new(),
            Bytes::from(vec![0; 6_000]),
            Duration::from_secs(60),
            |_| {}
        ));
        m.run_pending_tasks();
        assert!(m.weighted_size() <= 10_000, "{}", m.weighted_size());
    }
}
