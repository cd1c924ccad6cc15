//! Throughput of each pipeline stage on one core, on half-compressible data: chunking,
//! keyed hashing, compression, sealing (compress + AES-256-GCM), pack writing, and the
//! index cache's insert and lookup at 1M and 10M entries.
//!
//!   cargo bench -p arca-benches --bench stages
//!   ARCA_BENCH_INDEX_10M=1 cargo bench -p arca-benches --bench stages -- index  # 10M too

// criterion's macros generate undocumented public items.
#![allow(missing_docs)]

use std::hint::black_box;

use arca_benches::{Rng, mixed};
use arca_engine::Chunker;
use arca_format::envelope::{self, Kind};
use arca_format::{
    BlobId, BlobType, ChunkerParams, Compression, IndexFile, IndexId, IndexPack, MasterKey,
    PackEntry, PackId, PackKind, PackWriter, RepoId,
};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const MIB: usize = 1 << 20;

fn data() -> Vec<u8> {
    mixed(&mut Rng::new(42), 64 * MIB)
}

fn stages(c: &mut Criterion) {
    let input = data();
    let keys = MasterKey::from_bytes([7; 32]).derive();
    let mut g = c.benchmark_group("stage");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(input.len() as u64));

    let chunker = Chunker::new(&ChunkerParams::default(), keys.chunker_seed());
    g.bench_function("chunk fastcdc 1MiB avg", |b| {
        b.iter(|| black_box(chunker.lengths(&input)))
    });

    g.bench_function("hash keyed blake3", |b| {
        b.iter(|| {
            for c in input.chunks(MIB) {
                black_box(keys.blob_id(BlobType::Data, c));
            }
        })
    });
    for level in [1, 3] {
        g.bench_function(format!("compress zstd {level}"), |b| {
            b.iter(|| {
                for c in input.chunks(MIB) {
                    black_box(zstd::bulk::compress(c, level).unwrap());
                }
            })
        });
    }
    g.bench_function("seal aes-256-gcm (no compression)", |b| {
        let mut out = Vec::with_capacity(MIB + 64);
        b.iter(|| {
            for c in input.chunks(MIB) {
                out.clear();
                envelope::seal_into(&keys, Kind::Data, b"", c, Compression::None, &mut out)
                    .unwrap();
                black_box(&out);
            }
        })
    });
    g.bench_function("seal zstd 3 + aes-256-gcm", |b| {
        let mut out = Vec::with_capacity(MIB + 64);
        b.iter(|| {
            for c in input.chunks(MIB) {
                out.clear();
                envelope::seal_into(&keys, Kind::Data, b"", c, Compression::Zstd(3), &mut out)
                    .unwrap();
                black_box(&out);
            }
        })
    });
    g.bench_function("pack write (hash + zstd 3 + seal + trailer)", |b| {
        b.iter(|| {
            let mut p = PackWriter::new(PackKind::Data, 80 * MIB);
            for c in input.chunks(MIB) {
                let id = keys.blob_id(BlobType::Data, c);
                p.add_blob(&keys, BlobType::Data, id, c, Compression::Zstd(3))
                    .unwrap();
            }
            black_box(p.finish(&keys).unwrap());
        })
    });
    g.finish();
}

/// An index file of `n` blobs in packs of 1000.
fn index_file(rng: &mut Rng, n: usize) -> (IndexFile, Vec<BlobId>) {
    let mut ids = Vec::with_capacity(n);
    let mut packs = Vec::new();
    for p in 0..n.div_ceil(1000) {
        let mut blobs = Vec::with_capacity(1000);
        for i in 0..1000.min(n - p * 1000) {
            let mut id = [0u8; 32];
            for c in id.chunks_mut(8) {
                c.copy_from_slice(&rng.next_u64().to_le_bytes());
            }
            let id = BlobId(id);
            ids.push(id);
            blobs.push(PackEntry {
                blob_type: BlobType::Data,
                id,
                offset: i as u32 * 1000,
                length: 1000,
                raw_length: 2000,
            });
        }
        let mut pid = [0u8; 32];
        pid[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
        packs.push(IndexPack {
            id: PackId(pid),
            size: 1_000_000,
            obsolete_since: None,
            obsolete_visible: None,
            blobs,
        });
    }
    (
        IndexFile {
            supersedes: vec![],
            packs,
        },
        ids,
    )
}

/// `n` known IDs, striding through them from `at` (a prime stride: no locality).
fn pick(known: &[BlobId], at: &mut usize, n: usize) -> Vec<BlobId> {
    (0..n)
        .map(|_| {
            *at = (*at + 7919) % known.len();
            known[*at]
        })
        .collect()
}

fn index(c: &mut Criterion) {
    let mut sizes = vec![1_000_000usize];
    if std::env::var_os("ARCA_BENCH_INDEX_10M").is_some() {
        sizes.push(10_000_000);
    }
    let mut g = c.benchmark_group("index");
    g.sample_size(10);
    for n in sizes {
        let mut rng = Rng::new(n as u64);
        let idx = arca_engine::bench::Index::temporary(RepoId([1; 16])).unwrap();
        let mut known = Vec::new();
        // Filled in index files of 100k entries, as many backups would leave it.
        for part in 0..n / 100_000 {
            let (f, ids) = index_file(&mut rng, 100_000);
            idx.ingest(IndexId([part as u8; 32]), &f).unwrap();
            known.extend(ids.into_iter().step_by(97));
        }
        g.throughput(Throughput::Elements(10_000));
        g.bench_function(format!("insert 10k into {}M", n / 1_000_000), |b| {
            let mut k = 0u32;
            b.iter_batched(
                || index_file(&mut rng, 10_000).0,
                |f| {
                    k += 1;
                    let mut id = [0xee; 32];
                    id[..4].copy_from_slice(&k.to_le_bytes());
                    idx.ingest(IndexId(id), &f).unwrap()
                },
                BatchSize::PerIteration,
            )
        });
        // Backups and restores look blobs up in sessions (one iterator re-seeked per
        // batch); a lookup on its own builds an iterator and costs far more.
        g.bench_function(format!("lookup 10k hits in {}M", n / 1_000_000), |b| {
            let mut at = 0;
            b.iter_batched(
                || pick(&known, &mut at, 10_000),
                |ids| {
                    let found = idx.lookup_batch(&ids).unwrap();
                    assert!(found.iter().all(Option::is_some), "known");
                    found
                },
                BatchSize::LargeInput,
            )
        });
        g.bench_function(format!("lookup 10k misses in {}M", n / 1_000_000), |b| {
            b.iter_batched(
                || {
                    (0..10_000)
                        .map(|_| {
                            let mut id = [0u8; 32];
                            id[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
                            BlobId(id)
                        })
                        .collect::<Vec<_>>()
                },
                |ids| idx.lookup_batch(&ids).unwrap(),
                BatchSize::LargeInput,
            )
        });
        g.throughput(Throughput::Elements(1_000));
        g.bench_function(
            format!("lookup 1k hits one by one in {}M", n / 1_000_000),
            |b| {
                let mut at = 0;
                b.iter_batched(
                    || pick(&known, &mut at, 1_000),
                    |ids| {
                        for id in &ids {
                            black_box(idx.lookup(id).unwrap().expect("known"));
                        }
                    },
                    BatchSize::LargeInput,
                )
            },
        );
    }
    g.finish();
}

criterion_group!(benches, stages, index);
criterion_main!(benches);
