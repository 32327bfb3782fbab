//! An endpoint cut to what one control message can carry to its worker
//! (`crate::limits`): the links past it are refused here, at planning,
//! not lost on the way.

use super::records::Endpoint;
use crate::graph::Refusal;
use crate::limits::{MAX_CONFIG, MAX_ROOTS};
use crate::types::Backend;
use serde::Serialize;

/// Keep an endpoint within what one control message can carry to its
/// worker: at most [`crate::limits::MAX_ROOTS`] provider containers with unix
/// backends (one root fd each) and at most [`crate::limits::MAX_CONFIG`]
/// bytes of routes. Earlier links win, as for clashes: a link that would
/// go past either limit is refused with the reason, so `check` and
/// `status` show it and the worker never misses a route the supervisor
/// counts as served. None: no route of the endpoint fits.
pub(super) fn fit_control_channel(
    mut ep: Endpoint,
    refused: &mut Vec<Refusal>,
) -> Option<Endpoint> {
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
                    name: r.via.name.clone(),
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
