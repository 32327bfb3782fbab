//! The xconnect graph as Pantavisor serves it (`GET /xconnect-graph`): a JSON
//! array with one object per link. Parsing is two-step on purpose: the array
//! is read as loose JSON values, then each element is validated on its own,
//! so one bad link is refused by index and name while the rest still apply.
//!
//! Here the document and what reading it yields; `validate` reads one
//! link (its addresses, paths and header-bound text), through `fields`
//! (typed access to one JSON object, and which extension fields act on
//! which link type).

mod fields;
#[cfg(test)]
mod tests;
mod validate;

use crate::types::{Backend, LinkType, Listen, Policy, ProxyProtocol};
use fields::json_kind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
pub use validate::{parse_addr, provider_path, SUN_PATH_MAX};
use validate::{validate, Verdict};

/// A validated link: where it listens (its endpoint) and what it routes
/// by there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: usize,
    pub ty: LinkType,
    pub consumer_pid: u32,
    pub interface: String,
    pub listen: Listen,
    pub via: Via,
}

/// What a link routes by: the part of it its route carries to the worker
/// (`proto::plan::Route`), written once for both. Equal `Via`s route
/// alike wherever the link sat in the graph.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Via {
    pub name: String,
    pub consumer: String,
    pub provider: String,
    pub provider_pid: u32,
    pub role: String,
    pub backend: Backend,
    /// http only: normalised path prefix (`/` when the target has none).
    pub prefix: String,
    pub strip_prefix: bool,
    pub host: Option<String>,
    pub sni: Option<String>,
    pub proxy_protocol: Option<ProxyProtocol>,
    /// tcp and http: this link is a replica of its route (BEHAVIOUR §4), its
    /// connections shared by this policy with the route's other links.
    /// Absent in the JSON when None, as from a sender that knows nothing
    /// of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<Policy>,
}

/// A link that was not applied, with the reason. `index` is the 0-based
/// position in the graph array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub index: usize,
    pub name: String,
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link #{} '{}': {}", self.index, self.name, self.reason)
    }
}

/// The whole document could not be used; nothing in it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphError {
    NotJson(String),
    NotArray(&'static str),
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphError::NotJson(e) => write!(f, "graph is not valid JSON: {e}"),
            GraphError::NotArray(t) => write!(f, "graph must be a JSON array of links, found {t}"),
        }
    }
}

impl std::error::Error for GraphError {}

/// A graph document, read: the links to make real, the links refused (with
/// why) and the links skipped because their type is not ours (dbus, drm,
/// wayland, ...: Pantavisor's other link types, not errors).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    pub links: Vec<Link>,
    pub refused: Vec<Refusal>,
    pub skipped: Vec<Refusal>,
}

/// Parse a graph document into validated links, refusals and skipped links.
pub fn parse_graph(text: &str) -> Result<Graph, GraphError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| GraphError::NotJson(e.to_string()))?;
    let items = match doc {
        Value::Array(items) => items,
        other => return Err(GraphError::NotArray(json_kind(&other))),
    };
    let mut g = Graph::default();
    for (index, item) in items.iter().enumerate() {
        match validate(index, item) {
            Verdict::Link(link) => g.links.push(link),
            Verdict::Refused(r) => g.refused.push(r),
            Verdict::Skipped(r) => g.skipped.push(r),
        }
    }
    Ok(g)
}

/// Parse a graph document into validated links and the links not made
/// real: refused and skipped together, in graph order, each with its
/// reason (what `run` reports in its log and status).
pub fn parse(text: &str) -> Result<(Vec<Link>, Vec<Refusal>), GraphError> {
    let g = parse_graph(text)?;
    let mut not_applied = g.refused;
    not_applied.extend(g.skipped);
    not_applied.sort_by_key(|r| r.index);
    Ok((g.links, not_applied))
}
