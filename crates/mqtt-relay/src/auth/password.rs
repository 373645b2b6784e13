//! Password authentication as plain logic: a password file in Mosquitto's format, so
//! `mosquitto_passwd` writes it, and constant-time checks of a user's password against it.

use std::collections::HashMap;
use std::num::NonZeroU32;

use aws_lc_rs::pbkdf2;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Why a password file cannot be used; names the line, never shows a hash.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error(
        "line {line}: expected `user:$7$ITERATIONS$SALT$HASH` (mosquitto_passwd's PBKDF2-SHA512)"
    )]
    Format { line: usize },
    #[error("line {line}: user {user:?} appears twice")]
    Duplicate { line: usize, user: String },
    #[error("the file holds no user")]
    Empty,
}

/// One user's salted PBKDF2-HMAC-SHA512 hash.
struct Entry {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

/// The users of a password file.
pub struct Passwords {
    users: HashMap<String, Entry>,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords")
            .field("users", &self.users.len())
            .finish()
    }
}

impl Passwords {
    /// Parses `user:$7$ITERATIONS$SALT$HASH` lines (salt and hash in base64); blank lines and
    /// `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Self, PasswordFileError> {
        let mut users = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let raw = raw.trim();
            if raw.is_empty() || raw.starts_with('#') {
                continue;
            }
            let (user, entry) = parse_line(raw).ok_or(PasswordFileError::Format { line })?;
            if users.insert(user.to_string(), entry).is_some() {
                return Err(PasswordFileError::Duplicate {
                    line,
                    user: user.into(),
                });
            }
        }
        if users.is_empty() {
            return Err(PasswordFileError::Empty);
        }
        Ok(Self { users })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `user` exists and `password` is theirs. An unknown user costs a hash as well, so
    /// timing does not tell which user names exist.
    pub fn check(&self, user: &str, password: &[u8]) -> bool {
        static DECOY: std::sync::OnceLock<Entry> = std::sync::OnceLock::new();
        let (entry, known) = match self.users.get(user) {
            Some(entry) => (entry, true),
            None => (
                DECOY.get_or_init(|| Entry {
                    iterations: NonZeroU32::new(101).expect("not zero"),
                    salt: vec![0; 12],
                    hash: vec![0; 64],
                }),
                false,
            ),
        };
        let verified = pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA512,
            entry.iterations,
            &entry.salt,
            password,
            &entry.hash,
        )
        .is_ok();
        verified && known
    }
}

fn parse_line(line: &str) -> Option<(&str, Entry)> {
    let (user, hash) = line.split_once(':')?;
    let mut parts = hash.strip_prefix("$7$")?.split('$');
    let iterations = parts.next()?.parse().ok()?;
    let salt = STANDARD.decode(parts.next()?).ok()?;
    let hash = STANDARD.decode(parts.next()?).ok()?;
    let valid = !user.is_empty() && !salt.is_empty() && hash.len() == 64 && parts.next().is_none();
    valid.then_some((
        user,
        Entry {
            iterations,
            salt,
            hash,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by `mosquitto_passwd -b -c FILE alice s3cret`.
    const ALICE: &str = "alice:$7$101$sEiamXf2enAmNmWL$jJI0KDVwvw8IoDsaQja+ruwiYD3FTz1U5hcP9hZiFtq4K8EQuWP/6BNRDWmsBBXuv2ZY613tV8Al9G+BbnSyVQ==";

    #[test]
    fn mosquitto_passwd_hashes_are_checked() {
        let passwords = Passwords::parse(&format!("# users\n\n{ALICE}\n")).unwrap();
        assert_eq!(passwords.len(), 1);
        assert!(passwords.check("alice", b"s3cret"));
        assert!(!passwords.check("alice", b"s3cret "));
        assert!(!passwords.check("alice", b""));
        assert!(!passwords.check("bob", b"s3cret"));
    }

    #[test]
    fn bad_files_name_the_line() {
        let cases = [
            ("alice:plain", "line 1"),
            ("\nalice:$6$salt$hash", "line 2"),
            ("alice:$7$x$c2FsdA==$aGFzaA==", "line 1"),
            (
                &format!("{ALICE}\n{ALICE}"),
                "line 2: user \"alice\" appears twice",
            ),
            ("# nobody\n", "no user"),
        ];
        for (text, want) in cases {
            let error = Passwords::parse(text).unwrap_err().to_string();
            assert!(error.contains(want), "{text:?}: {error}");
        }
    }
}
