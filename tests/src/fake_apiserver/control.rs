//! The control channel: one JSON command per stdin line, one JSON reply per
//! stdout line (`{"ok": true, ...}` or `{"ok": false, "error": "..."}`).
//! [`crate::apiserver`] lists the commands.

use std::io::{self, BufRead as _, Write as _};

use serde_json::{json, Map, Value};

use super::{
    resources::{by_kind, def, resolve, Rid, EVENTS, RESOURCES},
    store::{key_of, Key, Origin},
    Shared,
};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown command {0:?}")]
    Unknown(String),
    #[error("missing or invalid field {0:?}")]
    Field(&'static str),
    #[error("unknown resource {0:?}")]
    Resource(String),
    #[error("object {index}: {reason}")]
    Object { index: usize, reason: String },
    #[error("reading {path}: {source}")]
    File { path: String, source: io::Error },
}

/// Serves commands from stdin until it closes.
pub fn serve_stdio(shared: &Shared) {
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let reply = match serde_json::from_slice::<Value>(&line) {
            Ok(cmd) => command(shared, &cmd),
            Err(e) => Err(ControlError::Json(e)),
        };
        let reply = match reply {
            Ok(mut v) => {
                v["ok"] = json!(true);
                v
            }
            Err(e) => json!({ "ok": false, "error": e.to_string() }),
        };
        let mut out = io::stdout().lock();
        let mut bytes = serde_json::to_vec(&reply).unwrap_or_default();
        bytes.push(b'\n');
        if out.write_all(&bytes).and_then(|()| out.flush()).is_err() {
            return;
        }
    }
}

fn str_field<'a>(cmd: &'a Value, field: &'static str) -> Result<&'a str, ControlError> {
    cmd[field].as_str().ok_or(ControlError::Field(field))
}

fn resource(cmd: &Value) -> Result<Rid, ControlError> {
    let r = str_field(cmd, "resource")?;
    resolve(r).ok_or_else(|| ControlError::Resource(r.to_owned()))
}

/// `resource` as a (plural or `plural/status`) pair for RBAC switches.
fn rbac_resource(cmd: &Value) -> Result<String, ControlError> {
    let r = str_field(cmd, "resource")?;
    let (base, sub) = match r.split_once('/') {
        Some((b, s)) => (b, Some(s)),
        None => (r, None),
    };
    let rid = resolve(base).ok_or_else(|| ControlError::Resource(r.to_owned()))?;
    Ok(match sub {
        Some(s) => format!("{}/{s}", def(rid).plural),
        None => def(rid).plural.to_owned(),
    })
}

fn object_key(cmd: &Value) -> Result<(Rid, Key), ControlError> {
    let rid = resource(cmd)?;
    let name = str_field(cmd, "name")?.to_owned();
    let ns = if def(rid).namespaced {
        str_field(cmd, "namespace")?.to_owned()
    } else {
        String::new()
    };
    Ok((rid, (ns, name)))
}

/// The resource of an object given to `apply`.
fn object_rid(obj: &Value) -> Result<Rid, String> {
    let kind = obj["kind"].as_str().ok_or("no kind")?;
    let api_version = obj["apiVersion"].as_str();
    let rid = by_kind(api_version, kind).ok_or_else(|| format!("kind {kind} ({api_version:?}) is not served"))?;
    key_of(rid, obj)?;
    Ok(rid)
}

