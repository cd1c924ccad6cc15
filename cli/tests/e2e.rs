//! End-to-end tests through the `arca` binary, on real files and a local repository.

mod support;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::*;

#[test]
fn init_refuses_a_location_with_data_and_a_second_init() {
    let env = Env::new();
    std::fs::create_dir_all(&env.repo).unwrap();
    std::fs::write(Path::new(&env.repo).join("somefile"), b"x").unwrap();
    let out = env.run(&["repo", "init"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already holds data") && err.contains("somefile"),
        "{err}"
    );

    let env = Env::new();
    env.init();
    let out = env.run(&["repo", "init"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn wrong_password_says_so_and_nothing_else() {
    let env = Env::new();
    env.init();
    let out = env
        .cmd()
        .env("ARCA_PASSWORD", "wrong")
        .args(["repo", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "error: wrong password: it does not open this repository's key"
    );
    // No repository at all: a clear message naming the location.
    let out = env
        .cmd()
        .env("ARCA_REPOSITORY", env.path("nothing"))
        .args(["repo", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no Arca repository") && err.contains("repo init"),
        "{err}"
    );
}

#[test]
fn password_from_file_and_key_management() {
    let env = Env::new();
    env.init();
    let status = env.json(&["repo", "status"]);
    assert_eq!(status["format_version"], 1);
    assert_eq!(status["keys"], 1);

    // Add a second password, open with it through a password file.
    env.cmd()
        .env("ARCA_NEW_PASSWORD", "second")
        .args(["repo", "key", "add"])
        .status()
        .unwrap();
    let pwfile = env.path("pw");
    std::fs::write(&pwfile, "second\n").unwrap();
    let keys = |pw_env: Option<&str>| {
        let mut c = env.cmd();
        match pw_env {
            Some(p) => c.env("ARCA_PASSWORD", p),
            None => c
                .env_remove("ARCA_PASSWORD")
                .env("ARCA_PASSWORD_FILE", &pwfile),
        };
        let out = c.args(["repo", "key", "list", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let listed = keys(None);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let current: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["current"] == true)
        .collect();
    assert_eq!(current.len(), 1);
    let second_id = current[0]["id"].as_str().unwrap().to_string();

    // The key in use cannot be removed; another can.
    let out = env
        .cmd()
        .env("ARCA_PASSWORD", "second")
        .args(["repo", "key", "remove", &second_id[..8]])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let first_id = keys(Some(PASSWORD))
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.cmd()
        .env("ARCA_PASSWORD", "second")
        .args(["repo", "key", "remove", &first_id[..10]])
        .output()
        .unwrap();
    assert_eq!(keys(Some("second")).as_array().unwrap().len(), 1);
    assert_eq!(
        env.run(&["repo", "status"]).status.code(),
        Some(1),
        "the first password is gone"
    );

    // Change the password: old no longer opens, new does; data untouched.
    let out = env
        .cmd()
        .env("ARCA_PASSWORD", "second")
        .env("ARCA_NEW_PASSWORD", "third")
        .args(["repo", "key", "passwd"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(keys(Some("third")).as_array().unwrap().len(), 1);
    let out = env
        .cmd()
        .env("ARCA_PASSWORD", "second")
        .args(["repo", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // The last key cannot be removed.
    let last = keys(Some("third"))[0]["id"].as_str().unwrap().to_string();
    let out = env
        .cmd()
        .env("ARCA_PASSWORD", "third")
        .args(["repo", "key", "remove", &last])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn tricky_tree_round_trips_byte_and_metadata_exact() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    tricky_tree(&src);
    let id = env.backup(&[src.to_str().unwrap(), "--tag", "first"]);
    let dst = env.path("restored");
    let out = env.json(&[
        "snapshot",
        "restore",
        &id,
        "--target",
        dst.to_str().unwrap(),
    ]);
    assert_eq!(out["errors"].as_array().unwrap().len(), 0, "{out}");
    assert_same_tree(&src, &dst);
    // The sparse file is sparse again: 256 MiB long, about 150 kB allocated.
    let sparse = dst.join("sparse.img");
    assert_eq!(std::fs::metadata(&sparse).unwrap().len(), 256 << 20);
    assert!(
        allocated(&sparse) < 8 << 20,
        "sparse file allocated {} bytes",
        allocated(&sparse)
    );

    // Restoring again skips every file (resumable, idempotent).
    let again = env.json(&[
        "snapshot",
        "restore",
        &id,
        "--target",
        dst.to_str().unwrap(),
    ]);
    assert_eq!(again["files_restored"], 0, "{again}");
    assert!(again["files_skipped"].as_u64().unwrap() > 10);
    assert_same_tree(&src, &dst);
}

#[test]
fn incremental_backup_stores_only_the_change() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..50 {
        std::fs::write(src.join(format!("sub/f{i}")), noise(i, 200_000)).unwrap();
    }
    std::fs::write(src.join("big"), noise(99, 20 << 20)).unwrap();
    let first = env.json(&["snapshot", "create", src.to_str().unwrap()]);
    assert_eq!(first["snapshot"]["summary"]["files_new"], 51);

    // Unchanged: nothing read, nothing added but (at most) the snapshot.
    let second = env.json(&["snapshot", "create", src.to_str().unwrap()]);
    let s = &second["snapshot"]["summary"];
    assert_eq!(s["files_unmodified"], 51, "{second}");
    assert_eq!(s["bytes_added"], 0, "{second}");
    assert_eq!(second["snapshot"]["parent"], first["snapshot"]["id"]);

    // A small change in the middle of the big file: a chunk or two is new.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(src.join("big"))
            .unwrap();
        f.write_all_at(b"a small change", 10 << 20).unwrap();
    }
    std::fs::write(src.join("sub/new-file"), b"new").unwrap();
    let third = env.json(&["snapshot", "create", src.to_str().unwrap()]);
    let s = &third["snapshot"]["summary"];
    assert_eq!(s["files_changed"], 1, "{third}");
    assert_eq!(s["files_new"], 1, "{third}");
    assert_eq!(s["files_unmodified"], 50, "{third}");
    let added = s["bytes_added"].as_u64().unwrap();
    // One or two chunks (1 MiB on average, 8 MiB at most) and the trees above them.
    assert!(added < 10 << 20, "added {added} bytes for a 14-byte change");
    assert!(added > 0);

    let dst = env.path("restored");
    env.ok(&[
        "snapshot",
        "restore",
        third["snapshot"]["id"].as_str().unwrap(),
        "--target",
        dst.to_str().unwrap(),
    ]);
    assert_same_tree(&src, &dst);
}

#[test]
fn incremental_backup_sees_changed_extended_attributes() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let f = src.join("tagged");
    std::fs::write(&f, b"content that does not change").unwrap();
    if set_xattr(&f, "user.note", b"first").is_err() {
        eprintln!("skipped: no user extended attributes here");
        return;
    }
    env.backup(&[src.to_str().unwrap()]);
    // Unchanged attributes are taken from the parent snapshot (same inode and ctime);
    // a changed one changes the ctime, and the backup must record the new value.
    set_xattr(&f, "user.note", b"second").unwrap();
    set_xattr(&f, "user.added", b"new").unwrap();
    let id = env.backup(&[src.to_str().unwrap()]);
    let dst = env.path("restored");
    env.restore(&id, &dst);
    assert_same_tree(&src, &dst);
    let (facts, _) = snapshot_of(&dst);
    let x = &facts[b"tagged".as_slice()].xattrs;
    assert_eq!(
        x.get("user.note").map(String::as_str),
        Some(hex::encode("second").as_str())
    );
    assert!(x.contains_key("user.added"), "{x:?}");
}

#[test]
fn list_ls_diff_stats_and_snapshot_names() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("a"), b"aaa").unwrap();
    std::fs::write(src.join("d/b"), b"bbb").unwrap();
    let s1 = env.backup(&[src.to_str().unwrap(), "--tag", "one"]);
    std::fs::write(src.join("a"), b"changed").unwrap();
    std::fs::write(src.join("c"), b"ccc").unwrap();
    std::fs::remove_file(src.join("d/b")).unwrap();
    let s2 = env.backup(&[
        src.to_str().unwrap(),
        "--tag",
        "two",
        "--host",
        "other-host",
    ]);

    let list = env.json(&["snapshot", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let by_tag = env.json(&["snapshot", "list", "--tag", "two"]);
    assert_eq!(by_tag[0]["id"], s2.as_str());
    let by_host = env.json(&["snapshot", "list", "--host", "other-host"]);
    assert_eq!(by_host.as_array().unwrap().len(), 1);
    let by_path = env.json(&["snapshot", "list", "--path", src.to_str().unwrap()]);
    assert_eq!(by_path.as_array().unwrap().len(), 2);
    let text = env.ok(&["snapshot", "list"]);
    assert!(
        text.contains(&s1[..8]) && text.contains("2 snapshots"),
        "{text}"
    );

    // ls by prefix, by `latest` with filters.
    let ls = env.json(&["snapshot", "ls", &s1[..8], "-R"]);
    let paths: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["a", "d", "d/b"]);
    let ls = env.json(&["snapshot", "ls", "latest", "--tag", "one", "d"]);
    assert_eq!(ls[0]["path"], "d/b");
    assert_eq!(ls[0]["size"], 3);

    let diff = env.json(&["snapshot", "diff", &s1, &s2]);
    let changes: Vec<(String, String)> = diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().into(),
                c["change"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        changes.contains(&("a".into(), "modified".into())),
        "{changes:?}"
    );
    assert!(
        changes.contains(&("c".into(), "added".into())),
        "{changes:?}"
    );
    assert!(
        changes.contains(&("d/b".into(), "removed".into())),
        "{changes:?}"
    );
    let text = env.ok(&["snapshot", "diff", &s1, &s2]);
    assert!(
        text.contains("+ c") && text.contains("- d/b") && text.contains("M a"),
        "{text}"
    );

    let stats = env.json(&["snapshot", "stats"]);
    assert_eq!(stats["snapshots"], 2);
    assert_eq!(stats["files"], 4);
    assert_eq!(stats["logical_bytes"], 3 + 3 + 7 + 3);

    // Unknown and ambiguous names fail clearly.
    let out = env.run(&["snapshot", "ls", "ffffffffff"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no snapshot"));
    let out = env.run(&["snapshot", "ls", "latest", "--tag", "nope"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn restore_sub_path_tar_stream_and_existing_policies() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    tricky_tree(&src);
    let id = env.backup(&[src.to_str().unwrap()]);

    // A sub-path.
    let dst = env.path("sub");
    env.ok(&[
        "snapshot",
        "restore",
        &id,
        "--target",
        dst.to_str().unwrap(),
        "--subpath",
        "links",
    ]);
    assert_same_tree(&src.join("links"), &dst);
    let dst = env.path("sub2");
    env.ok(&[
        "snapshot",
        "restore",
        &format!("{}:links/original", &id[..10]),
        "--target",
        dst.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(dst.join("original")).unwrap(),
        std::fs::read(src.join("links/original")).unwrap()
    );

    // A tar stream, unpacked by tar itself.
    let out = env
        .cmd()
        .args(["snapshot", "restore", &id, "--target", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let untar = env.path("untar");
    std::fs::create_dir_all(&untar).unwrap();
    let mut tar = std::process::Command::new("tar")
        .args(["-x", "-f", "-", "-C"])
        .arg(&untar)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(tar.stdin.as_mut().unwrap(), &out.stdout).unwrap();
    drop(tar.stdin.take());
    assert!(tar.wait().unwrap().success());
    for f in [
        "plain.txt",
        "random.bin",
        "links/original",
        "deep/level-00/level-01/level-02/level-03/level-04/level-05/level-06/level-07/level-08/level-09/level-10/level-11/level-12/level-13/level-14/level-15/level-16/level-17/level-18/level-19/level-20/level-21/level-22/level-23/level-24/level-25/level-26/level-27/level-28/level-29/level-30/level-31/level-32/level-33/level-34/level-35/level-36/level-37/level-38/level-39/level-40/level-41/level-42/level-43/level-44/level-45/level-46/level-47/level-48/level-49/level-50/level-51/level-52/level-53/level-54/level-55/level-56/level-57/level-58/level-59/bottom.txt",
    ] {
        assert_eq!(
            std::fs::read(src.join(f)).unwrap(),
            std::fs::read(untar.join(f)).unwrap(),
            "{f}"
        );
    }
    assert_eq!(
        std::fs::read_link(untar.join("links/rel-symlink")).unwrap(),
        Path::new("original")
    );

    // Existing files: skip leaves an identical file, overwrite replaces a changed one,
    // fail stops.
    let dst = env.path("existing");
    env.restore(&id, &dst);
    std::fs::write(dst.join("plain.txt"), b"local edit").unwrap();
    let r = env.json(&[
        "snapshot",
        "restore",
        &id,
        "--target",
        dst.to_str().unwrap(),
    ]);
    assert_eq!(
        r["files_restored"], 1,
        "only the edited file is rewritten: {r}"
    );
    assert_same_tree(&src, &dst);
    // Overwriting replaces files instead of writing into them: another name of a
    // target file (a hard link outside the target) keeps its content.
    std::fs::write(dst.join("plain.txt"), b"local edit").unwrap();
    let outside = env.path("outside-link");
    std::fs::hard_link(dst.join("plain.txt"), &outside).unwrap();
    let r = env.json(&[
        "snapshot",
        "restore",
        &id,
        "--target",
        dst.to_str().unwrap(),
        "--existing",
        "overwrite",
    ]);
    assert!(r["files_restored"].as_u64().unwrap() > 10);
    assert_eq!(std::fs::read(&outside).unwrap(), b"local edit");
    assert_same_tree(&src, &dst);
    // `fail` checks every path before writing anything: a missing file stays missing.
    std::fs::remove_file(dst.join("plain.txt")).unwrap();
    let out = env.run(&[
        "snapshot",
        "restore",
        &id,
        "--target",
        dst.to_str().unwrap(),
        "--existing",
        "fail",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));
    assert!(!dst.join("plain.txt").exists());
}

#[test]
fn excludes_and_exclude_file() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    for f in [
        "keep.txt",
        "drop.tmp",
        "cache/x",
        "a/node_modules/y",
        "a/keep/z",
        "logs/old.log",
        "logs/new.txt",
    ] {
        let p = src.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, f).unwrap();
    }
    let excl = env.path("excludes");
    std::fs::write(&excl, "# comment\n\nnode_modules\n*.log\n").unwrap();
    let cache_pattern = format!("{}/cache", src.display());
    let id = env.backup(&[
        src.to_str().unwrap(),
        "--exclude",
        "*.tmp",
        "--exclude",
        &cache_pattern,
        "--exclude-file",
        excl.to_str().unwrap(),
    ]);
    let ls = env.json(&["snapshot", "ls", &id, "-R"]);
    let paths: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "a",
            "a/keep",
            "a/keep/z",
            "keep.txt",
            "logs",
            "logs/new.txt"
        ]
    );
}

#[test]
fn unreadable_files_are_reported_skipped_and_exit_partial() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("ok.txt"), b"fine").unwrap();
    std::fs::write(src.join("secret.txt"), b"no").unwrap();
    std::fs::set_permissions(
        src.join("secret.txt"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    std::fs::create_dir_all(src.join("locked")).unwrap();
    std::fs::write(src.join("locked/inside"), b"x").unwrap();
    std::fs::set_permissions(src.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();

    // Root reads everything: drop to an unprivileged user for this test.
    let as_root = is_root();
    let run = |args: &[&str]| {
        let mut c = if as_root {
            let mut c = std::process::Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                env!("CARGO_BIN_EXE_arca"),
            ]);
            c
        } else {
            std::process::Command::new(env!("CARGO_BIN_EXE_arca"))
        };
        c.env("ARCA_REPOSITORY", &env.repo)
            .env("ARCA_PASSWORD", PASSWORD)
            .env("ARCA_CACHE_DIR", env.path("cache-nobody"))
            .env("HOME", env.path(""))
            .args(args)
            .output()
            .unwrap()
    };
    if as_root {
        std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let out = run(&["repo", "init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["snapshot", "create", src.to_str().unwrap(), "--json"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors: Vec<String> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert!(
        errors.iter().any(|p| p.ends_with("secret.txt")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|p| p.ends_with("locked")), "{errors:?}");
    assert_eq!(v["snapshot"]["summary"]["errors"], 2);
    // Human output names them too.
    let out = run(&["snapshot", "create", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("secret.txt") && err.contains("partial"),
        "{err}"
    );
    // The readable file is in the snapshot.
    let out = run(&["snapshot", "ls", "latest", "--json"]);
    let ls: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"ok.txt") && !names.contains(&"secret.txt"),
        "{names:?}"
    );
    std::fs::set_permissions(src.join("locked"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_damaged_pack_is_reported_per_file_and_the_rest_restores() {
    let env = Env::new();
    // Small packs, so each file lands in its own pack.
    env.ok(&["repo", "init", "--pack-size-mib", "1"]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..6 {
        std::fs::write(src.join(format!("f{i}")), noise(100 + i, 1_500_000)).unwrap();
    }
    let id = env.backup(&[src.to_str().unwrap(), "--compression", "none"]);
    // Flip a byte in the middle of one data pack.
    let packs: Vec<_> = walk_files(&Path::new(&env.repo).join("packs/d"));
    assert!(packs.len() >= 3, "{} packs", packs.len());
    let victim = &packs[packs.len() / 2];
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x40;
    std::fs::write(victim, bytes).unwrap();

    let dst = env.path("restored");
    let out = env.run(&[
        "snapshot",
        "restore",
        &id,
        "--target",
        dst.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors = v["errors"].as_array().unwrap();
    assert!(!errors.is_empty());
    assert!(
        errors
            .iter()
            .all(|e| e["message"].as_str().unwrap().contains("damaged")),
        "{v}"
    );
    let damaged: Vec<String> = errors
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    let mut intact = 0;
    for i in 0..6 {
        let name = format!("f{i}");
        if damaged.iter().any(|d| d.ends_with(&name)) {
            continue;
        }
        assert_eq!(
            std::fs::read(dst.join(&name)).unwrap(),
            noise(100 + i, 1_500_000),
            "{name}"
        );
        intact += 1;
    }
    assert!(intact >= 4, "only {intact} files survived one damaged pack");
}

#[test]
fn several_writers_at_once_all_succeed_and_restore_exactly() {
    let env = Env::new();
    env.init();
    let n = 4;
    let mut sources = Vec::new();
    for w in 0..n {
        let src = env.path(&format!("src{w}"));
        std::fs::create_dir_all(&src).unwrap();
        // Shared content across writers (dedup races) and content of their own.
        std::fs::write(src.join("shared"), noise(7, 3 << 20)).unwrap();
        for i in 0..20 {
            std::fs::write(src.join(format!("own{i}")), noise(1000 * w + i, 150_000)).unwrap();
        }
        sources.push(src);
    }
    // Separate processes, separate caches (as separate hosts), one repository.
    let children: Vec<_> = sources
        .iter()
        .enumerate()
        .map(|(w, src)| {
            env.cmd()
                .env("ARCA_CACHE_DIR", env.path(&format!("cache{w}")))
                .args([
                    "snapshot",
                    "create",
                    src.to_str().unwrap(),
                    "--json",
                    "--host",
                    &format!("host{w}"),
                ])
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
    assert_eq!(
        env.json(&["snapshot", "list"]).as_array().unwrap().len(),
        n as usize
    );
    for (w, id) in ids.iter().enumerate() {
        let dst = env.path(&format!("dst{w}"));
        env.restore(id, &dst);
        assert_same_tree(&sources[w], &dst);
    }
    // No writer session is left behind.
    assert_eq!(env.json(&["repo", "status"])["live_sessions"], 0);
}

#[test]
fn odd_names_survive_listing_as_json() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join(std::ffi::OsStr::from_bytes(b"x\xffy")), b"1").unwrap();
    let id = env.backup(&[src.to_str().unwrap()]);
    let ls = env.json(&["snapshot", "ls", &id]);
    assert_eq!(ls[0]["path"], "x\u{fffd}y");
}

#[test]
fn one_file_system_stays_on_one_file_system() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("mnt")).unwrap();
    std::fs::write(src.join("here"), b"on the root fs").unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "none"])
        .arg(src.join("mnt"))
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("cannot mount a tmpfs here (not root?): one-file-system not exercised");
        return;
    }
    std::fs::write(src.join("mnt/elsewhere"), b"on the tmpfs").unwrap();
    let all = env.backup(&[src.to_str().unwrap()]);
    let one = env.backup(&[src.to_str().unwrap(), "--one-file-system", "--force"]);
    let _ = std::process::Command::new("umount")
        .arg(src.join("mnt"))
        .status();
    let names = |id: &str| -> Vec<String> {
        env.json(&["snapshot", "ls", id, "-R"])
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&all), ["here", "mnt", "mnt/elsewhere"]);
    // The mount point is kept, empty; what is mounted on it is not crossed into.
    assert_eq!(names(&one), ["here", "mnt"]);
}

#[test]
fn an_interrupted_restore_resumes_without_redoing_finished_files() {
    use std::io::BufRead;
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // More files than one restore batch holds (8192, `BATCH_FILES` in the engine's
    // restore.rs), so that the restore can be held
    // between batches; a few large ones among them.
    const FILES: u64 = 20_000;
    for i in 0..FILES {
        let len = if i % 1000 == 7 { 600_000 } else { 1_000 };
        std::fs::write(src.join(format!("f{i:05}")), noise(i, len)).unwrap();
    }
    let id = env.backup(&[src.to_str().unwrap()]);
    let dst = env.path("dst");
    let restore = || {
        let mut c = env.cmd();
        c.args([
            "snapshot",
            "restore",
            &id,
            "--target",
            dst.to_str().unwrap(),
        ]);
        c
    };
    // Held for good once a batch of files is on the target, the next one under way:
    // killed there, whatever the machine's speed.
    let mut child = restore()
        .env("ARCA_TEST_ENGINE_PAUSE", "restore:batch-written")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        said.push_str(&line);
        said.push('\n');
        if line.contains("paused at restore:batch-written") {
            break;
        }
    }
    assert!(
        said.contains("paused at"),
        "the restore ended without reaching its pause point: {said}"
    );
    let _ = child.kill(); // SIGKILL
    assert!(!child.wait().unwrap().success());

    let r = env.json(&[
        "snapshot",
        "restore",
        &id,
        "--target",
        dst.to_str().unwrap(),
    ]);
    assert_same_tree(&src, &dst);
    // The files of the finished batch were skipped, not rewritten.
    assert!(r["files_skipped"].as_u64().unwrap() >= 8192, "{r}");
    assert!(r["files_restored"].as_u64().unwrap() < FILES, "{r}");
}

/// A repository put back as an older copy: a command says so once (it syncs the index
/// more than once), with what to do, and goes on.
#[test]
fn a_rolled_back_repository_is_said_once_per_command() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), noise(1, 10_000)).unwrap();
    env.backup(&[src.to_str().unwrap()]);
    let (repo, old) = (Path::new(&env.repo), env.path("old-copy"));
    copy_dir(repo, &old);
    std::fs::write(src.join("b"), noise(2, 10_000)).unwrap();
    env.backup(&[src.to_str().unwrap()]);
    std::fs::remove_dir_all(repo).unwrap();
    copy_dir(&old, repo);

    let out = env.run(&["snapshot", "create", src.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("went backwards").count(), 1, "{err}");
    assert!(err.contains("seen-index to accept the repository"), "{err}");
}

#[test]
fn a_missing_damaged_or_foreign_cache_is_rebuilt() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), noise(1, 100_000)).unwrap();
    let id = env.backup(&[src.to_str().unwrap()]);
    let cache = env.path("cache");
    let restore_ok = |name: &str| {
        let dst = env.path(name);
        env.restore(&id, &dst);
        assert_same_tree(&src, &dst);
    };
    // Missing.
    std::fs::remove_dir_all(&cache).unwrap();
    restore_ok("r1");
    // Damaged: every file of the rocksdb directory overwritten with garbage.
    for f in walk_files(&cache) {
        std::fs::write(&f, b"garbage").unwrap();
    }
    restore_ok("r2");
    // Foreign: another repository's cache put in this one's place.
    let other = Env::new();
    other.init();
    let other_src = other.path("src");
    std::fs::create_dir_all(&other_src).unwrap();
    std::fs::write(other_src.join("b"), b"other").unwrap();
    other.backup(&[other_src.to_str().unwrap()]);
    let repo_dir = std::fs::read_dir(&cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let other_dir = std::fs::read_dir(other.path("cache"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_dir_all(&repo_dir).unwrap();
    copy_dir(&other_dir, &repo_dir);
    restore_ok("r3");
    // A throw-away cache works too.
    let dst = env.path("r4");
    env.ok(&[
        "snapshot",
        "restore",
        &id,
        "--target",
        dst.to_str().unwrap(),
        "--no-cache",
    ]);
    assert_same_tree(&src, &dst);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

#[test]
fn a_file_changing_while_it_is_read_is_reported() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let growing = src.join("growing.log");
    std::fs::write(&growing, noise(9, 64 << 20)).unwrap();
    std::fs::write(src.join("still"), b"still").unwrap();
    // A writer appends to the file for as long as the backup runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s, g) = (stop.clone(), growing.clone());
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&g).unwrap();
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            f.write_all(b"another line\n").unwrap();
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    });
    let out = env.json(&["snapshot", "create", src.to_str().unwrap()]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let warnings = out["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w["path"].as_str().unwrap().ends_with("growing.log")
                && w["message"]
                    .as_str()
                    .unwrap()
                    .contains("changed while it was read")),
        "{out}"
    );
    // A warning, not an error: the backup is complete.
    assert!(out["errors"].as_array().unwrap().is_empty());
}
