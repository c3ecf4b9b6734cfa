//! What the fuzz targets run, shared with the seed generator
//! (`examples/seeds.rs`) so that the seeds always match the input format.
//!
//! Both targets take one configuration byte first (limits, options), then the
//! bytes a peer would send. Any panic is a bug: a parser that panics on a
//! peer's bytes takes the agent down.

pub mod frame;
pub mod hpack;

/// An owned header field: name, value, never-indexed.
pub type OwnedField = (Vec<u8>, Vec<u8>, bool);
