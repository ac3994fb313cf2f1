//! The emulator's provisioning templates: `Template::parse`, then
//! `Template::evaluate` with every declared parameter given.
//! The input is the template, then optionally a NUL and the value given to
//! each parameter.
#![no_main]

use std::collections::BTreeMap;

use iotcore_emulator::policy::PolicyDocument;
use iotcore_emulator::template::{PolicySpec, Template};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (json, value) = text.split_once('\0').unwrap_or((text, "SN-0001"));
    let Ok(template) = Template::parse(json) else {
        return;
    };
    let parameters: BTreeMap<String, String> = template
        .parameter_names()
        .map(|name| (name.to_string(), value.to_string()))
        .collect();
    let id = "790cbb910275dcf9af7efa3a3c3fb5b1af2932c239baa0ca30c68a0c78e52297";
    let plan = template.evaluate(&parameters, id);
    // Evaluation depends on nothing but its inputs.
    assert_eq!(
        format!("{plan:?}"),
        format!("{:?}", template.evaluate(&parameters, id))
    );
    let Ok(plan) = plan else {
        return;
    };
    // Every policy document a plan carries is one the policy parser takes.
    for policy in &plan.policies {
        if let PolicySpec::Document { document, .. } = policy {
            PolicyDocument::parse(document).unwrap_or_else(|e| panic!("{document}: {e}"));
        }
    }
});
