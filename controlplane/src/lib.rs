//! STOA control plane: the store, the config stream to gateways, the admin
//! API (gRPC and HTTP/JSON). See ARCHITECTURE.md for the map.

pub mod store;
