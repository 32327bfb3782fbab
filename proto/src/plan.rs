//! The endpoint plan: validated links grouped into listening endpoints
//! (BEHAVIOUR §4). One endpoint = (consumer namespace, listen address); it gets
//! one worker. The plan is what the supervisor reconciles against.

use crate::graph::{Link, Refusal};
use crate::types::{Backend, Kind, Listen, Policy, ProxyProtocol};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
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
    pub name: String,
    pub consumer: String,
    pub provider: String,
    pub provider_pid: u32,
    pub role: String,
    pub backend: Backend,
    /// http: normalised path prefix.
    pub prefix: String,
    pub strip_prefix: bool,
    pub host: Option<String>,
    pub sni: Option<String>,
    pub proxy_protocol: Option<ProxyProtocol>,
    /// The link's `balance`: how connections are shared among the route's
    /// backends (its own `backend`, then each of `replicas`). Absent in
    /// the JSON when None, as from a sender that knows nothing of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<Policy>,
    /// The route's other links (BEHAVIOUR §4 replicas: same route, same
    /// `balance`), in graph order; the fields above are the first link's.
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

impl Route {
    /// Equal apart from where the link sat in the graph array.
    pub fn same_as(&self, other: &Route) -> bool {
        self.content() == other.content()
    }

