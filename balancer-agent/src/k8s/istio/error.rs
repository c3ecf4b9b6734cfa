//! Why a VirtualService or DestinationRule is not applied.

/// Why a VirtualService or DestinationRule is not applied. Paths count from
/// 0, as in the spec.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum IstioError {
    #[error("{0}")]
    Malformed(String),
    #[error("no host names a Service in the cluster ({0})")]
    NoService(String),
    #[error("gateways {0:?} do not include `mesh`: it routes gateways, not Services' clients")]
    GatewaysOnly(Vec<String>),
    #[error("{path}: `{field}` is not supported")]
    Unsupported { path: String, field: String },
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
    #[error("shadowed by the older {kind} `{by}`, which applies to `{service}`")]
    Shadowed {
        kind: &'static str,
        by: String,
        service: String,
    },
    #[error("a GRPCRoute routes `{0}` and wins over a VirtualService")]
    LostToGrpcRoute(String),
}
