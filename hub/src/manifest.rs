//! `agent.yaml`: everything a child cluster needs to run its agent, built
//! from the Kubernetes API types (so every field name is the real one) and
//! applied with `kubectl apply -f agent.yaml`.
//!
//! What it holds, and why each grant is there:
//! - Namespace `ferry-system`, ServiceAccount `ferry-agent`.
//! - ClusterRole `ferry-agent`, the least the agent needs: `impersonate` on
//!   `users`, `groups` (core) and on `authentication.k8s.io` resources (its
//!   only impersonable ones are `uids` and `userextras/KEY`; RBAC can name
//!   "any extra key" only with `*`) to act as each caller; `create` on
//!   `subjectaccessreviews` to check, as the apiserver would, that a caller
//!   using `kubectl --as` may impersonate whom they ask; `get`/`list` on
//!   `nodes` and `get` on `/version`, `/readyz`, `/livez`, `/healthz` for
//!   its status reports.
//! - Role `ferry-agent` in `ferry-system`: `get`/`update`/`patch` on its own
//!   credential Secret only (by name).
//! - Secret `ferry-agent-bootstrap`: the single-use bootstrap token and the
//!   hub CA the agent pins. Secret `ferry-agent-credential`: empty; the
//!   agent keeps its certificate there, so a restarted pod needs no token.
//! - Deployment `ferry-agent`: two replicas, both active, sharing the one
//!   credential Secret; non-root, read-only root filesystem, no privilege
//!   escalation, no capabilities; probes on the agent's health endpoint.
//! - With `--admin-group G`: a ClusterRoleBinding of G (as the child sees
//!   it) to `cluster-admin`, for import into a management plane. Nothing
//!   else grants more than the agent's own role.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Namespace,
    ObjectFieldSelector, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource, SecurityContext, ServiceAccount,
    Volume, VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

/// Namespace the agent runs in.
pub const NAMESPACE: &str = "ferry-system";
/// Name of the ServiceAccount, ClusterRole, Role, their bindings and the
/// Deployment.
pub const AGENT_NAME: &str = "ferry-agent";
/// Secret with the bootstrap token and the hub CA.
pub const BOOTSTRAP_SECRET: &str = "ferry-agent-bootstrap";
/// Secret the agent keeps its credential in.
pub const CREDENTIAL_SECRET: &str = "ferry-agent-credential";
/// Where the bootstrap Secret is mounted in the agent container.
pub const BOOTSTRAP_MOUNT: &str = "/etc/ferry/bootstrap";
/// Port of the agent's health endpoint.
pub const HEALTH_PORT: i32 = 8081;
/// Agent replicas: both active, so one may restart or move without
/// interrupting the cluster's traffic.
pub const REPLICAS: i32 = 2;
/// The non-root user the agent runs as (distroless `nonroot`).
pub const AGENT_UID: i64 = 65532;

/// What `agent.yaml` is made of.
pub struct ManifestSpec<'a> {
    /// Cluster name (for labels and comments).
    pub cluster: &'a str,
    /// The URL agents dial.
    pub hub_url: &'a str,
    /// The hub CA, PEM.
    pub hub_ca_pem: &'a str,
    /// The bootstrap token.
    pub token: &'a str,
    /// When the token expires (RFC 3339), for the header comment.
    pub token_expires: &'a str,
    /// Agent image.
    pub image: &'a str,
    /// A group (as the child cluster sees it) to bind to `cluster-admin`.
    pub admin_group: Option<&'a str>,
}

fn meta(name: &str, namespaced: bool, cluster: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespaced.then(|| NAMESPACE.to_owned()),
        labels: Some(labels(cluster)),
        ..Default::default()
    }
}

fn labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), AGENT_NAME.to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "ferry".to_owned()),
        ("ferry.dev/cluster".to_owned(), cluster.to_owned()),
    ])
}

fn strings(items: &[&str]) -> Option<Vec<String>> {
    Some(items.iter().map(|s| (*s).to_owned()).collect())
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: strings(groups),
        resources: strings(resources),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

/// The ClusterRole's rules (see the module docs for why each is there).
pub fn cluster_rules() -> Vec<PolicyRule> {
    vec![
        rule(&[""], &["users", "groups"], &["impersonate"]),
        rule(&["authentication.k8s.io"], &["*"], &["impersonate"]),
        rule(&["authorization.k8s.io"], &["subjectaccessreviews"], &["create"]),
        rule(&[""], &["nodes"], &["get", "list"]),
        PolicyRule {
            non_resource_urls: strings(&["/version", "/readyz", "/livez", "/healthz"]),
            verbs: vec!["get".to_owned()],
            ..Default::default()
        },
    ]
}

fn sa_subject() -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: AGENT_NAME.into(),
        namespace: Some(NAMESPACE.into()),
        ..Default::default()
    }
}

