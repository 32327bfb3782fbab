//! The xconnect graph as Pantavisor serves it (`GET /xconnect-graph`): a JSON
//! array with one object per link. Parsing is two-step on purpose: the array
//! is read as loose JSON values, then each element is validated on its own,
//! so one bad link is refused by index and name while the rest still apply.

use crate::types::{Backend, LinkType, Listen, Policy, ProxyProtocol};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A validated link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: usize,
    pub ty: LinkType,
    pub name: String,
    pub consumer: String,
    pub consumer_pid: u32,
    pub provider: String,
    pub provider_pid: u32,
    pub role: String,
    pub interface: String,
    pub listen: Listen,
    /// http only: normalised path prefix (`/` when the target has none).
    pub prefix: String,
    pub backend: Backend,
    pub strip_prefix: bool,
    pub host: Option<String>,
    pub sni: Option<String>,
    pub proxy_protocol: Option<ProxyProtocol>,
    /// tcp and http: this link is a replica of its route (BEHAVIOUR §4), its
    /// connections shared by this policy with the route's other links.
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

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

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

/// What became of one element of the graph array (lives for one step of
/// the loop in [`parse_graph`]: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Verdict {
    Link(Link),
    Refused(Refusal),
    Skipped(Refusal),
}

struct Fields<'a> {
    index: usize,
    name: String,
    obj: &'a serde_json::Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn refuse(&self, reason: impl Into<String>) -> Refusal {
        Refusal {
            index: self.index,
            name: self.name.clone(),
            reason: reason.into(),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>, Refusal> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.refuse(format!(
                "field '{key}' must be a string, found {}",
                json_kind(v)
            ))),
        }
    }

    fn req_str(&self, key: &str) -> Result<&str, Refusal> {
        match self.opt_str(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            Some(_) => Err(self.refuse(format!("field '{key}' is empty"))),
            None => Err(self.refuse(format!("missing field '{key}'"))),
        }
    }

    fn pid(&self, key: &str) -> Result<u32, Refusal> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(0),
            Some(Value::Number(n)) => {
                n.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        self.refuse(format!(
                            "field '{key}' must be a pid (0 or a positive integer), found {n}"
                        ))
                    })
            }
            // Some producers quote numbers; accept a decimal string.
            Some(Value::String(s)) => s
                .parse::<u32>()
                .map_err(|_| self.refuse(format!("field '{key}' must be a pid, found \"{s}\""))),
            Some(v) => Err(self.refuse(format!(
                "field '{key}' must be a pid, found {}",
                json_kind(v)
            ))),
        }
    }

    /// Extension field `key` of a `ty` link: its value when the field acts
    /// on `ty`; None when it is absent, or does not act on `ty` and its
    /// value would change nothing there ([`changes_nothing`]); a refusal,
    /// with the reason, when it does not act on `ty` but says something.
    fn ext(&self, key: &str, ty: LinkType) -> Result<Option<&'a Value>, Refusal> {
        let Some(v) = self.obj.get(key) else {
            return Ok(None);
        };
        let on = EXTENSIONS
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(&[][..], |(_, on)| on);
        if on.contains(&ty) {
            return Ok(Some(v));
        }
        if changes_nothing(key, v) {
            return Ok(None);
        }
        let on: Vec<&str> = on.iter().map(|t| t.as_str()).collect();
        Err(self.refuse(format!(
            "field '{key}' applies to {} links, not {ty}; here only null, false or an empty value is accepted, found {}",
            on.join(" and "),
            json_snippet(v)
        )))
    }

    /// A text extension: null, false and "" say "none" (a producer that
    /// writes every field for every link writes one of them for a field
    /// it does not use).
    fn ext_str(&self, key: &str, ty: LinkType) -> Result<Option<&'a str>, Refusal> {
        match self.ext(key, ty)? {
            None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.refuse(format!(
                "field '{key}' must be a string, found {}",
                json_kind(v)
            ))),
        }
    }
}

