//! Secrets out of every text the process writes: log lines, stored error
//! messages, metrics, the error a command ends with.
//!
//! Contract:
//! - [`register`] adds secret values (the configuration registers every
//!   secret it holds, and the credentials of its URLs, as it loads); they
//!   stay registered for the life of the process.
//! - [`scrub`] replaces, in any text, with `<redacted>`:
//!   - a registered secret, whole or partly (any run of at least
//!     [`PARTIAL`] of its characters, extended as far as it goes, unless
//!     the run is lower-case letters, `_`, `-` and `.` only: a word such as
//!     `password` in a secret must not hide the setting names of the
//!     program's own messages), in its
//!     plain, percent-encoded (either hex case, `+` or `%20` for a space)
//!     and JSON-escaped forms;
//!   - whatever the text itself marks as a credential, registered or not:
//!     the password of a URL (`scheme://user:password@`), the value of a
//!     credential parameter (`access_token=`, `password=`, `client_secret=`
//!     ... in a query string or as a JSON field), a `Bearer` token, and a
//!     Meta access token (`EAA` and 20 or more letters and digits).
//! - Text without any of these comes back unchanged (and unallocated).
//! - Secrets shorter than [`SHORTEST`] characters are not registered: they
//!   would match everywhere, and are no protection anyway.
//!
//! It is applied where text leaves the process (the log writer, the
//! tables' error columns, `/metrics`, the top-level error), so that no
//! caller, a library's included, can forget it.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock, RwLock};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use regex::Regex;

/// What a secret is replaced with.
pub const REDACTED: &str = "<redacted>";
/// Shortest part of a secret that is recognised on its own.
pub const PARTIAL: usize = 8;
/// Shortest secret registered.
pub const SHORTEST: usize = 4;

/// Characters RFC 3986 leaves unencoded.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Credentials any text may carry, registered or not: (pattern, replacement).
static MARKED: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    const NAMES: &str = "access_token|input_token|refresh_token|client_secret|app_secret|appsecret_proof|verify_token|hub\\.verify_token|password|passwd|pwd|secret|token";
    [
        // scheme://user:password@host
        (
            r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s/:@]*):[^\s/@]*@",
            "${1}:<redacted>@",
        ),
        // name=value in a query string, a form, a log field
        (
            &format!(r#"(?i)(^|[^a-z0-9_])({NAMES})=([^&\s"'<>,;#)\]}}]+)"#),
            "${1}${2}=<redacted>",
        ),
        // "name": "value" in JSON (also escaped inside another string)
        (
            &format!(r#"(?i)(\\?"(?:{NAMES})\\?"\s*:\s*\\?")((?:[^"\\]|\\[^"])*)"#),
            "${1}<redacted>",
        ),
        (r"\bBearer\s+[A-Za-z0-9._~+/=\-]{8,}", "Bearer <redacted>"),
        (r"\bEAA[A-Za-z0-9]{20,}", REDACTED),
    ]
    .into_iter()
    // The patterns are constants, proved by the tests below.
    .filter_map(|(pattern, with)| Regex::new(pattern).ok().map(|re| (re, with)))
    .collect()
});

/// The registered secrets, in every form they may be written.
#[derive(Debug, Default)]
pub struct Scrubber {
    secrets: BTreeSet<String>,
    forms: Vec<String>,
    pieces: Option<Regex>,
}

