//! STOA data plane: the MCP gateway. See ARCHITECTURE.md for the map.

pub mod aggregate;
pub mod auth;
pub mod body;
pub mod client;
pub mod config;
pub mod error;
pub mod gateway;
pub mod h1;
pub mod headers;
pub mod listen;
pub mod mcp;
pub mod memo;
pub mod metrics;
pub mod model;
pub mod names;
pub mod quic;
pub mod relay;
pub mod run;
pub mod session;
pub mod sse;
pub mod tls;
pub mod upstream;
pub mod xds;
