//! The objects, one table per resource type, with a global resourceVersion,
//! a log of changes that resumed watches replay, and the open watches.
//!
//! Each object is kept both parsed and serialized: lists and watch events
//! are concatenations of the serialized bytes, so serving 10,000 objects
//! copies bytes and never re-encodes them. A change is encoded once per
//! event type and the same bytes go to every watch it concerns.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    ops::Bound,
    sync::Arc,
};

use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{
    resources::{def, Rid, RESOURCES},
    selector::Filter,
    status::ApiError,
};

/// `(namespace or "", name)`.
pub type Key = (String, String);

/// A stored object.
#[derive(Debug)]
pub struct Obj {
    pub value: Value,
    /// `value` serialized.
    pub bytes: Bytes,
    /// The resourceVersion that created it (orders the Events).
    pub created: u64,
}

impl Obj {
    fn new(value: Value, created: u64) -> Obj {
        // Serializing a Value cannot fail (its map keys are strings).
        let bytes = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
        Obj { value, bytes, created }
    }

    pub fn rv(&self) -> &str {
        self.value["metadata"]["resourceVersion"].as_str().unwrap_or_default()
    }
}

/// What a watch response carries.
#[derive(Debug)]
pub enum WatchMsg {
    /// One or more newline-terminated WatchEvents.
    Data(Bytes),
    /// End the response cleanly (as at `timeoutSeconds`).
    End,
    /// Break the connection.
    Abort,
}

pub type WatchRx = mpsc::UnboundedReceiver<WatchMsg>;

struct Watcher {
    filter: Filter,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<WatchMsg>,
}

/// One change in the log.
struct Change {
    rv: u64,
    old: Option<Arc<Obj>>,
    /// The new state; for a deletion, the last state with the deletion's
    /// resourceVersion.
    new: Arc<Obj>,
    deleted: bool,
}

impl Change {
    /// The event a watch with `filter` sees: an object that starts
    /// matching is ADDED, one that stops matching is DELETED.
    fn event_for(&self, filter: &Filter) -> Option<&'static str> {
        if self.deleted {
            return filter.matches(&self.new.value).then_some("DELETED");
        }
        let was = self.old.as_ref().is_some_and(|o| filter.matches(&o.value));
        match (was, filter.matches(&self.new.value)) {
            (false, true) => Some("ADDED"),
            (true, true) => Some("MODIFIED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        }
    }
}

fn event_line(ty: &str, obj: &Obj) -> Bytes {
    let mut b = BytesMut::with_capacity(obj.bytes.len() + 32);
    b.extend_from_slice(b"{\"type\":\"");
    b.extend_from_slice(ty.as_bytes());
    b.extend_from_slice(b"\",\"object\":");
    b.extend_from_slice(&obj.bytes);
    b.extend_from_slice(b"}\n");
    b.freeze()
}

fn json_line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

#[derive(Default)]
struct Table {
    objects: BTreeMap<Key, Arc<Obj>>,
    log: VecDeque<Change>,
    /// Watches and continued lists from before this resourceVersion get
    /// 410 Gone: the log holds every change after it.
    compacted: u64,
    watchers: Vec<Watcher>,
    status_writes: HashMap<Key, u64>,
}

/// Who writes: the test (objects as given) or an HTTP client (the server
/// owns uid, generation and timestamps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Control,
    Http,
}

/// One page of a list.
pub struct Page {
    pub rv: u64,
    pub items: Vec<Arc<Obj>>,
    pub continue_: Option<String>,
}

/// All objects and watches.
pub struct Store {
    rv: u64,
    tables: Vec<Table>,
    /// Changes kept per resource for resumed watches (None: all until
    /// `compact`).
    history: Option<usize>,
    seq: u64,
}

impl Store {
    pub fn new(history: Option<usize>) -> Store {
        Store {
            rv: 1,
            tables: RESOURCES.iter().map(|_| Table::default()).collect(),
            history,
            seq: 0,
        }
    }

