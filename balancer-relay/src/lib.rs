//! The sans-IO core of balancer's HTTP/2 relay: the frame codec
//! ([`frame`]) and header compression ([`hpack`]). Nothing here does I/O or
//! owns a socket; the agent's relay engine drives it.

pub mod frame;
pub mod hpack;
