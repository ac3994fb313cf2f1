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
