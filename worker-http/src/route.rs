//! The routing table: which link (route) serves a request, chosen by its
//! `Host` and path, and the path the backend sees.
//!
//! Rules (BEHAVIOUR §3, issue 3):
//! - A prefix matches on path-segment boundaries: `/api` matches `/api`,
//!   `/api/` and `/api/x`, never `/apix`. The prefix `/` matches every path.
//! - A route with a `host` matches only requests whose `Host` equals it,
//!   case-insensitively, port and trailing dot ignored; `*.example.com`
//!   matches exactly one more label (`a.example.com`, not `example.com` nor
//!   `a.b.example.com`). A route without `host` matches any request.
//! - Among the routes that match, the most specific host wins (exact, then
//!   wildcard, then none), then the longest prefix. So a host's own routes
//!   shadow host-less ones, and a host-less `/` is the fallback for all.
//! - `strip_prefix` removes the prefix from the path (an empty remainder
//!   becomes `/`); the query string is kept.

use proto::plan::Route;
use proto::types::{Backend, Policy};
use runtime::backend::Reach;
use runtime::balance::Choice;
use std::borrow::Cow;
use std::rc::Rc;

/// One route, reduced to what the data path needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub prefix: String,
    pub host: Option<String>,
    pub strip_prefix: bool,
    pub backend: Backend,
    pub role: String,
    pub consumer: String,
    /// A route with replicas: its pool. The table's entry names the first
    /// backend; [`Table::pick`] hands out one entry per replica, each with
    /// its own `backend` (and no `replicas`), so an exchange's entry says
    /// where its backend connection goes.
    pub replicas: Option<Rc<Replicas>>,
    /// The route's position among the config's routes: its counters
    /// are kept by it (`runtime::route_book`).
    pub index: usize,
}

/// The replicas of one route (see [`Entry::replicas`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Replicas {
    pub pool: Rc<[Backend]>,
    pub policy: Policy,
    /// One entry per backend of `pool`, in its order.
    pub entries: Vec<Rc<Entry>>,
}

#[derive(Debug, Default, Clone)]
pub struct Table {
    entries: Vec<Rc<Entry>>,
}

/// How specifically a route's host matched: higher wins.
fn host_rank(route_host: Option<&str>, req_host: Option<&str>) -> Option<u8> {
    let Some(want) = route_host else {
        return Some(0);
    };
    let have = req_host?;
    if let Some(suffix) = want.strip_prefix("*.") {
        // One label, then exactly the suffix.
        let label = have.strip_suffix(suffix)?.strip_suffix('.')?;
        (!label.is_empty() && !label.contains('.')).then_some(1)
    } else {
        (want == have).then_some(2)
    }
}

/// Whether `path` (no query) lies under `prefix` on a segment boundary.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Normalise a `Host` header value for matching: lowercase, no port, no
/// trailing dot; IPv6 literals keep their brackets. None when empty.
pub fn normalise_host(h: &str) -> Option<String> {
    let h = h.trim();
    let bare = if h.starts_with('[') {
        // [v6]:port -> [v6]
        match h.find(']') {
            Some(i) => &h[..=i],
            None => h,
        }
    } else {
        match h.rfind(':') {
            Some(i) => &h[..i],
            None => h,
        }
    };
    let bare = bare.strip_suffix('.').unwrap_or(bare);
    (!bare.is_empty()).then(|| bare.to_ascii_lowercase())
}

/// The target's path with `prefix` removed (when `strip`), query kept.
pub fn rewrite_target<'a>(target: &'a str, prefix: &str, strip: bool) -> Cow<'a, str> {
    if !strip || prefix == "/" {
        return Cow::Borrowed(target);
    }
    let (path, query) = match target.find('?') {
        Some(i) => (&target[..i], &target[i..]),
        None => (target, ""),
    };
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let rest = if rest.is_empty() { "/" } else { rest };
    Cow::Owned(format!("{rest}{query}"))
}

impl Table {
    pub fn new(routes: &[Route]) -> Table {
        let entries = routes.iter().enumerate().map(entry_of).collect();
        Table { entries }
    }

    /// The backend for an exchange on route `e`: `e` itself, or for a
    /// route with replicas the entry of the replica its policy picks, with
    /// the choice (which keeps it counted, and says where to fail over).
    pub fn pick(e: &Rc<Entry>, reach: &mut Reach) -> (Rc<Entry>, Option<Choice>) {
        let Some(r) = e.replicas.as_ref() else {
            return (e.clone(), None);
        };
        let c = reach.choose(r.pool.clone(), r.policy);
        let chosen = r.entries.get(c.index()).unwrap_or(e).clone();
        (chosen, Some(c))
    }

