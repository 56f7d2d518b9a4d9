//! Console sessions: a server-side table from a cookie's session id to the
//! credential the browser signed in with.
//!
//! The cookie carries only a random id (256 bits); the table keys on its
//! SHA-256, so neither a lookup's timing nor a memory dump gives a usable
//! id away. Every session has a CSRF token of its own, an absolute
//! lifetime ([`SESSION_TTL`], never past the credential's own expiry) and
//! an idle timeout ([`SESSION_IDLE`]). The table is bounded: at most
//! [`MAX_SESSIONS_PER_USER`] per user (signing in again drops that user's
//! least recently used session) and [`MAX_SESSIONS`] in all (expired ones
//! are swept first; then sign-in is refused until one ends), so a user can
//! only ever crowd out their own sessions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry::secret::{Secret, fill_random, hashes_equal};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticated;

/// Longest a session lasts, however active.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// A session unused this long ends.
pub const SESSION_IDLE: Duration = Duration::from_secs(3600);
/// Sessions the hub keeps at once.
pub const MAX_SESSIONS: usize = 4096;
/// Sessions one user keeps at once (browsers, tabs signed in apart).
pub const MAX_SESSIONS_PER_USER: usize = 16;
/// Live cluster event streams one session may hold (one per open tab).
pub const MAX_STREAMS_PER_SESSION: usize = 8;

/// What a session acts with.
#[derive(Clone, Debug)]
pub enum Credential {
    /// A hub bearer token: checked again on every call, so revoking the
    /// token ends what the session may do at once.
    Token(Secret),
    /// The browser's client certificate, as the hub verified it at sign-in.
    Certificate(Authenticated),
}

/// One signed-in browser.
#[derive(Debug)]
pub struct Session {
    /// Who signed in (for limits and logs).
    pub user: String,
    /// What the console's calls are made with.
    pub credential: Credential,
    /// The token every state-changing request must carry in
    /// `X-CSRF-Token`.
    pub csrf: Secret,
    /// When the session ends at the latest.
    pub expires: Instant,
    /// Cancelled when the session ends (sign-out, eviction): its event
    /// streams close.
    pub ended: CancellationToken,
    /// Permits for the session's live event streams.
    pub streams: Arc<Semaphore>,
}

impl Session {
    /// Whether `token` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, token: &str) -> bool {
        hashes_equal(self.csrf.expose(), token)
    }
}

struct Entry {
    session: Arc<Session>,
    last_used: Instant,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        now < self.session.expires && now.duration_since(self.last_used) < SESSION_IDLE
    }
}

/// Why a session could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The table is full of live sessions.
    #[error("the hub has {MAX_SESSIONS} console sessions open; try again when some have ended")]
    Full,
    /// The credential expires before a session could be of use.
    #[error("the credential has expired")]
    Expired,
    /// The operating system gave no randomness.
    #[error("no randomness for a session id")]
    Random,
}

/// The session table.
#[derive(Default)]
pub struct Sessions {
    entries: Mutex<HashMap<String, Entry>>,
}

fn random_hex() -> Result<Secret, SessionError> {
    let mut bytes = [0u8; 32];
    fill_random(&mut bytes).map_err(|_| SessionError::Random)?;
    Ok(Secret::new(hex::encode(bytes)))
}

impl Sessions {
    /// Starts a session for `user` acting with `credential`, which itself
    /// expires in `credential_left`. Returns the session id for the cookie.
    pub fn create(
        &self,
        user: &str,
        credential: Credential,
        credential_left: Duration,
        now: Instant,
    ) -> Result<(Secret, Arc<Session>), SessionError> {
        if credential_left.is_zero() {
            return Err(SessionError::Expired);
        }
        let id = random_hex()?;
        let session = Arc::new(Session {
            user: user.to_owned(),
            credential,
            csrf: random_hex()?,
            expires: now + SESSION_TTL.min(credential_left),
            ended: CancellationToken::new(),
            streams: Arc::new(Semaphore::new(MAX_STREAMS_PER_SESSION)),
        });
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut mine: Vec<(String, Instant)> = entries
            .iter()
            .filter(|(_, e)| e.session.user == user)
            .map(|(k, e)| (k.clone(), e.last_used))
            .collect();
        if mine.len() >= MAX_SESSIONS_PER_USER {
            mine.sort_by_key(|(_, used)| *used);
            for (key, _) in mine.iter().take(mine.len() + 1 - MAX_SESSIONS_PER_USER) {
                if let Some(e) = entries.remove(key) {
                    e.session.ended.cancel();
                }
            }
        }
        if entries.len() >= MAX_SESSIONS {
            entries.retain(|_, e| {
                let live = e.live(now);
                if !live {
                    e.session.ended.cancel();
                }
                live
            });
            if entries.len() >= MAX_SESSIONS {
                return Err(SessionError::Full);
            }
        }
        entries.insert(id.hash(), Entry { session: session.clone(), last_used: now });
        Ok((id, session))
    }

