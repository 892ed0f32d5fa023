//! The state of the API double: known resources, stored objects, the event
//! history and the open watches. Every write goes through [`Store::write`]
//! or [`Store::delete`], which assign metadata and emit watch events.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::jsonops::{FieldReq, LabelReq, fields_match, labels_match, now_rfc3339};

/// Events kept for watch resumption; older resourceVersions get 410.
pub const HISTORY: usize = 10_000;

/// A resource type the double serves.
#[derive(Clone, Debug)]
pub struct Res {
    pub api_version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    /// Has a `status` subresource.
    pub status: bool,
}

/// (apiVersion, plural, kind, namespaced, status subresource)
const BUILTIN: &[(&str, &str, &str, bool, bool)] = &[
    ("v1", "pods", "Pod", true, true),
    ("v1", "services", "Service", true, true),
    ("v1", "configmaps", "ConfigMap", true, false),
    ("v1", "secrets", "Secret", true, false),
    ("v1", "serviceaccounts", "ServiceAccount", true, false),
    ("v1", "events", "Event", true, false),
    ("v1", "endpoints", "Endpoints", true, false),
    (
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        true,
        true,
    ),
    ("v1", "namespaces", "Namespace", false, true),
    ("v1", "nodes", "Node", false, true),
    ("apps/v1", "daemonsets", "DaemonSet", true, true),
    ("apps/v1", "deployments", "Deployment", true, true),
    ("apps/v1", "statefulsets", "StatefulSet", true, true),
    ("apps/v1", "replicasets", "ReplicaSet", true, true),
    ("rbac.authorization.k8s.io/v1", "roles", "Role", true, false),
    (
        "rbac.authorization.k8s.io/v1",
        "rolebindings",
        "RoleBinding",
        true,
        false,
    ),
    (
        "rbac.authorization.k8s.io/v1",
        "clusterroles",
        "ClusterRole",
        false,
        false,
    ),
    (
        "rbac.authorization.k8s.io/v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        false,
    ),
    ("coordination.k8s.io/v1", "leases", "Lease", true, false),
    ("events.k8s.io/v1", "events", "Event", true, false),
    (
        "discovery.k8s.io/v1",
        "endpointslices",
        "EndpointSlice",
        true,
        false,
    ),
    (
        "policy/v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
        true,
    ),
    (
        "apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        true,
    ),
    (
        "kvmesh.io/v1alpha1",
        "kvcachepools",
        "KvCachePool",
        true,
        true,
    ),
    (
        "inference.networking.k8s.io/v1",
        "inferencepools",
        "InferencePool",
        true,
        true,
    ),
];

/// (apiVersion, plural, namespace — "" when cluster-scoped, name)
pub type Key = (String, String, String, String);

/// One change, as watches see it.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub api_version: String,
    pub plural: String,
    pub namespace: String,
    /// "ADDED", "MODIFIED" or "DELETED".
    pub kind: &'static str,
    /// The object after the change (its last state for DELETED).
    pub object: Value,
    /// The object before the change.
    pub prev: Option<Value>,
}

/// Who writes: (fieldManager, "Apply" | "Update", subresource "" | "status").
pub type Manager<'a> = (&'a str, &'static str, &'static str);

pub struct Store {
    pub rv: u64,
    pub objects: BTreeMap<Key, Value>,
    pub history: VecDeque<Arc<Event>>,
    /// Events with a resourceVersion ≤ floor may have been dropped.
    pub floor: u64,
    pub watchers: Vec<mpsc::UnboundedSender<Arc<Event>>>,
    pub failing: bool,
    pub requests: Vec<String>,
    pub resources: Vec<Res>,
    seed: u64,
    uids: u64,
}

fn meta(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let o = obj.as_object_mut().expect("made an object above");
    if !o.get("metadata").is_some_and(Value::is_object) {
        o.insert("metadata".into(), json!({}));
    }
    o.get_mut("metadata")
        .and_then(Value::as_object_mut)
        .expect("made an object above")
}

/// The object without the parts whose change leaves `generation` alone.
fn generation_relevant(obj: &Value) -> Value {
    let mut c = obj.clone();
    if let Some(o) = c.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            o.remove(k);
        }
    }
    c
}

/// The object without what every write changes anyway.
fn without_bookkeeping(obj: &Value) -> Value {
    let mut c = obj.clone();
    let m = meta(&mut c);
    m.remove("resourceVersion");
    m.remove("managedFields");
    c
}

pub fn finalizers_pending(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

pub fn uid_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/uid").and_then(Value::as_str)
}

