//! Credentials Tally holds for a provider, beyond a plain key: what it needs to sign a request
//! (AWS SigV4, [`aws`]) or to mint one (a Google service account's access tokens, [`google`]).
//! Nothing here is ever logged, stored or shown but as a hint.

pub mod aws;
pub mod google;
