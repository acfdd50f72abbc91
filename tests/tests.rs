//! Integration tests of the whole of Tally over real sockets, with a fake upstream as the only
//! fake. One binary (see ripgrep's layout) so fixtures compile once.

mod support;

mod azure;
mod bedrock;
mod budgets;
mod cli;
mod clickhouse_store;
mod dashboard;
mod endpoints;
mod errors;
mod faults;
mod gemini;
mod guardrails;
mod hardening;
mod hostile;
mod keys;
mod load;
mod observability;
mod passthrough;
mod prices;
mod privacy;
mod reconcile;
mod sdk;
mod secrets;
mod stages;
mod stream_endings;
mod unified;
mod usage;
