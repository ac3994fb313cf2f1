//! Fault injection for crash tests: with the cargo feature
//! `fault-injection`, `PROV_AGENT_FAULT=<point>` kills the process (abort,
//! no destructors, no flushing) when the flow, or a key store, reaches that
//! point, or stops it (SIGSTOP) at a stall point. Without the feature every
//! point compiles to nothing. A module of its own, which imports nothing of
//! the crate, so that every layer may have points.

#[cfg(all(feature = "fault-injection", not(debug_assertions)))]
compile_error!("the fault-injection feature is for test builds only, never for release builds");

/// The points a flow passes, in order.
pub const POINTS: &[&str] = &[
    "key-generated",
    "key-imported",
    "cert-issued",
    "register-sent",
    "registered",
    "verified",
    "identity-written",
    "committed",
    "published",
    "old-key-deleted",
];

/// Points inside the key stores.
pub const STORE_POINTS: &[&str] = &[
    // TPM, persistent storage: the key file is written, the key not yet
    // made persistent (TPM2_EvictControl).
    "tpm-key-half-stored",
];

/// Points where the process stops (SIGSTOP) instead of dying, as a hung TPM
/// or token holds the process that waits for it; it goes on only on
/// SIGCONT.
pub const STALLS: &[&str] = &[
    // The key helper, asked to generate a key.
    "helper-generate",
    // The flow, about to write the new identity (tests fill the disk
    // there).
    "before-identity-write",
];

/// Abilities a device can be made to lack (tests of what the agent does on
/// hardware without them, where the emulated hardware has them all).
pub const LACKS: &[&str] = &[
    // A TPM without TPM2_EncryptDecrypt2: no inner wrapper for TPM2_Import.
    "tpm-encrypt-decrypt-2",
    // An agent from before the standard TPM key file: new TPM keys are made
    // under the zero-unique SRK, as those releases made them (a test makes
    // such a gateway and shows the next rotation moves it to the key file).
    "tss2-key-file",
];

/// Whether the device is to behave as lacking `name`, one of [`LACKS`]
/// (`PROV_AGENT_FAULT` names it; test builds only, else always false).
#[inline]
pub fn lacks(name: &'static str) -> bool {
    debug_assert!(LACKS.contains(&name), "unknown ability {name}");
    named(name, "behaving as lacking")
}

/// Whether `PROV_AGENT_FAULT` names `name` (said on stderr when it does);
/// always false without the feature.
#[inline]
fn named(name: &'static str, doing: &str) -> bool {
    #[cfg(feature = "fault-injection")]
    if std::env::var("PROV_AGENT_FAULT").as_deref() == Ok(name) {
        eprintln!("prov-agent: fault injection: {doing} {name}");
        return true;
    }
    let _ = (name, doing);
    false
}

/// Lies told to show that the other side refuses them: what an attacker's
/// agent would send instead of the TPM's true proof (`[ATTESTATION] MODE =
/// tpm`), for the verifier; what a weaker key store would report, for the
/// agent.
pub const TAMPERS: &[&str] = &[
    // The attestation made for another certificate id.
    "attest-replay",
    // A genuine attestation of another key made in the same TPM.
    "attest-other-key",
    // One bit of the attestation, or of its signature, flipped.
    "attest-flip-attest",
    "attest-flip-signature",
    // Keys mode despite attestation: the key the service sent, imported
    // into the TPM and certified there.
    "attest-keys-mode",
    // PKCS#11: the key the token has just generated reads back as not
    // CKA_ALWAYS_SENSITIVE, or not CKA_NEVER_EXTRACTABLE (a module that
    // made it readable or exportable at some point; SoftHSM never does).
    "pkcs11-generated-not-always-sensitive",
    "pkcs11-generated-not-never-extractable",
];

/// Whether the agent is to send, or see, the tampered value `name`, one of
/// [`TAMPERS`] (`PROV_AGENT_FAULT` names it; test builds only).
#[inline]
pub fn tampers(name: &'static str) -> bool {
    debug_assert!(TAMPERS.contains(&name), "unknown tampering {name}");
    named(name, "tampering:")
}

#[inline]
pub fn point(name: &'static str) {
    debug_assert!(
        POINTS.contains(&name) || STORE_POINTS.contains(&name),
        "unknown fault point {name}"
    );
    #[cfg(feature = "fault-injection")]
    if std::env::var("PROV_AGENT_FAULT").as_deref() == Ok(name) {
        eprintln!("prov-agent: fault injection: dying at {name}");
        std::process::abort();
    }
}

/// Stops this process (SIGSTOP) at `name`, one of [`STALLS`], when
/// `PROV_AGENT_FAULT` names it.
#[inline]
pub fn stall(name: &'static str) {
    debug_assert!(STALLS.contains(&name), "unknown stall point {name}");
    #[cfg(feature = "fault-injection")]
    if std::env::var("PROV_AGENT_FAULT").as_deref() == Ok(name) {
        eprintln!("prov-agent: fault injection: stopping at {name}");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
    }
}