/// The extension fields (BEHAVIOUR §3) and the link types they act on. On any
/// other type a field is accepted only when it would change nothing there.
const EXTENSIONS: &[(&str, &[LinkType])] = &[
    ("strip_prefix", &[LinkType::Http]),
    ("host", &[LinkType::Http]),
    ("sni", &[LinkType::Tcp]),
    ("proxy_protocol", &[LinkType::Tcp]),
    ("balance", &[LinkType::Tcp, LinkType::Http]),
];

/// Whether extension `key` holding `v` on a link type it does not act on
/// changes nothing: null, false and empty values (a producer that writes
/// every field for every link writes those). `strip_prefix` also with
/// `true`: it strips an http path prefix, and tcp, unix and rest links
/// have none (`true` is moreover its default, the value such a producer
/// writes). A non-empty `host`, `sni` or `proxy_protocol` asks for
/// routing or a header the link's worker would not do: refused, so the
/// author learns it instead of believing it applied.
fn changes_nothing(key: &str, v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Bool(true) => key == "strip_prefix",
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(_) => false,
    }
}

/// A value as JSON, cut short for a message.
fn json_snippet(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// Parse `IP:PORT` or `[IPv6]:PORT`. Port 0 is refused: a listener on an
/// ephemeral port could never be found by the consumer. So are addresses
/// the kernel refuses for a tcp socket whatever the network looks like
/// (bind and connect fail with EINVAL): IPv6 multicast, and IPv6
/// link-local without a scope (`[fe80::1%2]:80` names interface 2).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = s
        .parse()
        .map_err(|_| format!("'{s}' is not an IP:PORT address (IPv6 as [addr]:port)"))?;
    if a.port() == 0 {
        return Err(format!("'{s}' has port 0"));
    }
    if let SocketAddr::V6(v6) = a {
        if v6.ip().is_multicast() {
            return Err(format!("'{s}' is a multicast address"));
        }
        let link_local = v6.ip().segments()[0] & 0xffc0 == 0xfe80;
        if link_local && v6.scope_id() == 0 {
            return Err(format!(
                "'{s}' is link-local and names no interface (as in [fe80::1%2]:80)"
            ));
        }
    }
    Ok(a)
}

/// Longest unix socket path, in bytes: `sun_path` holds 108 with its NUL.
pub const SUN_PATH_MAX: usize = 107;

/// Resolve a provider socket path to where the supervisor and workers
/// reach it: through the provider's root when it runs in a container.
pub fn provider_path(provider_pid: u32, path: &str) -> PathBuf {
    if provider_pid == 0 {
        PathBuf::from(path)
    } else {
        PathBuf::from(format!("/proc/{provider_pid}/root{path}"))
    }
}

/// A unix socket path as `run` can make (target) or reach (socket) it; the
/// one check `check` and `run` share, so `check` accepts nothing `run`
/// refuses later. `max`: the longest path that fits `sun_path` as it is
/// used (see [`SUN_PATH_MAX`]).
fn check_abs_path(field: &str, p: &str, max: usize) -> Result<(), String> {
    // No C string, hence no path, can hold a NUL.
    if p.contains('\0') {
        return Err(format!("field '{field}' must not contain a NUL byte"));
    }
    if !p.starts_with('/') {
        return Err(format!(
            "field '{field}' must be an absolute path, found '{p}'"
        ));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(format!(
            "field '{field}' must not contain '..', found '{p}'"
        ));
    }
    if p.ends_with('/') || p.ends_with("/.") {
        return Err(format!(
            "field '{field}' must name a socket file, not a directory, found '{p}'"
        ));
    }
    if p.len() > max {
        return Err(format!(
            "field '{field}' path is too long for a unix socket ({} bytes, max {max})",
            p.len()
        ));
    }
    Ok(())
}

