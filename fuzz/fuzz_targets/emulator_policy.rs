//! The emulator's IoT policies: `PolicyDocument::parse`, then evaluation of
//! the parsed document (its resource patterns, policy variables and
//! conditions).
//! The input is the document, then optionally a NUL and the name (client id
//! or topic) asked for.
#![no_main]

use iotcore_emulator::policy::{
    is_allowed, Action, CertificateFacts, ConnectedThing, PolicyDocument, RequestContext,
};
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
    let certificate = CertificateFacts {
        id: "ab12".into(),
        serial_number: Some("1234".into()),
        subject: vec![("CommonName".into(), "gw_1".into())],
        issuer: vec![("CommonName".into(), "Root CA".into())],
        subject_alt_names: vec![("DNSName".into(), "gw-1.example.com".into())],
        issuer_alt_names: Vec::new(),
    };
    let thing = ConnectedThing {
        name: "gw_1".into(),
        type_name: Some("gateway".into()),
        attributes: [("site".to_string(), "berlin".to_string())].into(),
    };
    let ctx = RequestContext {
        region: "us-east-1",
        account: "123456789012",
        client_id: "gw_1",
        thing: Some(&thing),
        certificate: &certificate,
        source_ip: Some(std::net::Ipv4Addr::LOCALHOST.into()),
        now_unix: 1_800_000_000,
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
