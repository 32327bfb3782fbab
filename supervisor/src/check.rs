//! `pv-xconnect check [--json] FILE`: validate a graph the way `run` would
//! and print the endpoint plan, for a device image's CI (BEHAVIOUR §6).
//!
//! Exit status: 0 when every link is applied or skipped (a type we do not
//! make real: dbus, drm, wayland, ... which every Pantavisor graph may
//! hold), 1 when a link is refused, 2 when FILE is not a graph at all
//! (unreadable, not JSON, not an array). `--json` prints the plan for
//! tools: endpoints with their routes (as `status` shows them), refused
//! links and skipped links, each with its reason.

use crate::status::{self, RouteStatus};
use proto::graph::Refusal;
use proto::plan::Plan;
use proto::types::Kind;
use serde::Serialize;
use std::path::Path;
use std::process::ExitCode;

/// Exit status for a file that is not a graph.
pub const NOT_A_GRAPH: u8 = 2;

#[derive(Serialize)]
struct JsonPlan<'a> {
    endpoints: Vec<JsonEndpoint<'a>>,
    refused: &'a [Refusal],
    skipped: &'a [Refusal],
}

#[derive(Serialize)]
struct JsonEndpoint<'a> {
    kind: Kind,
    /// `IP:PORT`, or the socket path for unix/rest endpoints.
    address: String,
    /// `host`, or `pid:<consumer_pid>`.
    namespace: String,
    consumer: &'a str,
    worker: &'static str,
    routes: Vec<RouteStatus>,
}

pub fn run(file: &Path, json: bool) -> ExitCode {
    let text = match crate::source::read_graph_file(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("pv-xconnect check: cannot read {}: {e}", file.display());
            return ExitCode::from(NOT_A_GRAPH);
        }
    };
    let plan = match proto::plan::from_graph(&text) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pv-xconnect check: {}: {e}", file.display());
            return ExitCode::from(NOT_A_GRAPH);
        }
    };
    if json {
        print_json(&plan);
    } else {
        print_text(&plan);
    }
    if plan.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_json(plan: &Plan) {
    let doc = JsonPlan {
        endpoints: plan
            .endpoints
            .iter()
            .map(|ep| JsonEndpoint {
                kind: ep.kind,
                address: status::address(&ep.key.listen),
                namespace: status::namespace(&ep.key),
                consumer: &ep.consumer,
                worker: ep.kind.worker_binary(),
                routes: ep
                    .routes
                    .iter()
                    .map(|r| status::route(ep.kind, r))
                    .collect(),
            })
            .collect(),
        refused: &plan.refused,
        skipped: &plan.skipped,
    };
    // Strings and numbers only: serialising cannot fail.
    match serde_json::to_string_pretty(&doc) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("pv-xconnect check: {e}"),
    }
}

fn print_text(plan: &Plan) {
    // Names, paths and reasons come from the graph: each line is printed
    // escaped, so none of them can add a line or a control byte.
    let line = |l: String| println!("{}", proto::text::escape(&l));
    for ep in &plan.endpoints {
        line(format!(
            "endpoint {} {} consumer={} worker={}",
            ep.kind,
            ep.key,
            ep.consumer,
            ep.kind.worker_binary()
        ));
        for r in &ep.routes {
            let mut extra = String::new();
            if ep.kind == Kind::Http {
                extra.push_str(&format!(
                    " prefix={} strip_prefix={}",
                    r.via.prefix, r.via.strip_prefix
                ));
                if let Some(h) = &r.via.host {
                    extra.push_str(&format!(" host={h}"));
                }
            }
            if let Some(s) = &r.via.sni {
                extra.push_str(&format!(" sni={s}"));
            }
            if let Some(p) = &r.via.proxy_protocol {
                extra.push_str(&format!(" proxy_protocol={p:?}"));
            }
            if let Some(b) = r.via.balance {
                extra.push_str(&format!(" balance={b}"));
            }
            line(format!(
                "  link #{} '{}' role={} -> {}{extra}",
                r.link, r.via.name, r.via.role, r.via.backend
            ));
            // The pool: the route's other links, each with its backend.
            for x in &r.replicas {
                line(format!(
                    "    replica link #{} '{}' provider={} -> {}",
                    x.link, x.name, x.provider, x.backend
                ));
            }
        }
    }
    for r in &plan.refused {
        line(format!("refused {r}"));
    }
    for r in &plan.skipped {
        line(format!("skipped {r}"));
    }
    println!(
        "{} endpoint(s), {} link(s) refused, {} skipped",
        plan.endpoints.len(),
        plan.refused.len(),
        plan.skipped.len()
    );
}