/// Runs one command; the reply without its `ok` field.
pub fn command(shared: &Shared, cmd: &Value) -> Result<Value, ControlError> {
    let name = str_field(cmd, "cmd")?;
    let mut st = shared.lock();
    match name {
        "apply" => {
            let obj = cmd.get("object").cloned().ok_or(ControlError::Field("object"))?;
            let rid = object_rid(&obj).map_err(|reason| ControlError::Object { index: 0, reason })?;
            let (obj, added) = st
                .store
                .put(rid, obj, Origin::Control)
                .map_err(|e| ControlError::Object {
                    index: 0,
                    reason: e.message,
                })?;
            Ok(json!({
                "type": if added { "ADDED" } else { "MODIFIED" },
                "resource_version": st.store.rv(),
                "object": obj.value,
            }))
        }
        "apply_all" => {
            let objects = match (cmd.get("objects"), cmd["path"].as_str()) {
                (Some(Value::Array(objs)), _) => objs.clone(),
                (_, Some(path)) => {
                    // Read without the lock held.
                    drop(st);
                    let objs = read_json_lines(path)?;
                    st = shared.lock();
                    objs
                }
                _ => return Err(ControlError::Field("objects")),
            };
            let mut rids = Vec::with_capacity(objects.len());
            for (index, o) in objects.iter().enumerate() {
                rids.push(object_rid(o).map_err(|reason| ControlError::Object { index, reason })?);
            }
            let n = objects.len();
            for (index, (o, rid)) in objects.into_iter().zip(rids).enumerate() {
                st.store
                    .put(rid, o, Origin::Control)
                    .map_err(|e| ControlError::Object {
                        index,
                        reason: e.message,
                    })?;
            }
            Ok(json!({ "applied": n, "resource_version": st.store.rv() }))
        }
        "delete" => {
            let (rid, key) = object_key(cmd)?;
            let deleted = st.store.remove(rid, &key).is_some();
            Ok(json!({ "deleted": deleted, "resource_version": st.store.rv() }))
        }
        "get" => {
            let (rid, key) = object_key(cmd)?;
            let obj = st.store.get(rid, &key).map(|o| o.value.clone());
            Ok(json!({ "object": obj, "status_writes": st.store.status_writes(rid, &key) }))
        }
        "list" => {
            let rid = resource(cmd)?;
            let items: Vec<Value> = st
                .store
                .all(rid, cmd["namespace"].as_str())
                .iter()
                .map(|o| o.value.clone())
                .collect();
            Ok(json!({ "items": items }))
        }
        "events" => {
            let events: Vec<Value> = st.store.by_creation(EVENTS).iter().map(|o| o.value.clone()).collect();
            Ok(json!({ "events": events }))
        }
        "forbid" | "allow" => {
            let verb = str_field(cmd, "verb")?.to_owned();
            let pair = (verb, rbac_resource(cmd)?);
            if name == "forbid" {
                st.forbidden.insert(pair);
            } else {
                st.forbidden.remove(&pair);
            }
            Ok(json!({}))
        }
        "serve" => {
            let rid = resource(cmd)?;
            let served = cmd["served"].as_bool().ok_or(ControlError::Field("served"))?;
            if served {
                st.not_served.remove(&rid);
            } else {
                st.not_served.insert(rid);
            }
            Ok(json!({}))
        }
        "compact" => Ok(json!({ "resource_version": st.store.compact() })),
        "close_watches" => {
            let abort = cmd["abort"].as_bool().unwrap_or(false);
            Ok(json!({ "closed": st.store.close_watches(abort) }))
        }
        "bookmark" => {
            st.store.bookmark();
            Ok(json!({}))
        }
        "watches" => Ok(json!({ "watches": st.store.watch_counts() })),
        "requests" => {
            let since = cmd["since"].as_u64().unwrap_or(0) as usize;
            let reqs = st.requests.get(since..).unwrap_or_default();
            Ok(json!({ "requests": reqs, "next": st.requests.len() }))
        }
        "clear_requests" => {
            st.requests.clear();
            Ok(json!({}))
        }
        "unavailable" => {
            let on = cmd["on"].as_bool().ok_or(ControlError::Field("on"))?;
            st.unavailable = on;
            if on {
                st.store.close_watches(true);
            }
            Ok(json!({}))
        }
        "info" => {
            let mut counts = Map::new();
            for (rid, d) in RESOURCES.iter().enumerate() {
                counts.insert(d.plural.to_owned(), json!(st.store.len(rid)));
            }
            Ok(json!({ "resource_version": st.store.rv(), "objects": counts }))
        }
        other => Err(ControlError::Unknown(other.to_owned())),
    }
}

