//! Content negotiation: which representation the `Accept` header asks for.

use http::HeaderMap;

/// Aggregated discovery versions kubectl asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DiscoveryVersion {
    /// `apidiscovery.k8s.io/v2` (kubectl 1.30+).
    V2,
    /// `apidiscovery.k8s.io/v2beta1` (kubectl 1.26 to 1.32).
    V2Beta1,
}

impl DiscoveryVersion {
    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V2 => "v2",
            Self::V2Beta1 => "v2beta1",
        }
    }

    /// The response content type kubectl checks for.
    pub fn content_type(self) -> String {
        format!("application/json;g=apidiscovery.k8s.io;v={};as=APIGroupDiscoveryList", self.as_str())
    }
}

/// The representations this server produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Representation {
    /// Plain JSON objects.
    Json,
    /// `meta.k8s.io` `Table` (for `kubectl get`), with its version.
    Table(&'static str),
    /// Aggregated discovery.
    Discovery(DiscoveryVersion),
}

struct MediaRange<'a> {
    essence: String,
    params: Vec<(&'a str, &'a str)>,
}

impl MediaRange<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }
}

fn ranges(accept: &str) -> Vec<MediaRange<'_>> {
    accept
        .split(',')
        .map(|r| {
            let mut parts = r.split(';');
            let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let params = parts.filter_map(|p| p.split_once('=')).map(|(k, v)| (k.trim(), v.trim())).collect();
            MediaRange { essence, params }
        })
        .filter(|r| !r.essence.is_empty())
        .collect()
}

/// Picks the first acceptable representation, in the client's order, among
/// `offered`; `None` means 406 Not Acceptable.
pub(crate) fn negotiate(headers: &HeaderMap, offered: &[Representation]) -> Option<Representation> {
    let accept: Vec<&str> =
        headers.get_all(http::header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect();
    let accept = accept.join(",");
    let list = ranges(&accept);
    if list.is_empty() {
        return offered.contains(&Representation::Json).then_some(Representation::Json);
    }
    for r in list {
        let json_like = matches!(r.essence.as_str(), "application/json" | "application/*" | "*/*");
        if !json_like {
            continue;
        }
        let wanted = match (r.param("as"), r.param("g"), r.param("v")) {
            (None, _, _) => Some(Representation::Json),
            (Some("Table"), Some("meta.k8s.io"), Some("v1")) => Some(Representation::Table("v1")),
            (Some("Table"), Some("meta.k8s.io"), Some("v1beta1")) => Some(Representation::Table("v1beta1")),
            (Some("APIGroupDiscoveryList"), Some("apidiscovery.k8s.io"), Some("v2")) => {
                Some(Representation::Discovery(DiscoveryVersion::V2))
            }
            (Some("APIGroupDiscoveryList"), Some("apidiscovery.k8s.io"), Some("v2beta1")) => {
                Some(Representation::Discovery(DiscoveryVersion::V2Beta1))
            }
            _ => None,
        };
        if let Some(w) = wanted.filter(|w| offered.contains(w)) {
            return Some(w);
        }
    }
    None
}

/// Every Table and plain JSON: what object endpoints offer.
pub(crate) const OBJECT_REPRESENTATIONS: [Representation; 3] =
    [Representation::Table("v1"), Representation::Table("v1beta1"), Representation::Json];

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::ACCEPT, http::HeaderValue::from_str(v).expect("value"));
        h
    }

    #[test]
    fn follows_the_clients_order() {
        let kubectl_get = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            negotiate(&accept(kubectl_get), &OBJECT_REPRESENTATIONS),
            Some(Representation::Table("v1"))
        );
        assert_eq!(negotiate(&accept(kubectl_get), &[Representation::Json]), Some(Representation::Json));
        let disco = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        let offered = [
            Representation::Discovery(DiscoveryVersion::V2),
            Representation::Discovery(DiscoveryVersion::V2Beta1),
            Representation::Json,
        ];
        assert_eq!(
            negotiate(&accept(disco), &offered),
            Some(Representation::Discovery(DiscoveryVersion::V2))
        );
        assert_eq!(negotiate(&HeaderMap::new(), &offered), Some(Representation::Json));
        assert_eq!(negotiate(&accept("application/vnd.kubernetes.protobuf"), &offered), None);
        assert_eq!(
            negotiate(&accept("application/vnd.kubernetes.protobuf, */*"), &offered),
            Some(Representation::Json)
        );
    }
}
