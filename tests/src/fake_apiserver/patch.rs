//! PATCH bodies: JSON merge patches (RFC 7386; strategic-merge and
//! server-side-apply patches are applied the same way) and JSON patches
//! (RFC 6902).

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("unsupported patch content type {0:?}")]
    ContentType(String),
    #[error("the patch is not valid JSON: {0}")]
    Json(String),
    #[error("a JSON patch is a list of operations")]
    NotAList,
    #[error("JSON patch operation {index}: {reason}")]
    Op { index: usize, reason: String },
}

/// How a PATCH body is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json`, and also
    /// `application/strategic-merge-patch+json` (lists are replaced).
    Merge,
    /// `application/apply-patch+yaml` (JSON bodies only): merged, and
    /// creates the object if it does not exist.
    Apply,
    /// `application/json-patch+json`.
    Json,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Result<PatchKind, PatchError> {
        let base = ct.split(';').next().unwrap_or_default().trim();
        match base {
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => Ok(PatchKind::Merge),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchKind::Apply),
            "application/json-patch+json" => Ok(PatchKind::Json),
            _ => Err(PatchError::ContentType(ct.to_owned())),
        }
    }
}

/// Parses a patch body.
pub fn parse(body: &[u8]) -> Result<Value, PatchError> {
    serde_json::from_slice(body).map_err(|e| PatchError::Json(e.to_string()))
}

/// Applies `patch` of `kind` to `target`.
pub fn apply(kind: PatchKind, target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    match kind {
        PatchKind::Merge | PatchKind::Apply => {
            merge(target, patch);
            Ok(())
        }
        PatchKind::Json => json_patch(target, patch),
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops = patch.as_array().ok_or(PatchError::NotAList)?;
    // All or nothing: work on a copy.
    let mut doc = target.clone();
    for (index, op) in ops.iter().enumerate() {
        let fail = |reason: &str| PatchError::Op {
            index,
            reason: reason.to_owned(),
        };
        let path = op["path"].as_str().ok_or_else(|| fail("no path"))?;
        let value = || op.get("value").cloned().ok_or_else(|| fail("no value"));
        let from = || op["from"].as_str().ok_or_else(|| fail("no from"));
        match op["op"].as_str() {
            Some("add") => add(&mut doc, path, value()?).map_err(|r| fail(&r))?,
            Some("remove") => {
                remove(&mut doc, path).map_err(|r| fail(&r))?;
            }
            Some("replace") => {
                remove(&mut doc, path).map_err(|r| fail(&r))?;
                add(&mut doc, path, value()?).map_err(|r| fail(&r))?;
            }
            Some("test") => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(fail("test failed"));
                }
            }
            Some("move") => {
                let v = remove(&mut doc, from()?).map_err(|r| fail(&r))?;
                add(&mut doc, path, v).map_err(|r| fail(&r))?;
            }
            Some("copy") => {
                let v = doc
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| fail("from does not exist"))?;
                add(&mut doc, path, v).map_err(|r| fail(&r))?;
            }
            _ => return Err(fail("unknown op")),
        }
    }
    *target = doc;
    Ok(())
}

/// Splits a JSON pointer into its parent pointer and unescaped last token.
fn split_pointer(path: &str) -> Result<(&str, String), String> {
    if path.is_empty() {
        return Err("the whole document cannot be the target".into());
    }
    let i = path.rfind('/').ok_or("a pointer starts with /")?;
    Ok((&path[..i], path[i + 1..].replace("~1", "/").replace("~0", "~")))
}

fn add(doc: &mut Value, path: &str, v: Value) -> Result<(), String> {
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(last, v);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>().map_err(|_| "bad array index")?
            };
            if i > a.len() {
                return Err("array index out of range".into());
            }
            a.insert(i, v);
            Ok(())
        }
        _ => Err("the parent does not exist".into()),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => m.remove(&last).ok_or_else(|| "the path does not exist".into()),
        Some(Value::Array(a)) => {
            let i = last.parse::<usize>().map_err(|_| "bad array index")?;
            if i >= a.len() {
                return Err("array index out of range".into());
            }
            Ok(a.remove(i))
        }
        _ => Err("the parent does not exist".into()),
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patches_per_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge(&mut doc, &json!({"a": "z", "c": {"f": null, "h": 1}, "l": [3]}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e", "h": 1}, "l": [3]}));
        let mut scalar = json!("x");
        merge(&mut scalar, &json!({"a": 1}));
        assert_eq!(scalar, json!({"a": 1}));
    }

    #[test]
    fn json_patches_apply_all_or_nothing() {
        let mut doc = json!({"a": {"b": [1, 2]}, "k": "v"});
        let ops = json!([
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "replace", "path": "/k", "value": "w"},
            {"op": "test", "path": "/k", "value": "w"},
            {"op": "copy", "from": "/k", "path": "/k2"},
            {"op": "move", "from": "/k2", "path": "/a/m~1n"},
            {"op": "remove", "path": "/a/b/0"},
        ]);
        apply(PatchKind::Json, &mut doc, &ops).unwrap();
        assert_eq!(doc, json!({"a": {"b": [2, 3], "m/n": "w"}, "k": "w"}));
        let before = doc.clone();
        let bad = json!([{"op": "replace", "path": "/k", "value": 1}, {"op": "remove", "path": "/nope"}]);
        assert!(matches!(
            apply(PatchKind::Json, &mut doc, &bad),
            Err(PatchError::Op { index: 1, .. })
        ));
        assert_eq!(doc, before);
        assert_eq!(apply(PatchKind::Json, &mut doc, &json!({})), Err(PatchError::NotAList));
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json").unwrap(),
            PatchKind::Merge
        );
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml").unwrap(),
            PatchKind::Apply
        );
        assert!(PatchKind::from_content_type("text/plain").is_err());
    }
}
