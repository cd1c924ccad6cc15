//! proptest strategies for the format's values, shared by the round-trip and tamper tests.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use arca_format::*;
use proptest::collection::vec;
use proptest::prelude::*;

pub fn keys() -> Keys {
    MasterKey::from_bytes([7u8; 32]).derive()
}

pub fn timestamp() -> impl Strategy<Value = Timestamp> {
    (any::<i64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Timestamp::new(s, n))
}

pub fn blob_id() -> impl Strategy<Value = BlobId> {
    any::<[u8; 32]>().prop_map(BlobId)
}

pub fn name() -> impl Strategy<Value = Vec<u8>> {
    // Any bytes but NUL and '/', including invalid UTF-8 and newlines.
    vec(
        any::<u8>().prop_filter("no NUL or /", |b| *b != 0 && *b != b'/'),
        1..40,
    )
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

pub fn node_kind() -> impl Strategy<Value = NodeKind> {
    prop_oneof![
        (vec(blob_id(), 0..5), any::<bool>())
            .prop_map(|(content, sparse)| NodeKind::File { content, sparse }),
        blob_id().prop_map(|subtree| NodeKind::Dir { subtree }),
        vec(any::<u8>(), 0..64).prop_map(|target| NodeKind::Symlink { target }),
        Just(NodeKind::Fifo),
        Just(NodeKind::Socket),
        any::<u64>().prop_map(|rdev| NodeKind::CharDevice { rdev }),
        any::<u64>().prop_map(|rdev| NodeKind::BlockDevice { rdev }),
    ]
}

pub fn node() -> impl Strategy<Value = Node> {
    (
        name(),
        node_kind(),
        (any::<u32>(), any::<u32>(), any::<u32>(), ".{0,8}", ".{0,8}"),
        (timestamp(), timestamp(), proptest::option::of(timestamp())),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        vec((vec(1u8..=255, 1..16), vec(any::<u8>(), 0..32)), 0..4),
        proptest::option::of(".{1,20}"),
    )
        .prop_map(
            |(
                name,
                kind,
                (mode, uid, gid, user, group),
                (mtime, ctime, atime),
                (size, inode, device, links),
                xattrs,
                damage,
            )| {
                let mut xattrs: Vec<Xattr> = xattrs
                    .into_iter()
                    .map(|(name, value)| Xattr { name, value })
                    .collect();
                xattrs.sort();
                xattrs.dedup_by(|a, b| a.name == b.name);
                Node {
                    name,
                    kind,
                    mode,
                    uid,
                    gid,
                    user,
                    group,
                    mtime,
                    ctime,
                    atime,
                    size,
                    inode,
                    device,
                    links,
                    xattrs,
                    damage,
                }
            },
        )
}

pub fn tree() -> impl Strategy<Value = Tree> {
    (vec(node(), 0..12), proptest::option::of(blob_id())).prop_map(|(mut nodes, next)| {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes.dedup_by(|a, b| a.name == b.name);
        Tree { nodes, next }
    })
}

pub fn blob_type() -> impl Strategy<Value = BlobType> {
    prop_oneof![
        Just(BlobType::Data),
        Just(BlobType::Tree),
        Just(BlobType::ExtentList)
    ]
}

pub fn index_pack() -> impl Strategy<Value = IndexPack> {
    (
        any::<[u8; 32]>(),
        any::<bool>(),
        proptest::option::of(timestamp()),
        vec((blob_id(), 46u32..100_000, any::<u32>()), 0..20),
        proptest::option::of(timestamp()),
    )
        .prop_map(|(id, data, obsolete_since, blobs, obsolete_visible)| {
            let t = if data { BlobType::Data } else { BlobType::Tree };
            let mut offset = 0u32;
            let blobs: Vec<PackEntry> = blobs
                .into_iter()
                .map(|(id, length, raw_length)| {
                    let e = PackEntry {
                        blob_type: t,
                        id,
                        offset,
                        length,
                        raw_length,
                    };
                    offset += length;
                    e
                })
                .collect();
            IndexPack {
                id: PackId(id),
                size: offset as u64 + 100,
                obsolete_since,
                obsolete_visible,
                blobs,
            }
        })
}

pub fn index_file() -> impl Strategy<Value = IndexFile> {
    (
        vec(any::<[u8; 32]>().prop_map(IndexId), 0..4),
        vec(index_pack(), 0..6),
    )
        .prop_map(|(supersedes, packs)| IndexFile { supersedes, packs })
}

pub fn summary() -> impl Strategy<Value = Summary> {
    vec(any::<u64>(), 12).prop_map(|v| Summary {
        files_new: v[0],
        files_changed: v[1],
        files_unmodified: v[2],
        dirs_new: v[3],
        dirs_changed: v[4],
        dirs_unmodified: v[5],
        data_blobs: v[6],
        tree_blobs: v[7],
        bytes_processed: v[8],
        bytes_added: v[9],
        bytes_stored: v[10],
        errors: v[11],
    })
}

pub fn snapshot() -> impl Strategy<Value = Snapshot> {
    let root = prop_oneof![
        blob_id().prop_map(SnapshotRoot::Tree),
        (any::<u64>(), vec(blob_id(), 0..4))
            .prop_map(|(size, extent_lists)| SnapshotRoot::Volume(Volume { size, extent_lists })),
    ];
    (
        (timestamp(), timestamp(), ".{0,12}", ".{0,12}"),
        (vec(vec(any::<u8>(), 0..30), 0..3), vec(".{0,10}", 0..3)),
        proptest::collection::btree_map(".{0,10}", ".{0,10}", 0..3),
        proptest::option::of(any::<[u8; 32]>().prop_map(SnapshotId)),
        root,
        summary(),
        (
            ".{0,12}",
            proptest::option::of(any::<[u8; 32]>().prop_map(SnapshotId)),
        ),
    )
        .prop_map(
            |(
                (time, end_time, host, username),
                (paths, tags),
                labels,
                parent,
                root,
                summary,
                (program, original),
            )| {
                let labels: BTreeMap<String, String> = labels;
                Snapshot {
                    time,
                    end_time,
                    host,
                    username,
                    paths,
                    tags,
                    labels,
                    parent,
                    root,
                    summary,
                    program,
                    original,
                    top: None,
                }
            },
        )
}

pub fn extent_list() -> impl Strategy<Value = ExtentList> {
    vec((0u64..1 << 20, 1u32..1 << 20, blob_id()), 0..20).prop_map(|raw| {
        let mut offset = 0u64;
        let extents = raw
            .into_iter()
            .map(|(gap, length, id)| {
                let e = Extent {
                    offset: offset + gap,
                    length,
                    id,
                };
                offset = e.offset + length as u64;
                e
            })
            .collect();
        ExtentList { extents }
    })
}

pub fn chunker() -> impl Strategy<Value = ChunkerParams> {
    (32u32..=512 * 1024, 0u32..=3)
        .prop_flat_map(|(min_half, normalization)| {
            let min = min_half * 2;
            (
                Just(min),
                (min / 2).max(128)..=(2 << 20),
                Just(normalization),
            )
        })
        .prop_flat_map(|(min, avg_half, normalization)| {
            let avg = (avg_half * 2).max(min);
            (
                Just(min),
                Just(avg),
                (avg / 2).max(512)..=(8 << 20),
                Just(normalization),
            )
        })
        .prop_map(
            |(min_size, avg_size, max_half, normalization)| ChunkerParams {
                min_size,
                avg_size,
                max_size: (max_half * 2).max(avg_size),
                normalization,
            },
        )
}

pub fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        (-7i32..=22).prop_map(Compression::Zstd)
    ]
}

pub fn config() -> impl Strategy<Value = RepoConfig> {
    (
        any::<[u8; 16]>(),
        timestamp(),
        chunker(),
        compression(),
        (1u32 << 20)..=(1 << 30),
        (1u32 << 20)..=(1 << 30),
    )
        .prop_map(
            |(id, created, chunker, compression, data_pack_size, tree_pack_size)| RepoConfig {
                repo_id: RepoId(id),
                created,
                chunker,
                compression,
                data_pack_size,
                tree_pack_size,
            },
        )
}

/// Payloads that compress well, badly, or not at all.
pub fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..4096),
        (any::<u8>(), 0usize..20_000).prop_map(|(b, n)| vec![b; n]),
        vec(prop_oneof![Just(b'a'), Just(b'b'), any::<u8>()], 0..8192),
    ]
}