    /// The current resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, rid: Rid, key: &Key) -> Option<Arc<Obj>> {
        self.tables[rid].objects.get(key).cloned()
    }

    /// Every object of `rid` (in `namespace` if given), in key order.
    pub fn all(&self, rid: Rid, namespace: Option<&str>) -> Vec<Arc<Obj>> {
        self.tables[rid]
            .objects
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Every object of `rid`, oldest first.
    pub fn by_creation(&self, rid: Rid) -> Vec<Arc<Obj>> {
        let mut v: Vec<_> = self.tables[rid].objects.values().cloned().collect();
        v.sort_by_key(|o| o.created);
        v
    }

    pub fn len(&self, rid: Rid) -> usize {
        self.tables[rid].objects.len()
    }

    pub fn status_writes(&self, rid: Rid, key: &Key) -> u64 {
        self.tables[rid].status_writes.get(key).copied().unwrap_or(0)
    }

    pub fn count_status_write(&mut self, rid: Rid, key: Key) {
        *self.tables[rid].status_writes.entry(key).or_default() += 1;
    }

    /// A unique suffix for `generateName` and uids.
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Creates or replaces an object: a new resourceVersion, ADDED or
    /// MODIFIED to watches. `value` must carry `metadata.name` (and
    /// `metadata.namespace` for a namespaced resource; see [`key_of`]).
    pub fn put(&mut self, rid: Rid, mut value: Value, origin: Origin) -> Result<(Arc<Obj>, bool), ApiError> {
        let key = key_of(rid, &value).map_err(ApiError::bad_request)?;
        let d = def(rid);
        let seq = self.next_seq();
        self.rv += 1;
        let rv = self.rv;
        let old = self.tables[rid].objects.get(&key).cloned();
        value["apiVersion"] = json!(d.api_version());
        value["kind"] = json!(d.kind);
        let spec_changed = old.as_ref().is_none_or(|o| o.value.get("spec") != value.get("spec"));
        let meta = &mut value["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        let old_meta = old.as_ref().map(|o| &o.value["metadata"]);
        for keep in ["uid", "creationTimestamp"] {
            if meta[keep].is_null() {
                if let Some(v) = old_meta.map(|m| &m[keep]).filter(|v| !v.is_null()) {
                    meta[keep] = v.clone();
                }
            }
        }
        if meta["uid"].is_null() {
            meta["uid"] = json!(format!("00000000-0000-4000-8000-{seq:012x}"));
        }
        let old_generation = old_meta.and_then(|m| m["generation"].as_i64());
        if origin == Origin::Http || meta["generation"].is_null() {
            meta["generation"] = json!(match old_generation {
                Some(g) if spec_changed => g + 1,
                Some(g) => g,
                None => 1,
            });
        }
        let created = old.as_ref().map_or(rv, |o| o.created);
        let obj = Arc::new(Obj::new(value, created));
        let table = &mut self.tables[rid];
        table.objects.insert(key, obj.clone());
        let added = old.is_none();
        self.publish(
            rid,
            Change {
                rv,
                old,
                new: obj.clone(),
                deleted: false,
            },
        );
        Ok((obj, added))
    }

    /// Deletes an object: DELETED to watches. Returns its last state.
    pub fn remove(&mut self, rid: Rid, key: &Key) -> Option<Arc<Obj>> {
        let old = self.tables[rid].objects.remove(key)?;
        self.tables[rid].status_writes.remove(key);
        self.rv += 1;
        let rv = self.rv;
        let mut last = old.value.clone();
        last["metadata"]["resourceVersion"] = json!(rv.to_string());
        let last = Arc::new(Obj::new(last, old.created));
        self.publish(
            rid,
            Change {
                rv,
                old: Some(old),
                new: last.clone(),
                deleted: true,
            },
        );
        Some(last)
    }

    fn publish(&mut self, rid: Rid, change: Change) {
        let table = &mut self.tables[rid];
        let mut lines: [Option<Bytes>; 3] = [None, None, None];
        table.watchers.retain(|w| {
            let Some(ty) = change.event_for(&w.filter) else {
                return !w.tx.is_closed();
            };
            let slot = match ty {
                "ADDED" => 0,
                "MODIFIED" => 1,
                _ => 2,
            };
            let line = lines[slot].get_or_insert_with(|| event_line(ty, &change.new)).clone();
            w.tx.send(WatchMsg::Data(line)).is_ok()
        });
        table.log.push_back(change);
        if let Some(max) = self.history {
            while table.log.len() > max {
                if let Some(c) = table.log.pop_front() {
                    table.compacted = c.rv;
                }
            }
        }
    }

    /// A page of the objects `filter` selects, from the start or after a
    /// continue token, at most `limit` of them.
    pub fn list(&self, rid: Rid, filter: &Filter, limit: Option<usize>, cont: Option<&str>) -> Result<Page, ApiError> {
        let table = &self.tables[rid];
        let (rv, after) = match cont {
            None => (self.rv, None),
            Some(token) => {
                let (rv, key) = parse_continue(token)
                    .ok_or_else(|| ApiError::bad_request(format!("invalid continue token {token:?}")))?;
                if rv < table.compacted {
                    return Err(ApiError::gone(
                        "The provided continue parameter is too old to display a consistent list result. \
                         You can start a new list without the continue parameter.",
                    ));
                }
                (rv, Some(key))
            }
        };
        let lower = match (&after, &filter.namespace) {
            (Some(k), _) => Bound::Excluded(k.clone()),
            (None, Some(ns)) => Bound::Included((ns.clone(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        let ns = filter.namespace.as_deref();
        let mut matching = table
            .objects
            .range((lower, Bound::Unbounded))
            .take_while(|((k_ns, _), _)| ns.is_none_or(|n| n == k_ns))
            .filter(|(_, o)| filter.matches(&o.value));
        let limit = limit.unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut last = None;
        for (k, o) in matching.by_ref() {
            items.push(o.clone());
            last = Some(k);
            if items.len() == limit {
                break;
            }
        }
        let more = items.len() == limit && matching.next().is_some();
        let continue_ = match (more, last) {
            (true, Some((ns, name))) => Some(format!("{rv}/{ns}/{name}")),
            _ => None,
        };
        Ok(Page { rv, items, continue_ })
    }

    /// Opens a watch. `from`: replay the changes after this
    /// resourceVersion (410 if compacted); None: ADDED for every current
    /// object first (and, with `initial_end`, a bookmark marking their end).
    pub fn watch(
        &mut self,
        rid: Rid,
        filter: Filter,
        from: Option<u64>,
        bookmarks: bool,
        initial_end: bool,
    ) -> WatchRx {
        let (tx, rx) = mpsc::unbounded_channel();
        let rv = self.rv;
        let table = &mut self.tables[rid];
        match from {
            Some(r) if r < table.compacted => {
                let err = ApiError::too_old(r, table.compacted);
                let _ = tx.send(WatchMsg::Data(json_line(
                    &json!({"type": "ERROR", "object": err.to_json()}),
                )));
                let _ = tx.send(WatchMsg::End);
                return rx;
            }
            Some(r) => {
                let start = table.log.partition_point(|c| c.rv <= r);
                for c in table.log.range(start..) {
                    if let Some(ty) = c.event_for(&filter) {
                        let _ = tx.send(WatchMsg::Data(event_line(ty, &c.new)));
                    }
                }
            }
            None => {
                for o in table.objects.values().filter(|o| filter.matches(&o.value)) {
                    let _ = tx.send(WatchMsg::Data(event_line("ADDED", o)));
                }
                if initial_end {
                    let _ = tx.send(WatchMsg::Data(bookmark_line(rid, rv, true)));
                }
            }
        }
        table.watchers.push(Watcher { filter, bookmarks, tx });
        rx
    }

    /// Sends a BOOKMARK at the current resourceVersion to every watch that
    /// allowed them.
    pub fn bookmark(&mut self) {
        let rv = self.rv;
        for (rid, table) in self.tables.iter_mut().enumerate() {
            if !table.watchers.iter().any(|w| w.bookmarks) {
                continue;
            }
            let line = bookmark_line(rid, rv, false);
            table
                .watchers
                .retain(|w| !w.bookmarks || w.tx.send(WatchMsg::Data(line.clone())).is_ok());
        }
    }

    /// Ends every open watch, cleanly or by breaking its connection.
    /// Returns how many there were.
    pub fn close_watches(&mut self, abort: bool) -> usize {
        let mut n = 0;
        for table in &mut self.tables {
            for w in table.watchers.drain(..) {
                if w.tx.send(if abort { WatchMsg::Abort } else { WatchMsg::End }).is_ok() {
                    n += 1;
                }
            }
        }
        n
    }

    /// Open watches per resource (plural).
    pub fn watch_counts(&mut self) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        for (rid, table) in self.tables.iter_mut().enumerate() {
            table.watchers.retain(|w| !w.tx.is_closed());
            if !table.watchers.is_empty() {
                out.insert(def(rid).plural, table.watchers.len());
            }
        }
        out
    }

    /// Forgets the change log and makes every resourceVersion handed out so
    /// far too old: watches and continued lists from them get 410 Gone.
    /// Returns the new (oldest valid) resourceVersion.
    pub fn compact(&mut self) -> u64 {
        self.rv += 1;
        for table in &mut self.tables {
            table.log.clear();
            table.compacted = self.rv;
        }
        self.rv
    }

    /// True if a list at `rv` can no longer be served exactly.
    pub fn is_compacted(&self, rid: Rid, rv: u64) -> bool {
        rv < self.tables[rid].compacted
    }
}

fn bookmark_line(rid: Rid, rv: u64, initial_end: bool) -> Bytes {
    let d = def(rid);
    let mut meta = json!({ "resourceVersion": rv.to_string() });
    if initial_end {
        meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    json_line(&json!({
        "type": "BOOKMARK",
        "object": { "kind": d.kind, "apiVersion": d.api_version(), "metadata": meta },
    }))
}

fn parse_continue(token: &str) -> Option<(u64, Key)> {
    let mut parts = token.splitn(3, '/');
    let rv = parts.next()?.parse().ok()?;
    let ns = parts.next()?.to_owned();
    let name = parts.next()?.to_owned();
    Some((rv, (ns, name)))
}

/// The key of `obj` in `rid`'s table: its name, and its namespace if the
/// resource is namespaced (required then, refused otherwise).
pub fn key_of(rid: Rid, obj: &Value) -> Result<Key, String> {
    let d = def(rid);
    let meta = &obj["metadata"];
    let name = meta["name"].as_str().filter(|n| !n.is_empty());
    let Some(name) = name else {
        return Err(format!("a {} needs metadata.name", d.kind));
    };
    let ns = meta["namespace"].as_str().unwrap_or_default();
    match (d.namespaced, ns.is_empty()) {
        (true, true) => Err(format!("a {} needs metadata.namespace", d.kind)),
        (false, false) => Err(format!("a {} is not namespaced", d.kind)),
        _ => Ok((ns.to_owned(), name.to_owned())),
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use super::*;
    use crate::fake_apiserver::resources::resolve;

    fn svc(ns: &str, name: &str, app: &str) -> Value {
        json!({"metadata": {"namespace": ns, "name": name, "labels": {"app": app}}, "spec": {"clusterIP": "10.0.0.1"}})
    }

    fn drain(rx: &mut WatchRx) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            match m {
                WatchMsg::Data(b) => {
                    for l in b.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
                        out.push(serde_json::from_slice(l).unwrap());
                    }
                }
                WatchMsg::End => out.push(json!("END")),
                WatchMsg::Abort => out.push(json!("ABORT")),
            }
        }
        out
    }

    fn types(events: &[Value]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e["type"].as_str() {
                Some(t) => format!("{t} {}", e["object"]["metadata"]["name"].as_str().unwrap_or("-")),
                None => e.as_str().unwrap().to_owned(),
            })
            .collect()
    }

    fn filter(rid: Rid, labels: &str) -> Filter {
        Filter::new(def(rid), None, None, Some(labels)).unwrap()
    }

    #[test]
    fn watches_see_changes_through_their_filter() {
        let rid = resolve("services").unwrap();
        let mut s = Store::new(None);
        let mut w = s.watch(rid, filter(rid, "app=x"), Some(s.rv()), true, false);
        s.put(rid, svc("a", "s1", "x"), Origin::Control).unwrap();
        s.put(rid, svc("a", "s2", "y"), Origin::Control).unwrap();
        s.put(rid, svc("a", "s2", "x"), Origin::Control).unwrap();
        s.put(rid, svc("a", "s1", "z"), Origin::Control).unwrap();
        s.remove(rid, &("a".into(), "s2".into())).unwrap();
        s.bookmark();
        let ev = drain(&mut w);
        assert_eq!(
            types(&ev),
            ["ADDED s1", "ADDED s2", "DELETED s1", "DELETED s2", "BOOKMARK -"]
        );
        assert_eq!(ev[4]["object"]["metadata"]["resourceVersion"], s.rv().to_string());
        assert_eq!(ev[3]["object"]["metadata"]["resourceVersion"], s.rv().to_string());
    }

    #[test]
    fn resumed_watches_replay_and_compaction_expires_them() {
        let rid = resolve("services").unwrap();
        let mut s = Store::new(None);
        s.put(rid, svc("a", "s1", "x"), Origin::Control).unwrap();
        let mark = s.rv();
        s.put(rid, svc("a", "s2", "x"), Origin::Control).unwrap();
        s.put(rid, svc("a", "s1", "y"), Origin::Control).unwrap();
        let mut w = s.watch(rid, filter(rid, ""), Some(mark), false, false);
        assert_eq!(types(&drain(&mut w)), ["ADDED s2", "MODIFIED s1"]);
        let mut all = s.watch(rid, filter(rid, ""), None, false, true);
        assert_eq!(types(&drain(&mut all)), ["ADDED s1", "ADDED s2", "BOOKMARK -"]);
        let now = s.rv();
        let oldest = s.compact();
        assert!(oldest > now);
        let mut old = s.watch(rid, filter(rid, ""), Some(now), false, false);
        let ev = drain(&mut old);
        assert_eq!(ev[0]["type"], "ERROR");
        assert_eq!(ev[0]["object"]["code"], 410);
        assert_eq!(ev[1], "END");
        let mut fresh = s.watch(rid, filter(rid, ""), Some(oldest), false, false);
        assert!(drain(&mut fresh).is_empty());
        assert_eq!(s.close_watches(false), 3);
        assert_eq!(types(&drain(&mut fresh)), ["END"]);
    }

    #[test]
    fn history_limit_compacts_per_resource() {
        let rid = resolve("services").unwrap();
        let mut s = Store::new(Some(2));
        let start = s.rv();
        for i in 0..3 {
            s.put(rid, svc("a", &format!("s{i}"), "x"), Origin::Control).unwrap();
        }
        let mut w = s.watch(rid, filter(rid, ""), Some(start), false, false);
        assert_eq!(drain(&mut w)[0]["object"]["code"], 410);
        let mut w = s.watch(rid, filter(rid, ""), Some(start + 1), false, false);
        assert_eq!(types(&drain(&mut w)), ["ADDED s1", "ADDED s2"]);
    }

    #[test]
    fn lists_page_with_continue_tokens() {
        let rid = resolve("services").unwrap();
        let mut s = Store::new(None);
        for ns in ["a", "b"] {
            for i in 0..5 {
                s.put(
                    rid,
                    svc(ns, &format!("s{i}"), if i % 2 == 0 { "even" } else { "odd" }),
                    Origin::Control,
                )
                .unwrap();
            }
        }
        let f = Filter::new(def(rid), Some("b".into()), None, Some("app=even")).unwrap();
        let p1 = s.list(rid, &f, Some(2), None).unwrap();
        let names = |p: &Page| -> Vec<String> {
            p.items
                .iter()
                .map(|o| o.value["metadata"]["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(names(&p1), ["s0", "s2"]);
        let token = p1.continue_.clone().unwrap();
        s.put(rid, svc("a", "late", "even"), Origin::Control).unwrap();
        let p2 = s.list(rid, &f, Some(2), Some(&token)).unwrap();
        assert_eq!(names(&p2), ["s4"]);
        assert_eq!(p2.continue_, None);
        assert_eq!(p2.rv, p1.rv, "pages report the first page's resourceVersion");
        s.compact();
        assert_eq!(s.list(rid, &f, Some(2), Some(&token)).err().unwrap().code, 410);
        assert_eq!(s.list(rid, &f, None, Some("junk")).err().unwrap().code, 400);
        let all = s.list(rid, &filter(rid, ""), None, None).unwrap();
        assert_eq!(all.items.len(), 11);
    }

    #[test]
    fn objects_get_server_fields() {
        let rid = resolve("services").unwrap();
        let mut s = Store::new(None);
        let (o, added) = s.put(rid, svc("a", "s", "x"), Origin::Http).unwrap();
        assert!(added);
        assert_eq!(o.value["kind"], "Service");
        assert_eq!(o.value["apiVersion"], "v1");
        assert_eq!(o.value["metadata"]["generation"], 1);
        let uid = o.value["metadata"]["uid"].clone();
        assert!(uid.is_string());
        let mut changed = svc("a", "s", "y");
        let (o, added) = s.put(rid, changed.clone(), Origin::Http).unwrap();
        assert!(!added);
        assert_eq!(o.value["metadata"]["uid"], uid);
        assert_eq!(o.value["metadata"]["generation"], 1, "labels are not spec");
        changed["spec"]["clusterIP"] = json!("10.0.0.2");
        let (o, _) = s.put(rid, changed, Origin::Http).unwrap();
        assert_eq!(o.value["metadata"]["generation"], 2);
        assert!(s.put(rid, json!({"metadata": {"name": "n"}}), Origin::Control).is_err());
        let ns = resolve("namespaces").unwrap();
        assert!(s
            .put(
                ns,
                json!({"metadata": {"name": "n", "namespace": "x"}}),
                Origin::Control
            )
            .is_err());
    }
}
