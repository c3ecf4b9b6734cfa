//! Writes from HTTP clients, with kube-apiserver's rules: create (409
//! AlreadyExists), replace (409 Conflict on a stale resourceVersion),
//! patch, delete, and the `status` subresource (writes to the object keep
//! its status; writes to `/status` change only the status).

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::{
    patch::{self, PatchKind},
    resources::{def, Rid},
    status::ApiError,
    store::{Key, Obj, Origin, Store},
};

/// The object a write addresses.
pub struct Addr<'a> {
    pub rid: Rid,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    /// Writing the `status` subresource.
    pub status: bool,
}

impl Addr<'_> {
    fn key(&self) -> Key {
        (self.namespace.unwrap_or_default().to_owned(), self.name.to_owned())
    }
}

/// Checks a request body's kind, apiVersion, name and namespace against
/// the request, and fills in those it leaves out.
fn conform(rid: Rid, namespace: Option<&str>, name: Option<&str>, obj: &mut Value) -> Result<(), ApiError> {
    let d = def(rid);
    let Value::Object(map) = obj else {
        return Err(ApiError::bad_request("the body of the request is not a JSON object"));
    };
    for (field, want) in [("kind", d.kind.to_owned()), ("apiVersion", d.api_version())] {
        match map.get(field).and_then(Value::as_str) {
            Some(got) if !got.is_empty() && got != want => {
                return Err(ApiError::bad_request(format!(
                    "{field} {got:?} does not match the request ({want})"
                )));
            }
            _ => {
                map.insert(field.to_owned(), json!(want));
            }
        }
    }
    let meta = map.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        return Err(ApiError::bad_request("metadata is not an object"));
    }
    if let Some(ns) = namespace {
        match meta["namespace"].as_str() {
            Some(got) if !got.is_empty() && got != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => meta["namespace"] = json!(ns),
        }
    }
    if let Some(name) = name {
        match meta["name"].as_str() {
            Some(got) if !got.is_empty() && got != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({got}) does not match the name on the URL ({name})"
                )));
            }
            _ => meta["name"] = json!(name),
        }
    }
    Ok(())
}

