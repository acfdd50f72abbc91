//! Body wrappers on the proxy path. None of them ever buffers a whole body or awaits inside
//! `poll_frame`; each forwards frames as they come.

mod request;
mod strip;
mod tee;

pub use request::{read_head, Head, PrefixedBody};
pub use strip::StripUsage;
pub use tee::{error_chain, BodyObserver, StreamEnd, TeeBody};

/// The boxed error every proxied body uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body type handed to hyper.
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;
