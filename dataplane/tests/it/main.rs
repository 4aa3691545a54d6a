//! Integration tests: the real gateway binary between real MCP clients
//! (official TypeScript and Python SDKs, an HTTP/3 client) and real MCP
//! servers (the reference upstream, `@modelcontextprotocol/server-everything`).
//! `cargo xtask tools` installs the third-party parts.

// A panic in a test is a failure with a location: unwrap freely here.
#![allow(clippy::unwrap_used)]

mod clients;
mod harness;
mod http;

mod aggregate;
mod conformance;
mod lifecycle;
mod refusals;
mod relay;
mod transports;
