//! The proxy's own target credentials: given on the command line, or files
//! mounted from a Secret and read again at each new login to the target, so
//! a rotated Secret takes effect without restarting the proxy (the kubelet
//! updates a mounted Secret in place).

use std::path::PathBuf;

use tracing::error;

use super::upstream::Credentials;

/// One credential value.
#[derive(Debug, Clone)]
pub enum CredentialValue {
    Literal(String),
    /// A file whose first line is the value.
    File(PathBuf),
}

impl CredentialValue {
    fn read(&self) -> std::io::Result<String> {
        match self {
            Self::Literal(v) => Ok(v.clone()),
            Self::File(path) => Ok(std::fs::read_to_string(path)?
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Literal(_) => "the command line".to_owned(),
            Self::File(path) => path.display().to_string(),
        }
    }
}

/// Where the target username and password come from.
#[derive(Debug, Clone)]
pub struct TargetCredentials {
    pub username: CredentialValue,
    pub password: CredentialValue,
}

impl TargetCredentials {
    /// Reads them now: at start, to fail at once on a missing file.
    pub fn check(&self) -> std::io::Result<Credentials> {
        Ok(Credentials {
            username: self.username.read()?,
            password: self.password.read()?,
        })
    }

    /// The credentials for a login starting now. A file that cannot be read
    /// (a Secret being replaced) is logged, and the login goes on without
    /// them: the target then refuses it, loudly.
    pub fn current(&self) -> Option<Credentials> {
        match self.check() {
            Ok(c) => Some(c),
            Err(e) => {
                error!(
                    error = %e,
                    username = %self.username.describe(),
                    password = %self.password.describe(),
                    "cannot read the target credentials"
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_file_is_read_at_the_next_login() {
        let dir = std::env::temp_dir().join(format!("ferry-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let password = dir.join("password");
        std::fs::write(&password, "first\n").unwrap();
        let creds = TargetCredentials {
            username: CredentialValue::Literal("app".into()),
            password: CredentialValue::File(password.clone()),
        };
        assert_eq!(creds.current().map(|c| c.password), Some("first".into()));
        std::fs::write(&password, "second").unwrap();
        assert_eq!(creds.current().map(|c| c.password), Some("second".into()));
        std::fs::remove_file(&password).unwrap();
        assert!(creds.current().is_none());
        assert!(creds.check().is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