/// The agent's command line inside the pod.
pub fn agent_args(hub_url: &str) -> Vec<String> {
    [
        "--hub",
        hub_url,
        "--hub-ca",
        &format!("{BOOTSTRAP_MOUNT}/ca.crt"),
        "--token-file",
        &format!("{BOOTSTRAP_MOUNT}/token"),
        "--credential-secret",
        &format!("{NAMESPACE}/{CREDENTIAL_SECRET}"),
        "--health-listen",
        &format!("0.0.0.0:{HEALTH_PORT}"),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn deployment(spec: &ManifestSpec<'_>) -> Deployment {
    let selector = BTreeMap::from([("app.kubernetes.io/name".to_owned(), AGENT_NAME.to_owned())]);
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("health".into()),
            ..Default::default()
        }),
        period_seconds: Some(10),
        timeout_seconds: Some(3),
        failure_threshold: Some(3),
        ..Default::default()
    };
    let quantity = |q: &str| Quantity(q.to_owned());
    let container = Container {
        name: "agent".into(),
        image: Some(spec.image.to_owned()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(agent_args(spec.hub_url)),
        env: Some(vec![EnvVar {
            // A stable id per pod: a restarted container retrying an
            // enrollment whose answer it lost is recognised.
            name: "FERRY_AGENT_ID".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.uid".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ports: Some(vec![ContainerPort {
            name: Some("health".into()),
            container_port: HEALTH_PORT,
            ..Default::default()
        }]),
        liveness_probe: Some(probe("/healthz")),
        readiness_probe: Some(probe("/readyz")),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), quantity("50m")),
                ("memory".into(), quantity("64Mi")),
            ])),
            limits: Some(BTreeMap::from([
                ("cpu".into(), quantity("1")),
                ("memory".into(), quantity("256Mi")),
            ])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: strings(&["ALL"]), ..Default::default() }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "bootstrap".into(),
            mount_path: BOOTSTRAP_MOUNT.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    };
    Deployment {
        metadata: meta(AGENT_NAME, true, spec.cluster),
        spec: DeploymentSpec {
            replicas: Some(REPLICAS),
            selector: LabelSelector { match_labels: Some(selector.clone()), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(spec.cluster)), ..Default::default() }),
                spec: Some(PodSpec {
                    service_account_name: Some(AGENT_NAME.into()),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(AGENT_UID),
                        run_as_group: Some(AGENT_UID),
                        fs_group: Some(AGENT_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    // Replicas on different nodes where possible, so one
                    // node going away leaves an agent connected.
                    affinity: Some(k8s_openapi::api::core::v1::Affinity {
                        pod_anti_affinity: Some(PodAntiAffinity {
                            preferred_during_scheduling_ignored_during_execution: Some(vec![
                                WeightedPodAffinityTerm {
                                    weight: 100,
                                    pod_affinity_term: PodAffinityTerm {
                                        label_selector: Some(LabelSelector {
                                            match_labels: Some(selector),
                                            ..Default::default()
                                        }),
                                        topology_key: "kubernetes.io/hostname".into(),
                                        ..Default::default()
                                    },
                                },
                            ]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "bootstrap".into(),
                        secret: Some(SecretVolumeSource {
                            secret_name: Some(BOOTSTRAP_SECRET.into()),
                            default_mode: Some(0o440),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Renders `agent.yaml` (several YAML documents).
pub fn render(spec: &ManifestSpec<'_>) -> String {
    let c = spec.cluster;
    let mut docs: Vec<String> = Vec::new();
    let mut push = |doc: &dyn erased::Doc| docs.push(doc.yaml());
    push(&Namespace { metadata: meta(NAMESPACE, false, c), ..Default::default() });
    push(&ServiceAccount { metadata: meta(AGENT_NAME, true, c), ..Default::default() });
    push(&ClusterRole {
        metadata: meta(AGENT_NAME, false, c),
        rules: Some(cluster_rules()),
        ..Default::default()
    });
    push(&ClusterRoleBinding {
        metadata: meta(AGENT_NAME, false, c),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: AGENT_NAME.into(),
        },
        subjects: Some(vec![sa_subject()]),
    });
    push(&Role {
        metadata: meta(AGENT_NAME, true, c),
        rules: Some(vec![PolicyRule {
            api_groups: strings(&[""]),
            resources: strings(&["secrets"]),
            resource_names: strings(&[CREDENTIAL_SECRET]),
            verbs: vec!["get".into(), "update".into(), "patch".into()],
            ..Default::default()
        }]),
    });
    push(&RoleBinding {
        metadata: meta(AGENT_NAME, true, c),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: AGENT_NAME.into(),
        },
        subjects: Some(vec![sa_subject()]),
    });
    push(&Secret {
        metadata: meta(BOOTSTRAP_SECRET, true, c),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            ("token".to_owned(), ByteString(spec.token.as_bytes().to_vec())),
            ("ca.crt".to_owned(), ByteString(spec.hub_ca_pem.as_bytes().to_vec())),
        ])),
        ..Default::default()
    });
    push(&Secret {
        metadata: meta(CREDENTIAL_SECRET, true, c),
        type_: Some("Opaque".into()),
        ..Default::default()
    });
    if let Some(group) = spec.admin_group {
        push(&ClusterRoleBinding {
            metadata: meta(&format!("ferry-admins-{}", dns_suffix(group)), false, c),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: "cluster-admin".into(),
            },
            subjects: Some(vec![Subject {
                kind: "Group".into(),
                name: group.to_owned(),
                api_group: Some("rbac.authorization.k8s.io".into()),
                ..Default::default()
            }]),
        });
    }
    push(&deployment(spec));
    let header = format!(
        "# Ferry agent for cluster {c:?}, from ferry-hub {version}.\n\
         # Apply it in the child cluster: kubectl apply -f agent.yaml\n\
         # It holds a single-use bootstrap token (expires {expires}); keep it private.\n",
        version = ferry::FERRY_VERSION,
        expires = spec.token_expires,
    );
    format!("{header}{}", docs.join("---\n"))
}

/// A lower-case DNS-label-ish suffix for object names derived from a group.
fn dns_suffix(group: &str) -> String {
    let s: String = group
        .chars()
        .map(|ch| if ch.is_ascii_alphanumeric() { ch.to_ascii_lowercase() } else { '-' })
        .collect();
    let s = s.trim_matches('-');
    s.chars().take(40).collect()
}

mod erased {
    use super::Serialize;

    /// Any API object, rendered as one YAML document.
    pub trait Doc {
        fn yaml(&self) -> String;
    }

    impl<T: Serialize> Doc for T {
        fn yaml(&self) -> String {
            serde_yaml::to_string(self).unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(yaml: &str) -> Vec<serde_yaml::Value> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|d| serde_yaml::Value::deserialize(d).expect("yaml"))
            .collect()
    }

    use serde::Deserialize;

    fn spec(admin_group: Option<&str>) -> String {
        render(&ManifestSpec {
            cluster: "edge-1",
            hub_url: "https://hub.example.com:8443",
            hub_ca_pem: "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n",
            token: "ferryboot.x.y",
            token_expires: "2026-12-01T00:00:00Z",
            image: "registry.local/ferry-agent:1",
            admin_group,
        })
    }

    #[test]
    fn every_kind_in_order_and_secrets_decode() {
        let yaml = spec(None);
        let docs = docs(&yaml);
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().expect("kind")).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
                "Secret",
                "Secret",
                "Deployment"
            ]
        );
        use base64::Engine;
        let secret = &docs[6];
        let token = base64::engine::general_purpose::STANDARD
            .decode(secret["data"]["token"].as_str().expect("token"))
            .expect("b64");
        assert_eq!(token, b"ferryboot.x.y");
        assert!(yaml.contains("kubectl apply -f agent.yaml"));
        let deploy = &docs[8];
        assert_eq!(deploy["spec"]["replicas"], 2);
        let c = &deploy["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "registry.local/ferry-agent:1");
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(deploy["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"], true);
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert!(c["resources"]["limits"]["memory"].is_string());
        let args: Vec<&str> =
            c["args"].as_sequence().expect("args").iter().filter_map(|a| a.as_str()).collect();
        assert_eq!(&args[..2], ["--hub", "https://hub.example.com:8443"]);
    }

    #[test]
    fn the_cluster_role_grants_only_what_the_agent_uses() {
        let plain = docs(&spec(None));
        let rules = plain[2]["rules"].as_sequence().expect("rules");
        let verbs: Vec<String> = rules
            .iter()
            .flat_map(|r| r["verbs"].as_sequence().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        for v in &verbs {
            assert!(["impersonate", "create", "get", "list"].contains(&v.as_str()), "unexpected verb {v}");
        }
        // No wildcard verbs; the one wildcard resource is the impersonation
        // of `authentication.k8s.io` resources (RBAC names every
        // `userextras` key no other way).
        let wildcards: Vec<&serde_yaml::Value> =
            rules.iter().filter(|r| serde_yaml::to_string(r).expect("yaml").contains("'*'")).collect();
        assert_eq!(wildcards.len(), 1, "{wildcards:?}");
        assert_eq!(wildcards[0]["apiGroups"][0], "authentication.k8s.io");
        assert_eq!(wildcards[0]["verbs"].as_sequence().map(Vec::len), Some(1));
        assert_eq!(wildcards[0]["verbs"][0], "impersonate");
        // Nothing binds cluster-admin unless asked.
        assert!(!spec(None).contains("cluster-admin"));
        let with_admin = docs(&spec(Some("ferry:platform")));
        let binding = with_admin.iter().find(|d| d["roleRef"]["name"] == "cluster-admin").expect("binding");
        assert_eq!(binding["subjects"][0]["name"], "ferry:platform");
        assert_eq!(binding["metadata"]["name"], "ferry-admins-ferry-platform");
    }
}
