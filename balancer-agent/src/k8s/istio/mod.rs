//! Istio's traffic rules as written: `VirtualService` and `DestinationRule`
//! (`networking.istio.io/v1`), read-only, for the Services whose clients
//! balancer serves.
//!
//! - [`object`]: the watched objects (spec kept as JSON) and the pods'
//!   labels that subsets select.
//! - [`spec`]: the fields read; everything else is kept by name and
//!   reported.
//! - [`path`]: `uri` matches as gRPC service and method matches.
//! - [`rule`]: a DestinationRule's subsets, policy and ejection, and the
//!   Service a host names.
//! - [`translate`]: routes, subsets and policy per Service, precedence
//!   (the oldest object; a GRPCRoute over a VirtualService) and a
//!   [`Report`] per object that is not applied as written.
//! - [`report`]: each report logged once, posted once as a Warning Event on
//!   its object, and listed by `balancerctl status`.
//!
//! Without Istio's CRDs the watches find nothing (404) and nothing changes.

pub mod error;
pub mod object;
pub mod path;
pub mod report;
pub mod rule;
pub mod spec;
pub mod translate;

pub use error::IstioError;
pub use object::{DestinationRule, PodLabels, VirtualService};
pub use report::{NOT_APPLIED_REASON, PARTLY_APPLIED_REASON};
pub use translate::{label_subset, translate, Applied, Report, SubsetLabel, SUBSET_LABEL_PREFIX};