/// Normalise an http prefix: leading `/`, no trailing `/` (except root).
fn normalise_prefix(p: &str) -> Result<String, String> {
    if p.contains(['?', '#', ' ']) {
        return Err(format!("prefix '{p}' must be a plain path"));
    }
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        Ok("/".to_string())
    } else {
        Ok(format!("/{}", t.trim_start_matches('/')))
    }
}

fn validate(index: usize, item: &Value) -> Verdict {
    let Value::Object(obj) = item else {
        return Verdict::Refused(Refusal {
            index,
            name: String::new(),
            reason: format!("link must be a JSON object, found {}", json_kind(item)),
        });
    };
    let mut f = Fields {
        index,
        name: String::new(),
        obj,
    };
    // The name first, so every later refusal can carry it.
    if let Ok(Some(n)) = f.opt_str("name") {
        f.name = n.to_string();
    }
    // Then the type: a link of a type we do not make real is skipped
    // whatever its other fields hold (they follow that type's rules, not
    // ours).
    let ty = match f.req_str("type") {
        Err(r) => return Verdict::Refused(r),
        Ok("tcp") => LinkType::Tcp,
        Ok("http") => LinkType::Http,
        Ok("unix") => LinkType::Unix,
        Ok("rest") => LinkType::Rest,
        Ok(other) => {
            let ours = ["tcp", "http", "unix", "rest"];
            // `TCP` or `tcp ` is a slip of ours, not another type: refuse
            // it, or `check` would pass a link that is never made.
            let bare = other.trim_matches(|c: char| c.is_ascii_whitespace());
            return match ours.iter().find(|t| t.eq_ignore_ascii_case(bare)) {
                Some(t) => Verdict::Refused(f.refuse(format!(
                    "link type '{other}' must be written '{t}' (lower case, no surrounding spaces)"
                ))),
                None => Verdict::Skipped(f.refuse(format!(
                    "unsupported link type '{other}' (supported: tcp, http, unix, rest)"
                ))),
            };
        }
    };
    match validate_ours(&f, ty) {
        Ok(link) => Verdict::Link(link),
        Err(r) => Verdict::Refused(r),
    }
}

/// `value` may stand in an HTTP header field: no control byte (CR, LF,
/// NUL, tab, DEL, ...). Says which field and where otherwise.
fn field_value(key: &str, value: &str) -> Result<(), String> {
    match value.bytes().position(|b| b.is_ascii_control()) {
        None => Ok(()),
        Some(at) => Err(format!(
            "field '{key}' holds a control byte (0x{:02x} at byte {at}); it is written into HTTP headers",
            value.as_bytes()[at]
        )),
    }
}