/// POST: creates the object (201), or 409 AlreadyExists.
pub fn create(store: &mut Store, rid: Rid, namespace: Option<&str>, mut obj: Value) -> Result<Arc<Obj>, ApiError> {
    let d = def(rid);
    conform(rid, namespace, None, &mut obj)?;
    let meta = &mut obj["metadata"];
    if meta["name"].as_str().is_none_or(str::is_empty) {
        let Some(prefix) = meta["generateName"].as_str().filter(|p| !p.is_empty()) else {
            return Err(ApiError::new(422, "Invalid", "name or generateName is required"));
        };
        let suffix = store.next_seq();
        meta["name"] = json!(format!("{prefix}{:05x}", suffix % 0x10_0000));
    }
    if let Some(m) = meta.as_object_mut() {
        m.remove("resourceVersion");
        m.remove("uid");
    }
    if d.status {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let key = (namespace.unwrap_or_default().to_owned(), name.clone());
    if store.get(rid, &key).is_some() {
        return Err(ApiError::already_exists(d, &name));
    }
    Ok(store.put(rid, obj, Origin::Http)?.0)
}

/// Fails with 409 Conflict when `given` (a resourceVersion in the body)
/// is not the object's.
fn check_rv(rid: Rid, name: &str, given: &Value, current: &Obj) -> Result<(), ApiError> {
    match given.as_str() {
        Some(rv) if !rv.is_empty() && rv != current.rv() => Err(ApiError::conflict(def(rid), name)),
        _ => Ok(()),
    }
}

/// The object to store after a write of `new` over `old`: server-owned
/// metadata kept, and the status rule of the subresource applied.
fn merge_write(addr: &Addr<'_>, old: &Obj, mut new: Value) -> Value {
    let d = def(addr.rid);
    let old_v = &old.value;
    let mut out = if addr.status {
        // Only the status changes.
        let mut v = old_v.clone();
        match new.get_mut("status").map(Value::take) {
            Some(s) if !s.is_null() => v["status"] = s,
            _ => {
                if let Some(m) = v.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        v
    } else {
        if d.status {
            match old_v.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        new
    };
    for keep in ["name", "namespace", "uid", "creationTimestamp", "generation"] {
        match old_v["metadata"].get(keep) {
            Some(v) => out["metadata"][keep] = v.clone(),
            None => {
                if let Some(m) = out["metadata"].as_object_mut() {
                    m.remove(keep);
                }
            }
        }
    }
    out
}

fn store_write(store: &mut Store, addr: &Addr<'_>, value: Value) -> Result<Arc<Obj>, ApiError> {
    let obj = store.put(addr.rid, value, Origin::Http)?.0;
    if addr.status {
        store.count_status_write(addr.rid, addr.key());
    }
    Ok(obj)
}

/// PUT: replaces the object (or its status); 404 if it does not exist, 409
/// Conflict if the body's resourceVersion is stale.
pub fn replace(store: &mut Store, addr: &Addr<'_>, mut obj: Value) -> Result<Arc<Obj>, ApiError> {
    let d = def(addr.rid);
    conform(addr.rid, addr.namespace, Some(addr.name), &mut obj)?;
    let old = store
        .get(addr.rid, &addr.key())
        .ok_or_else(|| ApiError::not_found(d, addr.name))?;
    check_rv(addr.rid, addr.name, &obj["metadata"]["resourceVersion"], &old)?;
    let value = merge_write(addr, &old, obj);
    store_write(store, addr, value)
}

/// PATCH with `content_type`: merge, strategic merge (as merge), apply
/// (as merge; creates a missing object) or JSON patch. Returns the object
/// and whether it was created.
pub fn patch(
    store: &mut Store,
    addr: &Addr<'_>,
    content_type: &str,
    body: &[u8],
) -> Result<(Arc<Obj>, bool), ApiError> {
    let d = def(addr.rid);
    let kind = PatchKind::from_content_type(content_type)
        .map_err(|e| ApiError::new(415, "UnsupportedMediaType", e.to_string()))?;
    let p = patch::parse(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let Some(old) = store.get(addr.rid, &addr.key()) else {
        if kind == PatchKind::Apply && !addr.status {
            let mut obj = p;
            conform(addr.rid, addr.namespace, Some(addr.name), &mut obj)?;
            return Ok((create(store, addr.rid, addr.namespace, obj)?, true));
        }
        return Err(ApiError::not_found(d, addr.name));
    };
    if kind != PatchKind::Json {
        if !p.is_object() {
            return Err(ApiError::bad_request("a merge patch is a JSON object"));
        }
        check_rv(addr.rid, addr.name, &p["metadata"]["resourceVersion"], &old)?;
    }
    let mut value = old.value.clone();
    patch::apply(kind, &mut value, &p).map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?;
    if !value.is_object() || !value["metadata"].is_object() {
        return Err(ApiError::new(422, "Invalid", "the patched object has no metadata"));
    }
    conform(addr.rid, addr.namespace, Some(addr.name), &mut value)?;
    let value = merge_write(addr, &old, value);
    Ok((store_write(store, addr, value)?, false))
}

/// DELETE: removes the object and returns its last state; 404 if absent.
pub fn delete(store: &mut Store, addr: &Addr<'_>) -> Result<Arc<Obj>, ApiError> {
    store
        .remove(addr.rid, &addr.key())
        .ok_or_else(|| ApiError::not_found(def(addr.rid), addr.name))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use super::*;
    use crate::fake_apiserver::resources::resolve;

    fn lease(name: &str, holder: &str) -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": name}, "spec": {"holderIdentity": holder}})
    }

    #[test]
    fn create_replace_conflict() {
        let rid = resolve("leases").unwrap();
        let mut s = Store::new(None);
        let o = create(&mut s, rid, Some("ns"), lease("l", "a")).unwrap();
        assert_eq!(o.value["metadata"]["namespace"], "ns");
        let e = create(&mut s, rid, Some("ns"), lease("l", "b")).unwrap_err();
        assert_eq!((e.code, e.reason), (409, "AlreadyExists"));
        let addr = Addr {
            rid,
            namespace: Some("ns"),
            name: "l",
            status: false,
        };
        let mut upd = o.value.clone();
        upd["spec"]["holderIdentity"] = json!("b");
        let o2 = replace(&mut s, &addr, upd.clone()).unwrap();
        assert_eq!(o2.value["spec"]["holderIdentity"], "b");
        // The same body again carries the old resourceVersion.
        let e = replace(&mut s, &addr, upd).unwrap_err();
        assert_eq!((e.code, e.reason), (409, "Conflict"));
        let e = create(
            &mut s,
            rid,
            Some("other"),
            json!({"kind": "Pod", "metadata": {"name": "x"}}),
        )
        .unwrap_err();
        assert_eq!(e.code, 400);
        let e = create(
            &mut s,
            rid,
            Some("ns"),
            json!({"metadata": {"namespace": "zz", "name": "x"}}),
        )
        .unwrap_err();
        assert_eq!(e.code, 400);
        let e = create(&mut s, rid, Some("ns"), json!([1])).unwrap_err();
        assert_eq!(e.code, 400);
        let gen = create(&mut s, rid, Some("ns"), json!({"metadata": {"generateName": "g-"}})).unwrap();
        assert!(gen.value["metadata"]["name"].as_str().unwrap().starts_with("g-"));
    }

    #[test]
    fn status_subresource_writes_only_status() {
        let rid = resolve("grpcroutes").unwrap();
        let mut s = Store::new(None);
        let route = json!({"metadata": {"name": "r"}, "spec": {"rules": []}, "status": {"parents": ["ignored"]}});
        let o = create(&mut s, rid, Some("n"), route).unwrap();
        assert!(o.value.get("status").is_none(), "create drops the status");
        let st = Addr {
            rid,
            namespace: Some("n"),
            name: "r",
            status: true,
        };
        let body = br#"{"status": {"parents": [{"x": 1}]}, "spec": {"rules": ["changed"]}}"#;
        let (o, created) = patch(&mut s, &st, "application/merge-patch+json", body).unwrap();
        assert!(!created);
        assert_eq!(o.value["status"]["parents"][0]["x"], 1);
        assert_eq!(o.value["spec"]["rules"], json!([]));
        assert_eq!(s.status_writes(rid, &("n".into(), "r".into())), 1);
        let main = Addr { status: false, ..st };
        let (o, _) = patch(
            &mut s,
            &main,
            "application/apply-patch+yaml",
            br#"{"spec": {"rules": [1]}, "status": null}"#,
        )
        .unwrap();
        assert_eq!(o.value["spec"]["rules"], json!([1]));
        assert_eq!(
            o.value["status"]["parents"][0]["x"], 1,
            "the main resource keeps the status"
        );
        assert_eq!(o.value["metadata"]["generation"], 2);
        let e = patch(&mut s, &st, "application/merge-patch+json", b"{nope").unwrap_err();
        assert_eq!(e.code, 400);
        let e = patch(&mut s, &st, "text/plain", b"{}").unwrap_err();
        assert_eq!(e.code, 415);
        let e = patch(
            &mut s,
            &st,
            "application/merge-patch+json",
            br#"{"metadata": {"resourceVersion": "1"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, 409);
        let e = patch(
            &mut s,
            &st,
            "application/json-patch+json",
            br#"[{"op": "remove", "path": "/metadata"}]"#,
        )
        .unwrap_err();
        assert_eq!(e.code, 422);
    }

    #[test]
    fn apply_creates_merge_does_not() {
        let rid = resolve("leases").unwrap();
        let mut s = Store::new(None);
        let addr = Addr {
            rid,
            namespace: Some("n"),
            name: "l",
            status: false,
        };
        let e = patch(&mut s, &addr, "application/merge-patch+json", b"{}").unwrap_err();
        assert_eq!(e.code, 404);
        let (o, created) = patch(
            &mut s,
            &addr,
            "application/apply-patch+yaml",
            br#"{"spec": {"holderIdentity": "a"}}"#,
        )
        .unwrap();
        assert!(created);
        assert_eq!(o.value["metadata"]["name"], "l");
        assert!(delete(&mut s, &addr).is_ok());
        assert_eq!(delete(&mut s, &addr).unwrap_err().code, 404);
    }
}
