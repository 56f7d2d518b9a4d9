//! Kubeconfig documents the hub hands out.

use base64::Engine;
use serde::Serialize;

/// Inputs of one kubeconfig.
pub struct KubeconfigSpec<'a> {
    /// Name for the cluster, context and user entries.
    pub name: &'a str,
    /// Server URL.
    pub server: &'a str,
    /// CA that signs the server certificate, PEM.
    pub ca_pem: &'a str,
    /// How the user authenticates.
    pub credential: Credential<'a>,
}

/// The user's credential in a kubeconfig.
pub enum Credential<'a> {
    /// A client certificate and its key, PEM.
    Cert {
        /// Certificate.
        cert_pem: &'a str,
        /// Key.
        key_pem: &'a str,
    },
    /// A bearer token.
    Token(&'a str),
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Doc<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    clusters: Vec<Named<'a, ClusterEntry>>,
    users: Vec<Named<'a, UserEntry>>,
    contexts: Vec<Named<'a, ContextEntry<'a>>>,
    current_context: &'a str,
}

#[derive(Serialize)]
struct Named<'a, T> {
    name: &'a str,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize)]
struct ClusterEntry {
    cluster: ClusterBody,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct ClusterBody {
    server: String,
    certificate_authority_data: String,
}

#[derive(Serialize)]
struct UserEntry {
    user: UserBody,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct UserBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    client_certificate_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_key_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

#[derive(Serialize)]
struct ContextEntry<'a> {
    context: ContextBody<'a>,
}

#[derive(Serialize)]
struct ContextBody<'a> {
    cluster: &'a str,
    user: &'a str,
}

/// Renders a kubeconfig YAML document.
pub fn render(spec: &KubeconfigSpec<'_>) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let doc = Doc {
        api_version: "v1",
        kind: "Config",
        clusters: vec![Named {
            name: spec.name,
            body: ClusterEntry {
                cluster: ClusterBody {
                    server: spec.server.to_owned(),
                    certificate_authority_data: b64(spec.ca_pem),
                },
            },
        }],
        users: vec![Named {
            name: spec.name,
            body: UserEntry {
                user: match spec.credential {
                    Credential::Cert { cert_pem, key_pem } => UserBody {
                        client_certificate_data: Some(b64(cert_pem)),
                        client_key_data: Some(b64(key_pem)),
                        token: None,
                    },
                    Credential::Token(token) => UserBody {
                        client_certificate_data: None,
                        client_key_data: None,
                        token: Some(token.to_owned()),
                    },
                },
            },
        }],
        contexts: vec![Named {
            name: spec.name,
            body: ContextEntry { context: ContextBody { cluster: spec.name, user: spec.name } },
        }],
        current_context: spec.name,
    };
    serde_yaml::to_string(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_kubeconfig() {
        let y = render(&KubeconfigSpec {
            name: "edge",
            server: "https://hub:8443/clusters/edge",
            ca_pem: "CA",
            credential: Credential::Cert { cert_pem: "CERT", key_pem: "KEY" },
        });
        let v: serde_yaml::Value = serde_yaml::from_str(&y).expect("yaml");
        assert_eq!(v["kind"], "Config");
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["current-context"], "edge");
        assert_eq!(v["clusters"][0]["cluster"]["server"], "https://hub:8443/clusters/edge");
        assert_eq!(v["clusters"][0]["cluster"]["certificate-authority-data"], "Q0E=");
        assert_eq!(v["users"][0]["user"]["client-key-data"], "S0VZ");
        assert_eq!(v["contexts"][0]["context"]["user"], "edge");
        assert!(v["users"][0]["user"].get("token").is_none());
        let y = render(&KubeconfigSpec {
            name: "edge",
            server: "https://hub:8443/clusters/edge",
            ca_pem: "CA",
            credential: Credential::Token("ferryuser.x.y"),
        });
        let v: serde_yaml::Value = serde_yaml::from_str(&y).expect("yaml");
        assert_eq!(v["users"][0]["user"]["token"], "ferryuser.x.y");
        assert!(v["users"][0]["user"].get("client-key-data").is_none());
    }
}
