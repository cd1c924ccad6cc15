//! End-to-end through the `arca` binary against a real S3-compatible server (moto on
//! 127.0.0.1, started by `scripts/test` through `scripts/s3-server`).

mod support;

use support::*;

fn s3_env(name: &str) -> Option<Env> {
    let endpoint = match std::env::var("ARCA_TEST_S3_ENDPOINT") {
        Ok(e) => e,
        Err(_) if std::env::var_os("ARCA_REQUIRE_S3").is_some() => {
            panic!(
                "ARCA_REQUIRE_S3 is set but ARCA_TEST_S3_ENDPOINT is not: start scripts/s3-server"
            )
        }
        Err(_) => {
            eprintln!("no S3 test server (ARCA_TEST_S3_ENDPOINT unset): skipped");
            return None;
        }
    };
    let _ = endpoint; // Env::cmd passes it to arca as ARCA_S3_ENDPOINT.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    Some(Env::with_repo(format!(
        "s3://arca-test/{name}-{}-{t:x}",
        std::process::id()
    )))
}

#[test]
fn backup_and_restore_on_s3_byte_identical_and_incremental() {
    let Some(env) = s3_env("roundtrip") else {
        return;
    };
    env.init();
    let status = env.json(&["repo", "status"]);
    assert!(
        status["location"]
            .as_str()
            .unwrap()
            .starts_with("s3://arca-test/")
    );
    let src = env.path("src");
    tricky_tree(&src);
    let first = env.json(&["snapshot", "create", src.to_str().unwrap()]);
    let dst = env.path("restored");
    env.restore("latest", &dst);
    assert_same_tree(&src, &dst);

    // A small change: only it is stored.
    std::fs::write(src.join("plain.txt"), b"changed on the way to S3").unwrap();
    let second = env.json(&["snapshot", "create", src.to_str().unwrap()]);
    let s = &second["snapshot"]["summary"];
    assert_eq!(s["files_changed"], 1, "{second}");
    assert!(s["bytes_added"].as_u64().unwrap() < 1 << 20, "{second}");
    assert_eq!(second["snapshot"]["parent"], first["snapshot"]["id"]);
    let dst2 = env.path("restored2");
    env.ok(&[
        "snapshot",
        "restore",
        "latest",
        "--target",
        dst2.to_str().unwrap(),
    ]);
    assert_same_tree(&src, &dst2);

    // A fresh machine (empty cache) reads it all from the bucket.
    let fresh = Env::with_repo(env.repo.clone());
    let dst3 = fresh.path("restored3");
    fresh.ok(&[
        "snapshot",
        "restore",
        "latest",
        "--target",
        dst3.to_str().unwrap(),
    ]);
    assert_same_tree(&src, &dst3);
}

#[test]
fn several_writers_at_once_on_s3() {
    let Some(env) = s3_env("writers") else { return };
    env.init();
    let mut sources = Vec::new();
    for w in 0..3u64 {
        let src = env.path(&format!("src{w}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("shared"), noise(5, 2 << 20)).unwrap();
        for i in 0..10 {
            std::fs::write(src.join(format!("own{i}")), noise(100 * w + i, 100_000)).unwrap();
        }
        sources.push(src);
    }
    let children: Vec<_> = sources
        .iter()
        .enumerate()
        .map(|(w, src)| {
            env.cmd()
                .env("ARCA_CACHE_DIR", env.path(&format!("cache{w}")))
                .args(["snapshot", "create", src.to_str().unwrap(), "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ids = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        ids.push(v["snapshot"]["id"].as_str().unwrap().to_string());
    }
    for (w, id) in ids.iter().enumerate() {
        let dst = env.path(&format!("dst{w}"));
        env.restore(id, &dst);
        assert_same_tree(&sources[w], &dst);
    }
}

#[test]
fn unreachable_bucket_fails_with_a_clear_message() {
    let env = Env::with_repo("s3://arca-test/x".into());
    let out = env
        .cmd()
        .env("ARCA_S3_ENDPOINT", "http://127.0.0.1:9")
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .env("ARCA_RETRY_TIMEOUT", "2")
        .args(["repo", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: read s3://arca-test/x/config failed"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

/// A bucket nobody created: said in words, not the server's XML. (Reading a repository
/// there finds no config, as in an empty bucket: "no Arca repository", also in words.)
#[test]
fn a_bucket_that_does_not_exist_is_named() {
    let Some(env) = s3_env("nobucket") else {
        return;
    };
    let env = Env::with_repo(env.repo.replacen("arca-test", "arca-no-such-bucket", 1));
    for (verb, says) in [
        (["repo", "init"], "the bucket does not exist"),
        (["repo", "status"], "no Arca repository"),
    ] {
        let out = env.run(&verb);
        assert_eq!(out.status.code(), Some(1), "{verb:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{verb:?}: {err}");
        assert!(!err.contains("<Error>"), "{verb:?}: {err}");
    }
}
