//! The emulator's IoT policies: `PolicyDocument::parse`, then evaluation of
//! the parsed document (its resource patterns and policy variables).
//! The input is the document, then optionally a NUL and the name (client id
//! or topic) asked for.
#![no_main]

use iotcore_emulator::policy::{is_allowed, Action, PolicyDocument, RequestContext};
use libfuzzer_sys::fuzz_target;

const ACTIONS: [Action; 5] = [
    Action::Connect,
    Action::Publish,
    Action::Subscribe,
    Action::Receive,
    Action::RetainPublish,
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (json, name) = text.split_once('\0').unwrap_or((text, "gw_1/telemetry"));
    let Ok(doc) = PolicyDocument::parse(json) else {
        return;
    };
    let subject = [("CommonName".to_string(), "gw_1".to_string())];
    let issuer = [("CommonName".to_string(), "Root CA".to_string())];
    let ctx = RequestContext {
        region: "us-east-1",
        account: "123456789012",
        client_id: "gw_1",
        thing_name: Some("gw_1"),
        cert_subject: &subject,
        cert_issuer: &issuer,
        certificate_id: Some("ab12"),
    };
    for action in ACTIONS {
        let once = is_allowed(std::slice::from_ref(&doc), action, name, &ctx);
        // A policy attached twice allows what it allows once; no policy
        // allows nothing.
        assert_eq!(
            is_allowed(&[doc.clone(), doc.clone()], action, name, &ctx),
            once
        );
        assert!(!is_allowed(&[], action, name, &ctx));
    }
});
