//! After a `101 Switching Protocols` the connection is a byte tunnel:
//! bytes either side already read go first, then both directions are
//! spliced; EOF on one side shuts the other's write side (half-close), and
//! the connection ends when both directions have.

use crate::conn::{Conn, Ctx, Fail, Phase};
use proto::relay::Splice;
use std::os::fd::AsFd;

/// The two directions of an upgraded connection.
#[derive(Default)]
pub struct Tunnel {
    up: Splice,
    down: Splice,
}

impl Tunnel {
    pub fn half_closed(&self) -> bool {
        self.up.dst_shut != self.down.dst_shut
    }
}

impl Conn {
    /// After a 101: bytes either side already read go first, then both
    /// directions are spliced; EOF on one side shuts the other's write side.
    pub(crate) fn tunnel(&mut self, cx: &mut Ctx) -> Result<bool, Fail> {
        let (Phase::Tunnel(t), Some(ex), Some(b)) = (
            &mut self.phase,
            self.ex.as_deref_mut(),
            self.backend.as_mut(),
        ) else {
            return Err(Fail::Abort("tunnel without both sides".into()));
        };
        let down = if !ex.bbuf.is_empty() {
            ex.bbuf
                .write_to(&self.client, &mut self.cr, u64::MAX)
                .map(|n| n as u64)
        } else {
            ex.bbuf.release();
            t.down
                .pump(
                    b.stream.as_fd(),
                    &mut b.ready,
                    self.client.as_fd(),
                    &mut self.cr,
                    true,
                )
                .map(|m| m.bytes)
        };
        let up = if !self.cbuf.is_empty() {
            self.cbuf
                .write_to(&b.stream, &mut b.ready, u64::MAX)
                .map(|n| n as u64)
        } else {
            self.cbuf.release();
            t.up.pump(
                self.client.as_fd(),
                &mut self.cr,
                b.stream.as_fd(),
                &mut b.ready,
                true,
            )
            .map(|m| m.bytes)
        };
        let (d, u) = match (down, up) {
            (Ok(d), Ok(u)) => (d, u),
            (Err(e), _) | (_, Err(e)) => {
                proto::debug!("tunnel to {} ended: {e}", ex.route.backend);
                self.phase = Phase::Done;
                return Ok(false);
            }
        };
        cx.stats.bytes_out += d;
        cx.stats.bytes_in += u;
        if t.up.dst_shut && t.down.dst_shut {
            self.phase = Phase::Done;
            return Ok(false);
        }
        if d + u > 0 {
            self.last_active = cx.now;
        }
        Ok(d + u > 0)
    }
}
