//! Engine settings: counting windows, accounts, and the key of the user hash.

use std::collections::HashMap;
use std::fmt;

use chrono_tz::Tz;

use crate::money::Currency;
use crate::time::{DAY_MS, HOUR_MS};

/// The windows of docs/SEMANTICS.md, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    /// `G`: inactivity that ends a conversation (7 days).
    pub gap_ms: i64,
    /// `L`: how far behind the partition watermark an event may arrive and still be applied (24 hours).
    pub lateness_ms: i64,
    /// `W`: how long after a conversation's last activity a lead or purchase is attributed to it (28 days).
    pub attribution_window_ms: i64,
    /// `capi.delay`: how far behind the partition watermark a lead or
    /// purchase must be before its Conversions API export is emitted (1 hour).
    pub capi_delay_ms: i64,
}

impl Default for Windows {
    fn default() -> Self {
        Windows {
            gap_ms: 7 * DAY_MS,
            lateness_ms: 24 * HOUR_MS,
            attribution_window_ms: 28 * DAY_MS,
            capi_delay_ms: HOUR_MS,
        }
    }
}

impl Windows {
    /// How long after its last activity a conversation can still change
    /// through an event that is not late.
    pub fn retention_ms(&self) -> i64 {
        self.lateness_ms + self.gap_ms.max(self.attribution_window_ms)
    }
}

/// One ad account's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountSettings {
    /// The account's only currency; purchases and spend in another are rejected.
    pub currency: Currency,
    /// The zone whose calendar days the funnel rows use.
    pub time_zone: Tz,
}

impl Default for AccountSettings {
    fn default() -> Self {
        AccountSettings {
            currency: Currency::USD,
            time_zone: chrono_tz::UTC,
        }
    }
}

/// Settings per account, with a default for accounts not listed.
#[derive(Clone, Debug, Default)]
pub struct Accounts {
    /// Settings of the accounts listed in configuration.
    pub listed: HashMap<String, AccountSettings>,
    /// Settings of every other account.
    pub default: AccountSettings,
}

impl Accounts {
    /// The settings of `account_id`.
    pub fn get(&self, account_id: &str) -> AccountSettings {
        self.listed.get(account_id).copied().unwrap_or(self.default)
    }
}

/// A user id as the contract compares it (docs/SEMANTICS.md section 1): a
/// phone number in a common notation (an optional leading `+`, then digits,
/// spaces, dashes, dots and parentheses, with at least 7 digits) becomes
/// its digits, WhatsApp's `wa_id` form; any other id is left as it is.
pub fn normalize_user_id(id: &str) -> std::borrow::Cow<'_, str> {
    let body = id.strip_prefix('+').unwrap_or(id);
    let mut digits = 0usize;
    for b in body.bytes() {
        match b {
            b'0'..=b'9' => digits += 1,
            b' ' | b'-' | b'.' | b'(' | b')' => {}
            _ => return std::borrow::Cow::Borrowed(id),
        }
    }
    if digits < 7 {
        return std::borrow::Cow::Borrowed(id);
    }
    if digits == id.len() {
        return std::borrow::Cow::Borrowed(id);
    }
    std::borrow::Cow::Owned(body.chars().filter(char::is_ascii_digit).collect())
}

/// Turns raw user ids into a keyed hash, so that the raw id never leaves validation.
#[derive(Clone)]
pub struct UserHasher {
    key: [u8; 32],
}

impl fmt::Debug for UserHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserHasher(<redacted>)")
    }
}

impl UserHasher {
    /// A hasher whose key is derived from `secret` (the configured user-hash key).
    pub fn new(secret: &[u8]) -> Self {
        UserHasher {
            key: blake3::derive_key("wafunnel 2026 user id hash", secret),
        }
    }

    /// The keyed hash of a raw user id, after [`normalize_user_id`], so a
    /// phone number hashes the same in any common notation.
    pub fn hash(&self, user_id: &str) -> UserKey {
        let id = normalize_user_id(user_id);
        let digest = blake3::keyed_hash(&self.key, id.as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest.as_bytes()[..16]);
        UserKey(u128::from_be_bytes(out))
    }
}

impl UserHasher {
    /// A keyed digest of arbitrary bytes (64 hex digits): it identifies a
    /// payload without revealing or confirming what it holds.
    pub fn digest(&self, bytes: &[u8]) -> String {
        blake3::keyed_hash(&self.key, bytes).to_hex().to_string()
    }
}

/// A user's keyed hash: 128 bits, shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserKey(pub u128);

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl serde::Serialize for UserKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for UserKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        if text.len() != 32 {
            return Err(serde::de::Error::custom("expected 32 hex digits"));
        }
        u128::from_str_radix(&text, 16)
            .map(UserKey)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_are_one_contact_in_any_notation() {
        for written in [
            "5511999999999",
            "+5511999999999",
            "+55 11 99999-9999",
            "+55 (11) 99999.9999",
        ] {
            assert_eq!(normalize_user_id(written), "5511999999999", "{written}");
        }
        let hasher = UserHasher::new(b"0123456789abcdef");
        assert_eq!(
            hasher.hash("+55 11 99999-9999"),
            hasher.hash("5511999999999")
        );
        for kept in [
            "u1",
            "123-456",
            "+",
            "",
            "user 5511999999999",
            "55+11999999999",
            "wa:5511999999999",
        ] {
            assert_eq!(normalize_user_id(kept), kept, "{kept}");
        }
    }

    #[test]
    fn user_hash_is_keyed_and_stable() {
        let a = UserHasher::new(b"secret-a");
        let b = UserHasher::new(b"secret-b");
        assert_eq!(a.hash("5511999990000"), a.hash("5511999990000"));
        assert_ne!(a.hash("5511999990000"), b.hash("5511999990000"));
        assert_ne!(a.hash("5511999990000"), a.hash("5511999990001"));
        let shown = a.hash("5511999990000").to_string();
        assert_eq!(shown.len(), 32);
        assert!(!shown.contains("5511999990000"));
        let back: UserKey = serde_json::from_str(&format!("\"{shown}\"")).expect("round trip");
        assert_eq!(back, a.hash("5511999990000"));
    }
}
