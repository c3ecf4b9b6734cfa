//! The greeter gRPC service of the demo and the tests.