/// The rest of [`validate`], for a link of one of our types.
fn validate_ours(f: &Fields, ty: LinkType) -> Result<Link, Refusal> {
    let index = f.index;
    let name = f.req_str("name")?.to_string();
    let consumer = f.req_str("consumer")?.to_string();
    let consumer_pid = f.pid("consumer_pid")?;
    let provider = f.opt_str("provider")?.unwrap_or("").to_string();
    let provider_pid = f.pid("provider_pid")?;
    let role = f
        .opt_str("role")?
        .filter(|r| !r.is_empty())
        .unwrap_or("any")
        .to_string();
    let interface = f.opt_str("interface")?.unwrap_or("").to_string();
    let target = f.req_str("target")?;
    let socket = f.req_str("socket")?;

    let backend = if socket.starts_with('/') {
        // In a provider container the worker may reach it as `./<path>`
        // relative to the container's root (backend.rs): one byte more.
        let max = if provider_pid == 0 {
            SUN_PATH_MAX
        } else {
            SUN_PATH_MAX - 1
        };
        check_abs_path("socket", socket, max).map_err(|e| f.refuse(e))?;
        Backend::Unix(provider_path(provider_pid, socket))
    } else {
        Backend::Tcp(parse_addr(socket).map_err(|e| f.refuse(format!("field 'socket': {e}")))?)
    };

    let mut prefix = "/".to_string();
    let listen = match ty {
        LinkType::Tcp => {
            Listen::Tcp(parse_addr(target).map_err(|e| f.refuse(format!("field 'target': {e}")))?)
        }
        LinkType::Http => {
            // IP:PORT or IP:PORT/PREFIX; the address part never holds a '/'.
            let (addr, pfx) = match target.find('/') {
                Some(i) => (&target[..i], &target[i..]),
                None => (target, "/"),
            };
            prefix = normalise_prefix(pfx).map_err(|e| f.refuse(format!("field 'target': {e}")))?;
            Listen::Tcp(parse_addr(addr).map_err(|e| f.refuse(format!("field 'target': {e}")))?)
        }
        LinkType::Unix | LinkType::Rest => {
            check_abs_path("target", target, SUN_PATH_MAX).map_err(|e| f.refuse(e))?;
            Listen::Unix(PathBuf::from(target))
        }
    };

    let strip_prefix = match f.ext("strip_prefix", ty)? {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(v) => {
            return Err(f.refuse(format!(
                "field 'strip_prefix' must be true or false, found {}",
                json_kind(v)
            )))
        }
    };
    let host = f.ext_str("host", ty)?.map(|h| h.to_ascii_lowercase());
    let sni = f.ext_str("sni", ty)?.map(|h| h.to_ascii_lowercase());
    let proxy_protocol = match f.ext_str("proxy_protocol", ty)? {
        None => None,
        Some("v1") => Some(ProxyProtocol::V1),
        Some("v2") => Some(ProxyProtocol::V2),
        Some(o) => {
            return Err(f.refuse(format!(
                "field 'proxy_protocol' must be \"v1\" or \"v2\", found '{o}'"
            )))
        }
    };
    let balance = match f.ext_str("balance", ty)? {
        None => None,
        Some(p) => Some(Policy::parse(p).ok_or_else(|| {
            f.refuse(format!(
                "field 'balance' must be \"least-conn\" or \"round-robin\", found '{p}'"
            ))
        })?),
    };
    // Written into request heads (X-PV-Role, X-PV-Client) or matched
    // against one (Host): a CR or LF would let the graph add a header a
    // backend trusts, so any control byte refuses the link.
    field_value("role", &role).map_err(|e| f.refuse(e))?;
    field_value("consumer", &consumer).map_err(|e| f.refuse(e))?;
    if let Some(h) = &host {
        field_value("host", h).map_err(|e| f.refuse(e))?;
        if h.contains(['/', ' ', ':']) {
            return Err(f.refuse(format!("field 'host': '{h}' is not a host name")));
        }
    }

    Ok(Link {
        index,
        ty,
        name,
        consumer,
        consumer_pid,
        provider,
        provider_pid,
        role,
        interface,
        listen,
        prefix,
        backend,
        strip_prefix: strip_prefix.unwrap_or(true),
        host,
        sni,
        proxy_protocol,
        balance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(json: &str) -> Result<Link, Refusal> {
        let (mut l, mut r) = parse(json).expect("array");
        if let Some(r) = r.pop() {
            return Err(r);
        }
        Ok(l.pop().expect("one link"))
    }

    #[test]
    fn reads_pantavisor_tcp_link() {
        let l = one(
            r#"[{"type":"tcp","name":"web","consumer":"EXTERNAL","consumer_pid":0,
            "provider":"nginx","provider_pid":42,"role":"any","interface":"http",
            "target":"0.0.0.0:8080","socket":"10.0.3.2:80"}]"#,
        )
        .unwrap();
        assert_eq!(l.ty, LinkType::Tcp);
        assert_eq!(l.listen, Listen::Tcp("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(l.backend, Backend::Tcp("10.0.3.2:80".parse().unwrap()));
    }

    #[test]
    fn unix_backend_resolves_through_provider_root() {
        let l = one(
            r#"[{"type":"unix","name":"s","consumer":"c","consumer_pid":7,"provider":"p",
            "provider_pid":42,"target":"/run/x.sock","socket":"/run/y.sock"}]"#,
        )
        .unwrap();
        assert_eq!(l.backend, Backend::Unix("/proc/42/root/run/y.sock".into()));
        assert_eq!(l.listen, Listen::Unix("/run/x.sock".into()));
    }

    #[test]
    fn http_prefix_and_ipv6() {
        let l = one(
            r#"[{"type":"http","name":"a","consumer":"EXTERNAL","target":"[::1]:80/api/v1/",
            "socket":"[fd00:213::2]:8080"}]"#,
        )
        .unwrap();
        assert_eq!(l.prefix, "/api/v1");
        assert!(l.strip_prefix);
        assert_eq!(l.listen, Listen::Tcp("[::1]:80".parse().unwrap()));
    }

    #[test]
    fn refusals_name_index_name_and_reason() {
        let (links, r) = parse(
            r#"[{"type":"tcp","name":"ok","consumer":"c","target":"1.2.3.4:1","socket":"1.2.3.4:2"},
                {"type":"tcp","name":"bad","consumer":"c","target":"1.2.3.4","socket":"1.2.3.4:2"},
                {"type":"dbus","name":"d","consumer":"c","target":"x","socket":"y"},
                {"type":"unix","name":"rel","consumer":"c","target":"run/x","socket":"/y"},
                {"type":"tcp","consumer":"c","target":"1.2.3.4:1","socket":"1.2.3.4:2"},
                {"type":"tcp","name":"pid","consumer":"c","consumer_pid":-1,"target":"1.2.3.4:1","socket":"1.2.3.4:2"},
                7]"#,
        )
        .unwrap();
        assert_eq!(links.len(), 1);
        let msgs: Vec<String> = r.iter().map(|r| r.to_string()).collect();
        assert!(
            msgs[0].starts_with("link #1 'bad': field 'target'"),
            "{}",
            msgs[0]
        );
        assert!(
            msgs[1].contains("#2 'd': unsupported link type 'dbus'"),
            "{}",
            msgs[1]
        );
        assert!(
            msgs[2].contains("#3 'rel'") && msgs[2].contains("absolute"),
            "{}",
            msgs[2]
        );
        assert!(
            msgs[3].contains("#4 '': missing field 'name'"),
            "{}",
            msgs[3]
        );
        assert!(
            msgs[4].contains("#5 'pid'") && msgs[4].contains("consumer_pid"),
            "{}",
            msgs[4]
        );
        assert!(
            msgs[5].contains("#6") && msgs[5].contains("JSON object"),
            "{}",
            msgs[5]
        );
    }

    #[test]
    fn unix_paths_refused_as_run_would() {
        let unix = |target: &str, socket: &str, ppid: u32| {
            let g = serde_json::json!([{"type":"unix","name":"u","consumer":"c",
                "provider_pid":ppid,"target":target,"socket":socket}]);
            one(&g.to_string()).map(|_| ()).map_err(|r| r.reason)
        };
        let e = unix("/run/a\0b.sock", "/p.sock", 0).unwrap_err();
        assert_eq!(e, "field 'target' must not contain a NUL byte");
        let e = unix("/run/a.sock", "/p\0.sock", 0).unwrap_err();
        assert_eq!(e, "field 'socket' must not contain a NUL byte");
        for dir in ["/run/", "/", "/run/."] {
            let e = unix(dir, "/p.sock", 0).unwrap_err();
            assert!(e.contains("must name a socket file"), "{dir}: {e}");
        }
        // sun_path: 107 bytes and its NUL.
        let at = |n: usize| format!("/{}", "x".repeat(n - 1));
        assert!(unix(&at(107), "/p.sock", 0).is_ok());
        let e = unix(&at(108), "/p.sock", 0).unwrap_err();
        assert!(e.contains("too long") && e.contains("max 107"), "{e}");
        assert!(unix("/t.sock", &at(107), 0).is_ok());
        assert!(unix("/t.sock", &at(106), 42).is_ok());
        assert!(unix("/t.sock", &at(107), 42).is_err());
    }

    #[test]
    fn addresses_no_tcp_socket_can_use_are_refused() {
        assert!(parse_addr("[ff02::1]:80")
            .unwrap_err()
            .contains("multicast"));
        assert!(parse_addr("[fe80::1]:80")
            .unwrap_err()
            .contains("link-local"));
        assert!(parse_addr("[febf::1]:80").is_err());
        assert!(parse_addr("[fe80::1%2]:80").is_ok());
        assert!(parse_addr("[fec0::1]:80").is_ok());
        assert!(parse_addr("[fd00:213::1]:80").is_ok());
    }

    #[test]
    fn links_of_other_types_are_skipped_not_refused() {
        let g = parse_graph(
            r#"[{"type":"dbus","name":"bus","consumer":"c","target":"x","socket":"y"},
                {"type":"drm","name":"gpu"},
                {"type":"wayland"},
                {"type":"TCP","name":"slip","consumer":"c","target":"1.2.3.4:1","socket":"1.2.3.4:2"},
                {"type":"tcp ","name":"space","consumer":"c","target":"1.2.3.4:1","socket":"1.2.3.4:2"},
                {"name":"untyped","consumer":"c","target":"1.2.3.4:1","socket":"1.2.3.4:2"},
                {"type":"","name":"empty"},
                {"type":7,"name":"number"},
                {"type":"tcp","name":"ok","consumer":"c","target":"1.2.3.4:1","socket":"1.2.3.4:2"}]"#,
        )
        .unwrap();
        assert_eq!(g.links.len(), 1);
        let skipped: Vec<String> = g.skipped.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            skipped,
            [
                "link #0 'bus': unsupported link type 'dbus' (supported: tcp, http, unix, rest)",
                "link #1 'gpu': unsupported link type 'drm' (supported: tcp, http, unix, rest)",
                "link #2 '': unsupported link type 'wayland' (supported: tcp, http, unix, rest)",
            ]
        );
        let refused: Vec<(usize, &str)> = g
            .refused
            .iter()
            .map(|r| (r.index, r.reason.as_str()))
            .collect();
        assert_eq!(
            refused,
            [
                (
                    3,
                    "link type 'TCP' must be written 'tcp' (lower case, no surrounding spaces)"
                ),
                (
                    4,
                    "link type 'tcp ' must be written 'tcp' (lower case, no surrounding spaces)"
                ),
                (5, "missing field 'type'"),
                (6, "field 'type' is empty"),
                (7, "field 'type' must be a string, found a number"),
            ]
        );
        // `parse` (run) reports both, in graph order.
        let (_, all) = parse(
            &serde_json::to_string(&serde_json::json!([
                {"type":"tcp","name":"a"},{"type":"dbus","name":"b"}
            ]))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(all.iter().map(|r| r.index).collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn graph_text_written_into_headers_holds_no_control_byte() {
        let link = |field: &str, v: &str| {
            let mut l = serde_json::json!({"type":"http","name":"a","consumer":"c",
                "target":"127.0.0.1:80/a","socket":"127.0.0.1:81"});
            l[field] = v.into();
            one(&serde_json::to_string(&serde_json::json!([l])).unwrap())
        };
        let e = link("role", "any\r\nX-PV-Client: admin").unwrap_err();
        assert_eq!(
            e.reason,
            "field 'role' holds a control byte (0x0d at byte 3); it is written into HTTP headers"
        );
        assert!(link("consumer", "app\n")
            .unwrap_err()
            .reason
            .contains("'consumer'"));
        assert!(link("consumer", "a\u{0}b")
            .unwrap_err()
            .reason
            .contains("0x00"));
        assert!(link("host", "a.example\u{7f}")
            .unwrap_err()
            .reason
            .contains("'host'"));
        assert!(link("role", "r\tx").is_err());
        // Spaces and non-ASCII text are field content, not control bytes.
        assert_eq!(link("role", "read only").unwrap().role, "read only");
        assert_eq!(link("consumer", "café").unwrap().consumer, "café");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let l = one(
            r#"[{"type":"tcp","name":"t","consumer":"c","target":"1.2.3.4:1","socket":"1.2.3.4:2",
            "future_field":{"x":[1,2]},"weight":5,"sni_fallback":"yes"}]"#,
        )
        .unwrap();
        assert_eq!(l.name, "t");
    }

    /// BEHAVIOUR §3: an extension on a link type it does not act on is accepted
    /// when its value would change nothing there, refused when it would.
    #[test]
    fn foreign_extensions_accepted_only_when_harmless() {
        let base = |ty: &str| -> serde_json::Value {
            let (target, socket) = match ty {
                "tcp" | "http" => ("127.0.0.1:80", "127.0.0.1:81"),
                _ => ("/run/t.sock", "/run/s.sock"),
            };
            serde_json::json!({"type":ty,"name":"l","consumer":"c","target":target,"socket":socket})
        };
        let try_link = |ty: &str, key: &str, v: serde_json::Value| {
            let mut link = base(ty);
            link[key] = v;
            one(&serde_json::json!([link]).to_string())
        };
        use serde_json::json;
        let harmless = [json!(null), json!(false), json!(""), json!([]), json!({})];
        for (key, on) in [
            ("strip_prefix", "http"),
            ("host", "http"),
            ("sni", "tcp"),
            ("proxy_protocol", "tcp"),
        ] {
            for ty in ["tcp", "http", "unix", "rest"]
                .into_iter()
                .filter(|t| *t != on)
            {
                for v in &harmless {
                    let l = try_link(ty, key, v.clone());
                    let l = l.unwrap_or_else(|r| panic!("{ty} {key}={v}: {r}"));
                    // ... and it changed nothing.
                    assert_eq!(l, one(&json!([base(ty)]).to_string()).unwrap());
                }
            }
        }
        // strip_prefix acts on an http path prefix: tcp, unix and rest
        // links have none, so `true` (its default) changes nothing either.
        for ty in ["tcp", "unix", "rest"] {
            assert!(try_link(ty, "strip_prefix", json!(true)).is_ok(), "{ty}");
            let e = try_link(ty, "strip_prefix", json!("no")).unwrap_err();
            assert!(
                e.reason
                    .contains("'strip_prefix' applies to http links, not"),
                "{e}"
            );
        }
        // The issue's example: a tool that writes every field.
        assert!(try_link("tcp", "strip_prefix", json!(false)).is_ok());
        // Values that would change something are refused with the reason.
        for (ty, key, v, on) in [
            ("http", "sni", json!("a.example"), "tcp"),
            ("unix", "sni", json!("a.example"), "tcp"),
            ("http", "proxy_protocol", json!("v1"), "tcp"),
            ("rest", "proxy_protocol", json!("v2"), "tcp"),
            ("tcp", "host", json!("a.example"), "http"),
            ("unix", "host", json!("a.example"), "http"),
            ("tcp", "sni", json!(5), "tcp"),
            ("http", "sni", json!(true), "tcp"),
            ("tcp", "host", json!(["a"]), "http"),
        ] {
            if ty == on {
                continue;
            }
            let e = try_link(ty, key, v.clone()).unwrap_err();
            assert_eq!(
                e.reason,
                format!("field '{key}' applies to {on} links, not {ty}; here only null, false or an empty value is accepted, found {v}")
            );
        }
        let e = try_link("tcp", "host", json!("x".repeat(200))).unwrap_err();
        assert!(e.reason.ends_with("xxx..."), "{}", e.reason);
    }

    /// `balance` acts on tcp and http; on unix and rest only a value that
    /// changes nothing is accepted (BEHAVIOUR §3).
    #[test]
    fn balance_is_read_on_tcp_and_http_and_refused_elsewhere() {
        use serde_json::json;
        let link = |ty: &str, v: serde_json::Value| {
            let (target, socket) = match ty {
                "tcp" | "http" => ("127.0.0.1:80", "127.0.0.1:81"),
                _ => ("/run/t.sock", "/run/s.sock"),
            };
            one(
                &json!([{"type":ty,"name":"l","consumer":"c","target":target,
                "socket":socket,"balance":v}])
                .to_string(),
            )
        };
        for ty in ["tcp", "http"] {
            assert_eq!(
                link(ty, json!("least-conn")).unwrap().balance,
                Some(Policy::LeastConn)
            );
            assert_eq!(
                link(ty, json!("round-robin")).unwrap().balance,
                Some(Policy::RoundRobin)
            );
            for v in [json!(null), json!(""), json!(false)] {
                assert_eq!(link(ty, v).unwrap().balance, None);
            }
            let e = link(ty, json!("random")).unwrap_err();
            assert_eq!(
                e.reason,
                "field 'balance' must be \"least-conn\" or \"round-robin\", found 'random'"
            );
            assert!(link(ty, json!(1)).is_err());
        }
        for ty in ["unix", "rest"] {
            for v in [json!(null), json!(""), json!(false)] {
                assert_eq!(link(ty, v).unwrap().balance, None);
            }
            let e = link(ty, json!("least-conn")).unwrap_err();
            assert_eq!(
                e.reason,
                format!("field 'balance' applies to tcp and http links, not {ty}; here only null, false or an empty value is accepted, found \"least-conn\"")
            );
        }
    }

    /// On the type they act on, null, false and "" mean "none" for the
    /// text extensions; a wrong JSON type is still refused.
    #[test]
    fn empty_text_extensions_mean_none() {
        use serde_json::json;
        let http = |host: serde_json::Value| {
            one(
                &json!([{"type":"http","name":"h","consumer":"c","target":"127.0.0.1:80",
                "socket":"127.0.0.1:81","host":host}])
                .to_string(),
            )
        };
        for v in [json!(null), json!(""), json!(false)] {
            assert_eq!(http(v.clone()).unwrap().host, None, "{v}");
        }
        assert_eq!(
            http(json!("A.example")).unwrap().host.as_deref(),
            Some("a.example")
        );
        assert!(http(json!(7))
            .unwrap_err()
            .reason
            .contains("must be a string"));
        assert!(http(json!("a/b"))
            .unwrap_err()
            .reason
            .contains("not a host name"));
        let tcp = |key: &str, v: serde_json::Value| {
            let mut l = json!({"type":"tcp","name":"t","consumer":"c","target":"127.0.0.1:80",
                "socket":"127.0.0.1:81"});
            l[key] = v;
            one(&json!([l]).to_string())
        };
        for v in [json!(null), json!(""), json!(false)] {
            assert_eq!(tcp("sni", v.clone()).unwrap().sni, None, "{v}");
            assert_eq!(
                tcp("proxy_protocol", v.clone()).unwrap().proxy_protocol,
                None,
                "{v}"
            );
        }
        assert_eq!(
            tcp("proxy_protocol", json!("v2")).unwrap().proxy_protocol,
            Some(ProxyProtocol::V2)
        );
        assert!(tcp("proxy_protocol", json!("v3")).is_err());
        let e = one(
            &json!([{"type":"http","name":"h","consumer":"c","target":"127.0.0.1:80",
            "socket":"127.0.0.1:81","strip_prefix":"no"}])
            .to_string(),
        )
        .unwrap_err();
        assert!(e.reason.contains("must be true or false"), "{e}");
    }

    #[test]
    fn whole_document_errors() {
        assert!(matches!(parse("{"), Err(GraphError::NotJson(_))));
        assert_eq!(parse("{}"), Err(GraphError::NotArray("an object")));
    }

    #[test]
    fn prefix_normalisation() {
        assert_eq!(normalise_prefix("/").unwrap(), "/");
        assert_eq!(normalise_prefix("/a/b/").unwrap(), "/a/b");
        assert!(normalise_prefix("/a?b").is_err());
    }
}
