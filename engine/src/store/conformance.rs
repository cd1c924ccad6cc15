//! The conformance suite every [`Backend`] must pass: the store behaviour FORMAT.md
//! section 2 assumes. Run it against an empty store (a fresh prefix).

use bytes::Bytes;

use super::{Backend, Condition, WriteMode};
use crate::error::StoreErrorKind;

fn fail(what: impl Into<String>) -> String {
    what.into()
}

/// Run every check; `Err` says which one failed and how.
pub async fn run(b: &dyn Backend) -> Result<(), String> {
    let e = |what: &str, err: crate::Error| format!("{what}: {err}");

    // An empty store lists nothing.
    let all = b.list("").await.map_err(|x| e("list empty", x))?;
    if !all.is_empty() {
        return Err(fail(format!("store not empty at start: {:?}", all[0].name)));
    }
    if !b
        .list("packs/")
        .await
        .map_err(|x| e("list missing prefix", x))?
        .is_empty()
    {
        return Err(fail("listing a prefix nobody wrote returned objects"));
    }

    // Put, get, head.
    let data = Bytes::from_static(b"hello, store");
    b.put("config", data.clone(), WriteMode::Overwrite)
        .await
        .map_err(|x| e("put", x))?;
    let got = b.get("config").await.map_err(|x| e("get", x))?;
    if got != data {
        return Err(fail("get returned other bytes than put"));
    }
    let h = b.head("config").await.map_err(|x| e("head", x))?;
    match h {
        Some(i) if i.size == data.len() as u64 && i.name == "config" => {}
        other => return Err(fail(format!("head after put: {other:?}"))),
    }
    if b.head("nothing-here")
        .await
        .map_err(|x| e("head missing", x))?
        .is_some()
    {
        return Err(fail("head of a missing object found something"));
    }

    // Overwrite replaces; create-only refuses an existing object and keeps it.
    b.put("config", Bytes::from_static(b"v2"), WriteMode::Overwrite)
        .await
        .map_err(|x| e("overwrite", x))?;
    if b.get("config")
        .await
        .map_err(|x| e("get after overwrite", x))?
        != "v2"
    {
        return Err(fail("overwrite did not replace the object"));
    }
    match b
        .put("config", Bytes::from_static(b"v3"), WriteMode::CreateNew)
        .await
    {
        Err(crate::Error::Store {
            kind: StoreErrorKind::AlreadyExists,
            ..
        }) => {}
        other => {
            return Err(fail(format!(
                "create-only over an existing object: {other:?}"
            )));
        }
    }
    if b.get("config")
        .await
        .map_err(|x| e("get after refused create", x))?
        != "v2"
    {
        return Err(fail("a refused create-only put changed the object"));
    }
    b.put(
        "maintenance/lease",
        Bytes::from_static(b"l"),
        WriteMode::CreateNew,
    )
    .await
    .map_err(|x| e("create-only of a new object", x))?;

    // A missing object is NotFound.
    match b.get("missing").await {
        Err(err) if err.is_not_found() => {}
        other => return Err(fail(format!("get of a missing object: {other:?}"))),
    }

    // Ranged reads.
    let big: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let name = "packs/d/ab/abcdef";
    b.put(name, Bytes::from(big.clone()), WriteMode::Overwrite)
        .await
        .map_err(|x| e("put large", x))?;
    for r in [
        0..1u64,
        10..4096,
        1_000_000..2_500_000,
        (big.len() as u64 - 12)..big.len() as u64,
    ] {
        let got = b
            .get_range(name, r.clone())
            .await
            .map_err(|x| e("get_range", x))?;
        if got[..] != big[r.start as usize..r.end as usize] {
            return Err(fail(format!("get_range {r:?} returned other bytes")));
        }
    }
    if b.get_at_most(name, 4096).await.is_ok() {
        return Err(fail("get_at_most returned an object over its limit"));
    }
    if b.get_at_most(name, big.len() as u64)
        .await
        .map_err(|x| e("get_at_most", x))?
        != big[..]
    {
        return Err(fail("get_at_most returned other bytes"));
    }
    if b.get(name).await.map_err(|x| e("get large", x))?.len() != big.len() {
        return Err(fail("large object came back with another length"));
    }
    if b.get_range(name, big.len() as u64..big.len() as u64 + 10)
        .await
        .is_ok()
    {
        return Err(fail("a range past the end succeeded"));
    }

    // Listing by prefix, nested and flat, with sizes.
    for n in [
        "packs/d/cd/cdef01",
        "packs/m/ab/ab0102",
        "index/0011",
        "index/0022",
        "snapshots/ff",
    ] {
        b.put(n, Bytes::from(n.as_bytes().to_vec()), WriteMode::Overwrite)
            .await
            .map_err(|x| e("put for listing", x))?;
    }
    let names = |v: Vec<super::ObjectInfo>| v.into_iter().map(|i| i.name).collect::<Vec<_>>();
    let packs = names(b.list("packs/").await.map_err(|x| e("list packs/", x))?);
    if packs
        != [
            "packs/d/ab/abcdef",
            "packs/d/cd/cdef01",
            "packs/m/ab/ab0102",
        ]
    {
        return Err(fail(format!("list packs/: {packs:?}")));
    }
    let data_packs = names(
        b.list("packs/d/")
            .await
            .map_err(|x| e("list packs/d/", x))?,
    );
    if data_packs != ["packs/d/ab/abcdef", "packs/d/cd/cdef01"] {
        return Err(fail(format!("list packs/d/: {data_packs:?}")));
    }
    let index = b.list("index/").await.map_err(|x| e("list index/", x))?;
    if names(index.clone()) != ["index/0011", "index/0022"] || index.iter().any(|i| i.size != 10) {
        return Err(fail(format!("list index/: {index:?}")));
    }
    let partial = names(b.list("index/00").await.map_err(|x| e("list partial", x))?);
    if partial.len() != 2 {
        return Err(fail(format!("list by a partial name: {partial:?}")));
    }
    let everything = b.list("").await.map_err(|x| e("list all", x))?;
    if everything.len() != 8 {
        return Err(fail(format!(
            "list of everything found {} objects",
            everything.len()
        )));
    }

    // Delete, and deleting what is gone.
    b.delete("index/0011").await.map_err(|x| e("delete", x))?;
    b.delete("index/0011")
        .await
        .map_err(|x| e("delete twice", x))?;
    b.delete("never-was")
        .await
        .map_err(|x| e("delete missing", x))?;
    if names(
        b.list("index/")
            .await
            .map_err(|x| e("list after delete", x))?,
    ) != ["index/0022"]
    {
        return Err(fail("deleted object still listed"));
    }
    match b.get("index/0011").await {
        Err(err) if err.is_not_found() => {}
        other => return Err(fail(format!("get after delete: {other:?}"))),
    }

    // Concurrent puts of the same immutable object both succeed (content-named objects).
    let (a, c) = futures::join!(
        b.put(
            "index/0033",
            Bytes::from_static(b"same"),
            WriteMode::Overwrite
        ),
        b.put(
            "index/0033",
            Bytes::from_static(b"same"),
            WriteMode::Overwrite
        )
    );
    a.map_err(|x| e("concurrent put a", x))?;
    c.map_err(|x| e("concurrent put b", x))?;

    // Versioned writes: create-only, then replace only what one read.
    let v1 = b
        .put_versioned("sessions/s1", Bytes::from_static(b"one"), Condition::Create)
        .await
        .map_err(|x| e("versioned create", x))?;
    match b
        .put_versioned("sessions/s1", Bytes::from_static(b"x"), Condition::Create)
        .await
    {
        Err(crate::Error::Store {
            kind: StoreErrorKind::AlreadyExists,
            ..
        }) => {}
        other => return Err(fail(format!("versioned create over an object: {other:?}"))),
    }
    let (got, seen) = b
        .get_versioned("sessions/s1")
        .await
        .map_err(|x| e("get_versioned", x))?;
    if got != "one" || seen != v1 {
        return Err(fail("get_versioned disagrees with the put"));
    }
    let v2 = b
        .put_versioned(
            "sessions/s1",
            Bytes::from_static(b"two"),
            Condition::IfMatch(v1.clone()),
        )
        .await
        .map_err(|x| e("conditional replace", x))?;
    if v2 == v1 {
        return Err(fail("a replaced object kept its version"));
    }
    match b
        .put_versioned(
            "sessions/s1",
            Bytes::from_static(b"stale"),
            Condition::IfMatch(v1.clone()),
        )
        .await
    {
        Err(err) if err.is_conflict() => {}
        other => return Err(fail(format!("replace at a stale version: {other:?}"))),
    }
    match b.delete_versioned("sessions/s1", &v1).await {
        Err(err) if err.is_conflict() => {}
        other => return Err(fail(format!("delete at a stale version: {other:?}"))),
    }
    if b.get("sessions/s1")
        .await
        .map_err(|x| e("get after refusals", x))?
        != "two"
    {
        return Err(fail("a refused conditional write changed the object"));
    }
    b.delete_versioned("sessions/s1", &v2)
        .await
        .map_err(|x| e("conditional delete", x))?;
    match b
        .put_versioned(
            "sessions/s1",
            Bytes::from_static(b"back"),
            Condition::IfMatch(v2),
        )
        .await
    {
        Err(err) if err.is_conflict() => {}
        other => return Err(fail(format!("replace of a deleted object: {other:?}"))),
    }
    if b.head("sessions/s1")
        .await
        .map_err(|x| e("head after", x))?
        .is_some()
    {
        return Err(fail(
            "a deleted object came back through a conditional write",
        ));
    }

    // Clean up so the suite can be rerun on the same prefix.
    for i in b.list("").await.map_err(|x| e("final list", x))? {
        b.delete(&i.name).await.map_err(|x| e("final delete", x))?;
    }
    Ok(())
}
