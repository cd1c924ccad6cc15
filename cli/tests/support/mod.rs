//! Helpers for end-to-end tests through the `arca` binary: running it, building tricky
//! trees, and comparing trees byte for byte and metadata for metadata.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod tree;
#[allow(unused_imports)]
pub use tree::*;

pub const PASSWORD: &str = "correct horse battery staple";

/// A test environment: a temporary directory holding the repository and the cache.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub repo: String,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo").display().to_string();
        Self { dir, repo }
    }

    pub fn with_repo(repo: String) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            repo,
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_arca"));
        c.env("ARCA_REPOSITORY", &self.repo)
            .env("ARCA_PASSWORD", PASSWORD)
            .env("ARCA_CACHE_DIR", self.dir.path().join("cache"))
            .env_remove("ARCA_PASSWORD_FILE")
            .env_remove("ARCA_LOG")
            .stdin(Stdio::null());
        if let Ok(e) = std::env::var("ARCA_TEST_S3_ENDPOINT") {
            c.env("ARCA_S3_ENDPOINT", e);
        }
        c
    }

    /// Run with arguments; return the output whatever the status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Run and require exit status `code`; return stdout.
    pub fn expect(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "arca {args:?} exited {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        self.expect(0, args)
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    pub fn init(&self) {
        self.ok(&["repo", "init"]);
    }

    /// Restore a snapshot (ID or name) into `target`; the command's output.
    pub fn restore(&self, id: &str, target: &Path) -> String {
        self.ok(&[
            "snapshot",
            "restore",
            id,
            "--target",
            target.to_str().unwrap(),
        ])
    }

    /// Back up and return the snapshot ID.
    pub fn backup(&self, args: &[&str]) -> String {
        let mut a = vec!["snapshot", "create"];
        a.extend_from_slice(args);
        let v = self.json(&a);
        v["snapshot"]["id"].as_str().unwrap().to_string()
    }
}
