//! The endpoint plan: validated links grouped into listening endpoints
//! (BEHAVIOUR §4). One endpoint = (consumer namespace, listen address); it gets
//! one worker. The plan is what the supervisor reconciles against.
//!
//! One job per file: `records` (what the plan is made of, what every
//! crate imports), `planner` (links to endpoints: clashes, replicas,
//! preferring running endpoints), `fit` (an endpoint cut to what one
//! control message carries).

mod fit;
mod planner;
mod records;
#[cfg(test)]
mod tests;

pub use planner::{build, build_preferring, from_graph};
pub use records::{Endpoint, EndpointKey, Plan, Replica, Route};
