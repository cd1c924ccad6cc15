#!/usr/bin/env bash
# Arca, restic and rustic side by side on the same data in the same run, and the box's own
# limits; writes BENCHMARKS.md. Installs what it needs when missing (restic and GNU time
# from Debian; rustic from crates.io into the cache), none of it into the product.
#
#   benches/scripts/compare.sh [--quick] [--real DIR] [--out FILE] [--peers restic,rustic]
#                              [--only trees|block] [--block-bytes N]
#
# --quick: small data (a smoke run, a few minutes); default: a real software tree (the
# Rust toolchain, ~1.4 GB, ~58k files), 1 GiB of generated data, 200,000 small files, and
# a 4 GiB disk image backed up as a block volume (restic and rustic read it from stdin).
set -euo pipefail
cd "$(dirname "$0")/../.."
cache="${ARCA_CACHE:-$HOME/.cache/arca}"
tools="$cache/tools"
sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_="sudo"
log() { printf '[compare] %s\n' "$*" >&2; }

missing=()
command -v restic >/dev/null || missing+=(restic)
[ -x /usr/bin/time ] || missing+=(time)
command -v zstd >/dev/null || missing+=(zstd)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} (Debian)"
  $sudo_ apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -q "${missing[@]}" >/dev/null
fi
peers="restic,rustic"
for ((i = 1; i <= $#; i++)); do [ "${!i}" = "--peers" ] && { j=$((i + 1)); peers="${!j}"; }; done
if [[ ",$peers," == *",rustic,"* ]] && [ ! -x "$tools/bin/rustic" ]; then
  log "installing rustic from crates.io into $tools (once, about 15 minutes)"
  cargo install rustic-rs --locked --root "$tools"
fi
log "building arca (release)"
cargo build -q --release --locked -p arca -p arca-benches --bin arca --bin arca-bench-data

work="${ARCA_BENCH_WORK:-${TMPDIR:-/tmp}/arca-compare}"
mkdir -p "$work"
args=(--out BENCHMARKS.md)
for a in "$@"; do [ "$a" = "--out" ] && args=(); done
python3 benches/scripts/compare.py \
  --arca "$PWD/target/release/arca" --restic "$(command -v restic)" --rustic "$tools/bin/rustic" \
  --data-gen "$PWD/target/release/arca-bench-data" --work "$work" "${args[@]}" "$@"
