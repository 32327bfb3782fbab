//! The types every crate imports: what a link connects (its type, its
//! listening address, its backend), the worker kind that serves it, how
//! replicas share connections, and a backend's health as reported. A leaf
//! (it imports nothing of ours) so that the graph parser, the planner, the
//! control messages, the supervisor and the worker runtime can all speak
//! of them without importing one another.

use serde::{Deserialize, Serialize};
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

/// How a route's replicas share its connections (`"balance"` in the graph).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    LeastConn,
    RoundRobin,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::LeastConn => "least-conn",
            Policy::RoundRobin => "round-robin",
        }
    }

    /// The graph's spelling.
    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "least-conn" => Some(Policy::LeastConn),
            "round-robin" => Some(Policy::RoundRobin),
            _ => None,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One backend's state as a worker reports it (`stats`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendHealth {
    pub backend: String,
    pub up: bool,
    /// Checks made.
    pub checks: u64,
    /// Failed checks and failed real connections.
    pub failures: u64,
    /// Failures since the last success.
    pub fails_in_row: u32,
    /// When the last check ended, in milliseconds since the Unix epoch
    /// (0: none yet).
    #[serde(default)]
    pub last_check_ms: u64,
    #[serde(default)]
    pub last_error: Option<String>,
}
