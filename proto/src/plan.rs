//! The endpoint plan: validated links grouped into listening endpoints
//! (SPEC §4). One endpoint = (consumer namespace, listen address); it gets
//! one worker. The plan is what the supervisor reconciles against.

use crate::graph::{Backend, Link, LinkType, Listen, ProxyProtocol, Refusal};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Which worker serves an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Tcp,
    Http,
    Unix,
    Rest,
}

impl Kind {
    pub fn of(ty: LinkType) -> Kind {
        match ty {
            LinkType::Tcp => Kind::Tcp,
            LinkType::Http => Kind::Http,
            LinkType::Unix => Kind::Unix,
            LinkType::Rest => Kind::Rest,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Http => "http",
            Kind::Unix => "unix",
            Kind::Rest => "rest",
        }
    }
    /// The worker binary that serves this kind (http and rest share one).
    pub fn worker_binary(self) -> &'static str {
        match self {
            Kind::Tcp => "pvx-worker-tcp",
            Kind::Http | Kind::Rest => "pvx-worker-http",
            Kind::Unix => "pvx-worker-unix",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
}

impl Route {
    /// Equal apart from where the link sat in the graph array.
    pub fn same_as(&self, other: &Route) -> bool {
        self.content() == other.content()
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
    /// sorted, at most [`crate::ctl::MAX_ROOTS`] (the planner refuses links
    /// past it; the cut here only guards hand-made endpoints). The supervisor attaches
    /// one O_PATH fd of `/proc/<pid>/root` per entry, in this order, to
    /// Init and Update (see [`crate::backend`] for why).
    pub fn root_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .routes
            .iter()
            .filter(|r| r.provider_pid != 0 && matches!(r.backend, Backend::Unix(_)))
            .map(|r| r.provider_pid)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids.truncate(crate::ctl::MAX_ROOTS);
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

/// Group links into endpoints. Earlier links win: a later link that clashes
/// with an endpoint is refused, never the running holder.
pub fn build(links: &[Link], mut refused: Vec<Refusal>) -> Plan {
    let mut eps: BTreeMap<EndpointKey, (Endpoint, HashMap<Selector, usize>)> = BTreeMap::new();
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
                eps.insert(key, (ep, HashMap::from([(sel, 0)])));
            }
            Some((ep, taken)) => match clash(ep, taken, l) {
                Some(reason) => refused.push(Refusal {
                    index: l.index,
                    name: l.name.clone(),
                    reason,
                }),
                None => {
                    taken.insert(sel, ep.routes.len());
                    ep.routes.push(route_of(l));
                }
            },
        }
    }
    let endpoints = eps
        .into_values()
        .filter_map(|(ep, _)| fit_control_channel(ep, &mut refused))
        .collect();
    refused.sort_by_key(|r| r.index);
    Plan {
        endpoints,
        refused,
        skipped: Vec::new(),
    }
}

/// Keep an endpoint within what one control message can carry to its
/// worker: at most [`crate::ctl::MAX_ROOTS`] provider containers with unix
/// backends (one root fd each) and at most [`crate::ctl::MAX_CONFIG`]
/// bytes of routes. Earlier links win, as for clashes: a link that would
/// go past either limit is refused with the reason, so `check` and
/// `status` show it and the worker never misses a route the supervisor
/// counts as served. None: no route of the endpoint fits.
fn fit_control_channel(mut ep: Endpoint, refused: &mut Vec<Refusal>) -> Option<Endpoint> {
    use crate::ctl::{MAX_CONFIG, MAX_ROOTS};
    let mut roots: Vec<u32> = Vec::new();
    let mut size = 0usize;
    let mut kept = Vec::with_capacity(ep.routes.len());
    for r in std::mem::take(&mut ep.routes) {
        let new_root = r.provider_pid != 0
            && matches!(r.backend, Backend::Unix(_))
            && !roots.contains(&r.provider_pid);
        // Its JSON in the worker configuration, and the comma before it.
        let len = json_len(&r) + 1;
        let reason = if new_root && roots.len() >= MAX_ROOTS {
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
            Some(reason) => refused.push(Refusal {
                index: r.link,
                name: r.name.clone(),
                reason,
            }),
            None => {
                if new_root {
                    roots.push(r.provider_pid);
                }
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
/// even if it comes first in the graph (SPEC §4: a refused link never
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
        use crate::ctl::MAX_ROOTS;
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
        let huge = "n".repeat(crate::ctl::MAX_CONFIG);
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
}
