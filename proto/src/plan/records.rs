//! The plan's records: an endpoint (its key, kind and routes) and a route
//! (a link as a worker sees it, with its replicas). What the supervisor
//! reconciles and sends, and every worker serves.

use crate::graph::{Refusal, Via};
use crate::types::{Backend, Kind, Listen};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;

/// Identity of an endpoint: the consumer's namespace (its init pid, 0 =
/// the supervisor's own) and the address inside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointKey {
    pub consumer_pid: u32,
    pub listen: Listen,
}

impl fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.consumer_pid == 0 {
            write!(f, "{} (host)", self.listen)
        } else {
            write!(f, "{} (ns of pid {})", self.listen, self.consumer_pid)
        }
    }
}

/// One link as a worker sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Index of the link in the graph it came from (for messages only).
    pub link: usize,
    /// The first link's; its `balance` shares connections among the
    /// route's backends: its own `backend`, then each of `replicas`.
    pub via: Via,
    /// The route's other links (BEHAVIOUR §4 replicas: same route, same
    /// `balance`), in graph order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<Replica>,
}

/// A further link of a route with replicas: what differs from the first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Replica {
    /// Index of the link in the graph (for messages only).
    pub link: usize,
    pub name: String,
    pub provider: String,
    pub provider_pid: u32,
    pub backend: Backend,
}

/// A replica's content apart from its graph position.
type ReplicaContent<'a> = (&'a str, &'a str, u32, &'a Backend);

impl Replica {
    fn content(&self) -> ReplicaContent<'_> {
        let Replica {
            link: _,
            name,
            provider,
            provider_pid,
            backend,
        } = self;
        (name, provider, *provider_pid, backend)
    }
}

impl Route {
    /// Equal apart from where the links sat in the graph array.
    pub fn same_as(&self, other: &Route) -> bool {
        self.content() == other.content()
    }

    /// Every backend of the route: its own, then its replicas'.
    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        std::iter::once(&self.via.backend).chain(self.replicas.iter().map(|r| &r.backend))
    }

    /// (provider_pid, backend) of every link of the route.
    pub(super) fn providers(&self) -> impl Iterator<Item = (u32, &Backend)> {
        std::iter::once((self.via.provider_pid, &self.via.backend))
            .chain(self.replicas.iter().map(|r| (r.provider_pid, &r.backend)))
    }

    /// The backends as a line: `A`, or `A, B (least-conn)`.
    pub fn pool_text(&self) -> String {
        if self.replicas.is_empty() {
            return self.via.backend.to_string();
        }
        let all: Vec<String> = self.backends().map(|b| b.to_string()).collect();
        match self.via.balance {
            Some(p) => format!("{} ({p})", all.join(", ")),
            None => all.join(", "),
        }
    }

    /// Everything but the graph positions, by reference: what `same_as`
    /// compares, hashable (destructurings, so a new field cannot be
    /// forgotten).
    fn content(&self) -> (&Via, Vec<ReplicaContent<'_>>) {
        let Route {
            link: _,
            via,
            replicas,
        } = self;
        // Empty (no allocation) unless the route has replicas.
        (via, replicas.iter().map(Replica::content).collect())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub key: EndpointKey,
    pub kind: Kind,
    pub consumer: String,
    pub routes: Vec<Route>,
}

impl Endpoint {
    /// Provider containers whose root the worker must reach a unix socket
    /// through: every `provider_pid` != 0 of a route with a unix backend,
    /// sorted, at most [`crate::limits::MAX_ROOTS`] (the planner refuses links
    /// past it; the cut here only guards hand-made endpoints). The supervisor attaches
    /// one O_PATH fd of `/proc/<pid>/root` per entry, in this order, to
    /// Init and Update (the worker runtime reaches unix sockets in provider
    /// containers through them; see its backend module for why).
    pub fn root_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .routes
            .iter()
            .flat_map(|r| r.providers())
            .filter(|(pid, b)| *pid != 0 && matches!(b, Backend::Unix(_)))
            .map(|(pid, _)| pid)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids.truncate(crate::limits::MAX_ROOTS);
        pids
    }

    /// Routes equal apart from graph positions (order matters not).
    /// Linear: an endpoint may hold tens of thousands of routes (a 4 MiB
    /// graph), and this runs on every apply.
    pub fn same_routes(&self, other: &Endpoint) -> bool {
        if self.routes.len() != other.routes.len() {
            return false;
        }
        // The common case: same routes in the same order.
        if self
            .routes
            .iter()
            .zip(&other.routes)
            .all(|(a, b)| a.same_as(b))
        {
            return true;
        }
        let mut count: HashMap<_, isize> = HashMap::with_capacity(self.routes.len());
        for r in &self.routes {
            *count.entry(r.content()).or_default() += 1;
        }
        for r in &other.routes {
            match count.get_mut(&r.content()) {
                Some(n) if *n > 0 => *n -= 1,
                _ => return false,
            }
        }
        true
    }
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub endpoints: Vec<Endpoint>,
    pub refused: Vec<Refusal>,
    /// Links of types we do not make real (dbus, drm, ...): not errors.
    /// Filled by [`from_graph`] only; [`build`] takes them as refusals.
    pub skipped: Vec<Refusal>,
}