    /// Every backend of the route: its own, then its replicas'.
    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        std::iter::once(&self.backend).chain(self.replicas.iter().map(|r| &r.backend))
    }

    /// (provider_pid, backend) of every link of the route.
    fn providers(&self) -> impl Iterator<Item = (u32, &Backend)> {
        std::iter::once((self.provider_pid, &self.backend))
            .chain(self.replicas.iter().map(|r| (r.provider_pid, &r.backend)))
    }

    /// The backends as a line: `A`, or `A, B (least-conn)`.
    pub fn pool_text(&self) -> String {
        if self.replicas.is_empty() {
            return self.backend.to_string();
        }
        let all: Vec<String> = self.backends().map(|b| b.to_string()).collect();
        match self.balance {
            Some(p) => format!("{} ({p})", all.join(", ")),
            None => all.join(", "),
        }
    }

    /// Every field but `link`, by reference: what `same_as` compares,
    /// hashable (a destructuring, so a new field cannot be forgotten).
    #[allow(clippy::type_complexity)]
    fn content(
        &self,
    ) -> (
        &str,
        &str,
        &str,
        u32,
        &str,
        &Backend,
        &str,
        bool,
        &Option<String>,
        &Option<String>,
        &Option<ProxyProtocol>,
        // Nested: tuples past 12 fields are neither Eq nor Hash.
        (Option<Policy>, Vec<ReplicaContent<'_>>),
    ) {
        let Route {
            link: _,
            name,
            consumer,
            provider,
            provider_pid,
            role,
            backend,
            prefix,
            strip_prefix,
            host,
            sni,
            proxy_protocol,
            balance,
            replicas,
        } = self;
        (
            name,
            consumer,
            provider,
            *provider_pid,
            role,
            backend,
            prefix,
            *strip_prefix,
            host,
            sni,
            proxy_protocol,
            (
                *balance,
                // Empty (no allocation) unless the route has replicas.
                replicas
                    .iter()
                    .map(|r| {
                        (
                            r.name.as_str(),
                            r.provider.as_str(),
                            r.provider_pid,
                            &r.backend,
                        )
                    })
                    .collect(),
            ),
        )
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

fn route_of(l: &Link) -> Route {
    Route {
        link: l.index,
        name: l.name.clone(),
        consumer: l.consumer.clone(),
        provider: l.provider.clone(),
        provider_pid: l.provider_pid,
        role: l.role.clone(),
        backend: l.backend.clone(),
        prefix: l.prefix.clone(),
        strip_prefix: l.strip_prefix,
        host: l.host.clone(),
        sni: l.sni.clone(),
        proxy_protocol: l.proxy_protocol,
        balance: l.balance,
        replicas: Vec::new(),
    }
}

/// What two routes of one endpoint must not share: (prefix, host) on http,
/// the sni on tcp (the prefix is always `/` there).
type Selector = (String, Option<String>);

fn selector(kind: Kind, prefix: &str, host: &Option<String>, sni: &Option<String>) -> Selector {
    match kind {
        Kind::Http => (prefix.to_string(), host.clone()),
        _ => (String::new(), sni.clone()),
    }
}

/// Why `l` cannot join the endpoint `ep` that earlier links already hold.
/// `taken`: the selectors of `ep`'s routes, with their positions (a map,
/// so a graph of thousands of routes on one port is planned in linear
/// time).
fn clash(ep: &Endpoint, taken: &HashMap<Selector, usize>, l: &Link) -> Option<String> {
    let holder = &ep.routes[0];
    let held = format!(
        "endpoint {} is held by link #{} '{}'",
        ep.key, holder.link, holder.name
    );
    let kind = Kind::of(l.ty);
    if ep.kind != kind {
        return Some(format!(
            "type clash: {held} of type {}, this link is {}",
            ep.kind, kind
        ));
    }
    if ep.consumer != l.consumer {
        return Some(format!(
            "{held} for consumer '{}', this link is for '{}'",
            ep.consumer, l.consumer
        ));
    }
    match kind {
        Kind::Http => taken
            .get(&selector(kind, &l.prefix, &l.host, &l.sni))
            .map(|&i| &ep.routes[i])
            .map(|r| {
                format!(
                    "link #{} '{}' already routes prefix '{}' on {}",
                    r.link, r.name, r.prefix, ep.key
                )
            }),
        // Several tcp links may share an address only when each has its
        // own TLS server name to route on.
        Kind::Tcp => {
            if l.sni.is_none() || taken.contains_key(&(String::new(), None)) {
                Some(format!(
                    "{held}; tcp links share an address only when each has a distinct 'sni'"
                ))
            } else {
                let sel = selector(kind, &l.prefix, &l.host, &l.sni);
                taken.get(&sel).map(|&i| &ep.routes[i]).map(|r| {
                    format!(
                        "link #{} '{}' already has sni '{}' on {}",
                        r.link,
                        r.name,
                        l.sni.as_deref().unwrap_or(""),
                        ep.key
                    )
                })
            }
        }
        Kind::Unix | Kind::Rest => Some(held),
    }
}

/// What a route is on its endpoint, for messages: `prefix '/a' host 'h'`,
/// `sni 'a.example'`, or `the address` (a tcp route without sni).
fn route_words(kind: Kind, r: &Route) -> String {
    match (kind, &r.host, &r.sni) {
        (Kind::Http, Some(h), _) => format!("prefix '{}' host '{h}'", r.prefix),
        (Kind::Http, None, _) => format!("prefix '{}'", r.prefix),
        (_, _, Some(sni)) => format!("sni '{sni}'"),
        _ => "the address".to_string(),
    }
}

fn balance_words(b: Option<Policy>) -> String {
    match b {
        Some(p) => format!("\"balance\": \"{p}\""),
        None => "no 'balance'".to_string(),
    }
}

/// Add link `l` as a replica of route `r` (the same route on the same
/// endpoint, BEHAVIOUR §4), or say why not. `members`: the (route, backend)
/// pairs of the endpoint's pools, so a backend named twice is found in
/// constant time.
fn join(
    kind: Kind,
    key: &EndpointKey,
    (i, r): (usize, &mut Route),
    l: &Link,
    members: &mut HashSet<(usize, Backend)>,
) -> Result<(), String> {
    let holder = format!(
        "link #{} '{}' routes {} on {key}",
        r.link,
        r.name,
        route_words(kind, r)
    );
    if r.balance != l.balance {
        let (theirs, ours) = (balance_words(r.balance), balance_words(l.balance));
        return Err(if r.balance.is_none() {
            // Today's duplicate, with the way out.
            format!(
                "{holder} already (with {theirs}); links of one route are replicas only when every one has the same 'balance', this link has {ours}"
            )
        } else {
            format!(
                "mixed replicas: {holder} with {theirs}, this link has {ours}; replicas need the same 'balance' on every link of the route"
            )
        });
    }
    let agree = |field: &str, theirs: String, ours: String| {
        (theirs != ours).then(|| {
            format!(
                "{holder} with {field} {theirs}, this link has {ours}; replicas of one route must agree on '{field}'"
            )
        })
    };
    let differs = agree("role", format!("'{}'", r.role), format!("'{}'", l.role))
        .or_else(|| {
            agree(
                "strip_prefix",
                r.strip_prefix.to_string(),
                l.strip_prefix.to_string(),
            )
        })
        .or_else(|| {
            agree(
                "proxy_protocol",
                format!("{:?}", r.proxy_protocol),
                format!("{:?}", l.proxy_protocol),
            )
        });
    if let Some(why) = differs {
        return Err(why);
    }
    if members.is_empty() || !members.contains(&(i, r.backend.clone())) {
        members.insert((i, r.backend.clone()));
    }
    if !members.insert((i, l.backend.clone())) {
        return Err(format!(
            "{holder} and already balances to backend {} there",
            l.backend
        ));
    }
    r.replicas.push(Replica {
        link: l.index,
        name: l.name.clone(),
        provider: l.provider.clone(),
        provider_pid: l.provider_pid,
        backend: l.backend.clone(),
    });
    Ok(())
}

/// An endpoint being planned: the endpoint, the position of each route
/// by selector, and the backends of its pools (see [`join`]).
type Planned = (
    Endpoint,
    HashMap<Selector, usize>,
    HashSet<(usize, Backend)>,
);

/// Group links into endpoints. Earlier links win: a later link that clashes
/// with an endpoint is refused, never the running holder. Links of one
/// route that all carry the same `balance` become that route's replicas.
pub fn build(links: &[Link], mut refused: Vec<Refusal>) -> Plan {
    let mut eps: BTreeMap<EndpointKey, Planned> = BTreeMap::new();
    for l in links {
        let key = EndpointKey {
            consumer_pid: l.consumer_pid,
            listen: l.listen.clone(),
        };
        let kind = Kind::of(l.ty);
        let sel = selector(kind, &l.prefix, &l.host, &l.sni);
        match eps.get_mut(&key) {
            None => {
                let ep = Endpoint {
                    key: key.clone(),
                    kind,
                    consumer: l.consumer.clone(),
                    routes: vec![route_of(l)],
                };
                eps.insert(key, (ep, HashMap::from([(sel, 0)]), HashSet::new()));
            }
            Some((ep, taken, members)) => {
                // The same route of the same kind and consumer: replicas
                // when either side asks for them (`join` refuses a mix).
                let same = (ep.kind == kind && ep.consumer == l.consumer)
                    .then(|| taken.get(&sel).copied())
                    .flatten()
                    .filter(|&i| ep.routes[i].balance.is_some() || l.balance.is_some());
                let outcome = match same {
                    Some(i) => join(kind, &ep.key, (i, &mut ep.routes[i]), l, members),
                    None => match clash(ep, taken, l) {
                        Some(reason) => Err(reason),
                        None => {
                            taken.insert(sel, ep.routes.len());
                            ep.routes.push(route_of(l));
                            Ok(())
                        }
                    },
                };
                if let Err(reason) = outcome {
                    refused.push(Refusal {
                        index: l.index,
                        name: l.name.clone(),
                        reason,
                    });
                }
            }
        }
    }
    let endpoints = eps
        .into_values()
        .filter_map(|(ep, _, _)| fit_control_channel(ep, &mut refused))
        .collect();
    refused.sort_by_key(|r| r.index);
    Plan {
        endpoints,
        refused,
        skipped: Vec::new(),
    }
}

/// Keep an endpoint within what one control message can carry to its
/// worker: at most [`crate::limits::MAX_ROOTS`] provider containers with unix
/// backends (one root fd each) and at most [`crate::limits::MAX_CONFIG`]
/// bytes of routes. Earlier links win, as for clashes: a link that would
/// go past either limit is refused with the reason, so `check` and
/// `status` show it and the worker never misses a route the supervisor
/// counts as served. None: no route of the endpoint fits.
fn fit_control_channel(mut ep: Endpoint, refused: &mut Vec<Refusal>) -> Option<Endpoint> {
    use crate::limits::{MAX_CONFIG, MAX_ROOTS};
    let mut roots: Vec<u32> = Vec::new();
    let mut size = 0usize;
    let mut kept = Vec::with_capacity(ep.routes.len());
    for r in std::mem::take(&mut ep.routes) {
        // A route with replicas fits whole or not at all.
        let mut new_roots: Vec<u32> = r
            .providers()
            .filter(|(pid, b)| *pid != 0 && matches!(b, Backend::Unix(_)))
            .map(|(pid, _)| pid)
            .filter(|pid| !roots.contains(pid))
            .collect();
        new_roots.sort_unstable();
        new_roots.dedup();
        // Its JSON in the worker configuration, and the comma before it.
        let len = json_len(&r) + 1;
        let reason = if !new_roots.is_empty() && roots.len() + new_roots.len() > MAX_ROOTS {
            Some(format!(
                "endpoint {} already reaches unix sockets in {MAX_ROOTS} provider containers, the most one control message carries",
                ep.key
            ))
        } else if size + len > MAX_CONFIG {
            Some(format!(
                "the configuration of endpoint {} would be over {} MiB with this link",
                ep.key,
                MAX_CONFIG >> 20
            ))
        } else {
            None
        };
        match reason {
            Some(reason) => {
                refused.extend(r.replicas.iter().map(|x| Refusal {
                    index: x.link,
                    name: x.name.clone(),
                    reason: reason.clone(),
                }));
                refused.push(Refusal {
                    index: r.link,
                    name: r.name.clone(),
                    reason,
                });
            }
            None => {
                roots.extend(new_roots);
                size += len;
                kept.push(r);
            }
        }
    }
    ep.routes = kept;
    (!ep.routes.is_empty()).then_some(ep)
}

/// Bytes of `v` as JSON, without building the text.
fn json_len(v: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Plain data of strings and numbers: serialising cannot fail; if it
    // somehow did, an over-long count refuses the link rather than hiding it.
    match serde_json::to_writer(&mut c, v) {
        Ok(()) => c.0,
        Err(_) => usize::MAX / 2,
    }
}

/// Group links into endpoints, giving an endpoint that is already running
/// to the links that fit it. `held(key)` names the kind and consumer of
/// the running endpoint at `key`, if any. A link that would take a running
/// endpoint over (another type, another consumer) is then the one refused,
/// even if it comes first in the graph (BEHAVIOUR §4: a refused link never
/// stops a running endpoint). Among equals, graph order decides as in
/// [`build`].
pub fn build_preferring(
    links: &[Link],
    refused: Vec<Refusal>,
    held: impl Fn(&EndpointKey) -> Option<(Kind, String)>,
) -> Plan {
    let fits = |l: &Link| {
        let key = EndpointKey {
            consumer_pid: l.consumer_pid,
            listen: l.listen.clone(),
        };
        held(&key).is_none_or(|(kind, consumer)| kind == Kind::of(l.ty) && consumer == l.consumer)
    };
    // Stable: links that fit keep their order, then the rest keep theirs.
    let (mut ordered, rest): (Vec<Link>, Vec<Link>) = links.iter().cloned().partition(fits);
    ordered.extend(rest);
    build(&ordered, refused)
}

/// Parse and plan in one step (what `check` uses), keeping links of
/// types we do not make real apart from the refused ones.
pub fn from_graph(text: &str) -> Result<Plan, crate::graph::GraphError> {
    let g = crate::graph::parse_graph(text)?;
    let mut plan = build(&g.links, g.refused);
    plan.skipped = g.skipped;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_links_share_an_endpoint_tcp_links_do_not() {
        let p = from_graph(
            r#"[
            {"type":"http","name":"a","consumer":"EXTERNAL","target":"0.0.0.0:80/a","socket":"127.0.0.1:1"},
            {"type":"http","name":"b","consumer":"EXTERNAL","target":"0.0.0.0:80/b","socket":"127.0.0.1:2"},
            {"type":"http","name":"b2","consumer":"EXTERNAL","target":"0.0.0.0:80/b/","socket":"127.0.0.1:2"},
            {"type":"tcp","name":"t","consumer":"EXTERNAL","target":"0.0.0.0:81","socket":"127.0.0.1:3"},
            {"type":"tcp","name":"t2","consumer":"EXTERNAL","target":"0.0.0.0:81","socket":"127.0.0.1:4"},
            {"type":"tcp","name":"clash","consumer":"EXTERNAL","target":"0.0.0.0:80","socket":"127.0.0.1:4"},
            {"type":"tcp","name":"other-ns","consumer":"c","consumer_pid":5,"target":"0.0.0.0:81","socket":"127.0.0.1:4"}
        ]"#,
        )
        .unwrap();
        assert_eq!(p.endpoints.len(), 3);
        let http = p.endpoints.iter().find(|e| e.kind == Kind::Http).unwrap();
        assert_eq!(http.routes.len(), 2);
        let idx: Vec<usize> = p.refused.iter().map(|r| r.index).collect();
        assert_eq!(idx, vec![2, 4, 5]);
        assert!(
            p.refused[2].reason.contains("type clash"),
            "{}",
            p.refused[2].reason
        );
    }

    fn unix_http_link(i: usize, provider_pid: u32, name: &str) -> String {
        format!(
            r#"{{"type":"http","name":"{name}","consumer":"E","target":"0.0.0.0:80/r{i}","socket":"/run/s.sock","provider_pid":{provider_pid}}}"#
        )
    }

    #[test]
    fn links_past_the_provider_roots_one_message_carries_are_refused() {
        use crate::limits::MAX_ROOTS;
        // MAX_ROOTS + 2 providers; a later link to an early provider still fits.
        let mut links: Vec<String> = (0..MAX_ROOTS + 2)
            .map(|i| unix_http_link(i, 100 + i as u32, &format!("l{i}")))
            .collect();
        links.push(unix_http_link(9999, 100, "again"));
        let p = from_graph(&format!("[{}]", links.join(","))).unwrap();
        assert_eq!(p.endpoints.len(), 1);
        let ep = &p.endpoints[0];
        assert_eq!(ep.routes.len(), MAX_ROOTS + 1);
        assert_eq!(ep.root_pids().len(), MAX_ROOTS);
        let idx: Vec<usize> = p.refused.iter().map(|r| r.index).collect();
        assert_eq!(idx, vec![MAX_ROOTS, MAX_ROOTS + 1]);
        assert!(
            p.refused[0].reason.contains("provider containers"),
            "{}",
            p.refused[0].reason
        );
    }

    #[test]
    fn links_past_the_configuration_cap_are_refused() {
        let huge = "n".repeat(crate::limits::MAX_CONFIG);
        let p = from_graph(&format!(
            "[{},{},{}]",
            unix_http_link(0, 0, "small"),
            unix_http_link(1, 0, &huge),
            unix_http_link(2, 0, "after")
        ))
        .unwrap();
        let names: Vec<&str> = p.endpoints[0]
            .routes
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, ["small", "after"]);
        assert_eq!(p.refused.len(), 1);
        assert_eq!(p.refused[0].index, 1);
        assert!(
            p.refused[0].reason.contains("MiB"),
            "{}",
            p.refused[0].reason
        );
        // Alone on its endpoint: no endpoint at all.
        let p = from_graph(&format!("[{}]", unix_http_link(0, 0, &huge))).unwrap();
        assert!(p.endpoints.is_empty());
        assert_eq!(p.refused.len(), 1);
    }

    #[test]
    fn sni_allows_shared_tcp_address() {
        let p = from_graph(
            r#"[
            {"type":"tcp","name":"a","consumer":"E","target":"0.0.0.0:443","socket":"127.0.0.1:1","sni":"a.example"},
            {"type":"tcp","name":"b","consumer":"E","target":"0.0.0.0:443","socket":"127.0.0.1:2","sni":"b.example"},
            {"type":"tcp","name":"c","consumer":"E","target":"0.0.0.0:443","socket":"127.0.0.1:2","sni":"b.example"}
        ]"#,
        )
        .unwrap();
        assert_eq!(p.endpoints[0].routes.len(), 2);
        assert_eq!(p.refused.len(), 1);
    }

    #[test]
    fn running_endpoint_wins_a_type_clash() {
        let (links, refused) = crate::graph::parse(
            r#"[
            {"type":"http","name":"new","consumer":"E","target":"0.0.0.0:80/a","socket":"127.0.0.1:1"},
            {"type":"tcp","name":"old","consumer":"E","target":"0.0.0.0:80","socket":"127.0.0.1:2"}
        ]"#,
        )
        .unwrap();
        let p = build_preferring(&links, refused.clone(), |_| Some((Kind::Tcp, "E".into())));
        assert_eq!(p.endpoints[0].kind, Kind::Tcp);
        assert_eq!(p.refused.len(), 1);
        assert_eq!(p.refused[0].index, 0);
        assert!(
            p.refused[0].reason.contains("type clash"),
            "{}",
            p.refused[0].reason
        );
        // Nothing running: graph order decides.
        let p = build_preferring(&links, refused, |_| None);
        assert_eq!(p.endpoints[0].kind, Kind::Http);
        assert_eq!(p.refused[0].index, 1);
    }

    #[test]
    fn same_routes_ignores_graph_position() {
        let a = from_graph(r#"[{"type":"tcp","name":"a","consumer":"E","target":"0.0.0.0:1","socket":"127.0.0.1:1"}]"#).unwrap();
        let b = from_graph(r#"[{"type":"dbus","name":"x"},{"type":"tcp","name":"a","consumer":"E","target":"0.0.0.0:1","socket":"127.0.0.1:1"}]"#).unwrap();
        assert!(a.endpoints[0].same_routes(&b.endpoints[0]));
    }

    #[test]
    fn same_routes_in_any_order_counts_each_route() {
        let l = |n: &str, p: &str| {
            format!(
                r#"{{"type":"http","name":"{n}","consumer":"E","target":"0.0.0.0:80/{p}","socket":"127.0.0.1:1"}}"#
            )
        };
        let ep = |links: &[String]| {
            let mut p = from_graph(&format!("[{}]", links.join(","))).unwrap();
            p.endpoints.remove(0)
        };
        let abc = ep(&[l("a", "a"), l("b", "b"), l("c", "c")]);
        assert!(abc.same_routes(&ep(&[l("c", "c"), l("a", "a"), l("b", "b")])));
        assert!(!abc.same_routes(&ep(&[l("c", "c"), l("a", "a"), l("b", "x")])));
        assert!(!abc.same_routes(&ep(&[l("c", "c"), l("a", "a")])));
        // Same length, but one route twice and another not at all.
        let mut twice = abc.clone();
        twice.routes[2] = twice.routes[0].clone();
        assert!(!abc.same_routes(&twice));
        assert!(!twice.same_routes(&abc));
    }

    fn tcp(name: &str, socket: &str, extra: &str) -> String {
        format!(
            r#"{{"type":"tcp","name":"{name}","consumer":"E","target":"0.0.0.0:81","socket":"{socket}"{extra}}}"#
        )
    }

    fn http(name: &str, prefix: &str, socket: &str, extra: &str) -> String {
        format!(
            r#"{{"type":"http","name":"{name}","consumer":"E","target":"0.0.0.0:80{prefix}","socket":"{socket}"{extra}}}"#
        )
    }

    fn plan(links: &[String]) -> Plan {
        from_graph(&format!("[{}]", links.join(","))).unwrap()
    }

    const LC: &str = r#","balance":"least-conn""#;
    const RR: &str = r#","balance":"round-robin""#;

    #[test]
    fn links_of_one_route_with_the_same_balance_are_its_replicas() {
        let p = plan(&[
            tcp("a", "127.0.0.1:1", LC),
            tcp("b", "127.0.0.1:2", LC),
            tcp("c", "/run/c.sock", &format!(r#"{LC},"provider_pid":7"#)),
        ]);
        assert!(p.refused.is_empty(), "{:?}", p.refused);
        let r = &p.endpoints[0].routes;
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].balance, Some(Policy::LeastConn));
        let backends: Vec<String> = r[0].backends().map(|b| b.to_string()).collect();
        assert_eq!(
            backends,
            ["127.0.0.1:1", "127.0.0.1:2", "unix:/proc/7/root/run/c.sock"]
        );
        assert_eq!(
            r[0].replicas.iter().map(|x| x.link).collect::<Vec<_>>(),
            [1, 2]
        );
        // A replica in a provider container needs its root.
        assert_eq!(p.endpoints[0].root_pids(), [7]);
        assert_eq!(
            r[0].pool_text(),
            "127.0.0.1:1, 127.0.0.1:2, unix:/proc/7/root/run/c.sock (least-conn)"
        );

        // http: per prefix and host; other routes stay single.
        let p = plan(&[
            http("a1", "/a", "127.0.0.1:1", RR),
            http("b", "/b", "127.0.0.1:3", ""),
            http("a2", "/a/", "127.0.0.1:2", RR),
            http(
                "h1",
                "/a",
                "127.0.0.1:4",
                &format!(r#"{RR},"host":"x.example""#),
            ),
            http(
                "h2",
                "/a",
                "127.0.0.1:5",
                &format!(r#"{RR},"host":"x.example""#),
            ),
        ]);
        assert!(p.refused.is_empty(), "{:?}", p.refused);
        let names: Vec<(&str, usize)> = p.endpoints[0]
            .routes
            .iter()
            .map(|r| (r.name.as_str(), r.replicas.len()))
            .collect();
        assert_eq!(names, [("a1", 1), ("b", 0), ("h1", 1)]);

        // tcp with sni: replicas per server name.
        let sni = |n: &str| format!(r#"{LC},"sni":"{n}""#);
        let p = plan(&[
            tcp("x1", "127.0.0.1:1", &sni("x.example")),
            tcp("y", "127.0.0.1:3", r#","sni":"y.example""#),
            tcp("x2", "127.0.0.1:2", &sni("x.example")),
        ]);
        assert!(p.refused.is_empty(), "{:?}", p.refused);
        assert_eq!(p.endpoints[0].routes.len(), 2);
        assert_eq!(p.endpoints[0].routes[0].replicas.len(), 1);
    }

    #[test]
    fn duplicates_and_mixed_groups_are_refused_with_the_links_named() {
        let reasons = |p: &Plan| -> Vec<(usize, String)> {
            p.refused
                .iter()
                .map(|r| (r.index, r.reason.clone()))
                .collect()
        };
        // No balance: duplicates, as before.
        let p = plan(&[tcp("a", "127.0.0.1:1", ""), tcp("b", "127.0.0.1:2", "")]);
        assert_eq!(p.refused.len(), 1);
        assert!(
            p.refused[0].reason.contains("held by link #0 'a'"),
            "{:?}",
            p.refused
        );
        let p = plan(&[
            http("a", "/", "127.0.0.1:1", ""),
            http("b", "/", "127.0.0.1:2", ""),
        ]);
        assert!(
            p.refused[0].reason.contains("already routes prefix '/'"),
            "{:?}",
            p.refused
        );

        // The first without, a later one with.
        let p = plan(&[tcp("a", "127.0.0.1:1", ""), tcp("b", "127.0.0.1:2", LC)]);
        assert_eq!(
            reasons(&p),
            [(1, "link #0 'a' routes the address on 0.0.0.0:81 (host) already (with no 'balance'); links of one route are replicas only when every one has the same 'balance', this link has \"balance\": \"least-conn\"".to_string())]
        );
        // The first with, a later one without or with another policy; the
        // replicas that agree stay.
        let p = plan(&[
            http("a", "/x", "127.0.0.1:1", LC),
            http("b", "/x", "127.0.0.1:2", LC),
            http("c", "/x", "127.0.0.1:3", ""),
            http("d", "/x", "127.0.0.1:4", RR),
        ]);
        assert_eq!(
            reasons(&p),
            [
                (2, "mixed replicas: link #0 'a' routes prefix '/x' on 0.0.0.0:80 (host) with \"balance\": \"least-conn\", this link has no 'balance'; replicas need the same 'balance' on every link of the route".to_string()),
                (3, "mixed replicas: link #0 'a' routes prefix '/x' on 0.0.0.0:80 (host) with \"balance\": \"least-conn\", this link has \"balance\": \"round-robin\"; replicas need the same 'balance' on every link of the route".to_string()),
            ]
        );
        assert_eq!(p.endpoints[0].routes[0].replicas.len(), 1);

        // Replicas agree on what the route does, and name a backend once.
        let p = plan(&[
            http("a", "/", "127.0.0.1:1", LC),
            http("b", "/", "127.0.0.1:2", &format!(r#"{LC},"role":"admin""#)),
            http(
                "c",
                "/",
                "127.0.0.1:3",
                &format!(r#"{LC},"strip_prefix":false"#),
            ),
            http("d", "/", "127.0.0.1:1", LC),
            tcp(
                "t",
                "127.0.0.1:1",
                &format!(r#"{LC},"proxy_protocol":"v1""#),
            ),
            tcp("u", "127.0.0.1:2", LC),
        ]);
        let r = reasons(&p);
        assert_eq!(r.len(), 4, "{r:?}");
        assert!(r[0].1.contains("with role 'any', this link has 'admin'; replicas of one route must agree on 'role'"), "{r:?}");
        assert!(r[1].1.contains("must agree on 'strip_prefix'"), "{r:?}");
        assert_eq!(r[2].0, 3);
        assert!(
            r[2].1
                .ends_with("already balances to backend 127.0.0.1:1 there"),
            "{r:?}"
        );
        assert!(r[3].1.contains("must agree on 'proxy_protocol'"), "{r:?}");

        // A tcp route without sni and sni routes still do not mix.
        let p = plan(&[
            tcp("a", "127.0.0.1:1", LC),
            tcp("s", "127.0.0.1:2", &format!(r#"{LC},"sni":"s.example""#)),
        ]);
        assert!(
            p.refused[0].reason.contains("distinct 'sni'"),
            "{:?}",
            p.refused
        );
    }

    /// The planner stays linear with replicas: many routes, each with
    /// replicas, and one route with very many.
    #[test]
    fn replicas_are_planned_in_linear_time() {
        let mut links: Vec<String> = Vec::new();
        for i in 0..3000 {
            for k in 0..3 {
                links.push(http(
                    &format!("r{i}-{k}"),
                    &format!("/p{i}"),
                    &format!("127.0.0.{}:{}", k + 1, 1000 + i),
                    LC,
                ));
            }
        }
        for i in 0..5000 {
            links.push(http(
                &format!("big{i}"),
                "/big",
                &format!("127.0.1.1:{}", 1 + i),
                RR,
            ));
        }
        let t = std::time::Instant::now();
        let p = plan(&links);
        assert!(p.refused.is_empty(), "{:?}", &p.refused[..1]);
        assert_eq!(p.endpoints[0].routes.len(), 3001);
        assert_eq!(p.endpoints[0].routes[3000].replicas.len(), 4999);
        // Not a timing assertion of the product: a quadratic planner takes
        // minutes here, a linear one well under this in a debug build.
        assert!(t.elapsed() < std::time::Duration::from_secs(60));
    }

    /// Old senders' routes (no `balance`, no `replicas`) still read; the
    /// JSON of a route without replicas is what it was.
    #[test]
    fn routes_without_replicas_keep_their_json() {
        let p = plan(&[tcp("a", "127.0.0.1:1", "")]);
        let j = serde_json::to_value(&p.endpoints[0].routes[0]).unwrap();
        assert!(
            j.get("balance").is_none() && j.get("replicas").is_none(),
            "{j}"
        );
        let back: Route = serde_json::from_value(j).unwrap();
        assert_eq!(back, p.endpoints[0].routes[0]);
        let p = plan(&[tcp("a", "127.0.0.1:1", LC), tcp("b", "127.0.0.1:2", LC)]);
        let j = serde_json::to_value(&p.endpoints[0].routes[0]).unwrap();
        assert_eq!(j["balance"], "least-conn");
        assert_eq!(j["replicas"][0]["backend"]["tcp"], "127.0.0.1:2");
        let back: Route = serde_json::from_value(j).unwrap();
        assert_eq!(back, p.endpoints[0].routes[0]);
        // Graph positions do not count, replicas' neither.
        let q = plan(&[
            r#"{"type":"dbus","name":"x"}"#.to_string(),
            tcp("a", "127.0.0.1:1", LC),
            tcp("b", "127.0.0.1:2", LC),
        ]);
        assert!(p.endpoints[0].same_routes(&q.endpoints[0]));
        let other = plan(&[tcp("a", "127.0.0.1:1", LC), tcp("b", "127.0.0.1:3", LC)]);
        assert!(!p.endpoints[0].same_routes(&other.endpoints[0]));
    }
}