    /// The entry of replica `index` of the route whose pool is `pool`
    /// (after a fail-over: the backend connection reached another one).
    pub fn replica(&self, pool: &Rc<[Backend]>, index: usize) -> Option<Rc<Entry>> {
        self.entries
            .iter()
            .filter_map(|e| e.replicas.as_ref())
            .find(|r| Rc::ptr_eq(&r.pool, pool))
            .and_then(|r| r.entries.get(index).cloned())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether any route still sends traffic to `b` (the pool keeps idle
    /// connections only to backends that are still in use).
    pub fn uses(&self, b: &Backend) -> bool {
        self.entries
            .iter()
            .any(|e| &e.backend == b || e.replicas.as_ref().is_some_and(|r| r.pool.contains(b)))
    }

    /// The route with this prefix and host (a route's identity: the plan
    /// refuses two with the same), to find a route again after an Update.
    pub fn same_route(&self, e: &Entry) -> Option<&Rc<Entry>> {
        self.entries
            .iter()
            .find(|x| x.prefix == e.prefix && x.host == e.host)
    }

    /// The route for a request. `host`: the normalised `Host` (see
    /// [`normalise_host`]); `path`: the request path without the query.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<&Rc<Entry>> {
        self.entries
            .iter()
            .filter(|e| prefix_matches(&e.prefix, path))
            .filter_map(|e| host_rank(e.host.as_deref(), host).map(|r| (r, e.prefix.len(), e)))
            .max_by_key(|(rank, len, _)| (*rank, *len))
            .map(|(_, _, e)| e)
    }
}

/// Route `index`'s entry, with one entry per replica when it has
/// replicas.
fn entry_of((index, r): (usize, &Route)) -> Rc<Entry> {
    let one = |backend: &Backend, replicas| Entry {
        name: r.via.name.clone(),
        prefix: r.via.prefix.clone(),
        host: r.via.host.clone(),
        strip_prefix: r.via.strip_prefix,
        backend: backend.clone(),
        role: r.via.role.clone(),
        consumer: r.via.consumer.clone(),
        replicas,
        index,
    };
    let replicas = runtime::balance::pool_of(r).map(|(pool, policy)| {
        let entries = pool.iter().map(|b| Rc::new(one(b, None))).collect();
        Rc::new(Replicas {
            pool,
            policy,
            entries,
        })
    });
    Rc::new(one(&r.via.backend, replicas))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(prefix: &str, host: Option<&str>, name: &str) -> Entry {
        Entry {
            name: name.into(),
            prefix: prefix.into(),
            host: host.map(str::to_string),
            strip_prefix: true,
            backend: Backend::Tcp("127.0.0.1:1".parse().unwrap()),
            role: "any".into(),
            consumer: "EXTERNAL".into(),
            replicas: None,
            index: 0,
        }
    }

    fn table(es: Vec<Entry>) -> Table {
        Table {
            entries: es.into_iter().map(Rc::new).collect(),
        }
    }

    fn pick<'a>(t: &'a Table, host: Option<&str>, path: &str) -> Option<&'a str> {
        t.lookup(host, path).map(|e| e.name.as_str())
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let t = table(vec![
            entry("/", None, "root"),
            entry("/api", None, "api"),
            entry("/api/v1", None, "v1"),
        ]);
        assert_eq!(pick(&t, None, "/api"), Some("api"));
        assert_eq!(pick(&t, None, "/api/"), Some("api"));
        assert_eq!(pick(&t, None, "/api/x"), Some("api"));
        assert_eq!(pick(&t, None, "/apix"), Some("root"));
        assert_eq!(pick(&t, None, "/api/v1/x"), Some("v1"));
        assert_eq!(pick(&t, None, "/api/v10"), Some("api"));
        assert_eq!(pick(&t, None, "/"), Some("root"));
        let t = table(vec![entry("/api", None, "api")]);
        assert_eq!(pick(&t, None, "/apix"), None);
        assert_eq!(pick(&t, None, "/"), None);
    }

    #[test]
    fn host_routes_exact_wildcard_and_fallback() {
        let t = table(vec![
            entry("/", None, "any"),
            entry("/", Some("a.example.com"), "exact"),
            entry("/", Some("*.example.com"), "wild"),
            entry("/deep", None, "deep-any"),
        ]);
        assert_eq!(pick(&t, Some("a.example.com"), "/"), Some("exact"));
        assert_eq!(pick(&t, Some("b.example.com"), "/"), Some("wild"));
        assert_eq!(pick(&t, Some("x.b.example.com"), "/"), Some("any"));
        assert_eq!(pick(&t, Some("example.com"), "/"), Some("any"));
        assert_eq!(pick(&t, Some(".example.com"), "/"), Some("any"));
        assert_eq!(pick(&t, None, "/"), Some("any"));
        // Host specificity outranks prefix length.
        assert_eq!(pick(&t, Some("b.example.com"), "/deep"), Some("wild"));
        assert_eq!(pick(&t, Some("other"), "/deep"), Some("deep-any"));
        let only_host = table(vec![entry("/", Some("a.example.com"), "exact")]);
        assert_eq!(pick(&only_host, None, "/"), None);
        assert_eq!(pick(&only_host, Some("b.example.com"), "/"), None);
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(
            normalise_host("A.Example.COM:8080").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(
            normalise_host("a.example.com.").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(
            normalise_host("[fd00:213::1]:80").as_deref(),
            Some("[fd00:213::1]")
        );
        assert_eq!(
            normalise_host("[fd00:213::1]").as_deref(),
            Some("[fd00:213::1]")
        );
        assert_eq!(normalise_host("").as_deref(), None);
        assert_eq!(normalise_host(":80").as_deref(), None);
    }

    #[test]
    fn strip_keeps_query() {
        assert_eq!(rewrite_target("/api/v1/x?q=1", "/api/v1", true), "/x?q=1");
        assert_eq!(rewrite_target("/api/v1?q=1", "/api/v1", true), "/?q=1");
        assert_eq!(rewrite_target("/api/v1", "/api/v1", true), "/");
        assert_eq!(rewrite_target("/api/v1/", "/api/v1", true), "/");
        assert_eq!(rewrite_target("/api/v1/x", "/api/v1", false), "/api/v1/x");
        assert_eq!(rewrite_target("/x?a=/api", "/", true), "/x?a=/api");
    }

    #[test]
    fn table_from_plan_routes() {
        let p = proto::plan::from_graph(
            r#"[{"type":"http","name":"a","consumer":"EXTERNAL","target":"127.0.0.1:8080/a/","socket":"127.0.0.1:1","host":"X.org"},
                {"type":"http","name":"b","consumer":"EXTERNAL","target":"127.0.0.1:8080","socket":"/run/b.sock","strip_prefix":false}]"#,
        )
        .unwrap();
        let t = Table::new(&p.endpoints[0].routes);
        assert_eq!(t.len(), 2);
        let a = t.lookup(Some("x.org"), "/a/b").unwrap();
        assert_eq!((a.name.as_str(), a.prefix.as_str()), ("a", "/a"));
        let b = t.lookup(Some("y.org"), "/a/b").unwrap();
        assert!(!b.strip_prefix);
        assert!(t.uses(&Backend::Unix("/run/b.sock".into())));
    }

    #[test]
    fn replicas_are_picked_per_exchange() {
        let p = proto::plan::from_graph(
            r#"[{"type":"http","name":"a","consumer":"E","target":"127.0.0.1:8080/a","socket":"127.0.0.1:1","balance":"round-robin"},
                {"type":"http","name":"b","consumer":"E","target":"127.0.0.1:8080/a","socket":"127.0.0.1:2","balance":"round-robin"}]"#,
        )
        .unwrap();
        let t = Table::new(&p.endpoints[0].routes);
        assert_eq!(t.len(), 1);
        let e = t.lookup(None, "/a/x").unwrap();
        let mut reach = Reach::default();
        let got: Vec<String> = (0..4)
            .map(|_| Table::pick(e, &mut reach).0.backend.to_string())
            .collect();
        assert_eq!(
            got,
            ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:1", "127.0.0.1:2"]
        );
        let (chosen, c) = Table::pick(e, &mut reach);
        let c = c.unwrap();
        assert_eq!(&chosen.backend, c.backend());
        let other = t.replica(c.pool(), 1 - c.index()).unwrap();
        assert_ne!(other.backend, chosen.backend);
        assert!(t.uses(&"127.0.0.1:2".parse().map(Backend::Tcp).unwrap()));
    }
}
