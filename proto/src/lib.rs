//! The wire contract between the control plane, the gateways and admin
//! clients: the generated types (`pb`), the rules that say what a valid
//! resource is (`rules`), and the sans-IO state machines of both ends of the
//! config stream (`stream`), and the API key format (`keys`). No I/O and no
//! clock here (but the OS random source, for new keys): the machines take
//! `now` as an input and are driven by the control plane and the gateway.

#[allow(warnings, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/stoa.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/stoa.v1.serde.rs"));
}

pub mod keys;
pub mod resource;
pub mod rules;
pub mod stream;

/// The encoded `FileDescriptorSet` of every `.proto` file, for gRPC server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/stoa_descriptor.bin"));