impl Scrubber {
    /// A scrubber of `secrets` (and of marked credentials).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Scrubber {
        let mut scrubber = Scrubber::default();
        scrubber.add(secrets);
        scrubber
    }

    fn add<'a>(&mut self, secrets: impl IntoIterator<Item = &'a str>) -> bool {
        let before = self.secrets.len();
        self.secrets.extend(
            secrets
                .into_iter()
                .filter(|s| s.chars().count() >= SHORTEST)
                .map(str::to_owned),
        );
        if self.secrets.len() == before {
            return false;
        }
        let mut forms = BTreeSet::new();
        for secret in &self.secrets {
            forms.extend(encodings(secret));
        }
        // Whole forms first: at one position the alternation takes the
        // first that matches, and a whole secret is caught even when every
        // run of it reads as a word.
        let mut alternatives: Vec<String> = forms.iter().map(|f| regex::escape(f)).collect();
        let mut pieces = BTreeSet::new();
        for form in &forms {
            let chars: Vec<char> = form.chars().collect();
            let n = PARTIAL.min(chars.len());
            for window in chars.windows(n) {
                let piece: String = window.iter().collect();
                if !word_like(&piece) {
                    pieces.insert(regex::escape(&piece));
                }
            }
        }
        alternatives.extend(pieces);
        let alternation = alternatives.join("|");
        self.pieces = regex::RegexBuilder::new(&alternation)
            .size_limit(256 << 20)
            .build()
            .ok();
        self.forms = forms.into_iter().collect();
        true
    }

    /// `text` without the secrets it carries.
    pub fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut out = Cow::Borrowed(text);
        if let Some(pieces) = &self.pieces {
            if pieces.is_match(text) {
                out = Cow::Owned(self.without_pieces(pieces, text));
            }
        }
        for (re, with) in MARKED.iter() {
            if re.is_match(&out) {
                out = Cow::Owned(re.replace_all(&out, *with).into_owned());
            }
        }
        out
    }

    /// Each run of a secret's characters, from a known piece of it as far
    /// as it continues, replaced.
    fn without_pieces(&self, pieces: &Regex, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        while let Some(found) = pieces.find_at(text, at) {
            let mut start = found.start();
            let mut end = found.end();
            for (i, c) in text[found.end()..].char_indices() {
                let next = found.end() + i + c.len_utf8();
                if !self.forms.iter().any(|f| f.contains(&text[start..next])) {
                    break;
                }
                end = next;
            }
            // Back over the word-like run a found piece may follow.
            for (i, _) in text[at..start].char_indices().rev() {
                let before = at + i;
                if !self.forms.iter().any(|f| f.contains(&text[before..end])) {
                    break;
                }
                start = before;
            }
            out.push_str(&text[at..start]);
            out.push_str(REDACTED);
            at = end;
        }
        out.push_str(&text[at..]);
        out
    }
}

/// Whether a run of a secret reads as a word of the program's own text
/// (lower-case letters, `_`, `-`, `.`: `sasl_password`, `not-the-`): such a
/// run alone is no part of a secret worth hiding at the cost of every
/// setting name that contains it.
fn word_like(piece: &str) -> bool {
    piece
        .chars()
        .all(|c| c.is_ascii_lowercase() || matches!(c, '_' | '-' | '.'))
}

/// The ways `secret` may be written: plain, percent-encoded, form-encoded,
/// JSON-escaped (also as PHP escapes, `\/` and `\u00e9`, as Meta's
/// answers do).
fn encodings(secret: &str) -> Vec<String> {
    let upper = utf8_percent_encode(secret, NON_ALPHANUMERIC).to_string();
    let unreserved = utf8_percent_encode(secret, UNRESERVED).to_string();
    let json = serde_json::to_string(secret).unwrap_or_default();
    let mut forms = vec![
        secret.to_owned(),
        lower_hex(&upper),
        lower_hex(&unreserved),
        unreserved.replace("%20", "+"),
        lower_hex(&unreserved).replace("%20", "+"),
        json.trim_matches('"').to_owned(),
        php_json(json.trim_matches('"')),
        upper,
        unreserved,
    ];
    forms.retain(|f| f.chars().count() >= SHORTEST);
    forms
}

/// A JSON string's content with `/` and every non-ASCII character escaped.
fn php_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '/' => out.push_str("\\/"),
            c if c.is_ascii() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out
}

