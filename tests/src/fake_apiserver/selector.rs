//! Field and label selectors, as list and watch requests give them.

use serde_json::Value;

use super::resources::ResourceDef;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
    #[error("invalid selector: {0:?}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

impl Op {
    fn matches(&self, value: Option<&str>) -> bool {
        match self {
            Op::Eq(v) => value == Some(v.as_str()),
            Op::NotEq(v) => value != Some(v.as_str()),
            Op::In(vs) => value.is_some_and(|x| vs.iter().any(|v| v == x)),
            Op::NotIn(vs) => value.is_none_or(|x| vs.iter().all(|v| v != x)),
            Op::Exists => value.is_some(),
            Op::NotExists => value.is_none(),
        }
    }
}

/// Which objects a list or watch wants: a namespace, field requirements
/// (`path=value`, `path!=value`) and label requirements (`k=v`, `k!=v`,
/// `k in (a,b)`, `k notin (a,b)`, `k`, `!k`).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub namespace: Option<String>,
    fields: Vec<(Vec<String>, Op)>,
    labels: Vec<(String, Op)>,
}

impl Filter {
    pub fn new(
        def: &ResourceDef,
        namespace: Option<String>,
        fields: Option<&str>,
        labels: Option<&str>,
    ) -> Result<Filter, SelectorError> {
        let mut f = Filter {
            namespace,
            ..Filter::default()
        };
        for req in split(fields.unwrap_or_default())? {
            let (path, op) = parse_field(&req)?;
            if path != "metadata.name" && path != "metadata.namespace" && !def.fields.contains(&path.as_str()) {
                return Err(SelectorError::UnsupportedField(path));
            }
            f.fields.push((path.split('.').map(str::to_owned).collect(), op));
        }
        for req in split(labels.unwrap_or_default())? {
            f.labels.push(parse_label(&req)?);
        }
        Ok(f)
    }

    /// Does `obj` pass?
    pub fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if let Some(ns) = &self.namespace {
            if meta["namespace"].as_str() != Some(ns) {
                return false;
            }
        }
        let fields_ok = self.fields.iter().all(|(path, op)| {
            let v = path.iter().try_fold(obj, |v, k| v.get(k));
            // A missing field selects as the empty string, as in kube-apiserver.
            let s = match v {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            op.matches(Some(&s))
        });
        fields_ok
            && self
                .labels
                .iter()
                .all(|(k, op)| op.matches(meta["labels"].get(k).and_then(Value::as_str)))
    }
}

/// Splits at commas outside parentheses; trims; drops empty parts.
fn split(s: &str) -> Result<Vec<String>, SelectorError> {
    let mut out = Vec::new();
    let mut depth = 0u32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| SelectorError::Invalid(s.to_owned()))?;
            }
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if depth != 0 {
        return Err(SelectorError::Invalid(s.to_owned()));
    }
    out.push(cur);
    Ok(out
        .into_iter()
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .collect())
}

fn parse_field(req: &str) -> Result<(String, Op), SelectorError> {
    let bad = || SelectorError::Invalid(req.to_owned());
    let (path, op) = if let Some((p, v)) = req.split_once("!=") {
        (p, Op::NotEq(v.trim().to_owned()))
    } else if let Some((p, v)) = req.split_once("==") {
        (p, Op::Eq(v.trim().to_owned()))
    } else if let Some((p, v)) = req.split_once('=') {
        (p, Op::Eq(v.trim().to_owned()))
    } else {
        return Err(bad());
    };
    let path = path.trim();
    if path.is_empty() {
        return Err(bad());
    }
    Ok((path.to_owned(), op))
}

