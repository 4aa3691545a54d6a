//! STOA's load-testing crate: the reference MCP upstream (`reference`) used by the
//! gateway's integration tests, the demo and benchmarks, and the kit both
//! planes' integration tests share (`testkit`).

pub mod reference;
pub mod testkit;
