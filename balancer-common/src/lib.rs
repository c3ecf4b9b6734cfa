#![no_std]
//! Map keys and values shared by the kernel programs and the agent.