impl Store {
    pub fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self {
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            floor: 0,
            watchers: Vec::new(),
            failing: false,
            requests: Vec::new(),
            resources: BUILTIN
                .iter()
                .map(|&(a, p, k, n, s)| Res {
                    api_version: a.into(),
                    plural: p.into(),
                    kind: k.into(),
                    namespaced: n,
                    status: s,
                })
                .collect(),
            seed,
            uids: 0,
        }
    }

    pub fn resource(&self, api_version: &str, plural: &str) -> Option<Res> {
        self.resources
            .iter()
            .find(|r| r.api_version == api_version && r.plural == plural)
            .cloned()
    }

    pub fn key(res: &Res, namespace: &str, name: &str) -> Key {
        let ns = if res.namespaced { namespace } else { "" };
        (
            res.api_version.clone(),
            res.plural.clone(),
            ns.into(),
            name.into(),
        )
    }

    fn next_id(&mut self) -> u64 {
        self.uids += 1;
        self.uids
    }

    /// A fresh uid, unique across doubles started at different instants.
    pub fn new_uid(&mut self) -> String {
        let n = self.next_id();
        format!(
            "{:08x}-{:04x}-4000-8000-{n:012x}",
            self.seed as u32,
            (self.seed >> 32) as u16
        )
    }

    /// Five characters for `metadata.generateName`.
    pub fn name_suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut x = (self.seed ^ self.next_id().wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .wrapping_mul(0xBF58_476D_1CE4_E5B9);
        (0..5)
            .map(|_| {
                let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
                x /= ALPHABET.len() as u64;
                c
            })
            .collect()
    }

    fn emit(&mut self, ev: Event) {
        let ev = Arc::new(ev);
        self.history.push_back(ev.clone());
        while self.history.len() > HISTORY {
            if let Some(old) = self.history.pop_front() {
                self.floor = old.rv;
            }
        }
        self.watchers.retain(|w| w.send(ev.clone()).is_ok());
    }

    /// Forgets the event history: watches resuming from any earlier
    /// resourceVersion get 410 Expired.
    pub fn compact(&mut self) {
        self.history.clear();
        self.floor = self.rv;
    }

    /// Stores `obj` as the new state of `res`/`namespace`/`name` (created if
    /// absent), keeping what clients cannot change (uid, creationTimestamp,
    /// deletionTimestamp, managedFields), bumping `generation` when anything
    /// outside metadata and status changed, and emitting a watch event. A
    /// write that changes nothing is a no-op (no new resourceVersion, no
    /// event), as with the real apiserver. `dry` computes without storing.
    pub fn write(
        &mut self,
        res: &Res,
        namespace: &str,
        name: &str,
        mut obj: Value,
        by: Option<Manager>,
        dry: bool,
    ) -> Value {
        let key = Self::key(res, namespace, name);
        let old = self.objects.get(&key).cloned();
        let o = obj.as_object_mut().expect("objects are JSON objects");
        o.insert("apiVersion".into(), json!(res.api_version));
        o.insert("kind".into(), json!(res.kind));
        let m = meta(&mut obj);
        m.insert("name".into(), json!(name));
        if res.namespaced {
            m.insert("namespace".into(), json!(key.2));
        } else {
            m.remove("namespace");
        }
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
        ] {
            match old.as_ref().and_then(|old| old["metadata"].get(k)) {
                Some(v) => m.insert(k.into(), v.clone()),
                None => m.remove(k),
            };
        }
        let generation = match &old {
            Some(old) => {
                let g = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                g + i64::from(generation_relevant(old) != generation_relevant(&obj))
            }
            None => 1,
        };
        let m = meta(&mut obj);
        m.insert("generation".into(), json!(generation));
        if let Some(old) = &old {
            m.insert(
                "resourceVersion".into(),
                old["metadata"]["resourceVersion"].clone(),
            );
            if without_bookkeeping(old) == without_bookkeeping(&obj) {
                return old.clone();
            }
        }
        if dry {
            return obj;
        }
        if old.is_none() {
            let uid = self.new_uid();
            let m = meta(&mut obj);
            m.insert("uid".into(), json!(uid));
            m.insert("creationTimestamp".into(), json!(now_rfc3339()));
        }
        if let Some((manager, operation, subresource)) = by {
            record_manager(
                meta(&mut obj),
                &res.api_version,
                manager,
                operation,
                subresource,
            );
        }
        if old
            .as_ref()
            .is_some_and(|o| o.pointer("/metadata/deletionTimestamp").is_some())
            && !finalizers_pending(&obj)
        {
            // The last finalizer is gone: the pending deletion completes.
            return self.remove_now(&key, obj, old);
        }
        self.rv += 1;
        meta(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.objects.insert(key.clone(), obj.clone());
        self.emit(Event {
            rv: self.rv,
            api_version: key.0.clone(),
            plural: key.1.clone(),
            namespace: key.2.clone(),
            kind: if old.is_some() { "MODIFIED" } else { "ADDED" },
            object: obj.clone(),
            prev: old,
        });
        let owners = owner_uids(&obj);
        if !owners.is_empty() && owners.iter().all(|u| !self.uid_exists(u)) {
            // Written with only absent owners: the garbage collector removes it.
            self.delete(&key, false);
        }
        obj
    }

    fn uid_exists(&self, uid: &str) -> bool {
        self.objects.values().any(|o| uid_of(o) == Some(uid))
    }

    /// Deletes an object: with finalizers it only gets a deletionTimestamp
    /// (and stays until they are removed); otherwise it goes at once and its
    /// dependents are garbage-collected. Returns (object, gone now).
    pub fn delete(&mut self, key: &Key, dry: bool) -> Option<(Value, bool)> {
        let obj = self.objects.get(key)?.clone();
        if dry {
            let gone = !finalizers_pending(&obj);
            return Some((obj, gone));
        }
        if finalizers_pending(&obj) {
            if obj.pointer("/metadata/deletionTimestamp").is_some() {
                return Some((obj, false));
            }
            let mut marked = obj.clone();
            let m = meta(&mut marked);
            m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            self.rv += 1;
            m.insert("resourceVersion".into(), json!(self.rv.to_string()));
            self.objects.insert(key.clone(), marked.clone());
            self.emit(Event {
                rv: self.rv,
                api_version: key.0.clone(),
                plural: key.1.clone(),
                namespace: key.2.clone(),
                kind: "MODIFIED",
                object: marked.clone(),
                prev: Some(obj),
            });
            return Some((marked, false));
        }
        Some((self.remove_now(key, obj.clone(), Some(obj)), true))
    }

    fn remove_now(&mut self, key: &Key, mut obj: Value, prev: Option<Value>) -> Value {
        self.objects.remove(key);
        self.rv += 1;
        meta(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.emit(Event {
            rv: self.rv,
            api_version: key.0.clone(),
            plural: key.1.clone(),
            namespace: key.2.clone(),
            kind: "DELETED",
            object: obj.clone(),
            prev,
        });
        if let Some(uid) = uid_of(&obj) {
            self.collect_dependents(uid);
        }
        obj
    }

    /// The garbage collector, synchronously: deletes every object that has
    /// an ownerReference to `uid` and no owner left.
    fn collect_dependents(&mut self, uid: &str) {
        let alive: HashSet<String> = self
            .objects
            .values()
            .filter_map(uid_of)
            .map(String::from)
            .collect();
        let orphans: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, o)| {
                let owners = owner_uids(o);
                owners.contains(&uid) && owners.iter().all(|u| !alive.contains(*u))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in orphans {
            self.delete(&k, false);
        }
    }
}