    /// The live session with id `id`, marked as used now.
    pub fn get(&self, id: &str, now: Instant) -> Option<Arc<Session>> {
        let key = Secret::new(id).hash();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get_mut(&key)?;
        if !entry.live(now) {
            if let Some(e) = entries.remove(&key) {
                e.session.ended.cancel();
            }
            return None;
        }
        entry.last_used = now;
        Some(entry.session.clone())
    }

    /// Ends the session with id `id` (sign-out); its streams close.
    pub fn remove(&self, id: &str) -> bool {
        let key = Secret::new(id).hash();
        let removed = self.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        removed.map(|e| e.session.ended.cancel()).is_some()
    }

    /// Sessions in the table (live or not yet swept).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn token() -> Credential {
        Credential::Token(Secret::new("ferryuser.x.y"))
    }

    #[test]
    fn a_session_is_found_by_its_id_only_and_ends_at_sign_out() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let (id, s) = sessions.create("ada", token(), DAY, now).expect("session");
        assert_eq!(id.expose().len(), 64);
        assert!(sessions.get(id.expose(), now).is_some());
        assert!(sessions.get(s.csrf.expose(), now).is_none(), "the CSRF token is not a session id");
        assert!(sessions.get("", now).is_none());
        assert!(s.csrf_matches(s.csrf.expose()));
        assert!(!s.csrf_matches("nope"));
        assert!(format!("{s:?}").contains("MASKED") && !format!("{s:?}").contains(s.csrf.expose()));
        assert!(sessions.remove(id.expose()));
        assert!(s.ended.is_cancelled(), "streams of a signed-out session close");
        assert!(sessions.get(id.expose(), now).is_none());
        assert!(!sessions.remove(id.expose()));
    }

    #[test]
    fn sessions_expire_when_idle_at_their_lifetime_and_with_their_credential() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let (id, _) = sessions.create("ada", token(), DAY, now).expect("session");
        // Used just before the idle timeout each time: lives on...
        let mut t = now;
        while t + SESSION_IDLE < now + SESSION_TTL {
            t += SESSION_IDLE - Duration::from_secs(1);
            if t >= now + SESSION_TTL {
                break;
            }
            assert!(sessions.get(id.expose(), t).is_some(), "at {:?}", t - now);
        }
        // ...but never past its lifetime.
        assert!(sessions.get(id.expose(), now + SESSION_TTL).is_none());
        assert!(sessions.is_empty(), "an expired session is removed when met");

        let (id, _) = sessions.create("ada", token(), DAY, now).expect("session");
        assert!(sessions.get(id.expose(), now + SESSION_IDLE).is_none(), "idle");

        let (id, s) = sessions.create("ada", token(), Duration::from_secs(60), now).expect("session");
        assert_eq!(s.expires, now + Duration::from_secs(60), "never outlives its credential");
        assert!(sessions.get(id.expose(), now + Duration::from_secs(60)).is_none());
        assert!(matches!(sessions.create("ada", token(), Duration::ZERO, now), Err(SessionError::Expired)));
    }

    #[test]
    fn one_user_keeps_at_most_max_sessions_per_user_dropping_the_least_recently_used() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let mut ids = Vec::new();
        for i in 0..MAX_SESSIONS_PER_USER {
            let (id, _) =
                sessions.create("ada", token(), DAY, now + Duration::from_secs(i as u64)).expect("ok");
            ids.push(id);
        }
        let later = now + Duration::from_secs(100);
        // Touch the first: the second is now the least recently used.
        assert!(sessions.get(ids[0].expose(), later).is_some());
        let (_, other) = sessions.create("bob", token(), DAY, later).expect("bob");
        let (newest, _) = sessions.create("ada", token(), DAY, later).expect("one more");
        assert_eq!(sessions.len(), MAX_SESSIONS_PER_USER + 1);
        assert!(sessions.get(ids[1].expose(), later).is_none(), "the least recently used went");
        assert!(sessions.get(ids[0].expose(), later).is_some());
        assert!(sessions.get(newest.expose(), later).is_some());
        assert!(!other.ended.is_cancelled(), "another user's session is untouched");
    }

    #[test]
    fn the_table_holds_at_most_max_sessions_sweeping_expired_ones_first() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let short = Duration::from_secs(10);
        for i in 0..MAX_SESSIONS {
            sessions.create(&format!("u{i}"), token(), if i == 0 { short } else { DAY }, now).expect("ok");
        }
        assert!(matches!(sessions.create("late", token(), DAY, now), Err(SessionError::Full)));
        assert_eq!(sessions.len(), MAX_SESSIONS);
        // Once one has expired, it is swept to make room.
        let (id, _) = sessions.create("late", token(), DAY, now + short).expect("room after a sweep");
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert!(sessions.get(id.expose(), now + short).is_some());
    }
}
