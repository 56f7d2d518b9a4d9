//! The object kinds the test apiserver stores, and their API facts.

/// A stored kind.
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
    /// `serviceaccounts` (tokens come from their `token` subresource).
    ServiceAccount,
    /// `secrets`.
    Secret,
    /// `nodes`, cluster-scoped.
    Node,
    /// `rbac.authorization.k8s.io/v1` `clusterroles`, cluster-scoped.
    ClusterRole,
    /// `rbac.authorization.k8s.io/v1` `clusterrolebindings`, cluster-scoped.
    ClusterRoleBinding,
    /// `rbac.authorization.k8s.io/v1` `roles`.
    Role,
    /// `rbac.authorization.k8s.io/v1` `rolebindings`.
    RoleBinding,
    /// `apps/v1` `deployments` (stored only: no controller acts on them).
    Deployment,
}

/// The RBAC API group.
pub(crate) const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

const NAMESPACED_VERBS: [&str; 8] =
    ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
const NAMESPACE_VERBS: [&str; 7] = ["create", "delete", "get", "list", "patch", "update", "watch"];

/// A subresource listed in discovery: name, response kind (with its group
/// and version when they differ from the resource's), verbs.
pub(crate) struct Subresource {
    pub name: &'static str,
    pub kind: &'static str,
    /// `(group, version)` of `kind`, when not the resource's own.
    pub group_version: Option<(&'static str, &'static str)>,
    pub verbs: &'static [&'static str],
}

const fn sub(name: &'static str, kind: &'static str, verbs: &'static [&'static str]) -> Subresource {
    Subresource { name, kind, group_version: None, verbs }
}

/// The pod subresources listed in discovery.
pub(crate) const POD_SUBRESOURCES: [Subresource; 4] = [
    sub("log", "Pod", &["get"]),
    sub("exec", "PodExecOptions", &["create", "get"]),
    sub("attach", "PodAttachOptions", &["create", "get"]),
    sub("portforward", "PodPortForwardOptions", &["create", "get"]),
];

/// `serviceaccounts/token`: the TokenRequest API.
const SERVICE_ACCOUNT_SUBRESOURCES: [Subresource; 1] = [Subresource {
    name: "token",
    kind: "TokenRequest",
    group_version: Some(("authentication.k8s.io", "v1")),
    verbs: &["create"],
}];

impl ResourceKind {
    /// Every stored kind, in discovery order (by plural within a group).
    pub const ALL: [ResourceKind; 12] = [
        ResourceKind::ConfigMap,
        ResourceKind::Event,
        ResourceKind::Namespace,
        ResourceKind::Node,
        ResourceKind::Pod,
        ResourceKind::Secret,
        ResourceKind::ServiceAccount,
        ResourceKind::Deployment,
        ResourceKind::ClusterRoleBinding,
        ResourceKind::ClusterRole,
        ResourceKind::RoleBinding,
        ResourceKind::Role,
    ];

    /// From the API group and plural resource name.
    pub fn from_plural(group: &str, s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.group() == group && k.plural() == s)
    }

    /// The API group (`""` for core).
    pub fn group(self) -> &'static str {
        match self {
            Self::Deployment => "apps",
            Self::ClusterRole | Self::ClusterRoleBinding | Self::Role | Self::RoleBinding => RBAC_GROUP,
            _ => "",
        }
    }

    /// The one version served (`v1` for every kind here).
    pub fn version(self) -> &'static str {
        "v1"
    }

    /// `v1`, `apps/v1`, ...: the objects' `apiVersion`.
    pub fn api_version(self) -> String {
        match self.group() {
            "" => self.version().to_string(),
            g => format!("{g}/{}", self.version()),
        }
    }

    /// `configmaps`.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Namespace => "namespaces",
            Self::ConfigMap => "configmaps",
            Self::Event => "events",
            Self::Pod => "pods",
            Self::ServiceAccount => "serviceaccounts",
            Self::Secret => "secrets",
            Self::Node => "nodes",
            Self::ClusterRole => "clusterroles",
            Self::ClusterRoleBinding => "clusterrolebindings",
            Self::Role => "roles",
            Self::RoleBinding => "rolebindings",
            Self::Deployment => "deployments",
        }
    }

    /// `configmap`.
    pub fn singular(self) -> String {
        self.kind().to_ascii_lowercase()
    }

    /// `ConfigMap`.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Namespace => "Namespace",
            Self::ConfigMap => "ConfigMap",
            Self::Event => "Event",
            Self::Pod => "Pod",
            Self::ServiceAccount => "ServiceAccount",
            Self::Secret => "Secret",
            Self::Node => "Node",
            Self::ClusterRole => "ClusterRole",
            Self::ClusterRoleBinding => "ClusterRoleBinding",
            Self::Role => "Role",
            Self::RoleBinding => "RoleBinding",
            Self::Deployment => "Deployment",
        }
    }

    /// `Deployment.apps`, `ConfigMap`: how errors name the kind.
    pub fn qualified_kind(self) -> String {
        match self.group() {
            "" => self.kind().to_string(),
            g => format!("{}.{g}", self.kind()),
        }
    }

    /// `deployments.apps`, `configmaps`: how errors name the resource.
    pub fn qualified_plural(self) -> String {
        qualified_resource(self.plural(), self.group())
    }

    /// `ConfigMapList`.
    pub fn list_kind(self) -> String {
        format!("{}List", self.kind())
    }

    /// Whether objects live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Self::Namespace | Self::Node | Self::ClusterRole | Self::ClusterRoleBinding)
    }

    /// Whether a delete removes the object at once (answered with a
    /// `Status`) rather than marking it (answered with the object).
    pub fn deleted_at_once(self) -> bool {
        !matches!(self, Self::Pod | Self::Namespace)
    }

    /// kubectl short names.
    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Self::Namespace => &["ns"],
            Self::ConfigMap => &["cm"],
            Self::Event => &["ev"],
            Self::Pod => &["po"],
            Self::ServiceAccount => &["sa"],
            Self::Node => &["no"],
            Self::Deployment => &["deploy"],
            Self::Secret | Self::ClusterRole | Self::ClusterRoleBinding | Self::Role | Self::RoleBinding => {
                &[]
            }
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
            Self::Pod | Self::Deployment => &["all"],
            _ => &[],
        }
    }

    /// Subresources listed in discovery.
    pub fn subresources(self) -> &'static [Subresource] {
        match self {
            Self::Pod => &POD_SUBRESOURCES,
            Self::ServiceAccount => &SERVICE_ACCOUNT_SUBRESOURCES,
            _ => &[],
        }
    }

    /// Fields usable in a field selector, besides `metadata.name` and
    /// `metadata.namespace` (as kube-apiserver registers them).
    pub fn selectable_fields(self) -> &'static [&'static str] {
        match self {
            Self::Namespace => &["status.phase"],
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
            Self::Secret => &["type"],
            Self::Node => &["spec.unschedulable"],
            _ => &[],
        }
    }
}

/// `resource.group` (just `resource` in the core group), as kube-apiserver
/// names a resource in error messages.
pub(crate) fn qualified_resource(resource: &str, group: &str) -> String {
    if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") }
}
