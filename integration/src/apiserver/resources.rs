//! The object kinds the test apiserver stores, and their API facts.

/// A stored kind (all core `v1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum ResourceKind {
    /// `namespaces`, cluster-scoped.
    Namespace,
    /// `configmaps`.
    ConfigMap,
    /// `pods`.
    Pod,
    /// `events` (core `v1`), read by `kubectl describe`.
    Event,
}

const NAMESPACED_VERBS: [&str; 8] =
    ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
const NAMESPACE_VERBS: [&str; 7] = ["create", "delete", "get", "list", "patch", "update", "watch"];

/// A pod subresource listed in discovery: name, response kind, verbs.
pub(crate) struct Subresource {
    pub name: &'static str,
    pub kind: &'static str,
    pub verbs: &'static [&'static str],
}

/// The pod subresources listed in discovery (only `log` is served).
pub(crate) const POD_SUBRESOURCES: [Subresource; 4] = [
    Subresource { name: "log", kind: "Pod", verbs: &["get"] },
    Subresource { name: "exec", kind: "PodExecOptions", verbs: &["create", "get"] },
    Subresource { name: "attach", kind: "PodAttachOptions", verbs: &["create", "get"] },
    Subresource { name: "portforward", kind: "PodPortForwardOptions", verbs: &["create", "get"] },
];

impl ResourceKind {
    /// Every stored kind, in discovery order.
    pub const ALL: [ResourceKind; 4] =
        [ResourceKind::ConfigMap, ResourceKind::Event, ResourceKind::Namespace, ResourceKind::Pod];

    /// From the plural resource name.
    pub fn from_plural(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.plural() == s)
    }

    /// `configmaps`.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Namespace => "namespaces",
            Self::ConfigMap => "configmaps",
            Self::Event => "events",
            Self::Pod => "pods",
        }
    }

    /// `configmap`.
    pub fn singular(self) -> &'static str {
        match self {
            Self::Namespace => "namespace",
            Self::ConfigMap => "configmap",
            Self::Event => "event",
            Self::Pod => "pod",
        }
    }

    /// `ConfigMap`.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Namespace => "Namespace",
            Self::ConfigMap => "ConfigMap",
            Self::Event => "Event",
            Self::Pod => "Pod",
        }
    }

    /// `ConfigMapList`.
    pub fn list_kind(self) -> String {
        format!("{}List", self.kind())
    }

    /// Whether objects live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Self::Namespace)
    }

    /// kubectl short names.
    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Self::Namespace => &["ns"],
            Self::ConfigMap => &["cm"],
            Self::Event => &["ev"],
            Self::Pod => &["po"],
        }
    }

    /// Supported verbs.
    pub fn verbs(self) -> &'static [&'static str] {
        match self {
            Self::Namespace => &NAMESPACE_VERBS,
            _ => &NAMESPACED_VERBS,
        }
    }

    /// Categories (`kubectl get all`).
    pub fn categories(self) -> &'static [&'static str] {
        match self {
            Self::Pod => &["all"],
            _ => &[],
        }
    }

    /// Subresources listed in discovery.
    pub fn subresources(self) -> &'static [Subresource] {
        match self {
            Self::Pod => &POD_SUBRESOURCES,
            _ => &[],
        }
    }

    /// Fields usable in a field selector, besides `metadata.name` and
    /// `metadata.namespace` (as kube-apiserver registers them).
    pub fn selectable_fields(self) -> &'static [&'static str] {
        match self {
            Self::Namespace => &["status.phase"],
            Self::ConfigMap => &[],
            Self::Event => &[
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ],
            Self::Pod => &[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
        }
    }
}
