//! `arca-engine` will own the repository: content-defined chunking, keyed hashing, dedup
//! against the index, packing, the local rocksdb index cache, snapshots of directory trees,
//! restore, storage through `object_store`, maintenance (GC, repack), check and retention.
//! It builds on the sans-IO encodings of `arca-format`.
