#!/usr/bin/env python3
"""A second, independent reader of Arca format v1, written from spec/FORMAT.md alone.

It shares no code with arca-format: BLAKE3 from the `blake3` package, AES-GCM and Argon2id
from `cryptography`, zstd from `zstandard`, and a protobuf wire parser of its own. It reads
every file in spec/vectors/ and checks that the bytes mean what the vectors say, which is
evidence that the spec is complete enough to implement from. Exit status 0 when all pass.
"""

import json
import struct
import sys
from pathlib import Path

import blake3
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

VECTORS = Path(__file__).resolve().parent / "vectors"
CTX = "arca.dev 2026-11-22 repository v1 "


def h(s):
    return bytes.fromhex(s)


def derive(master):
    d = lambda name: blake3.blake3(master, derive_key_context=CTX + name).digest()
    return {
        1: d("data blob id"),
        2: d("tree blob id"),
        3: d("extent-list blob id"),
        "env": d("envelope key"),
        "seed": int.from_bytes(d("chunker seed")[:8], "little"),
    }


def blob_id(keys, blob_type, plain):
    return blake3.blake3(plain, key=keys[blob_type]).digest()


# --- protobuf wire format (section 1: proto3) -------------------------------------------

def varint(b, i):
    shift = value = 0
    while True:
        byte = b[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def fields(b):
    """Map field number -> list of raw values (ints for varints, bytes for lengths)."""
    out, i = {}, 0
    while i < len(b):
        key, i = varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = varint(b, i)
        elif wt == 2:
            n, i = varint(b, i)
            v, i = b[i:i + n], i + n
        elif wt == 1:
            v, i = b[i:i + 8], i + 8
        elif wt == 5:
            v, i = b[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wt}")
        out.setdefault(num, []).append(v)
    return out


def one(f, n, default=0):
    return f.get(n, [default])[-1]


def zigzag(v):
    return (v >> 1) ^ -(v & 1)


def ts(b):
    f = fields(b)
    return {"seconds": zigzag(one(f, 1)), "nanos": one(f, 2)}


# --- envelope (section 8) ---------------------------------------------------------------

def open_envelope(keys, kind, context, sealed):
    assert len(sealed) >= 46, "envelope too short"
    assert sealed[0] == kind, f"kind {sealed[0]} != {kind}"
    nonce = sealed[1:25]
    k = blake3.blake3(nonce, key=keys["env"]).digest()
    inner = AESGCM(k).decrypt(nonce[:12], sealed[25:], bytes([kind]) + context)
    payload, raw_len, comp = inner[:-5], struct.unpack("<I", inner[-5:-1])[0], inner[-1]
    if comp == 0:
        assert raw_len == len(payload)
        return payload
    assert comp == 1, f"compression {comp}"
    plain = zstandard.ZstdDecompressor().decompress(payload, max_output_size=raw_len)
    assert len(plain) == raw_len
    return plain


def check_keys(v):
    keys = derive(h(v["master_key"]))
    assert keys[1] == h(v["data_id_key"]) and keys[2] == h(v["tree_id_key"])
    assert keys[3] == h(v["extents_id_key"]) and keys["env"] == h(v["envelope_key"])
    assert str(keys["seed"]) == v["chunker_seed"]
    for c in v["blob_ids"]:
        assert blob_id(keys, c["blob_type"], h(c["plaintext"])) == h(c["id"])


def check_envelopes(v):
    keys = derive(h(v["master_key"]))
    for c in v["cases"]:
        sealed = h(c["sealed"])
        assert open_envelope(keys, c["kind"], h(c["context"]), sealed) == h(c["plaintext"]), c["name"]
        if not c["compressed"]:
            # Encode direction: seal with the given nonce and compare bytes.
            nonce = h(c["nonce"])
            k = blake3.blake3(nonce, key=keys["env"]).digest()
            plain = h(c["plaintext"])
            inner = plain + struct.pack("<I", len(plain)) + b"\x00"
            ct = AESGCM(k).encrypt(nonce[:12], inner, bytes([c["kind"]]) + h(c["context"]))
            assert bytes([c["kind"]]) + nonce + ct == sealed, c["name"]


def check_key_file(v):
    b = h(v["key_file"])
    assert blake3.blake3(b).digest() == h(v["key_id"])
    assert b[:8] == b"ARCAKEY\0" and struct.unpack("<I", b[8:12])[0] == 1
    assert blake3.blake3(b[:-32]).digest() == b[-32:], "checksum"
    f = fields(b[12:-32])
    assert one(f, 2) == 1, "argon2id"
    m, t, p = one(f, 3), one(f, 4), one(f, 5)
    assert [m, t, p] == v["kdf"]
    salt, nonce, wrapped, repo = one(f, 6, b""), one(f, 7, b""), one(f, 8, b""), one(f, 1, b"")
    kek = Argon2id(salt=salt, length=32, iterations=t, lanes=p, memory_cost=m).derive(v["password"].encode())
    assert kek == h(v["kek"])
    master = AESGCM(kek).decrypt(nonce, wrapped, repo)
    assert master == h(v["master_key"])
    assert one(f, 10, b"").decode() == v["host"] and ts(one(f, 9, b"")) == v["created"]


def check_config(v):
    keys = derive(h(v["master_key"]))
    b = h(v["bytes"])
    assert b[:8] == b"ARCACONF" and struct.unpack("<I", b[8:12])[0] == 1
    assert blake3.blake3(b[:-32]).digest() == b[-32:]
    repo = b[12:28]
    body = open_envelope(keys, 19, repo, b[28:-32])
    assert body == h(v["body"])
    f = fields(body)
    chunker = fields(one(f, 3, b""))
    c = v["config"]
    assert one(f, 1, b"") == repo == h(c["repo_id"])
    assert [one(chunker, 2), one(chunker, 3), one(chunker, 4), one(chunker, 5)] == c["chunker"]
    assert one(chunker, 1) == 1 and one(f, 4) == 1 and one(f, 7) == 1
    assert one(f, 8) == c["data_pack_size"] and one(f, 9) == c["tree_pack_size"]


def check_packs(v):
    keys = derive(h(v["master_key"]))
    for c in v["cases"]:
        b = h(c["pack"])
        assert blake3.blake3(b).digest() == h(c["pack_id"])
        assert b[-8:] == b"ARCApack"
        tlen = struct.unpack("<I", b[-12:-8])[0]
        start = len(b) - 12 - tlen
        plain = open_envelope(keys, 16, b"", b[start:len(b) - 12])
        count = struct.unpack("<I", plain[:4])[0]
        assert len(plain) == 4 + 41 * count
        offset = 0
        for i in range(count):
            rec = plain[4 + 41 * i: 4 + 41 * (i + 1)]
            t, length, raw = rec[0], *struct.unpack("<II", rec[1:9])
            bid = rec[9:41]
            e = c["entries"][i]
            assert (t, bid, offset, length, raw) == (e["blob_type"], h(e["id"]), e["offset"], e["length"], e["raw_length"])
            blob = open_envelope(keys, t, b"", b[offset:offset + length])
            assert blob == h(c["blobs"][i]["plaintext"]) and len(blob) == raw
            assert blob_id(keys, t, blob) == bid
            offset += length
        assert offset == start


def check_sealed(v, verify):
    keys = derive(h(v["master_key"]))
    for c in v["cases"]:
        sealed = h(c["sealed"])
        assert blake3.blake3(sealed).digest() == h(c["id"])
        plain = open_envelope(keys, v["kind"], b"", sealed)
        assert plain == h(c["plain"])
        verify(fields(plain), c["value"])


def verify_index(f, val):
    assert [x.hex() for x in f.get(1, [])] == val["supersedes"]
    packs = [fields(p) for p in f.get(2, [])]
    assert len(packs) == len(val["packs"])
    for pf, pv in zip(packs, val["packs"]):
        assert one(pf, 1, b"").hex() == pv["id"] and one(pf, 2) == pv["size"]
        assert (ts(one(pf, 3)) if 3 in pf else None) == pv["obsolete_since"]
        blobs = [fields(x) for x in pf.get(4, [])]
        got = [{"blob_type": one(x, 1), "id": one(x, 2, b"").hex(), "offset": one(x, 3),
                "length": one(x, 4), "raw_length": one(x, 5)} for x in blobs]
        assert got == pv["blobs"]


def verify_snapshot(f, val):
    assert ts(one(f, 1, b"")) == val["time"] and one(f, 3, b"").decode() == val["host"]
    assert [p.hex() for p in f.get(5, [])] == val["paths"]
    assert [t.decode() for t in f.get(6, [])] == val["tags"]
    labels = {fields(e)[1][0].decode(): fields(e)[2][0].decode() for e in f.get(7, [])}
    assert labels == val["labels"]
    assert (one(f, 8, b"").hex() or None) == val["parent"]
    assert (one(f, 9, b"").hex() or None) == val["tree"]
    if val["volume"]:
        vol = fields(one(f, 10))
        assert one(vol, 1) == val["volume"]["size"]
        assert [x.hex() for x in vol.get(2, [])] == val["volume"]["extent_lists"]
    summary = fields(one(f, 11, b""))
    assert [one(summary, n) for n in range(1, 13)] == val["summary"]


def verify_session(f, val):
    assert one(f, 1, b"").hex() == val["id"] and one(f, 3, b"").decode() == val["host"]
    assert one(f, 4) == val["pid"] and ts(one(f, 5, b"")) == val["start"] and ts(one(f, 6, b"")) == val["end"]


def verify_lease(f, val):
    assert one(f, 1, b"").hex() == val["id"] and one(f, 2, b"").decode() == val["host"]
    assert one(f, 3) == val["pid"] and ts(one(f, 4, b"")) == val["start"] and ts(one(f, 5, b"")) == val["end"]


def check_trees(v):
    keys = derive(h(v["master_key"]))
    for c in v["cases"]:
        plain = h(c["plain"])
        assert blob_id(keys, 2, plain) == h(c["id"])
        f = fields(plain)
        nodes = [fields(n) for n in f.get(1, [])]
        names = [one(n, 1, b"") for n in nodes]
        assert names == sorted(names) and len(set(names)) == len(names), "sorted, unique"
        assert (one(f, 2, b"").hex() or None) == c["value"]["next"]
        for nf, nv in zip(nodes, c["value"]["nodes"]):
            assert one(nf, 1, b"").hex() == nv["name"] and one(nf, 2) == nv["kind"]
            assert one(nf, 3) == nv["mode"] and one(nf, 11) == nv["size"] and one(nf, 14) == nv["links"]
            assert ts(one(nf, 8, b"")) == nv["mtime"]
            assert [x.hex() for x in nf.get(19, [])] == nv["content"]
            assert (one(nf, 20, b"").hex() or None) == nv["subtree"]
            xs = [fields(x) for x in nf.get(15, [])]
            assert [{"name": one(x, 1, b"").hex(), "value": one(x, 2, b"").hex()} for x in xs] == nv["xattrs"]


def check_extent_lists(v):
    keys = derive(h(v["master_key"]))
    for c in v["cases"]:
        plain = h(c["plain"])
        assert blob_id(keys, 3, plain) == h(c["id"])
        got = [{"offset": one(e, 1), "length": one(e, 2), "id": one(e, 3, b"").hex()}
               for e in (fields(x) for x in fields(plain).get(1, []))]
        assert got == c["value"]["extents"]


CHECKS = {
    "keys.json": check_keys,
    "envelopes.json": check_envelopes,
    "key_file.json": check_key_file,
    "config.json": check_config,
    "packs.json": check_packs,
    "index.json": lambda v: check_sealed(v, verify_index),
    "snapshots.json": lambda v: check_sealed(v, verify_snapshot),
    "sessions.json": lambda v: check_sealed(v, verify_session),
    "leases.json": lambda v: check_sealed(v, verify_lease),
    "trees.json": check_trees,
    "extent_lists.json": check_extent_lists,
}


def main():
    failed = 0
    files = sorted(p.name for p in VECTORS.glob("*.json"))
    if files != sorted(CHECKS):
        print(f"vector files {files} != checks {sorted(CHECKS)}")
        return 1
    for name in files:
        try:
            CHECKS[name](json.loads((VECTORS / name).read_text()))
            print(f"ok    {name}")
        except Exception as e:  # report every file, then fail
            failed += 1
            print(f"FAIL  {name}: {type(e).__name__}: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
