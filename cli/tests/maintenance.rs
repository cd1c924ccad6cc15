//! End-to-end maintenance through the `arca` binary: check, forget, GC, repair, and
//! `kill -9` in the middle of a backup and of maintenance.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;

fn data_packs(env: &Env) -> Vec<std::path::PathBuf> {
    walk_files(&Path::new(&env.repo).join("packs/d"))
}

/// A full GC that acts at once: margins below the safe minimums, allowed explicitly (no
/// other writer uses these repositories).
const GC_NOW: &[&str] = &[
    "maintenance",
    "run",
    "--full",
    "--safety-margin",
    "0",
    "--cleanup-margin",
    "0",
    "--unsafe-short-margins",
];
#[test]
fn check_forget_gc_and_a_clean_read_data_check() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut ids = Vec::new();
    for v in 0..3u64 {
        std::fs::write(src.join(format!("gen{v}")), noise(v, 3 << 20)).unwrap();
        ids.push(env.backup(&[src.to_str().unwrap(), "--tag", &format!("v{v}")]));
        if v < 2 {
            std::fs::remove_file(src.join(format!("gen{v}"))).unwrap();
        }
    }
    assert!(env.ok(&["repo", "check"]).contains("no errors"));

    // Dry run: what would go and which rule keeps the survivor.
    let dry = env.json(&[
        "snapshot",
        "forget",
        "--keep-last",
        "1",
        "--keep-tag",
        "v0",
        "--dry-run",
    ]);
    let kept: Vec<(String, Vec<String>)> = dry
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == true)
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_string(),
                d["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(kept.len(), 2, "{dry}");
    assert!(kept.iter().any(|(id, r)| id == &ids[2] && r == &["last"]));
    assert!(kept.iter().any(|(id, r)| id == &ids[0] && r == &["tag v0"]));
    assert_eq!(
        env.json(&["snapshot", "list"]).as_array().unwrap().len(),
        3,
        "a dry run removes nothing"
    );
    let text = env.ok(&["snapshot", "forget", "--keep-last", "1", "--dry-run"]);
    assert!(
        text.contains("keep") && text.contains("(last)") && text.contains("would remove"),
        "{text}"
    );

    // Forget for real, then collect.
    env.ok(&["snapshot", "forget", "--keep-last", "1"]);
    assert_eq!(env.json(&["snapshot", "list"]).as_array().unwrap().len(), 1);
    let before: u64 = data_packs(&env)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let first = env.json(GC_NOW);
    assert!(first["packs_marked"].as_u64().unwrap() > 0, "{first}");
    let second = env.json(GC_NOW);
    assert!(
        second["bytes_reclaimed"].as_u64().unwrap() > 4 << 20,
        "{second}"
    );
    let after: u64 = data_packs(&env)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        after < before / 2,
        "{after} of {before} bytes of data packs left"
    );
    let human = env.ok(GC_NOW);
    assert!(human.contains("reclaimed"), "{human}");
    // forget --prune collects in the same command (the unused data waits for a second
    // run, the safety margin being zero here).
    std::fs::write(src.join("gen3"), noise(3, 2 << 20)).unwrap();
    env.backup(&[src.to_str().unwrap()]);
    std::fs::remove_file(src.join("gen3")).unwrap();
    env.backup(&[src.to_str().unwrap()]);
    let pruned = env.ok(&[
        "snapshot",
        "forget",
        "--keep-last",
        "1",
        "--prune",
        "--safety-margin",
        "0",
        "--unsafe-short-margins",
    ]);
    assert!(
        pruned.contains("removed 2 snapshots") && pruned.contains("mark"),
        "{pruned}"
    );
    let again = env.json(GC_NOW);
    assert!(
        again["bytes_reclaimed"].as_u64().unwrap() >= 2 << 20,
        "{again}"
    );

    let check = env.json(&["repo", "check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
    let dst = env.path("dst");
    env.restore("latest", &dst);
    assert_same_tree(&src, &dst);

    // Quick maintenance compacts the index files of several backups into one.
    for v in 10..13u64 {
        std::fs::write(src.join("extra"), noise(v, 100_000)).unwrap();
        env.backup(&[src.to_str().unwrap()]);
    }
    let q = env.json(&["maintenance", "run"]);
    assert!(
        q["index_files_before"].as_u64().unwrap() >= 3 && q["index_files_after"] == 1,
        "{q}"
    );
}

#[test]
fn read_data_finds_a_flipped_bit_and_names_pack_snapshot_and_file() {
    let env = Env::new();
    env.ok(&["repo", "init", "--pack-size-mib", "1"]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..4u64 {
        std::fs::write(src.join(format!("f{i}")), noise(50 + i, 1_200_000)).unwrap();
    }
    let id = env.backup(&[src.to_str().unwrap(), "--compression", "none"]);
    let packs = data_packs(&env);
    let victim = &packs[1];
    let mut bytes = std::fs::read(victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(victim, &bytes).unwrap();

    // Structure alone does not read data: the sizes still match.
    assert_eq!(env.run(&["repo", "check"]).status.code(), Some(0));
    let out = env.run(&["repo", "check", "--read-data", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let damaged = v["damaged_packs"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{v}");
    let pack_name = victim.file_name().unwrap().to_str().unwrap();
    assert_eq!(damaged[0]["pack"], pack_name);
    assert!(
        damaged[0]["reason"].as_str().unwrap().contains("hash"),
        "{v}"
    );
    assert_eq!(
        damaged[0]["blobs"].as_array().unwrap().len(),
        1,
        "one blob is damaged: {v}"
    );
    assert_eq!(v["affected"][0]["snapshot"], id.as_str());
    assert_eq!(
        v["affected"][0]["paths"].as_array().unwrap().len(),
        1,
        "{v}"
    );
    let text = String::from_utf8(env.run(&["repo", "check", "--read-data"]).stdout).unwrap();
    assert!(
        text.contains(pack_name)
            && text.contains(&id[..8])
            && text.contains("cannot restore intact"),
        "{text}"
    );

    // Subsets: 1/2 and 2/2 together read every pack; the damage shows in one of them.
    let a = env.run(&["repo", "check", "--read-data-subset", "1/2", "--json"]);
    let b = env.run(&["repo", "check", "--read-data-subset", "2/2", "--json"]);
    let read = |o: &std::process::Output| {
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["packs_read"]
            .as_u64()
            .unwrap()
    };
    let total = v["packs"].as_u64().unwrap();
    assert_eq!(read(&a) + read(&b), total);
    assert!(a.status.code() == Some(1) || b.status.code() == Some(1));
    let all = env.run(&["repo", "check", "--read-data-subset", "100%", "--json"]);
    assert_eq!(read(&all), total);
    assert_eq!(
        env.run(&["repo", "check", "--read-data-subset", "3/2"])
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn repair_after_a_lost_pack_keeps_everything_else_restorable() {
    let env = Env::new();
    env.ok(&["repo", "init", "--pack-size-mib", "1"]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..5u64 {
        std::fs::write(src.join(format!("f{i}")), noise(70 + i, 900_000)).unwrap();
    }
    env.backup(&[src.to_str().unwrap(), "--compression", "none"]);
    let packs = data_packs(&env);
    std::fs::remove_file(&packs[0]).unwrap();
    assert_eq!(env.run(&["repo", "check"]).status.code(), Some(1));

    let r = env.json(&["repo", "repair", "index"]);
    assert!(r["packs"].as_u64().unwrap() >= 1, "{r}");
    let fixed = env.json(&["repo", "repair", "snapshots"]);
    let damaged: Vec<String> = fixed[0]["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    assert!(!damaged.is_empty(), "{fixed}");
    assert_eq!(env.json(&["repo", "check", "--read-data"])["ok"], true);

    let dst = env.path("dst");
    let out = env.run(&[
        "snapshot",
        "restore",
        "latest",
        "--target",
        dst.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "damaged files make the restore partial"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reported: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    for i in 0..5u64 {
        let name = format!("f{i}");
        if damaged.contains(&name) {
            assert!(
                reported.iter().any(|p| p.ends_with(&name)),
                "{name} not reported: {v}"
            );
        } else {
            assert_eq!(
                std::fs::read(dst.join(&name)).unwrap(),
                noise(70 + i, 900_000),
                "{name}"
            );
        }
    }
}

/// Start `arca`, wait until `ready` says so, then kill -9 it. A backup is held at its
/// first stored checkpoint (the engine's pause point): a fast machine cannot finish it
/// before the kill.
fn kill_when(env: &Env, args: &[&str], ready: impl Fn() -> bool) -> bool {
    let mut child = env
        .cmd()
        .args(args)
        .env("ARCA_TEST_ENGINE_PAUSE", "writer:index-written")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !ready() && start.elapsed() < Duration::from_secs(120) {
        if child.try_wait().unwrap().is_some() {
            return false; // finished before it could be killed
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill(); // SIGKILL
    !child.wait().unwrap().success()
}

#[test]
fn kill_9_during_backup_and_maintenance_leaves_a_clean_repository() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // Large enough that the first checkpoint's index file comes well before the end: with
    // our crates optimised, 128 MiB once finished between the index file and the kill.
    for i in 0..40u64 {
        std::fs::write(src.join(format!("big{i:02}")), noise(300 + i, 8 << 20)).unwrap();
    }
    let index_dir = Path::new(&env.repo).join("index");
    let killed = kill_when(
        &env,
        &[
            "snapshot",
            "create",
            src.to_str().unwrap(),
            "--checkpoint-interval",
            "1s",
            "--compression",
            "none",
        ],
        || {
            // A complete index file, not the store's temporary file of one being written.
            std::fs::read_dir(&index_dir)
                .map(|d| {
                    d.filter_map(|e| e.ok()).any(|e| {
                        e.file_name().to_str().is_some_and(|n| {
                            n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit())
                        })
                    })
                })
                .unwrap_or(false)
        },
    );
    assert!(
        killed,
        "the backup finished before it could be killed; make the tree larger"
    );
    // Clean (unindexed leftovers are allowed), and the next backup reuses what was indexed.
    let check = env.json(&["repo", "check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["snapshots"], 0);
    let second = env.json(&[
        "snapshot",
        "create",
        src.to_str().unwrap(),
        "--compression",
        "none",
    ]);
    let s = &second["snapshot"]["summary"];
    let (added, processed) = (
        s["bytes_added"].as_u64().unwrap(),
        s["bytes_processed"].as_u64().unwrap(),
    );
    assert!(
        added < processed,
        "nothing reused: added {added} of {processed}"
    );
    let dst = env.path("dst");
    env.restore("latest", &dst);
    assert_same_tree(&src, &dst);

    // Now kill maintenance in the middle of a full run.
    std::fs::remove_file(src.join("big00")).unwrap();
    env.backup(&[src.to_str().unwrap()]);
    env.ok(&["snapshot", "forget", "--keep-last", "1"]);
    let _ = kill_when(
        &env,
        &[
            "maintenance",
            "run",
            "--full",
            "--safety-margin",
            "0",
            "--unsafe-short-margins",
            "--repack-below",
            "99",
        ],
        || {
            std::fs::read_dir(Path::new(&env.repo).join("maintenance"))
                .map(|d| d.count() > 0)
                .unwrap_or(false)
        },
    );
    let check = env.json(&["repo", "check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
    // The dead maintainer's lease does not block the next run on this host.
    env.ok(GC_NOW);
    env.ok(GC_NOW);
    assert_eq!(env.json(&["repo", "check", "--read-data"])["ok"], true);
    let dst = env.path("dst2");
    env.restore("latest", &dst);
    assert_same_tree(&src, &dst);
}

#[test]
fn a_damaged_index_file_or_snapshot_is_named_and_the_rest_goes_on() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), noise(1, 300_000)).unwrap();
    let first = env.backup(&[src.to_str().unwrap()]);
    std::fs::write(src.join("b"), noise(2, 300_000)).unwrap();
    let second = env.backup(&[src.to_str().unwrap()]);
    let flip = |p: &Path| {
        let mut b = std::fs::read(p).unwrap();
        let i = b.len() / 2;
        b[i] ^= 0x10;
        std::fs::write(p, b).unwrap();
    };

    // A damaged snapshot manifest: listed as unreadable, the other still listed and
    // restorable, check names it.
    flip(&Path::new(&env.repo).join("snapshots").join(&first));
    let out = env.run(&["snapshot", "list", "--json"]);
    assert!(out.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&first[..8]));
    let check = env.run(&["repo", "check", "--json"]);
    assert_eq!(check.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert!(
        v["errors"][0].as_str().unwrap().contains(&first[..8]),
        "{v}"
    );
    let dst = env.path("dst");
    env.restore(&second, &dst);
    assert_same_tree(&src, &dst);
    let out = env.run(&[
        "snapshot",
        "restore",
        &first,
        "--target",
        env.path("x").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt"));
    std::fs::remove_file(Path::new(&env.repo).join("snapshots").join(&first)).unwrap();

    // A damaged index file: check names it, GC refuses, repair index rebuilds it.
    let index = walk_files(&Path::new(&env.repo).join("index"));
    flip(&index[0]);
    let check = env.run(&["repo", "check", "--json", "--no-cache"]);
    assert_eq!(check.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    let name = index[0].file_name().unwrap().to_str().unwrap();
    assert!(
        v["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().contains(name)),
        "{v}"
    );
    // If the damaged file listed trees, GC cannot know what the snapshots use: it stops,
    // deleting nothing, and says to repair. If it listed only data, GC goes on but takes
    // no unindexed pack for a leftover, and says why.
    let packs_before = walk_files(&Path::new(&env.repo).join("packs"));
    let gc = env.run(&["maintenance", "run", "--full", "--no-cache"]);
    let (out, err) = (
        String::from_utf8_lossy(&gc.stdout),
        String::from_utf8_lossy(&gc.stderr),
    );
    match gc.status.code() {
        Some(1) => {
            assert!(err.contains("repair"), "{err}");
            assert_eq!(
                walk_files(&Path::new(&env.repo).join("packs")),
                packs_before
            );
        }
        Some(0) => assert!(
            out.contains("no leftover was deleted") && out.contains("repair index"),
            "{out}"
        ),
        other => panic!("maintenance exited {other:?}: {err}"),
    }
    env.ok(&["repo", "repair", "index", "--no-cache"]);
    assert_eq!(env.json(&["repo", "check", "--read-data"])["ok"], true);
    let dst = env.path("dst2");
    env.restore(&second, &dst);
    assert_same_tree(&src, &dst);
}
