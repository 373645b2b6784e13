//! Typed errors with context for the libraries of every process: [`Failed`] says what was
//! being done and keeps the cause as its `source`, so a library's error enum can carry context
//! without `anyhow` (which stays in the binaries), and [`error_chain`] renders any error with
//! its causes on one line, as `anyhow`'s `{:#}` does.

use std::error::Error;

/// What was being done when something failed, and (when there is one) the cause.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct Failed {
    pub what: String,
    #[source]
    pub cause: Option<Box<dyn Error + Send + Sync>>,
}

impl Failed {
    /// A failure without an underlying error (a missing setting, a refused value).
    pub fn new(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            cause: None,
        }
    }
}

/// `.context()` and `.with_context()` for results and options, giving [`Failed`].
pub trait Context<T> {
    fn context(self, what: impl Into<String>) -> Result<T, Failed>;
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T, Failed>;
}

impl<T, E: Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T, Failed> {
        self.map_err(|cause| Failed {
            what: what.into(),
            cause: Some(Box::new(cause)),
        })
    }

    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T, Failed> {
        self.map_err(|cause| Failed {
            what: what().into(),
            cause: Some(Box::new(cause)),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Into<String>) -> Result<T, Failed> {
        self.ok_or_else(|| Failed::new(what))
    }

    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T, Failed> {
        self.ok_or_else(|| Failed::new(what()))
    }
}

/// An error with its causes on one line (`what: cause: cause`), for logs and reason strings.
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_the_cause_and_the_chain_reads_like_anyhow() {
        let io = std::io::Error::other("permission denied");
        let failed = Err::<(), _>(io).context("reading ca.crt").unwrap_err();
        assert_eq!(failed.to_string(), "reading ca.crt");
        assert_eq!(error_chain(&failed), "reading ca.crt: permission denied");
        let missing = None::<u8>.context("broker.tls.ca is required").unwrap_err();
        assert_eq!(error_chain(&missing), "broker.tls.ca is required");
    }
}
