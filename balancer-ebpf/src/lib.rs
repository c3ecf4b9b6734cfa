#![no_std]
//! balancer's kernel programs live in the `balancer` binary target
//! (`src/main.rs`), built for `bpfel-unknown-none` by the agent's build
//! script. This library target exists so the agent can name the crate as a
//! build-dependency, which makes cargo rebuild the agent when the programs
//! change.
