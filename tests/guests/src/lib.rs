//! Paths of the guest components the integration tests run, built from source by this
//! crate's build script.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
