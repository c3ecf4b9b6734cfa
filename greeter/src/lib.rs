//! The greeter gRPC service of the demo and the tests, and an echo service
//! that exercises every shape of call a balancer forwards.
//!
//! - [`pb`]: the generated code of `proto/helloworld.proto` and
//!   `proto/echo.proto` (`helloworld.Greeter`, `balancer.test.Echo`).
//! - [`server`]: both services, served by `greeter-server` or in-process
//!   ([`server::TestServer`]) with a call counter.
//! - [`client`]: a channel with raised message limits and the per-backend
//!   count of `SayHello` calls that `greeter-client` prints.

pub mod client;
pub mod server;

/// Generated messages, clients and servers.
pub mod pb {
    pub mod helloworld {
        tonic::include_proto!("helloworld");
    }
    pub mod echo {
        tonic::include_proto!("balancer.test");
    }
}

/// Largest message either side accepts (gRPC's default is 4 MiB; the tests
/// send messages of 4 MiB and more).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;
