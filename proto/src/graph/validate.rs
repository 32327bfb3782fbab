//! One element of the graph array to a link, or the reason it is refused
//! (or skipped, for a type that is not ours): addresses, socket paths as
//! `run` can use them, text bound for HTTP headers.

use super::fields::{json_kind, Fields};
use super::{Link, Refusal, Via};
use crate::types::{Backend, LinkType, Listen, Policy, ProxyProtocol};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;

/// What became of one element of the graph array (lives for one step of
/// the loop in [`parse_graph`]: its size does not matter).
#[allow(clippy::large_enum_variant)]
pub(super) enum Verdict {
    Link(Link),
    Refused(Refusal),
    Skipped(Refusal),
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
pub(super) fn normalise_prefix(p: &str) -> Result<String, String> {
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

pub(super) fn validate(index: usize, item: &Value) -> Verdict {
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
        consumer_pid,
        interface,
        listen,
        via: Via {
            name,
            consumer,
            provider,
            provider_pid,
            role,
            backend,
            prefix,
            strip_prefix: strip_prefix.unwrap_or(true),
            host,
            sni,
            proxy_protocol,
            balance,
        },
    })
}
