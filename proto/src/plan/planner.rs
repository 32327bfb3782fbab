//! Links to endpoints: which links share a listening endpoint, which clash
//! (and are refused, earlier links winning), which are replicas of one
//! route; and the same with running endpoints kept by the links that fit
//! them.

use super::fit::fit_control_channel;
use super::records::{Endpoint, EndpointKey, Plan, Replica, Route};
use crate::graph::{Link, Refusal, Via};
use crate::types::{Backend, Kind, Policy};
use std::collections::{BTreeMap, HashMap, HashSet};

fn route_of(l: &Link) -> Route {
    Route {
        link: l.index,
        via: l.via.clone(),
        replicas: Vec::new(),
    }
}

/// What two routes of one endpoint must not share: (prefix, host) on http,
/// the sni on tcp (the prefix is always `/` there).
type Selector = (String, Option<String>);

fn selector(kind: Kind, v: &Via) -> Selector {
    match kind {
        Kind::Http => (v.prefix.clone(), v.host.clone()),
        _ => (String::new(), v.sni.clone()),
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
        ep.key, holder.link, holder.via.name
    );
    let kind = Kind::of(l.ty);
    if ep.kind != kind {
        return Some(format!(
            "type clash: {held} of type {}, this link is {}",
            ep.kind, kind
        ));
    }
    if ep.consumer != l.via.consumer {
        return Some(format!(
            "{held} for consumer '{}', this link is for '{}'",
            ep.consumer, l.via.consumer
        ));
    }
    match kind {
        Kind::Http => taken
            .get(&selector(kind, &l.via))
            .map(|&i| &ep.routes[i])
            .map(|r| {
                format!(
                    "link #{} '{}' already routes prefix '{}' on {}",
                    r.link, r.via.name, r.via.prefix, ep.key
                )
            }),
        // Several tcp links may share an address only when each has its
        // own TLS server name to route on.
        Kind::Tcp => {
            if l.via.sni.is_none() || taken.contains_key(&(String::new(), None)) {
                Some(format!(
                    "{held}; tcp links share an address only when each has a distinct 'sni'"
                ))
            } else {
                let sel = selector(kind, &l.via);
                taken.get(&sel).map(|&i| &ep.routes[i]).map(|r| {
                    format!(
                        "link #{} '{}' already has sni '{}' on {}",
                        r.link,
                        r.via.name,
                        l.via.sni.as_deref().unwrap_or(""),
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
    match (kind, &r.via.host, &r.via.sni) {
        (Kind::Http, Some(h), _) => format!("prefix '{}' host '{h}'", r.via.prefix),
        (Kind::Http, None, _) => format!("prefix '{}'", r.via.prefix),
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
        r.via.name,
        route_words(kind, r)
    );
    // The route's first link, and this one.
    let (first, this) = (&r.via, &l.via);
    if first.balance != this.balance {
        let (theirs, ours) = (balance_words(first.balance), balance_words(this.balance));
        return Err(if first.balance.is_none() {
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
    let differs = agree(
        "role",
        format!("'{}'", first.role),
        format!("'{}'", this.role),
    )
    .or_else(|| {
        agree(
            "strip_prefix",
            first.strip_prefix.to_string(),
            this.strip_prefix.to_string(),
        )
    })
    .or_else(|| {
        agree(
            "proxy_protocol",
            format!("{:?}", first.proxy_protocol),
            format!("{:?}", this.proxy_protocol),
        )
    });
    if let Some(why) = differs {
        return Err(why);
    }
    if members.is_empty() || !members.contains(&(i, first.backend.clone())) {
        members.insert((i, first.backend.clone()));
    }
    if !members.insert((i, this.backend.clone())) {
        return Err(format!(
            "{holder} and already balances to backend {} there",
            this.backend
        ));
    }
    r.replicas.push(Replica {
        link: l.index,
        name: l.via.name.clone(),
        provider: l.via.provider.clone(),
        provider_pid: l.via.provider_pid,
        backend: l.via.backend.clone(),
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
        let sel = selector(kind, &l.via);
        match eps.get_mut(&key) {
            None => {
                let ep = Endpoint {
                    key: key.clone(),
                    kind,
                    consumer: l.via.consumer.clone(),
                    routes: vec![route_of(l)],
                };
                eps.insert(key, (ep, HashMap::from([(sel, 0)]), HashSet::new()));
            }
            Some((ep, taken, members)) => {
                // The same route of the same kind and consumer: replicas
                // when either side asks for them (`join` refuses a mix).
                let same = (ep.kind == kind && ep.consumer == l.via.consumer)
                    .then(|| taken.get(&sel).copied())
                    .flatten()
                    .filter(|&i| ep.routes[i].via.balance.is_some() || l.via.balance.is_some());
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
                        name: l.via.name.clone(),
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
        held(&key)
            .is_none_or(|(kind, consumer)| kind == Kind::of(l.ty) && consumer == l.via.consumer)
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
