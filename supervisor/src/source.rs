//! Where the graph comes from: `--graph FILE` (re-read on SIGHUP and when
//! the file changes: its mtime and size are checked once a second).

use proto::plan::{self, Plan};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

const FILE_CHECK: Duration = Duration::from_secs(1);

pub enum Origin {
    File(PathBuf),
}

pub struct Source {
    origin: Origin,
    next_check: Instant,
    stamp: Option<(SystemTime, u64)>,
}

impl Source {
    pub fn file(path: PathBuf) -> Source {
        Source {
            origin: Origin::File(path),
            next_check: Instant::now() + FILE_CHECK,
            stamp: None,
        }
    }

    /// How often the loop must wake to look at the source.
    pub fn poll_every(&self) -> Duration {
        FILE_CHECK
    }

    /// Whether the source should be read again now (the file changed).
    pub fn due(&mut self, now: Instant) -> bool {
        if now < self.next_check {
            return false;
        }
        self.next_check = now + FILE_CHECK;
        match &self.origin {
            Origin::File(p) => {
                let stamp = std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())));
                stamp.is_some() && stamp != self.stamp
            }
        }
    }

    /// Read and plan the graph. Err: the source could not be used and the
    /// running state must stay as it is.
    pub fn read(&mut self) -> Result<Option<Plan>, String> {
        match &self.origin {
            Origin::File(p) => {
                let meta =
                    std::fs::metadata(p).map_err(|e| format!("graph file {}: {e}", p.display()))?;
                self.stamp = meta.modified().ok().map(|m| (m, meta.len()));
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("graph file {}: {e}", p.display()))?;
                plan::from_graph(&text)
                    .map(Some)
                    .map_err(|e| format!("graph file {}: {e}", p.display()))
            }
        }
    }
}
