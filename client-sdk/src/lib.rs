//! Async Rust client for the Starling broker.
#![warn(missing_docs)]

pub use starling_protocol as protocol;
