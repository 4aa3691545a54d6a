//! The control plane's integration tests: one binary, real Postgres and
//! SQLite, real processes.

// A panic in a test is a failure with a location: unwrap freely here.
#![allow(clippy::unwrap_used)]

mod harness;
mod platform;
mod store;
