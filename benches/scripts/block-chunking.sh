#!/usr/bin/env bash
# Which chunking suits block volumes: fixed aligned chunks of several sizes against FastCDC
# (the image backed up as one file), measured as users change disks: an ext4 file system
# of ${SIZE_MB:-1024} MiB filled with ~55 % files (text, random, a few large), then about
# 1 % of its bytes rewritten in place through the file system (runs of 4 KiB to 512 KiB;
# runs may overlap, so "changed" is approximate), then the second backup's added bytes.
# Needs root (loop mount).
# Usage: benches/scripts/block-chunking.sh   (prints a Markdown table)
set -euo pipefail
cd "$(dirname "$0")/../.."
size_mb="${SIZE_MB:-1024}"
# Bytes, not speed, are measured: any build will do (ARCA_BIN to give one).
if [ -z "${ARCA_BIN:-}" ]; then
  cargo build -q --workspace --locked
  ARCA_BIN="$PWD/target/debug/arca"
fi
arca="$ARCA_BIN"
work="$(mktemp -d "${TMPDIR:-/var/tmp}/arca-chunking.XXXXXX")"
mnt="$work/mnt"
trap 'umount "$mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
export ARCA_PASSWORD=bench ARCA_CACHE_DIR="$work/cache"
img="$work/disk.img"
truncate -s "${size_mb}M" "$img"
mkfs.ext4 -q -F "$img"
mkdir -p "$mnt"
mount -o loop "$img" "$mnt"
python3 - "$mnt" "$size_mb" <<'PY'
import os, random, sys
root, size = sys.argv[1], int(sys.argv[2]) << 20
rnd = random.Random(1)
words = [''.join(rnd.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rnd.randint(2, 9))) for _ in range(5000)]
total, i = 0, 0
while total < size * 0.55:
    d = os.path.join(root, f"d{i % 50:02d}")
    os.makedirs(d, exist_ok=True)
    kind = i % 10
    if kind < 6:   # text, 4 KiB - 256 KiB
        n = rnd.randint(4 << 10, 256 << 10)
        data = (' '.join(rnd.choice(words) for _ in range(n // 5))).encode()[:n]
    elif kind < 9: # random, 64 KiB - 2 MiB
        data = rnd.randbytes(rnd.randint(64 << 10, 2 << 20))
    else:          # large, 8 - 32 MiB
        data = rnd.randbytes(rnd.randint(8 << 20, 32 << 20))
    with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
        f.write(data)
    total += len(data)
    i += 1
PY
sync
umount "$mnt"
cp --sparse=always "$img" "$work/before.img"

change() {
  mount -o loop "$1" "$mnt"
  python3 - "$mnt" "$size_mb" <<'PY'
import os, random, sys
root, size = sys.argv[1], int(sys.argv[2]) << 20
rnd = random.Random(2)
files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs if 'lost+found' not in dp)
budget = size // 100
while budget > 0:
    p = rnd.choice(files)
    n = os.path.getsize(p)
    if n == 0:
        continue
    ln = min(n, rnd.randint(4 << 10, 512 << 10), budget)
    off = rnd.randrange(0, n - ln + 1) // 4096 * 4096
    k = min(ln, n - off)
    with open(p, "r+b") as f:
        f.seek(off)
        f.write(rnd.randbytes(k))
    budget -= k
PY
  sync
  umount "$mnt"
}

run() { # label, args...
  local label="$1"; shift
  cp --sparse=always "$work/before.img" "$img"
  export ARCA_REPOSITORY="$work/repo-$label"
  rm -rf "$ARCA_REPOSITORY" "$ARCA_CACHE_DIR"
  "$arca" -q repo init
  local first second
  first=$("$arca" snapshot create "$@" "$img" --json | python3 -c 'import json,sys; s=json.load(sys.stdin)["snapshot"]["summary"]; print(s["bytes_added"])')
  change "$img"
  second=$("$arca" snapshot create "$@" "$img" --json | python3 -c 'import json,sys; s=json.load(sys.stdin)["snapshot"]["summary"]; print(s["bytes_added"])')
  printf '| %s | %.0f MiB | %.1f MiB | %.2f %% of the changed bytes |\n' "$label" \
    "$(echo "$first / 1048576" | bc -l)" "$(echo "$second / 1048576" | bc -l)" \
    "$(echo "100 * $second / ($size_mb * 1048576 / 100)" | bc -l)"
}

echo "| chunking | first backup added | after 1 % rewritten in place | second backup vs change |"
echo "|---|---|---|---|"
for c in 65536 262144 1048576 4194304; do
  run "fixed-$((c / 1024))K" --block --chunk-size "$c"
done
run "fastcdc" --force
