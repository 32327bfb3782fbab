//! What the worker writes down about each request (http) and connection
//! (tcp, unix) when it ends: its access line ([`AccessLine`],
//! `--access-log`) and its route's counters ([`RouteBook`], reported with
//! the stats). Owned by the loop and lent to the handler through
//! `Cx::ledger`, so a connection that ends writes both in one place.

use crate::access::AccessLine;
use crate::route_book::RouteBook;
use proto::ctl::WorkerConfig;

#[derive(Debug, Default)]
pub struct Ledger {
    pub line: AccessLine,
    pub routes: RouteBook,
}

impl Ledger {
    pub fn new(config: &WorkerConfig) -> Ledger {
        Ledger {
            line: AccessLine::new(config.access_log),
            routes: RouteBook::new(route_names(config)),
        }
    }

    /// An applied update: the routes' counters follow their names.
    pub fn update(&mut self, config: &WorkerConfig) {
        self.routes.update(route_names(config));
    }
}

fn route_names(config: &WorkerConfig) -> impl Iterator<Item = &str> {
    config.endpoint.routes.iter().map(|r| r.via.name.as_str())
}
