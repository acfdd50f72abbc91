//! Credentials Tally holds for a provider, beyond a plain key: what it needs to sign a request
//! (AWS SigV4, [`aws`]). Nothing here is ever logged, stored or shown but as a hint.

pub mod aws;