/// `%2F` as `%2f`.
fn lower_hex(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i..i + 3).unwrap_or(&rest[i..]);
        out.push_str(&code.to_ascii_lowercase());
        rest = &rest[i + code.len()..];
    }
    out.push_str(rest);
    out
}

static GLOBAL: LazyLock<RwLock<Arc<Scrubber>>> = LazyLock::new(RwLock::default);

/// Registers secret values for [`scrub`], for the life of the process.
pub fn register<'a>(secrets: impl IntoIterator<Item = &'a str>) {
    let mut global = GLOBAL.write().unwrap_or_else(|p| p.into_inner());
    let mut next = Scrubber {
        secrets: global.secrets.clone(),
        ..Scrubber::default()
    };
    if next.add(secrets) {
        *global = Arc::new(next);
    }
}

/// The credentials a URL carries: its password and the values of its
/// credential parameters.
pub fn url_credentials(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    if let Some((_, rest)) = base.split_once("://") {
        let authority = rest.split('/').next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if let Some((_, password)) = userinfo.split_once(':') {
                found.push(password.to_owned());
                if let Ok(decoded) = percent_encoding::percent_decode_str(password).decode_utf8() {
                    found.push(decoded.into_owned());
                }
            }
        }
    }
    for pair in query.split('&') {
        if let Some((name, value)) = pair.split_once('=') {
            if crate::config::is_secret_name(name) {
                found.push(value.to_owned());
                if let Ok(decoded) = percent_encoding::percent_decode_str(value).decode_utf8() {
                    found.push(decoded.into_owned());
                }
            }
        }
    }
    found
}

/// `text` without any registered secret or marked credential.
pub fn scrub(text: &str) -> Cow<'_, str> {
    let scrubber = Arc::clone(&GLOBAL.read().unwrap_or_else(|p| p.into_inner()));
    match scrubber.scrub(text) {
        Cow::Borrowed(_) => Cow::Borrowed(text),
        Cow::Owned(owned) => Cow::Owned(owned),
    }
}