fn read_json_lines(path: &str) -> Result<Vec<Value>, ControlError> {
    let file_err = |source| ControlError::File {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read(path).map_err(file_err)?;
    let mut out = Vec::new();
    for (index, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let v = serde_json::from_slice(line).map_err(|e| ControlError::Object {
            index,
            reason: format!("line {}: {e}", index + 1),
        })?;
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use super::*;
    use crate::fake_apiserver::Options;

    fn shared() -> Shared {
        Shared::new(&Options {
            listen: "127.0.0.1:0".parse().unwrap(),
            bookmark_interval: None,
            history: None,
            user: "u".into(),
        })
    }

    fn svc(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "a", "name": name}})
    }

    #[test]
    fn commands_apply_get_delete() {
        let s = shared();
        let r = command(&s, &json!({"cmd": "apply", "object": svc("x")})).unwrap();
        assert_eq!(r["type"], "ADDED");
        let r = command(&s, &json!({"cmd": "apply", "object": svc("x")})).unwrap();
        assert_eq!(r["type"], "MODIFIED");
        let r = command(
            &s,
            &json!({"cmd": "get", "resource": "services", "namespace": "a", "name": "x"}),
        )
        .unwrap();
        assert_eq!(r["object"]["metadata"]["name"], "x");
        let r = command(
            &s,
            &json!({"cmd": "delete", "resource": "Service", "namespace": "a", "name": "x"}),
        )
        .unwrap();
        assert_eq!(r["deleted"], true);
        let r = command(
            &s,
            &json!({"cmd": "get", "resource": "services", "namespace": "a", "name": "x"}),
        )
        .unwrap();
        assert!(r["object"].is_null());
    }

    #[test]
    fn bulk_apply_is_all_or_nothing_on_bad_objects() {
        let s = shared();
        let bad = json!({"cmd": "apply_all", "objects": [svc("a"), {"kind": "Widget", "metadata": {"name": "w"}}]});
        let e = command(&s, &bad).unwrap_err();
        assert!(matches!(e, ControlError::Object { index: 1, .. }), "{e}");
        let r = command(&s, &json!({"cmd": "info"})).unwrap();
        assert_eq!(r["objects"]["services"], 0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("objs.jsonl");
        let lines: Vec<String> = (0..100).map(|i| svc(&format!("s{i}")).to_string()).collect();
        std::fs::write(&path, lines.join("\n")).unwrap();
        let r = command(&s, &json!({"cmd": "apply_all", "path": path})).unwrap();
        assert_eq!(r["applied"], 100);
        let r = command(&s, &json!({"cmd": "list", "resource": "services", "namespace": "a"})).unwrap();
        assert_eq!(r["items"].as_array().unwrap().len(), 100);
    }

    #[test]
    fn bad_commands_are_errors() {
        let s = shared();
        for cmd in [
            json!({}),
            json!({"cmd": "nope"}),
            json!({"cmd": "get", "resource": "widgets", "name": "x"}),
            json!({"cmd": "get", "resource": "services", "name": "x"}),
            json!({"cmd": "apply", "object": {"kind": "Service", "metadata": {"name": "x"}}}),
            json!({"cmd": "forbid", "verb": "list", "resource": "nope/status"}),
            json!({"cmd": "apply_all", "path": "/nonexistent/file"}),
        ] {
            assert!(command(&s, &cmd).is_err(), "{cmd}");
        }
        command(
            &s,
            &json!({"cmd": "forbid", "verb": "patch", "resource": "grpcroutes.gateway.networking.k8s.io/status"}),
        )
        .unwrap();
        assert!(s.lock().is_forbidden("patch", "grpcroutes", Some("status")));
        assert!(!s.lock().is_forbidden("patch", "grpcroutes", None));
    }
}
