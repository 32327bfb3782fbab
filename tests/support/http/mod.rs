//! HTTP test support: a real origin server ([`backend`]), a raw client for
//! what curl will not send ([`client`]), a way to run pvx-worker-http
//! without the supervisor ([`direct`]), and a backend that misbehaves on
//! purpose, byte for byte ([`scripted`]).

pub mod backend;
pub mod client;
pub mod direct;
pub mod scripted;

/// FNV-1a, 64 bit: enough to compare megabytes end to end.
pub fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}
