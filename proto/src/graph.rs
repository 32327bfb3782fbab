//! The xconnect graph as Pantavisor serves it (`GET /xconnect-graph`): a JSON
//! array with one object per link. Parsing is two-step on purpose: the array
//! is read as loose JSON values, then each element is validated on its own,
//! so one bad link is refused by index and name while the rest still apply.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Link types we make real. Others (dbus, drm, wayland, ...) are reported
/// as unsupported and skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkType {
    Tcp,
    Http,
    Unix,
    Rest,
}

impl LinkType {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkType::Tcp => "tcp",
            LinkType::Http => "http",
            LinkType::Unix => "unix",
            LinkType::Rest => "rest",
        }
    }
}

impl fmt::Display for LinkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a provider's service is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Tcp(SocketAddr),
    /// Already resolved: `/proc/<provider_pid>/root<path>`, or the plain
    /// path when the provider is the host.
    Unix(PathBuf),
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Tcp(a) => write!(f, "{a}"),
            Backend::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    V1,
    V2,
}

/// What a link listens on, before grouping into endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

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

/// Parse a graph document into validated links and refusals.
pub fn parse(text: &str) -> Result<(Vec<Link>, Vec<Refusal>), GraphError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| GraphError::NotJson(e.to_string()))?;
    let items = match doc {
        Value::Array(items) => items,
        other => return Err(GraphError::NotArray(json_kind(&other))),
    };
    let mut links = Vec::new();
    let mut refused = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match validate(index, item) {
            Ok(link) => links.push(link),
            Err(r) => refused.push(r),
        }
    }
    Ok((links, refused))
}

struct Fields<'a> {
    index: usize,
    name: String,
    obj: &'a serde_json::Map<String, Value>,
}

impl Fields<'_> {
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

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, Refusal> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.refuse(format!(
                "field '{key}' must be true or false, found {}",
                json_kind(v)
            ))),
        }
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

fn validate(index: usize, item: &Value) -> Result<Link, Refusal> {
    let Value::Object(obj) = item else {
        return Err(Refusal {
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
    let name = f.req_str("name")?.to_string();
    let ty_s = f.req_str("type")?;
    let ty = match ty_s {
        "tcp" => LinkType::Tcp,
        "http" => LinkType::Http,
        "unix" => LinkType::Unix,
        "rest" => LinkType::Rest,
        other => {
            return Err(f.refuse(format!(
                "unsupported link type '{other}' (supported: tcp, http, unix, rest)"
            )))
        }
    };
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

    let strip_prefix = f.opt_bool("strip_prefix")?;
    let host = f.opt_str("host")?.map(|h| h.to_ascii_lowercase());
    let sni = f.opt_str("sni")?.map(|h| h.to_ascii_lowercase());
    let proxy_protocol = match f.opt_str("proxy_protocol")? {
        None => None,
        Some("v1") => Some(ProxyProtocol::V1),
        Some("v2") => Some(ProxyProtocol::V2),
        Some(o) => {
            return Err(f.refuse(format!(
                "field 'proxy_protocol' must be \"v1\" or \"v2\", found '{o}'"
            )))
        }
    };
    // Extensions only make sense on one type; saying so beats ignoring them.
    if ty != LinkType::Http && (strip_prefix.is_some() || host.is_some()) {
        return Err(f.refuse(format!(
            "fields 'strip_prefix' and 'host' apply to http links, not {ty}"
        )));
    }
    if ty != LinkType::Tcp && (sni.is_some() || proxy_protocol.is_some()) {
        return Err(f.refuse(format!(
            "fields 'sni' and 'proxy_protocol' apply to tcp links, not {ty}"
        )));
    }
    if let Some(h) = &host {
        if h.is_empty() || h.contains(['/', ' ', ':']) {
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
