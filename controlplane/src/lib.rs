//! STOA control plane: the store, the config stream to gateways, the admin
//! API (gRPC and HTTP/JSON). See ARCHITECTURE.md for the map.

pub mod admin;
pub mod auth;
pub mod discover;
pub mod discovery;
pub mod http;
pub mod run;
pub mod seed;
pub mod store;
