#!/usr/bin/env python3
"""Arca, restic and rustic side by side, on the same data in the same run.

Run through benches/scripts/compare.sh, which installs the peers and builds arca. For each
dataset and tool: first backup, unchanged re-backup, restore, backup of a second similar
tree into the same repository; wall time, CPU time, peak RSS (GNU time), repository size.
Also the box's own limits on the same data: `tar -cf - DIR | zstd -T0 -3` (a compressing
backup) and `tar -cf - DIR | cat` (reading the files, as an unchanged re-run must at least
stat them). Prints a Markdown report and writes it to --out.
"""

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import time

PASSWORD = "benchmark password"
ALL_PEERS = ["restic", "rustic"]
TOOLS = ["arca"] + ALL_PEERS
PEERS = list(ALL_PEERS)


def log(msg):
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def du(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_size
            except OSError:
                pass
    return total


def count_files(path):
    n = 0
    for _, _, files in os.walk(path):
        n += len(files)
    return n


class Runner:
    def __init__(self, a):
        self.a = a
        self.work = a.work
        self.env = dict(os.environ)
        self.env.update(
            ARCA_PASSWORD=PASSWORD,
            RESTIC_PASSWORD=PASSWORD,
            RUSTIC_PASSWORD=PASSWORD,
            ARCA_CACHE_DIR=os.path.join(self.work, "cache-arca"),
        )
        for k in ("ARCA_REPOSITORY", "RESTIC_REPOSITORY", "ARCA_PASSWORD_FILE"):
            self.env.pop(k, None)

    def timed(self, argv, shell=False):
        """Run; return (wall s, cpu s, peak RSS MiB, system s)."""
        out = os.path.join(self.work, "time.out")
        cmd = ["/usr/bin/time", "-f", "%e %U %S %M", "-o", out]
        cmd += ["sh", "-c", argv] if shell else argv
        t0 = time.monotonic()
        r = subprocess.run(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wall = time.monotonic() - t0
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, argv if not shell else [argv]))} failed ({r.returncode}): "
                               f"{r.stderr.decode(errors='replace')[-2000:]}")
        e, u, s, m = open(out).read().split()[-4:]
        return wall, float(u) + float(s), int(m) / 1024, float(s)

    def quiet(self, argv):
        r = subprocess.run(argv, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {r.stderr.decode(errors='replace')[-2000:]}")

    def repo(self, tool, ds):
        return os.path.join(self.work, f"repo-{tool}-{ds}")

    def init(self, tool, ds):
        repo = self.repo(tool, ds)
        shutil.rmtree(repo, ignore_errors=True)
        if tool == "arca":
            self.quiet([self.a.arca, "--repo", repo, "repo", "init"])
        elif tool == "restic":
            self.quiet([self.a.restic, "--repo", repo, "--cache-dir", os.path.join(self.work, "cache-restic"),
                        "init", "--repository-version", "2"])
        else:
            self.quiet([self.a.rustic, "--repository", repo, "--cache-dir", os.path.join(self.work, "cache-rustic"),
                        "init"])

    def backup(self, tool, ds, path):
        repo = self.repo(tool, ds)
        if tool == "arca":
            argv = [self.a.arca, "--repo", repo, "-q", "snapshot", "create", path]
        elif tool == "restic":
            argv = [self.a.restic, "--repo", repo, "--cache-dir", os.path.join(self.work, "cache-restic"),
                    "-q", "backup", path]
        else:
            argv = [self.a.rustic, "--repository", repo, "--cache-dir", os.path.join(self.work, "cache-rustic"),
                    "--no-progress", "backup", path]
        return self.timed(argv)

    def restore(self, tool, ds, target, keep=False):
        """`keep`: leave the restored tree (on disk: deleting tens of thousands of files
        just before the next run would measure the file system's churn, see disk_dir)."""
        repo = self.repo(tool, ds)
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        subprocess.run(["sync"], check=True)
        if tool == "arca":
            argv = [self.a.arca, "--repo", repo, "-q", "snapshot", "restore", "latest", "--target", target]
        elif tool == "restic":
            argv = [self.a.restic, "--repo", repo, "--cache-dir", os.path.join(self.work, "cache-restic"),
                    "-q", "restore", "latest", "--target", target]
        else:
            argv = [self.a.rustic, "--repository", repo, "--cache-dir", os.path.join(self.work, "cache-rustic"),
                    "--no-progress", "restore", "latest", target]
        r = self.timed(argv)
        if not keep:
            shutil.rmtree(target, ignore_errors=True)
        return r


    def backup_image(self, tool, ds, image):
        """A disk image as one volume: arca reads it as a block volume, restic and rustic
        from standard input (how their users back up devices and images)."""
        repo = self.repo(tool, ds)
        if tool == "arca":
            return self.timed([self.a.arca, "--repo", repo, "-q", "snapshot", "create", "--block", image])
        if tool == "restic":
            return self.timed(f"'{self.a.restic}' --repo '{repo}' --cache-dir '{self.work}/cache-restic' -q "
                              f"backup --stdin --stdin-filename volume.img < '{image}'", shell=True)
        # --force: with a parent, rustic 0.11 reports standard input "unchanged" without
        # reading it, and its snapshot keeps the old content.
        return self.timed(f"'{self.a.rustic}' --repository '{repo}' --cache-dir '{self.work}/cache-rustic' "
                          f"--no-progress backup --force --stdin-filename volume.img - < '{image}'", shell=True)

    def restore_image(self, tool, ds, target_dir):
        """The newest volume snapshot into `target_dir` (a file named volume.img there)."""
        repo = self.repo(tool, ds)
        shutil.rmtree(target_dir, ignore_errors=True)
        os.makedirs(target_dir)
        # Every tool's repository in the page cache first: with two 4 GiB images cached
        # and a restored one in tmpfs, whether the packs were still cached decided the
        # run (arca's tmpfs restore: 12.1 s in one, 3.4-6.0 s warm by hand).
        warm(repo)
        if tool == "arca":
            argv = [self.a.arca, "--repo", repo, "-q", "snapshot", "restore", "latest", "--target",
                    os.path.join(target_dir, "volume.img")]
        elif tool == "restic":
            argv = [self.a.restic, "--repo", repo, "--cache-dir", os.path.join(self.work, "cache-restic"),
                    "-q", "restore", "latest", "--target", target_dir]
        else:
            argv = [self.a.rustic, "--repository", repo, "--cache-dir", os.path.join(self.work, "cache-rustic"),
                    "--no-progress", "restore", "latest", target_dir]
        r = self.timed(argv)
        if os.path.getsize(os.path.join(target_dir, "volume.img")) != self.image_size:
            raise RuntimeError(f"{tool} restored an image of the wrong size")
        shutil.rmtree(target_dir, ignore_errors=True)
        return r


RESTORE_DIRS = set()


def restore_dir(a, size):
    """Where restores go: tmpfs when it has room. On disk, a file system that just deleted
    the previous restore's tens of thousands of files can spend seconds per restore
    searching past them for free inodes (journal-less ext4 keeps recently deleted inodes
    off limits), which measures the file system's churn rather than the tools."""
    if a.restore_on_disk:
        RESTORE_DIRS.add("local disk")
        return os.path.join(a.work, "restore-target")
    shm = "/dev/shm"
    if os.path.isdir(shm):
        st = os.statvfs(shm)
        if st.f_bavail * st.f_frsize > 2 * size:
            RESTORE_DIRS.add("tmpfs (`/dev/shm`)")
            return os.path.join(shm, "arca-compare-restore")
    RESTORE_DIRS.add("local disk")
    return os.path.join(a.work, "restore-target")


DISK_RUNS = [0]


def disk_dir(a):
    """A new directory on the work directory's disk for each restore onto disk. They are
    deleted when the next dataset starts, not between runs: ext4 without a journal skips
    inodes deleted in the last minutes when it allocates new ones, so a restore that
    follows the deletion of the previous one's files pays seconds for it."""
    DISK_RUNS[0] += 1
    return os.path.join(a.work, "disk-restores", f"run-{DISK_RUNS[0]}")


COPY_WAYS = ["cp", 2, 4, 8]


def copy_once(a, r, path, how):
    """`cp -a` or a plain parallel copy (`how` threads) of the tree onto the disk, as a
    restore writes it."""
    dst = disk_dir(a)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    subprocess.run(["sync"], check=True)
    if how == "cp":
        return r.timed(["cp", "-a", path, dst])
    return r.timed([a.data_gen, "copy", path, dst, str(how)])


def onto_disk(a, r, name, path):
    """Every tool's restore onto the disk and every way of copying the tree there,
    interleaved run by run, so that all meet the disk in the same state (an earlier
    version measured the copies first, minutes apart from the restores). Returns each
    tool's median run, and the fastest copy (by median): the disk's own limit."""
    runs = {k: [] for k in TOOLS + COPY_WAYS}
    for _ in range(max(1, a.repeat)):
        for tool in TOOLS:
            runs[tool].append(r.restore(tool, name, disk_dir(a), keep=True))
        for how in COPY_WAYS:
            runs[how].append(copy_once(a, r, path, how))
    mid = {k: median_of(v) for k, v in runs.items()}
    how = min(COPY_WAYS, key=lambda h: mid[h][0])
    return ({t: mid[t] for t in TOOLS},
            ("`cp -a`" if how == "cp" else f"copy, {how} threads", mid[how]))


def warm(path):
    """Read a tree once so that its files are in the page cache."""
    subprocess.run(["sh", "-c", f"tar -cf - -C '{path}' . | cat > /dev/null"], check=True)


def median(step, n):
    """Run a timed step n times; the run with the median wall time. The machine is shared:
    one slow outlier should not decide a ratio, and neither should one fast one."""
    return median_of([step() for _ in range(max(1, n))])


def median_of(runs):
    """Of timed runs, the one with the median wall time."""
    runs = sorted(runs, key=lambda t: t[0])
    return runs[len(runs) // 2]


def fmt_ratio(x):
    return "n/a" if x is None else f"{x:.2f}x"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arca", required=True)
    p.add_argument("--restic", required=True)
    p.add_argument("--rustic", default=None)
    p.add_argument("--peers", default="restic,rustic",
                   help="which peers to run (a partial run says so in the report)")
    p.add_argument("--data-gen", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--real", default=None, help="a real software tree (default: the Rust toolchain)")
    p.add_argument("--quick", action="store_true", help="small data, for a smoke run")
    p.add_argument("--out", default=None)
    p.add_argument("--repeat", type=int, default=3,
                   help="run each timed step this many times and keep the median (default 3)")
    p.add_argument("--restore-on-disk", action="store_true",
                   help="block volumes: restore into the work directory rather than tmpfs "
                        "(trees are restored both into tmpfs and onto the disk)")
    p.add_argument("--only", choices=["trees", "block"], default=None,
                   help="run one part; the other part of --out is kept as it was")
    p.add_argument("--block-bytes", type=int, default=None,
                   help="size of the disk image for the block table (default 4 GiB; 256 MiB with --quick)")
    a = p.parse_args()
    peers = [x for x in a.peers.split(",") if x]
    if any(x not in ALL_PEERS for x in peers) or not peers:
        sys.exit(f"--peers {a.peers}: choose from {','.join(ALL_PEERS)}")
    if "rustic" in peers and not a.rustic:
        sys.exit("--rustic is required when rustic is a peer")
    PEERS[:] = peers
    TOOLS[:] = ["arca"] + peers
    os.makedirs(a.work, exist_ok=True)
    r = Runner(a)

    gib = 1 << 30
    mixed_bytes = 64 << 20 if a.quick else gib
    small_files = 5_000 if a.quick else 200_000
    datasets = []
    real = a.real
    if real is None:
        rustup = os.path.expanduser("~/.rustup/toolchains")
        cands = sorted(os.path.join(rustup, d) for d in os.listdir(rustup)) if os.path.isdir(rustup) else []
        cands = [c for c in cands if "stable" in c] or cands
        real = cands[0] if cands else "/usr/lib"
        if a.quick and os.path.isdir("/usr/share/doc"):
            real = "/usr/share/doc"
    datasets.append(("real", real, True))
    if a.only == "block":
        datasets.clear()
    # Named by their parameters: a quick run's small data is never taken for the full one.
    gen = os.path.join(a.work, f"data-mixed-{mixed_bytes >> 20}M")
    if a.only == "block":
        pass
    elif not os.path.isdir(gen):
        log(f"generating {mixed_bytes >> 20} MiB of mixed data")
        subprocess.run([a.data_gen, "generate", gen, "mixed", str(mixed_bytes)], check=True, stdout=subprocess.DEVNULL)
    if a.only != "block":
        datasets.append(("generated", gen, True))
    small = os.path.join(a.work, f"data-small-{small_files}")
    if a.only == "block":
        pass
    elif not os.path.isdir(small):
        log(f"generating {small_files} small files")
        subprocess.run([a.data_gen, "generate", small, "small", "0", str(small_files)], check=True,
                       stdout=subprocess.DEVNULL)
    if a.only != "block":
        datasets.append(("small files", small, False))

    results = {}  # (ds, step, tool) -> (wall, cpu, rss)
    sizes = {}  # (ds, tool) -> bytes
    info = {}
    limits = {}
    for name, path, similar in datasets:
        # The previous dataset's trees on the disk (one run's worth would not fit): many
        # minutes of backups follow before anything is written onto the disk again.
        shutil.rmtree(os.path.join(a.work, "disk-restores"), ignore_errors=True)
        files, size = count_files(path), du(path)
        info[name] = (path, files, size)
        log(f"{name}: {path}, {files} files, {size / (1 << 20):.0f} MiB")
        # Warm the page cache, then the box's limits.
        warm(path)
        limits[(name, "read")] = median(lambda: r.timed(f"tar -cf - -C '{path}' . | cat > /dev/null",
                                                        shell=True), a.repeat)
        limits[(name, "zstd")] = median(lambda: r.timed(
            f"tar -cf - -C '{path}' . | zstd -T0 -3 -q -c > /dev/null", shell=True), a.repeat)
        second = None
        if similar:
            tag = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:12]
            second = os.path.join(a.work, f"similar-{name.replace(' ', '-')}-{tag}")
            if not os.path.isdir(second):
                log(f"{name}: a similar tree (a copy with 1% of the files edited)")
                shutil.copytree(path, second, symlinks=True)
                subprocess.run([a.data_gen, "mutate", second, "100", "200", "5"], check=True, stdout=subprocess.DEVNULL)
        for tool in TOOLS:
            log(f"{name}: {tool}")
            warm(path)

            def first():
                r.init(tool, name)
                return r.backup(tool, name, path)

            results[(name, "first backup", tool)] = median(first, a.repeat)
            sizes[(name, tool)] = du(r.repo(tool, name))
            results[(name, "unchanged re-backup", tool)] = median(lambda: r.backup(tool, name, path), a.repeat)
            target = restore_dir(a, size)
            results[(name, "restore", tool)] = median(lambda: r.restore(tool, name, target), a.repeat)
        log(f"{name}: onto the disk, every tool and the plain copies in turn")
        warm(path)
        per_tool, limits[(name, "copy")] = onto_disk(a, r, name, path)
        for tool in TOOLS:
            results[(name, "restore onto disk", tool)] = per_tool[tool]
            # Last: it adds the snapshot that `latest` would restore.
            if second:
                # Warm for every tool alike: the first to run would otherwise read it cold.
                warm(second)
                results[(name, "similar tree", tool)] = r.backup(tool, name, second)
            shutil.rmtree(r.repo(tool, name), ignore_errors=True)

    shutil.rmtree(os.path.join(a.work, "disk-restores"), ignore_errors=True)
    block = None if a.only == "trees" else run_block(a, r)
    report = render(a, info, results, sizes, limits) if info else None
    old = open(a.out).read() if a.out and os.path.exists(a.out) else ""
    if report is None:
        # Only the block part ran: keep the tree report that is there.
        report = old.split(BLOCK_MARK)[0].rstrip("\n") + "\n" if old else "# Benchmarks\n"
    if block is None:
        block = (BLOCK_MARK + old.split(BLOCK_MARK, 1)[1]) if BLOCK_MARK in old else ""
    # The Kubernetes section is written by its own benchmark (a test against the test
    # clusters): kept as it is, at the end.
    k8s = (K8S_MARK + old.split(K8S_MARK, 1)[1]) if K8S_MARK in old else ""
    if block:
        block = block.split(K8S_MARK)[0].rstrip("\n") + "\n"
    report = report.split(K8S_MARK)[0]
    report = report.rstrip("\n") + "\n\n" + block if block else report
    report = report.rstrip("\n") + "\n\n" + k8s if k8s else report
    print(report)
    if a.out:
        with open(a.out, "w") as f:
            f.write(report)
        log(f"written to {a.out}")


BLOCK_MARK = "<!-- block volumes: benches/scripts/compare.sh --only block -->"
K8S_MARK = "<!-- kubernetes: cargo test -p arca --test k8s -- --ignored bench_volume_data -->"


def run_block(a, r):
    """A disk image backed up, backed up again after 1 % in-place writes, and restored, by
    every tool; the box's limits on the same image. Returns the report section."""
    size = a.block_bytes or ((256 << 20) if a.quick else (4 << 30))
    r.image_size = size
    image = os.path.join(a.work, f"image-{size >> 20}M.img")
    if not os.path.exists(image):
        log(f"block: generating a {size >> 20} MiB disk image")
        subprocess.run([a.data_gen, "image", image + ".tmp", str(size)], check=True, stdout=subprocess.DEVNULL)
        os.rename(image + ".tmp", image)
    changed = os.path.join(a.work, f"image-{size >> 20}M-changed.img")
    if not os.path.exists(changed):
        log("block: a copy with 1 % written in place")
        subprocess.run(["cp", image, changed + ".tmp"], check=True)
        subprocess.run([a.data_gen, "scribble", changed + ".tmp", "1"], check=True, stdout=subprocess.DEVNULL)
        os.rename(changed + ".tmp", changed)
    target = restore_dir(a, 2 * size)
    res, sizes, added = {}, {}, {}
    lim = {}
    # Page cache warm, as for the trees: the image and its changed copy fit in memory.
    warm_file = lambda f: subprocess.run(["sh", "-c", f"cat '{f}' > /dev/null"], check=True)
    warm_file(image)
    lim["read"] = median(lambda: r.timed(f"dd if='{image}' of=/dev/null bs=1M status=none", shell=True), a.repeat)
    lim["zstd"] = median(lambda: r.timed(
        f"dd if='{image}' bs=1M status=none | zstd -T0 -3 -q -c > /dev/null", shell=True), a.repeat)

    def write_limit(where, how):
        shutil.rmtree(where, ignore_errors=True)
        os.makedirs(where)
        t = r.timed(f"dd if='{image}' of='{where}/volume.img' status=none {how}", shell=True)
        shutil.rmtree(where, ignore_errors=True)
        return t
    lim["write"] = median(lambda: write_limit(target, "bs=1M conv=fsync"), a.repeat)
    # Onto the disk, the faster of through the page cache and past it.
    disk_ways = {"`dd bs=1M conv=fsync`": "bs=1M conv=fsync", "`dd bs=4M oflag=direct`": "bs=4M oflag=direct"}
    lim["disk"] = min(((median(lambda: write_limit(disk_dir(a), how), a.repeat), name)
                       for name, how in disk_ways.items()), key=lambda x: x[0][0])
    for tool in TOOLS:
        log(f"block: {tool}")
        warm_file(image)

        def first():
            r.init(tool, "block")
            return r.backup_image(tool, "block", image)
        res[("first backup", tool)] = median(first, a.repeat)
        sizes[tool] = du(r.repo(tool, "block"))
        # Once: a second run would find the changes already stored.
        warm_file(changed)
        res[("after 1 % written", tool)] = r.backup_image(tool, "block", changed)
        added[tool] = du(r.repo(tool, "block")) - sizes[tool]
        res[("restore", tool)] = median(lambda: r.restore_image(tool, "block", target), a.repeat)
        res[("restore onto disk", tool)] = median(lambda: r.restore_image(tool, "block", disk_dir(a)), a.repeat)
        shutil.rmtree(r.repo(tool, "block"), ignore_errors=True)

    out = [BLOCK_MARK, "", "## Block volumes\n"]
    out.append(f"A {size >> 20} MiB disk image (`arca-bench-data image`: regions of 256 KiB to 8 MiB, about "
               "30 % zeros written out, the rest half text, half random), then a copy of it with 1 % of its "
               "bytes rewritten in place (`arca-bench-data scribble`: runs of 4-64 KiB at random 4 KiB-aligned "
               "offsets). arca: `arca snapshot create --block IMAGE`, `arca snapshot restore latest --target "
               "FILE`; restic: `restic backup --stdin --stdin-filename volume.img < IMAGE`, `restic restore "
               "latest --target DIR`; rustic: `rustic backup --force --stdin-filename volume.img - < IMAGE` (without `--force`, rustic "
               "0.11 takes standard input for unchanged when it has a parent, reads nothing and keeps the old "
               "content), "
               f"`rustic restore latest DIR`. Restores into {' and '.join(sorted(RESTORE_DIRS))}, and onto the "
               "disk (ext4) of the work directory, into a new directory each time, each tool's repository read "
               "into the page cache first; arca syncs the image before it ends (restic and rustic do not). "
               f"Run {a.repeat} times, median shown; the backup after the change runs once.\n")
    out.append(f"| step | {' | '.join(TOOLS)} | arca / best peer |")
    out.append("|---|" + "---|" * len(TOOLS) + "---:|")
    for step in ["first backup", "after 1 % written", "restore", "restore onto disk"]:
        row = [res[(step, t)] for t in TOOLS]
        best = min(x[0] for x in row[1:])
        out.append(f"| {step} | {' | '.join(f'{w:.1f} / {c:.1f} / {m:.0f}' for (w, c, m, *_) in row)} | "
                   f"{fmt_ratio(row[0][0] / best)} |")
    out.append(f"| repository size (MiB) | {' | '.join(f'{sizes[t] / (1 << 20):.0f}' for t in TOOLS)} | "
               f"{fmt_ratio(sizes['arca'] / min(sizes[t] for t in PEERS))} |")
    out.append(f"| added by the change (MiB) | {' | '.join(f'{added[t] / (1 << 20):.1f}' for t in TOOLS)} | "
               f"{fmt_ratio(added['arca'] / max(1, min(added[t] for t in PEERS)))} |")
    out.append("")
    out.append("Wall / CPU seconds / peak RSS MiB. The box's limits on the same image: "
               f"`dd … of=/dev/null` {lim['read'][0]:.1f} s, `dd … | zstd -T0 -3` {lim['zstd'][0]:.1f} s, "
               f"`dd … of=FILE conv=fsync` {lim['write'][0]:.1f} s (where restores go), onto the disk "
               f"{lim['disk'][0][0]:.1f} s (the faster of `dd bs=1M conv=fsync` and `dd bs=4M oflag=direct`: "
               f"{lim['disk'][1]}).\n")
    ratio = lambda step: res[(step, "arca")][0] / min(res[(step, t)][0] for t in PEERS)
    mark = lambda b: "yes" if b else "**no**"
    rows = [("first backup ≤ 0.4x best peer", ratio("first backup"), 0.4),
            ("after 1 % written ≤ 0.3x best peer", ratio("after 1 % written"), 0.3),
            ("restore ≤ 0.5x best peer", ratio("restore"), 0.5),
            ("first backup ≤ 1.3x `dd \\| zstd -T0 -3`", res[("first backup", "arca")][0] / lim["zstd"][0], 1.3),
            ("after 1 % written ≤ 1.3x `dd` read", res[("after 1 % written", "arca")][0] / lim["read"][0], 1.3),
            ("restore onto disk ≤ 0.5x best peer", ratio("restore onto disk"), 0.5),
            ("restore ≤ 1.3x `dd` write", res[("restore", "arca")][0] / lim["write"][0], 1.3),
            ("restore onto disk ≤ 1.3x `dd` write onto disk",
             res[("restore onto disk", "arca")][0] / lim["disk"][0][0], 1.3)]
    out.append("| target | measured | met |")
    out.append("|---|---:|---|")
    for label, v, limit in rows:
        out.append(f"| {label} | {fmt_ratio(v)} | {mark(v <= limit)} |")
    peak = max(res[(s, "arca")][2] for s in ["first backup", "after 1 % written", "restore", "restore onto disk"])
    out.append(f"| peak RSS ≤ 256 MiB | {peak:.0f} MiB | {mark(peak <= 256)} |")
    out.append("")
    return "\n".join(out) + "\n"


def render(a, info, results, sizes, limits):
    def ver(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except Exception:  # noqa: BLE001 - a missing version is not worth failing over
            return "?"

    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    out = []
    out.append("# Benchmarks\n")
    out.append("Generated by `benches/scripts/compare.sh` (do not edit by hand). One run; the machine is\n"
               "shared and noisy, so read ratios, not absolute times.\n")
    out.append(f"- Machine: {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {platform.platform()}")
    out.append(f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    vers = [f"arca: `{ver([a.arca, '--version'])}`"]
    if "restic" in PEERS:
        vers.append(f"restic: `{ver([a.restic, 'version'])}`")
    if "rustic" in PEERS:
        vers.append(f"rustic: `{ver([a.rustic, '--version'])}`")
    out.append("- " + "; ".join(vers))
    missing = [p for p in ALL_PEERS if p not in PEERS]
    if missing:
        out.append(f"- **Partial run: {', '.join(missing)} not run**, so ratios are against "
                   f"{', '.join(PEERS)} alone and the targets are not judged complete.")
    if a.quick:
        out.append("- **Quick run (small data)**: a smoke run, not the record the targets ask for.")
    out.append("- Page cache warm (each tree read before each tool's run); repositories on local disk; "
               f"restores into {' and '.join(sorted(RESTORE_DIRS)) or '?'}, and onto the disk "
               "(ext4) of the work directory, each into a new directory, `sync` before each.")
    out.append(f"- Each timed step (and each limit) run {a.repeat} times; the table shows the run with "
               "the median wall time. The similar-tree backup runs once (a second run would have "
               "the first as its parent).")
    out.append("")
    out.append("## Commands\n")
    out.append("Regenerate with `benches/scripts/compare.sh` (`--quick` for a smoke run, `--real DIR` for "
               "another tree, `--repeat N`). Each tool, with its password in the environment:\n")
    out.append("| step | arca | restic | rustic |")
    out.append("|---|---|---|---|")
    out.append("| init | `arca --repo R repo init` | `restic --repo R init --repository-version 2` "
               "| `rustic --repository R init` |")
    out.append("| backup | `arca --repo R -q snapshot create DIR` | `restic --repo R -q backup DIR` "
               "| `rustic --repository R --no-progress backup DIR` |")
    out.append("| restore | `arca --repo R -q snapshot restore latest --target T` "
               "| `restic --repo R -q restore latest --target T` "
               "| `rustic --repository R --no-progress restore latest T` |")
    out.append("")
    out.append("Limits: `tar -cf - -C DIR . | zstd -T0 -3 -q -c > /dev/null` and "
               "`tar -cf - -C DIR . | cat > /dev/null`. Times from `/usr/bin/time` (wall, user + "
               "system, maximum RSS); repository size is the directory's disk usage after the first "
               "backup. Each tool keeps its cache in the work directory.\n")
    out.append("## Data\n")
    out.append("| dataset | path | files | size |")
    out.append("|---|---|---:|---:|")
    for name, (path, files, size) in info.items():
        out.append(f"| {name} | `{path}` | {files} | {size / (1 << 20):.0f} MiB |")
    out.append("")
    out.append("## Results\n")
    out.append("Wall / CPU seconds (of which system) / peak RSS in MiB. Ratio: arca's wall time over the best "
               "peer's.\n")
    out.append(f"| dataset | step | {' | '.join(TOOLS)} | arca / best peer |")
    out.append("|---|---|" + "---|" * len(PEERS) + "---|---:|")
    steps = ["first backup", "unchanged re-backup", "similar tree", "restore", "restore onto disk"]
    for name in info:
        for step in steps:
            row = [results.get((name, step, t)) for t in TOOLS]
            if row[0] is None:
                continue
            cells = [f"{w:.1f} / {c:.1f} ({sy:.1f}) / {m:.0f}" for (w, c, m, sy) in row]
            best = min(x[0] for x in row[1:])
            out.append(f"| {name} | {step} | {' | '.join(cells)} | {fmt_ratio(row[0][0] / best)} |")
        s = [sizes[(name, t)] for t in TOOLS]
        out.append(f"| {name} | repository size (MiB) | {' | '.join(f'{x / (1 << 20):.0f}' for x in s)} | "
                   f"{fmt_ratio(s[0] / min(s[1:]))} |")
    out.append("")
    out.append("## The box's own limits\n")
    out.append("| dataset | `tar \\| zstd -T0 -3` | `tar \\| cat` (read) | copy onto disk (fastest) | "
               "arca first backup / zstd | arca unchanged / read | arca restore onto disk / copy |")
    out.append("|---|---:|---:|---:|---:|---:|---:|")
    for name in info:
        # Floors: a tiny tree can read in "0.0 s".
        z, rd = max(limits[(name, "zstd")][0], 0.01), max(limits[(name, "read")][0], 0.01)
        fb = results[(name, "first backup", "arca")][0]
        un = results[(name, "unchanged re-backup", "arca")][0]
        how, cp = limits[(name, "copy")]
        rd_disk = results[(name, "restore onto disk", "arca")][0]
        out.append(f"| {name} | {z:.1f} s | {rd:.1f} s | {cp[0]:.1f} s ({cp[3]:.1f} s system; {how}) | "
                   f"{fmt_ratio(fb / z)} | {fmt_ratio(un / rd)} | {fmt_ratio(rd_disk / cp[0])} |")
    out.append("")
    out.append("Copy onto disk: the fastest of `cp -a` and `arca-bench-data copy SRC DST N` (a plain "
               "parallel copy: N threads each creating a file, writing it, and setting its owner, mode "
               "and times, as a restore does) with 2, 4 and 8 threads, into a new directory; by median, "
               "each run taken in turn with the tools' restores onto the disk, so that all meet the disk "
               "in the same state.\n")
    out.append("## Targets\n")
    out.append("The issue's bar is every target met on the real tree; the worst of all datasets is "
               "shown beside it. The small-files target is judged on the small-files dataset.\n")
    out.append("| target | real data | worst dataset | met (real) | met (all) |")
    out.append("|---|---|---|---|---|")
    real = "real" if "real" in info else next(iter(info))

    def vs_peers(name, step):
        row = [results.get((name, step, t)) for t in TOOLS]
        return None if row[0] is None else row[0][0] / min(x[0] for x in row[1:])

    def line(label, per, limit, fmt=fmt_ratio, higher_is_better=False):
        vals = {n: v for n, v in per.items() if v is not None}
        if not vals:
            return
        ok = (lambda v: v >= limit) if higher_is_better else (lambda v: v <= limit)
        r = vals.get(real)
        w = (min if higher_is_better else max)(vals.values())
        mark = lambda b: "yes" if b else "**no**"
        out.append(f"| {label} | {fmt(r) if r is not None else 'n/a'} | {fmt(w)} | "
                   f"{mark(ok(r)) if r is not None else 'n/a'} | {mark(ok(w))} |")

    for label, step, limit in [("first backup ≤ 0.4x", "first backup", 0.4),
                               ("unchanged re-backup ≤ 0.3x", "unchanged re-backup", 0.3),
                               ("similar tree ≤ 0.4x", "similar tree", 0.4),
                               ("restore ≤ 0.5x", "restore", 0.5),
                               ("restore onto disk ≤ 0.5x", "restore onto disk", 0.5)]:
        line(label, {n: vs_peers(n, step) for n in info}, limit)
    line("restore onto disk: system time ≤ the best peer's",
         {n: results[(n, "restore onto disk", "arca")][3]
          / max(0.01, min(results[(n, "restore onto disk", t)][3] for t in PEERS)) for n in info}, 1.0)
    if "small files" in info:
        line("small files onto disk ≤ 1.2x the fastest copy",
             {"small files": results[("small files", "restore onto disk", "arca")][0]
              / limits[("small files", "copy")][1][0]}, 1.2)
    line("restore peak RSS ≤ 256 MiB", {n: max(results[(n, s, "arca")][2] for s in ["restore", "restore onto disk"])
                                        for n in info}, 256,
         fmt=lambda v: f"{v:.0f} MiB")
    line("repository size ≤ 1.0x",
         {n: sizes[(n, "arca")] / min(sizes[(n, t)] for t in PEERS) for n in info}, 1.0)
    if "small files" in info:
        files = info["small files"][1]
        fps = {t: files / results[("small files", "first backup", t)][0] for t in TOOLS}
        ratio = fps["arca"] / max(fps[t] for t in PEERS)
        line("small files ≥ 2.5x files/s", {"small files": ratio}, 2.5,
             fmt=lambda v: f"{fps['arca']:.0f} files/s, {v:.2f}x", higher_is_better=True)
    line("first backup ≤ 1.3x `tar \\| zstd -T0 -3`",
         {n: results[(n, "first backup", "arca")][0] / max(limits[(n, "zstd")][0], 0.01) for n in info},
         1.3)
    line("unchanged re-backup ≤ 1.3x reading the files",
         {n: results[(n, "unchanged re-backup", "arca")][0] / max(limits[(n, "read")][0], 0.01)
          for n in info}, 1.3)
    out.append("")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