fn parse_label(req: &str) -> Result<(String, Op), SelectorError> {
    let bad = || SelectorError::Invalid(req.to_owned());
    let key_ok = |k: &str| !k.is_empty() && !k.contains(|c: char| c.is_whitespace() || "=!(),".contains(c));
    if let Some(k) = req.strip_prefix('!') {
        let k = k.trim();
        return if key_ok(k) {
            Ok((k.to_owned(), Op::NotExists))
        } else {
            Err(bad())
        };
    }
    for (sep, set_op) in [(" notin ", true), (" in ", false)] {
        if let Some((k, set)) = req.split_once(sep) {
            let set = set.trim();
            let inner = set
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(bad)?;
            let values: Vec<String> = inner.split(',').map(|v| v.trim().to_owned()).collect();
            let k = k.trim();
            if !key_ok(k) {
                return Err(bad());
            }
            return Ok((k.to_owned(), if set_op { Op::NotIn(values) } else { Op::In(values) }));
        }
    }
    let (k, op) = if let Some((k, v)) = req.split_once("!=") {
        (k, Op::NotEq(v.trim().to_owned()))
    } else if let Some((k, v)) = req.split_once("==") {
        (k, Op::Eq(v.trim().to_owned()))
    } else if let Some((k, v)) = req.split_once('=') {
        (k, Op::Eq(v.trim().to_owned()))
    } else {
        (req, Op::Exists)
    };
    let k = k.trim();
    if !key_ok(k) {
        return Err(bad());
    }
    Ok((k.to_owned(), op))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fake_apiserver::resources::{def, resolve};

    fn pod(ns: &str, name: &str, node: Option<&str>, labels: Value) -> Value {
        let mut p = json!({"metadata": {"namespace": ns, "name": name, "labels": labels}, "spec": {}});
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        p
    }

    fn filter(fields: &str, labels: &str) -> Result<Filter, SelectorError> {
        Filter::new(def(resolve("pods").unwrap()), None, Some(fields), Some(labels))
    }

    #[test]
    fn fields_select() {
        let f = filter("spec.nodeName=n1", "").unwrap();
        assert!(f.matches(&pod("a", "p", Some("n1"), json!({}))));
        assert!(!f.matches(&pod("a", "p", Some("n2"), json!({}))));
        assert!(!f.matches(&pod("a", "p", None, json!({}))));
        let unscheduled = filter("spec.nodeName==", "").unwrap();
        assert!(unscheduled.matches(&pod("a", "p", None, json!({}))));
        let f = filter("metadata.name!=p,metadata.namespace=a", "").unwrap();
        assert!(f.matches(&pod("a", "q", None, json!({}))));
        assert!(!f.matches(&pod("a", "p", None, json!({}))));
        assert!(!f.matches(&pod("b", "q", None, json!({}))));
    }

    #[test]
    fn unsupported_fields_are_refused() {
        assert_eq!(
            filter("spec.containers=x", "").unwrap_err(),
            SelectorError::UnsupportedField("spec.containers".into())
        );
        assert!(matches!(filter("nonsense", ""), Err(SelectorError::Invalid(_))));
    }

    #[test]
    fn labels_select() {
        let p = pod("a", "p", None, json!({"app": "x", "tier": "web"}));
        let yes = [
            "app=x",
            "app==x",
            "app!=y",
            "app in (x, y)",
            "tier notin (db)",
            "app",
            "!nope",
            "app=x,tier",
        ];
        for sel in yes {
            assert!(filter("", sel).unwrap().matches(&p), "{sel}");
        }
        let no = [
            "app=y",
            "app!=x",
            "app in (y)",
            "tier notin (web,db)",
            "nope",
            "!app",
            "app=x,nope",
        ];
        for sel in no {
            assert!(!filter("", sel).unwrap().matches(&p), "{sel}");
        }
        for bad in ["app in x", "(", "a)", "=x", "! "] {
            assert!(filter("", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn namespace_selects() {
        let f = Filter::new(def(resolve("pods").unwrap()), Some("a".into()), None, None).unwrap();
        assert!(f.matches(&pod("a", "p", None, json!({}))));
        assert!(!f.matches(&pod("b", "p", None, json!({}))));
    }
}
