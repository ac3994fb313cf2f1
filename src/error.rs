//! The one classification every error of the agent carries, whatever the
//! layer it comes from: what an operator (or a supervising program) must do
//! about it. The command layer alone turns it into an exit code
//! ([`crate::commands::exit::code`]).

/// What kind of failure an error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The configuration, an input file or the command line is wrong: fix
    /// it; retrying as is cannot help.
    Config,
    /// The service refused (a rejection, a refused connection, certificate
    /// or subscription).
    Refused,
    /// The service could not be reached or did not answer in time, after
    /// the retries.
    Unreachable,
    /// The TPM or PKCS#11 token failed, or a key is missing from it.
    KeyStore,
    /// Anything else: I/O, inconsistent state, a malformed answer.
    Other,
}

/// An error with its whole `source()` chain, for the one place that prints
/// it (the command line's last words, the daemon's log line): each source
/// is added once, after a colon, unless the message above already says it
/// (most messages of the agent embed their immediate source).
pub fn report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let line = e.to_string();
        if !line.is_empty() && !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read the journal")]
    struct Quiet(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read the journal: {0}")]
    struct Loud(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("enroll failed")]
    struct Outer(#[source] Quiet);

    fn denied() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied")
    }

    #[test]
    fn a_source_the_message_leaves_out_is_printed() {
        assert_eq!(
            report(&Outer(Quiet(denied()))),
            "enroll failed: cannot read the journal: permission denied"
        );
    }

    #[test]
    fn a_source_the_message_already_says_is_printed_once() {
        let text = report(&Loud(denied()));
        assert_eq!(text, "cannot read the journal: permission denied");
        assert_eq!(text.matches("permission denied").count(), 1);
    }
}
