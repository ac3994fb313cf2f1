//! `Config::from_str_with_env`: config.ini and the PROV_AGENT_* overrides.
//! The input is the file's text, then optionally a NUL and environment
//! lines `NAME=value`.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use prov_agent::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (ini, env) = text.split_once('\0').unwrap_or((&text, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let path = Path::new("/etc/prov-agent/config.ini");
    let Err(e) = Config::from_str_with_env(path, ini, env.clone()) else {
        return;
    };
    let message = e.to_string();
    match &e {
        // A syntax error names the line it is on, in the file.
        ConfigError::Syntax { file, line, .. } | ConfigError::UnknownSection { file, line, .. } => {
            assert_eq!(file, path);
            assert!(
                (1..=ini.lines().count()).contains(line),
                "line {line} of {} lines: {message}",
                ini.lines().count()
            );
            assert!(
                message.starts_with(&format!("{}:{line}: ", path.display())),
                "{message}"
            );
        }
        // A bad override names the variable it was given as.
        ConfigError::Env { var, .. } => {
            assert!(env.iter().any(|(k, _)| k == var), "{message}");
        }
        ConfigError::Missing { file, .. } => assert_eq!(file, path),
        ConfigError::Read { .. } => panic!("nothing is read from a file: {message}"),
        _ => {}
    }
});
