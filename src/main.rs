//! The `prov-agent` binary: parse the command line, load the config, run
//! the command, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use prov_agent::cli::{AttestCommand, ClaimCommand, Cli, Command, KeysCommand};
use prov_agent::commands::{self, exit, CommandError};
use prov_agent::config::{Config, DEFAULT_PATH, ENV_CONFIG};
use prov_agent::keystore;

/// Every heap block is wiped when freed: library buffers the agent cannot
/// wipe itself (rustls' record buffers, serde_json's scratch space, the
/// JSON tree the service's answer was parsed into) once held the private
/// key CreateKeysAndCertificate sends, the PIN and the ownership token.
/// What is still allocated is the agent's to wipe (`Zeroizing`,
/// `SecretString`); memory the C libraries of the key stores allocate is
/// not covered. Its cost is measured by `ci/bench.sh alloc` (README),
/// which alone builds the agent with `--cfg prov_agent_plain_alloc` (the
/// system allocator, never in a build of ours) to compare.
#[cfg(not(prov_agent_plain_alloc))]
#[global_allocator]
static ALLOCATOR: zeroizing_alloc::ZeroAlloc<std::alloc::System> =
    zeroizing_alloc::ZeroAlloc(std::alloc::System);

fn main() -> ExitCode {
    // Before anything holds a secret (src/hardening.rs).
    if let Err(e) = prov_agent::hardening::forbid_core_dumps() {
        eprintln!("prov-agent: {}", prov_agent::error::report(&e));
        return ExitCode::from(exit::OTHER);
    }
    // tpm2-tss prints its own ERROR lines on stderr for conditions the
    // agent handles and reports with the TPM's return code; keep them out
    // unless someone asks (TSS2_LOG=all+debug). Single-threaded here.
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+NONE");
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::CONFIG
            } else {
                exit::OK
            });
        }
    };
    prov_agent::logging::init();
    prov_agent::hardening::lock_memory_or_say();
    let result = run(cli);
    // Tests look through the process's memory as it is now (src/memdump.rs).
    #[cfg(feature = "fault-injection")]
    prov_agent::memdump::at_exit();
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("prov-agent: {}", prov_agent::error::report(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<(), CommandError> {
    // The commands that need no configuration.
    match &cli.command {
        Command::KeyHelper => return commands::key_helper::run(),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "prov-agent",
                &mut std::io::stdout(),
            );
            return Ok(());
        }
        Command::Manpages { dir } => {
            let written = prov_agent::cli::write_man_pages(dir)
                .map_err(CommandError::io("write man pages into", dir))?;
            for path in written {
                println!("{}", path.display());
            }
            return Ok(());
        }
        _ => {}
    }
    let path = cli
        .config
        .or_else(|| std::env::var_os(ENV_CONFIG).map(Into::into))
        .unwrap_or_else(|| DEFAULT_PATH.into());
    // The daemon hands exactly the text it parsed to its key helper.
    let (mut config, text) = Config::load_with_text(&path)?;
    // `PIN_SOURCE = env:NAME`: the PIN leaves the environment block at once
    // (still one thread here), for every command; the daemon does it
    // itself, for its key helpers.
    if !matches!(cli.command, Command::Run) {
        commands::seal_pin(&mut config.keystore.settings)?;
    }
    let store = || keystore::open(&config.keystore.settings);
    match cli.command {
        Command::Claim(ClaimCommand::Import(args)) => {
            let done = commands::claim::import(&config, &store()?, &args)?;
            println!("claim key imported: {}", done.key.reference);
            println!(
                "claim certificate {} stored at {}",
                done.certificate_id,
                done.certificate_path.display()
            );
            if let Some(p) = done.shredded {
                println!("key file {} overwritten and removed", p.display());
            }
        }
        Command::Claim(ClaimCommand::Generate(args)) => {
            let info = commands::claim::generate(&config, &store()?, &args)?;
            println!("claim key generated: {}", info.reference);
            println!("CSR written to {}", args.csr.display());
        }
        Command::Enroll(args) => {
            println!("{}", commands::enroll::run(&config, store()?, &args)?);
        }
        Command::Rotate(args) => {
            println!("{}", commands::rotate::run(&config, store()?, &args)?);
        }
        Command::Run => commands::run::run(&path, config, text)?,
        Command::Status { json } => {
            let (text, condition) = commands::status::run(&config, json)?;
            println!("{text}");
            if let Some(condition) = condition {
                return Err(condition);
            }
        }
        Command::Check { json, offline } => {
            let (text, failed) = commands::check::run(&config, json, offline)?;
            println!("{text}");
            if failed {
                return Err(CommandError::Failed);
            }
        }
        Command::Attest(AttestCommand::Init(args)) => {
            let done = commands::attest::init(&config, &args)?;
            println!(
                "attestation key {}: {}",
                if done.made { "made" } else { "kept" },
                done.reference
            );
            println!(
                "request for the manufacturer's CA written to {}",
                done.request.display()
            );
        }
        Command::Attest(AttestCommand::Activate(args)) => {
            let stored = commands::attest::activate(&config, &args)?;
            println!("attestation key certificate stored at {}", stored.display());
        }
        Command::Keys(KeysCommand::List { json }) => {
            println!("{}", commands::keys::list(&store()?, json)?);
        }
        Command::KeyHelper | Command::Completions { .. } | Command::Manpages { .. } => {
            unreachable!("handled above")
        }
    }
    Ok(())
}
