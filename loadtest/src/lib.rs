//! STOA's load-testing crate: the reference MCP upstream (`reference`) used by the
//! gateway's integration tests, the demo and benchmarks.

pub mod reference;