/// [`scrub`] of an owned text.
pub fn scrubbed(text: String) -> String {
    match scrub(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(owned) => owned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TOKEN: &str = "EAAGm0PX4ZCpsBAKZAbc123def456ghi789";

    #[test]
    fn every_marked_pattern_compiles() {
        assert_eq!(MARKED.len(), 5);
    }

    #[test]
    fn metas_echoes_of_a_token_are_scrubbed() {
        let s = Scrubber::new(["tok-3d7f9a21c4b8e6", "p@ss w/rd:1"]);
        for (text, expected) in [
            (
                r#"{"error":{"message":"Malformed access token tok-3d7f9a21c4b8e6","code":190}}"#,
                r#"{"error":{"message":"Malformed access token <redacted>","code":190}}"#,
            ),
            (
                "Invalid OAuth access token - Cannot parse access token: tok-3d7f9a21c4b",
                "Invalid OAuth access token - Cannot parse access token: <redacted>",
            ),
            ("…s token 3d7f9a21c4b8e6x.", "…s token <redacted>x."),
            (
                "https://graph.example/v21.0/1/events?foo=1&access_token=anything-else#x",
                "https://graph.example/v21.0/1/events?foo=1&access_token=<redacted>#x",
            ),
            ("url-encoded p%40ss+w%2Frd%3A1!", "url-encoded <redacted>!"),
            ("lower p%40ss%20w%2frd%3a1!", "lower <redacted>!"),
            ("json \"p@ss w\\/rd:1\"", "json \"<redacted>\""),
            (
                "http://admin:hunter2@ch:8123/?database=x&password=hunter2",
                "http://admin:<redacted>@ch:8123/?database=x&password=<redacted>",
            ),
            (
                r#"{"access_token":"EAAnything","x":1}"#,
                r#"{"access_token":"<redacted>","x":1}"#,
            ),
            (
                "authorization: Bearer abc.def-1",
                "authorization: Bearer <redacted>",
            ),
            (&format!("token {TOKEN} end"), "token <redacted> end"),
            (
                "nothing secret here: code=190",
                "nothing secret here: code=190",
            ),
        ] {
            assert_eq!(s.scrub(text), expected, "{text}");
        }
    }

    #[test]
    fn a_word_inside_a_secret_leaves_setting_names_readable() {
        let s = Scrubber::new(["not-the-password-4711", "correcthorsebattery"]);
        let text = "refused (check kafka.sasl_password and the ssl_* settings)";
        assert_eq!(s.scrub(text), text);
        assert_eq!(
            s.scrub("login not-the-password-4711 refused"),
            "login <redacted> refused"
        );
        assert_eq!(
            s.scrub("the tail the-password-4711 and the word correcthorsebattery"),
            "the tail <redacted> and the word <redacted>"
        );
    }

    #[test]
    fn short_secrets_are_not_registered_and_clean_text_is_borrowed() {
        let s = Scrubber::new(["abc", ""]);
        assert!(s.pieces.is_none());
        assert!(matches!(s.scrub("abc abc"), Cow::Borrowed(_)));
    }

    #[test]
    fn url_credentials_are_found() {
        assert_eq!(
            url_credentials("https://bi:p%40ss@ch.example.com:8443/?database=x&password=hunter2"),
            ["p%40ss", "p@ss", "hunter2", "hunter2"]
        );
        assert!(url_credentials("http://127.0.0.1:8123").is_empty());
    }

    fn secret() -> impl Strategy<Value = String> {
        // Any characters, the odd ones a password may have included.
        "[a-zA-Z0-9 @/:%+&=?#\"\\\\é€-]{8,40}"
    }

    proptest! {
        #[test]
        fn a_secret_never_survives(
            secret in secret(),
            before in "\\PC{0,40}",
            after in "\\PC{0,40}",
        ) {
            let s = Scrubber::new([secret.as_str()]);
            for form in [
                secret.clone(),
                utf8_percent_encode(&secret, NON_ALPHANUMERIC).to_string(),
                lower_hex(&utf8_percent_encode(&secret, UNRESERVED).to_string()).replace("%20", "+"),
                serde_json::to_string(&secret).expect("json"),
                php_json(&serde_json::to_string(&secret).expect("json")),
            ] {
                let text = format!("{before}{form}{after}");
                let out = s.scrub(&text);
                prop_assert!(!out.contains(&form), "{form:?} survives in {out:?}");
                prop_assert!(!out.contains(&secret), "{secret:?} survives in {out:?}");
            }
        }

        #[test]
        fn a_part_of_a_secret_never_survives_unless_it_reads_as_a_word(
            secret in "[a-zA-Z0-9_-]{16,60}",
            from in 0usize..8,
            before in "[ a-z:]{0,20}",
        ) {
            let s = Scrubber::new([secret.as_str()]);
            let part = &secret[from..from + PARTIAL];
            prop_assume!(!word_like(part));
            let text = format!("{before} {part}");
            let out = s.scrub(&text);
            prop_assert!(!out.contains(part), "{part:?} survives in {out:?}");
        }

        #[test]
        fn text_without_secrets_is_unchanged(
            secret in "[a-z0-9]{8,40}",
            text in "[A-DF-Z ,.:;!?()\\[\\]{}'\"\n\t-]{0,200}",
        ) {
            let s = Scrubber::new([secret.as_str()]);
            let out = s.scrub(&text);
            prop_assert!(matches!(out, Cow::Borrowed(_)));
            prop_assert_eq!(out, text.as_str());
        }
    }

    #[test]
    fn the_global_scrubber_keeps_what_was_registered() {
        register(["global-secret-value-1"]);
        register(["global-secret-value-2"]);
        assert_eq!(
            scrub("a global-secret-value-1 b global-secret-value-2"),
            "a <redacted> b <redacted>"
        );
    }
}
