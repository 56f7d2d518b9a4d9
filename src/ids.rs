//! Newtypes for the ids that travel through logs and the protocol.

use std::fmt;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(uuid::Uuid);

        impl $name {
            /// A fresh random id.
            pub fn new() -> Self {
                Self(uuid::Uuid::new_v4())
            }

            /// Parses the canonical hyphenated form.
            pub fn parse(s: &str) -> Option<Self> {
                uuid::Uuid::parse_str(s).ok().map(Self)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }
    };
}

uuid_id!(
    /// Identifies one proxied request in hub and agent logs.
    RequestId
);
uuid_id!(
    /// Identifies a registered cluster; credentials are bound to it.
    ClusterId
);
uuid_id!(
    /// Identifies one connected agent session (one control stream).
    SessionId
);
uuid_id!(
    /// Identifies one agent instance (replica) across reconnects.
    AgentId
);
uuid_id!(
    /// Identifies a caller's bearer token (`ferryctl token revoke ID`).
    TokenId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text() {
        let id = RequestId::new();
        assert_eq!(RequestId::parse(&id.to_string()), Some(id));
        assert_ne!(RequestId::new(), id);
        assert_eq!(ClusterId::parse("not-a-uuid"), None);
    }
}