/// The uids in `metadata.ownerReferences`.
fn owner_uids(obj: &Value) -> Vec<&str> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

fn record_manager(
    m: &mut Map<String, Value>,
    api_version: &str,
    manager: &str,
    operation: &str,
    subresource: &str,
) {
    let entries = m.entry("managedFields").or_insert_with(|| json!([]));
    let Some(list) = entries.as_array_mut() else {
        return;
    };
    let same = |e: &Value| {
        e["manager"] == manager
            && e["operation"] == operation
            && e.get("subresource").and_then(Value::as_str).unwrap_or("") == subresource
    };
    list.retain(|e| !same(e));
    let mut entry = json!({"manager": manager, "operation": operation, "apiVersion": api_version, "time": now_rfc3339()});
    if !subresource.is_empty() {
        entry["subresource"] = json!(subresource);
    }
    list.push(entry);
}

/// What one watch (or list) selects, and how it renders events.
#[derive(Clone, Debug)]
pub struct Filter {
    pub api_version: String,
    pub plural: String,
    /// None: all namespaces.
    pub namespace: Option<String>,
    pub labels: Vec<LabelReq>,
    pub fields: Vec<FieldReq>,
    /// Answer PartialObjectMetadata instead of full objects.
    pub meta_only: bool,
}

impl Filter {
    pub fn selects_type(&self, api_version: &str, plural: &str, namespace: &str) -> bool {
        self.api_version == api_version
            && self.plural == plural
            && self.namespace.as_deref().is_none_or(|n| n == namespace)
    }

    pub fn matches(&self, obj: &Value) -> bool {
        labels_match(&self.labels, obj) && fields_match(&self.fields, obj)
    }

    pub fn render(&self, obj: &Value) -> Value {
        if self.meta_only {
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj["metadata"]})
        } else {
            obj.clone()
        }
    }

    /// The watch line for an event, if this watch sees it. An object that
    /// starts or stops matching the selectors appears ADDED or DELETED.
    pub fn event_line(&self, ev: &Event) -> Option<Bytes> {
        if !self.selects_type(&ev.api_version, &ev.plural, &ev.namespace) {
            return None;
        }
        let now = self.matches(&ev.object);
        let before = ev.prev.as_ref().is_some_and(|p| self.matches(p));
        let kind = match (ev.kind, before, now) {
            ("ADDED", _, true) => "ADDED",
            ("DELETED", _, true) => "DELETED",
            ("MODIFIED", true, true) => "MODIFIED",
            ("MODIFIED", false, true) => "ADDED",
            ("MODIFIED", true, false) => "DELETED",
            _ => return None,
        };
        Some(line(kind, self.render(&ev.object)))
    }
}

pub fn line(kind: &str, object: Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}
