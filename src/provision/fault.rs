//! Fault injection for crash tests: with the cargo feature
//! `fault-injection`, `PROV_AGENT_FAULT=<point>` kills the process (abort,
//! no destructors, no flushing) when the flow reaches that point. Without
//! the feature every point compiles to nothing.

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

#[inline]
pub fn point(name: &'static str) {
    debug_assert!(POINTS.contains(&name), "unknown fault point {name}");
    #[cfg(feature = "fault-injection")]
    if std::env::var("PROV_AGENT_FAULT").as_deref() == Ok(name) {
        eprintln!("prov-agent: fault injection: dying at {name}");
        std::process::abort();
    }
}
