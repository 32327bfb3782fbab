//! `pv-xconnect check FILE`: validate a graph and print the endpoint plan.

use std::path::Path;
use std::process::ExitCode;

pub fn run(file: &Path, _json: bool) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("pv-xconnect check: cannot read {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let plan = match proto::plan::from_graph(&text) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pv-xconnect check: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
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
            if ep.kind == proto::plan::Kind::Http {
                extra.push_str(&format!(
                    " prefix={} strip_prefix={}",
                    r.prefix, r.strip_prefix
                ));
                if let Some(h) = &r.host {
                    extra.push_str(&format!(" host={h}"));
                }
            }
            if let Some(s) = &r.sni {
                extra.push_str(&format!(" sni={s}"));
            }
            if let Some(p) = &r.proxy_protocol {
                extra.push_str(&format!(" proxy_protocol={p:?}"));
            }
            line(format!(
                "  link #{} '{}' role={} -> {}{extra}",
                r.link, r.name, r.role, r.backend
            ));
        }
    }
    for r in &plan.refused {
        line(format!("refused {r}"));
    }
    println!(
        "{} endpoint(s), {} link(s) refused",
        plan.endpoints.len(),
        plan.refused.len()
    );
    if plan.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
