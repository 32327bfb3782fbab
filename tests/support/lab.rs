//! scripts/lab.sh driven from tests: a lab with a name and state directory
//! of its own (so parallel tests and a developer's lab never meet), taken
//! down on drop whatever the test did.

use crate::{unique, TempDir};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

pub struct Lab {
    pub name: String,
    /// Holds the lab's state directory (`state`), so it is private to the test.
    _dir: TempDir,
    pub state: PathBuf,
    /// lab.env as a map (CONSUMER_PID, PROVIDER_A_IP, ...).
    pub env: BTreeMap<String, String>,
    /// STATE/made as `up` left it: what `down` must remove.
    pub made: String,
}

impl Lab {
    /// A lab name: at most 10 of [a-z0-9] (veth names are short).
    fn name() -> String {
        let u = unique("");
        let digits: String = u.chars().filter(|c| c.is_ascii_digit()).collect();
        format!("pl{}", &digits[digits.len().saturating_sub(8)..])
    }

    pub fn run(&self, script_name: &str, args: &[&str]) -> Output {
        Command::new(script(script_name))
            .args(args)
            .env("PVX_LAB_NAME", &self.name)
            .env("PVX_LAB_STATE", &self.state)
            .output()
            .expect("run script")
    }

    pub fn up() -> Lab {
        let dir = TempDir::new("lab");
        let name = Lab::name();
        let state = dir.path().join("state");
        let mut lab = Lab {
            name,
            _dir: dir,
            state,
            env: BTreeMap::new(),
            made: String::new(),
        };
        let out = lab.run("lab.sh", &["up"]);
        assert!(
            out.status.success(),
            "lab.sh up: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(lab.state.join("lab.env")).expect("lab.env");
        lab.env = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        lab.made = std::fs::read_to_string(lab.state.join("made")).expect("made");
        lab
    }

    pub fn get(&self, k: &str) -> &str {
        self.env
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{k} not in lab.env"))
    }

    /// Run `down`; returns its output (also done on drop if not yet).
    pub fn down(&mut self) -> Output {
        let out = self.run("lab.sh", &["down"]);
        self.made.clear();
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.made.is_empty() {
            let _ = self.run("lab.sh", &["down"]);
        }
    }
}
