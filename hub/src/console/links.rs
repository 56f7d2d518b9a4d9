//! One-time manifest links: `GET /ui/manifests/SECRET` serves one
//! registration's `agent.yaml` once, without a session, so that `kubectl
//! apply -f https://HUB/ui/manifests/SECRET` (or `curl --cacert ... |
//! kubectl apply -f -`) works on the child cluster's side.
//!
//! The secret is 256 random bits; the table keys on its SHA-256. A link
//! lives at most [`MANIFEST_LINK_TTL`] (and never past the bootstrap token
//! inside it), is gone after its first use, and only in memory: a hub
//! restart forgets every link (register again for a new one). At most
//! [`MAX_MANIFEST_LINKS`] are kept; past that the one closest to expiry
//! makes room (links are made by administrators only).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry::secret::{Secret, fill_random};

/// Longest a manifest link stays usable.
pub const MANIFEST_LINK_TTL: Duration = Duration::from_secs(3600);
/// Unused manifest links kept at once.
pub const MAX_MANIFEST_LINKS: usize = 256;

struct Link {
    manifest: Secret,
    expires: Instant,
}

/// The table of unused links.
#[derive(Default)]
pub struct Links {
    links: Mutex<HashMap<String, Link>>,
}

impl Links {
    /// Keeps `manifest` behind a new secret for `ttl` (at most
    /// [`MANIFEST_LINK_TTL`]); returns the secret and when it expires.
    /// `None` when the system has no randomness.
    pub fn insert(&self, manifest: String, ttl: Duration, now: Instant) -> Option<(Secret, Instant)> {
        let mut bytes = [0u8; 32];
        fill_random(&mut bytes).ok()?;
        let secret = Secret::new(hex::encode(bytes));
        let expires = now + ttl.min(MANIFEST_LINK_TTL);
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.retain(|_, l| l.expires > now);
        while links.len() >= MAX_MANIFEST_LINKS {
            let Some(soonest) = links.iter().min_by_key(|(_, l)| l.expires).map(|(k, _)| k.clone()) else {
                break;
            };
            links.remove(&soonest);
        }
        links.insert(secret.hash(), Link { manifest: Secret::new(manifest), expires });
        Some((secret, expires))
    }

    /// The manifest behind `secret`, once: the link is gone afterwards.
    pub fn take(&self, secret: &str, now: Instant) -> Option<String> {
        let key = Secret::new(secret).hash();
        let link = self.links.lock().unwrap_or_else(|e| e.into_inner()).remove(&key)?;
        (link.expires > now).then(|| link.manifest.expose().to_owned())
    }

    /// Unused links held (expired ones included until the next insert).
    pub fn len(&self) -> usize {
        self.links.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no link is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_serves_once_and_only_before_it_expires() {
        let links = Links::default();
        let now = Instant::now();
        let (secret, expires) = links.insert("yaml".into(), Duration::from_secs(86_400), now).expect("link");
        assert_eq!(expires, now + MANIFEST_LINK_TTL, "capped at MANIFEST_LINK_TTL");
        assert_eq!(secret.expose().len(), 64);
        assert_eq!(links.take("wrong", now), None);
        assert_eq!(links.take(secret.expose(), now).as_deref(), Some("yaml"));
        assert_eq!(links.take(secret.expose(), now), None, "single use");

        let (secret, _) = links.insert("yaml".into(), Duration::from_secs(5), now).expect("link");
        assert_eq!(links.take(secret.expose(), now + Duration::from_secs(5)), None, "expired");
        assert!(links.is_empty(), "an expired link is gone once asked for");
    }

    #[test]
    fn at_most_max_manifest_links_are_kept_the_soonest_to_expire_making_room() {
        let links = Links::default();
        let now = Instant::now();
        let mut secrets = Vec::new();
        for i in 0..MAX_MANIFEST_LINKS {
            let ttl = Duration::from_secs(60 + i as u64);
            secrets.push(links.insert(format!("m{i}"), ttl, now).expect("link").0);
        }
        let (last, _) = links.insert("new".into(), Duration::from_secs(600), now).expect("link");
        assert_eq!(links.len(), MAX_MANIFEST_LINKS);
        assert_eq!(links.take(secrets[0].expose(), now), None, "the soonest to expire made room");
        assert_eq!(links.take(secrets[1].expose(), now).as_deref(), Some("m1"));
        assert_eq!(links.take(last.expose(), now).as_deref(), Some("new"));
        // Expired links are swept before anything live is dropped.
        let later = now + Duration::from_secs(60 + 10);
        links.insert("x".into(), Duration::from_secs(60), later).expect("link");
        // m0 made room, m1 and `new` were taken, m2..=m10 expired, x came.
        assert_eq!(links.len(), MAX_MANIFEST_LINKS - 10);
    }
}
