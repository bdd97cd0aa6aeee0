//! The path of a static `runner` (x86_64-unknown-linux-musl, dev profile, stripped),
//! built from this workspace's source by this crate's build script, for the container
//! tests' images.

include!(concat!(env!("OUT_DIR"), "/static_runner.rs"));
