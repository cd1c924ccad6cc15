#!/usr/bin/env bash
# Measure how chunk-size parameters trade dedup against index size, on real data:
# a tar of a real directory (default /usr/share), then the same tar after a realistic edit
# (30 files changed by small insertions, 10 deleted, 10 added). For each MIN,AVG,MAX it
# reports the chunks of the first backup (index entries) and the bytes the second backup
# added. Results go into spec/FORMAT.md section 9 and BENCHMARKS.md.
#   benches/scripts/chunk-sizes.sh [DIR] [MAX_MB]
set -euo pipefail
cd "$(dirname "$0")/../.."
src="${1:-/usr/share}"
max_mb="${2:-400}"
cargo build -q --release -p arca
arca="$PWD/target/release/arca"
work="$(mktemp -d "${TMPDIR:-/tmp}/arca-chunks.XXXXXX")"
trap 'rm -rf "$work"' EXIT

python3 - "$src" "$work" "$max_mb" <<'PY'
import os, random, sys, tarfile, io
src, work, max_mb = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = []
total = 0
for d, _, names in os.walk(src):
    for n in sorted(names):
        p = os.path.join(d, n)
        if os.path.isfile(p) and not os.path.islink(p):
            try:
                size = os.path.getsize(p)
                with open(p, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            files.append((os.path.relpath(p, src), data))
            total += size
            if total > max_mb << 20:
                break
    if total > max_mb << 20:
        break
def write(path, entries):
    with tarfile.open(path, "w") as t:
        for name, data in entries:
            info = tarfile.TarInfo(name); info.size = len(data); info.mtime = 0
            t.addfile(info, io.BytesIO(data))
os.makedirs(f"{work}/v1"); os.makedirs(f"{work}/v2")
write(f"{work}/v1/data.tar", files)
rng = random.Random(42)
v2 = list(files)
for i in rng.sample(range(len(v2)), min(30, len(v2))):
    name, data = v2[i]
    at = rng.randrange(len(data) + 1)
    v2[i] = (name, data[:at] + b"an edit of a few bytes" + data[at:])
for i in sorted(rng.sample(range(len(v2)), min(10, len(v2))), reverse=True):
    del v2[i]
for k in range(10):
    v2.insert(rng.randrange(len(v2)), (f"added/{k}", rng.randbytes(20000)))
write(f"{work}/v2/data.tar", v2)
print(f"dataset: {len(files)} files of {src}, {total/2**20:.0f} MiB as one tar", file=sys.stderr)
PY

printf '%-28s %12s %14s %14s\n' "min/avg/max" "chunks" "v1 stored" "v2 added"
for sizes in 131072,262144,1048576 262144,524288,2097152 524288,1048576,8388608 1048576,2097152,8388608 2097152,4194304,8388608; do
  repo="$work/repo-$sizes"
  export ARCA_REPOSITORY="$repo" ARCA_PASSWORD=x ARCA_CACHE_DIR="$work/cache"
  "$arca" repo init -q --chunk-sizes "$sizes"
  cp "$work/v1/data.tar" "$work/cur.tar"
  v1=$("$arca" snapshot create "$work/cur.tar" --json)
  cp "$work/v2/data.tar" "$work/cur.tar"
  v2=$("$arca" snapshot create "$work/cur.tar" --json)
  python3 - "$sizes" "$v1" "$v2" <<'PY'
import json, sys
sizes, a, b = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
s1, s2 = a["snapshot"]["summary"], b["snapshot"]["summary"]
mn, av, mx = (int(x) >> 10 for x in sizes.split(","))
print(f"{mn:>5}K/{av:>5}K/{mx:>5}K        {s1['data_blobs']:>12} {s1['bytes_stored']/2**20:>11.1f} MiB {s2['bytes_added']/2**20:>11.1f} MiB")
PY
done
