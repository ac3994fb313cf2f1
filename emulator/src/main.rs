//! `iotcore-emulator`: init a data directory, serve it, and read or change
//! its registry.
#![forbid(unsafe_code)]

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use iotcore_emulator::{
    AttributeUpdate, CertStatus, DataDir, Emulator, EmulatorConfig, LinkSimulation, NewThingGroup,
    Rate, Registry, ResponseFault, ThingUpdate, TokenReuse, DEFAULT_RSA_KEY_POOL,
};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "iotcore-emulator",
    version,
    about = "A local AWS IoT Core for fleet provisioning"
)]
struct Cli {
    /// Print registry output as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Data directory for the registry commands.
    #[arg(long, short = 'd', global = true, env = "IOTCORE_EMULATOR_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the CA and server certificate, register policies and
    /// templates, and write the root CA and a claim credential.
    Init {
        dir: PathBuf,
        #[arg(long)]
        policies: Option<PathBuf>,
        #[arg(long)]
        templates: Option<PathBuf>,
        /// Policy attached to the claim certificate.
        #[arg(long, default_value = "claim")]
        claim_policy: String,
    },
    /// Serve MQTT over TLS and the control-plane HTTP API until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Things in the registry.
    Things {
        #[command(subcommand)]
        cmd: ThingsCmd,
    },
    /// Certificates in the registry.
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
    /// IoT policies.
    Policies {
        #[command(subcommand)]
        cmd: PoliciesCmd,
    },
    /// Provisioning templates.
    Templates {
        #[command(subcommand)]
        cmd: TemplatesCmd,
    },
    /// The account's certificate provider (at most one, as on AWS): while it
    /// exists, every CreateCertificateFromCsr is signed by its command
    /// instead of the emulator's CA.
    CertificateProviders {
        #[command(subcommand)]
        cmd: CertificateProvidersCmd,
    },
    /// Registered CA certificates: the certificates they issue connect and
    /// are registered on first use.
    Cas {
        #[command(subcommand)]
        cmd: CasCmd,
    },
    /// AWS IoT Jobs: a running `serve` tells connected things within its
    /// poll interval.
    Jobs {
        #[command(subcommand)]
        cmd: JobsCmd,
    },
    /// Static thing groups: a template (or CreateThing) may put a thing
    /// only in groups that exist, as on AWS.
    ThingGroups {
        #[command(subcommand)]
        cmd: ThingGroupsCmd,
    },
    /// Thing types: a template may give a thing only a type that exists
    /// and is not deprecated, as on AWS.
    ThingTypes {
        #[command(subcommand)]
        cmd: ThingTypesCmd,
    },
    /// Billing groups: a template may put a thing only in one that exists,
    /// as on AWS.
    BillingGroups {
        #[command(subcommand)]
        cmd: BillingGroupsCmd,
    },
}

#[derive(Subcommand)]
enum ThingGroupsCmd {
    /// Create a group (the same again is no error; another configuration is).
    Create {
        name: String,
        /// The parent group, which must exist.
        #[arg(long)]
        parent: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// A group attribute (repeatable).
        #[arg(long = "attribute", value_name = "KEY=VALUE", value_parser = parse_attribute)]
        attributes: Vec<(String, String)>,
    },
    Describe {
        name: String,
    },
    List,
    /// Delete a group (its things leave it; a group with child groups is
    /// refused). Deleting a group that does not exist is no error, as on AWS.
    Delete {
        name: String,
        #[arg(long)]
        expected_version: Option<i64>,
    },
}

#[derive(Subcommand)]
enum ThingTypesCmd {
    /// Create a type (the same again is no error; another configuration is).
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// A searchable attribute name (repeatable, at most 3).
        #[arg(long = "searchable-attribute", value_name = "NAME")]
        searchable: Vec<String>,
    },
    Describe {
        name: String,
    },
    List,
    /// Deprecate a type (no new thing may be given it), or with --undo
    /// undeprecate it.
    Deprecate {
        name: String,
        #[arg(long)]
        undo: bool,
    },
    /// Delete a deprecated type that no thing has.
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum BillingGroupsCmd {
    /// Create a billing group (the same again is no error; another
    /// description is).
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
    },
    Describe {
        name: String,
    },
    List,
    /// Delete a billing group (its things leave it). Deleting one that does
    /// not exist is no error, as on AWS.
    Delete {
        name: String,
        #[arg(long)]
        expected_version: Option<i64>,
    },
}

#[derive(Subcommand)]
enum JobsCmd {
    /// Create a job with one QUEUED execution per thing.
    Create {
        job_id: String,
        /// The job document (a JSON object).
        #[arg(long)]
        document: PathBuf,
        /// A target thing (repeatable; at least one).
        #[arg(long = "thing", required = true)]
        things: Vec<String>,
    },
    List,
    /// The job, or with --thing its execution on that thing.
    Describe {
        job_id: String,
        #[arg(long)]
        thing: Option<String>,
    },
}

#[derive(Args)]
struct ServeArgs {
    dir: PathBuf,
    /// Listener without ALPN (AWS's 8883); 0 for any free port.
    #[arg(long, default_value_t = 8883)]
    port: u16,
    /// Listener requiring ALPN x-amzn-mqtt-ca (AWS's 443); 0 for any free port.
    #[arg(long, default_value_t = 8443)]
    alpn_port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Port of the control-plane HTTP API (boto3, AWS CLI); 0 for any free port.
    #[arg(long, default_value_t = 8081)]
    api_port: u16,
    /// Address of the control-plane API: loopback only, as it checks no
    /// SigV4 signature.
    #[arg(long, default_value = "127.0.0.1")]
    api_bind: IpAddr,
    /// Ownership token lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    token_ttl: u64,
    /// What a second RegisterThing with the same token gets.
    #[arg(long, value_enum, default_value_t = Reuse::Reject)]
    token_reuse: Reuse,
    /// Requests per second for each provisioning API (burst: twice that).
    #[arg(long)]
    rate: Option<f64>,
    /// Lifetime in seconds of the certificates the provisioning APIs issue
    /// (default: until 2049-12-31 23:59:59 UTC, like AWS).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    cert_validity: Option<u64>,
    /// Turn off the rotation report rule (things/+/rotation retires the
    /// thing's old certificates).
    #[arg(long)]
    no_report_rule: bool,
    /// Test-only: wrong or lost provisioning answers: malformed-json,
    /// certificate-for-another-key, wrong-certificate-id, oversized-payload,
    /// drop-responses:N, throttle-first:N, thing-name-with:C.
    #[arg(long, value_name = "FAULT")]
    response_fault: Option<ResponseFault>,
    /// RSA-2048 keys CreateKeysAndCertificate keeps made ahead of time (a
    /// background thread refills them); 0 makes each in its request.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RSA_KEY_POOL)]
    rsa_key_pool: usize,
    /// Test-only: one-way delay in milliseconds added to every chunk of
    /// bytes in each direction of every MQTT connection (see README,
    /// "Simulating a slow link").
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    latency: u64,
    /// Test-only: an extra random delay of 0 to MS milliseconds per chunk
    /// (bytes stay in order).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    jitter: u64,
    /// Test-only: probability (0 to 1) that a chunk from the client cuts
    /// the connection instead.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_rate, allow_hyphen_values = true)]
    disconnect_rate: f64,
    /// Serve clients that send no SNI (server name) in their ClientHello,
    /// such as one connecting by IP address; AWS's endpoints refuse them,
    /// and so does the emulator without this flag.
    #[arg(long)]
    allow_no_sni: bool,
}

/// A probability from 0 to 1 (clap names the flag in its error).
fn parse_rate(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number: give a probability from 0 to 1"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!(
            "{s} is not a probability: give a number from 0 to 1"
        ))
    }
}

#[derive(Subcommand)]
enum CertificateProvidersCmd {
    /// Create the account's certificate provider: `--command` runs in place
    /// of its Lambda function, the event JSON on stdin
    /// (`certificateSigningRequest`, `principalId`, `clientId`), answering
    /// `{"certificatePem": ..}` on stdout (see README).
    Create {
        name: String,
        /// The executable: a path, or a name looked up on PATH now; stored
        /// as an absolute path. It must be an executable file.
        #[arg(long)]
        command: String,
        /// An argument of the command (repeatable, in order). Stored in
        /// plain text in the registry and printed by list and describe:
        /// never put a secret here; give it in the environment of `serve`
        /// or in a file the command reads.
        #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
        args: Vec<String>,
        /// The operations it serves: only CreateCertificateFromCsr, as on AWS.
        #[arg(long = "operations", default_value = "CreateCertificateFromCsr")]
        operations: Vec<String>,
        /// The Lambda function ARN the control-plane API reports (default:
        /// arn:aws:lambda:REGION:ACCOUNT:function:NAME with the region and
        /// account `serve` uses: us-east-1, 123456789012).
        #[arg(long)]
        lambda_function_arn: Option<String>,
    },
    List,
    Describe {
        name: String,
    },
    /// Delete it: CreateCertificateFromCsr is signed by the emulator's CA again.
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum CasCmd {
    List,
    /// Register a CA certificate (PEM); `--policy` (repeatable) is attached to
    /// each certificate it issues when that certificate first connects.
    Register {
        file: PathBuf,
        #[arg(long = "policy")]
        policies: Vec<String>,
    },
    SetStatus {
        id: String,
        status: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Reuse {
    Reject,
    Replay,
}

#[derive(Subcommand)]
enum ThingsCmd {
    List,
    Describe {
        name: String,
    },
    /// Set and remove attributes, merging with the others (as `aws iot
    /// update-thing --attribute-payload '{"attributes": {..}, "merge": true}'`).
    Update {
        name: String,
        /// Add or replace an attribute (repeatable).
        #[arg(long = "attribute", value_name = "KEY=VALUE", value_parser = parse_attribute)]
        attributes: Vec<(String, String)>,
        /// Remove an attribute (repeatable).
        #[arg(long = "remove-attribute", value_name = "KEY")]
        remove: Vec<String>,
    },
}

fn parse_attribute(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!(
            "{s:?} is not KEY=VALUE with a non-empty key and value (use --remove-attribute KEY to remove one)"
        )),
    }
}

#[derive(Subcommand)]
enum CertsCmd {
    List,
    Describe {
        id: String,
    },
    /// ACTIVE, INACTIVE, REVOKED, ...: moving away from ACTIVE drops live connections.
    SetStatus {
        id: String,
        status: String,
    },
}

#[derive(Subcommand)]
enum PoliciesCmd {
    List,
    Create { name: String, file: PathBuf },
    Attach { name: String, cert_id: String },
}

#[derive(Subcommand)]
enum TemplatesCmd {
    List,
    Create {
        name: String,
        file: PathBuf,
        /// Pre-provisioning hook executable.
        #[arg(long)]
        hook: Option<String>,
        #[arg(long)]
        disabled: bool,
    },
    Describe {
        name: String,
    },
}

fn repo_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
}

/// `*.json` files of a directory as (file stem, contents), sorted.
fn json_files(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let body =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        out.push((stem, body));
    }
    out.sort();
    Ok(out)
}

/// Writes a file created with `mode`, through a temp file and rename.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// The pre-provisioning hook of template `name`: `DIR/hooks/<name>.hook`,
/// if it exists, names (on its first line) an executable relative to
/// `DIR/hooks/`; the registry gets its absolute path.
fn template_hook(templates: &Path, name: &str) -> Result<Option<String>> {
    let hooks = templates.join("hooks");
    let link = hooks.join(format!("{name}.hook"));
    if !link.exists() {
        return Ok(None);
    }
    let text = fs::read_to_string(&link).with_context(|| format!("reading {}", link.display()))?;
    let script = text.lines().next().unwrap_or_default().trim();
    if script.is_empty() {
        bail!("{} names no hook executable", link.display());
    }
    let path = hooks.join(script);
    let path = path
        .canonicalize()
        .with_context(|| format!("hook {} of template {name}", path.display()))?;
    let mode = fs::metadata(&path)?.permissions().mode();
    if mode & 0o111 == 0 {
        bail!(
            "hook {} of template {name} is not executable",
            path.display()
        );
    }
    Ok(Some(path.to_string_lossy().into_owned()))
}

fn init(
    dir: &Path,
    policies: Option<PathBuf>,
    templates: Option<PathBuf>,
    claim_policy: &str,
) -> Result<()> {
    let data = DataDir::open(dir).with_context(|| format!("initialising {}", dir.display()))?;
    let policies = policies.unwrap_or_else(|| repo_dir("policies"));
    let templates = templates.unwrap_or_else(|| repo_dir("templates"));
    for (name, body) in json_files(&policies)? {
        data.registry
            .create_policy(&name, &body)
            .with_context(|| format!("registering policy {name}"))?;
        println!("policy {name} registered");
    }
    for (name, body) in json_files(&templates)? {
        let hook = template_hook(&templates, &name)?;
        data.registry
            .create_template(&name, &body, true, hook.as_deref())
            .with_context(|| format!("registering template {name}"))?;
        match hook {
            Some(h) => println!("template {name} registered with pre-provisioning hook {h}"),
            None => println!("template {name} registered"),
        }
        // AWS refuses a registration that puts the thing in a group (or
        // gives it a type or billing group) that does not exist.
        let made = data
            .registry
            .create_objects_named_by(&name)
            .with_context(|| format!("creating what template {name} names"))?;
        for o in &made.objects {
            let what = if o.created { "created" } else { "exists" };
            println!("{} {} {what} (named by template {name})", o.kind, o.name);
        }
        for path in &made.computed {
            let command = if path.ends_with("ThingTypeName") {
                "thing-types"
            } else if path.ends_with("BillingGroup") {
                "billing-groups"
            } else {
                "thing-groups"
            };
            println!(
                "template {name} builds a name from its parameters at {path}: not created; \
                 create each one devices will use with `iotcore-emulator {command} create NAME` \
                 before they register"
            );
        }
    }
    if data.registry.policy(claim_policy)?.is_none() {
        bail!(
            "policy {claim_policy} not found in {}: put {claim_policy}.json there or pass --policies DIR",
            policies.display()
        );
    }
    let claim = data.create_credential("claim", &[claim_policy])?;
    write_file(&dir.join("root-ca.pem"), &data.root_ca_pem(), 0o644)?;
    let claim_dir = dir.join("claim");
    if !claim_dir.exists() {
        fs::DirBuilder::new().mode(0o700).create(&claim_dir)?;
    }
    write_file(
        &claim_dir.join("claim.pem.crt"),
        &claim.certificate_pem,
        0o644,
    )?;
    write_file(
        &claim_dir.join("claim.private.pem.key"),
        &claim.private_key_pem,
        0o600,
    )?;
    println!(
        "claim certificate {} with policy {claim_policy}",
        claim.certificate_id
    );
    println!("wrote {}", dir.join("root-ca.pem").display());
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<()> {
    let mut config = EmulatorConfig::new(args.dir);
    config.port = args.port;
    config.alpn_port = args.alpn_port;
    config.bind = args.bind;
    config.api_port = args.api_port;
    config.api_bind = args.api_bind;
    config.token_ttl = Duration::from_secs(args.token_ttl);
    config.token_reuse = match args.token_reuse {
        Reuse::Reject => TokenReuse::Reject,
        Reuse::Replay => TokenReuse::Replay,
    };
    if let Some(r) = args.rate {
        let rate = Rate::new(r, (r * 2.0).ceil().max(1.0) as u32);
        config.throttle.create_keys_and_certificate = rate;
        config.throttle.create_certificate_from_csr = rate;
        config.throttle.register_thing = rate;
    }
    if let Some(secs) = args.cert_validity {
        config.certificate_validity = Duration::from_secs(secs);
    }
    config.rotation_report_rule = !args.no_report_rule;
    config.response_fault = args.response_fault;
    config.rsa_key_pool = args.rsa_key_pool;
    config.allow_no_sni = args.allow_no_sni;
    config.link = LinkSimulation {
        latency: Duration::from_millis(args.latency),
        jitter: Duration::from_millis(args.jitter),
        disconnect_rate: args.disconnect_rate,
    };
    if !config.link.is_off() {
        eprintln!(
            "iotcore-emulator: test-only link simulation {} is on",
            config.link
        );
    }
    let link = config.link;
    if let Some(f) = args.response_fault {
        eprintln!("iotcore-emulator: test-only response fault {f} is on");
    }
    let handle = Emulator::start(config).await?;
    let mut line = format!(
        "iotcore-emulator listening mqtt={} alpn={} api={}",
        handle.addr(),
        handle.alpn_addr(),
        handle.api_url()
    );
    if !link.is_off() {
        line.push_str(&format!(" link: {link}"));
    }
    println!("{line}");
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    handle.shutdown().await;
    Ok(())
}

fn print<T: Serialize>(json: bool, value: &T, human: impl FnOnce(&T)) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        human(value);
    }
    Ok(())
}

/// The absolute path of a certificate provider's executable: `command`
/// itself when it holds a `/`, else looked up on PATH (as a shell would,
/// but now, so that `serve`'s PATH does not decide later). A directory, a
/// file without an execute bit or a name not found is refused, naming the
/// fix.
fn provider_executable(command: &str) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let path = if command.contains('/') {
        let path = Path::new(command);
        let meta = path.metadata().with_context(|| {
            format!("certificate provider command {command} does not exist: give the path of an executable")
        })?;
        if meta.is_dir() {
            bail!("certificate provider command {command} is a directory: give the path of an executable file in it");
        }
        if !executable(path) {
            bail!("certificate provider command {command} is not executable: `chmod +x {command}`, or give the interpreter as --command and the script as --arg");
        }
        path.to_path_buf()
    } else {
        let found = std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(command))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .find(|p| executable(p));
        found.with_context(|| {
            format!("certificate provider command {command} is not an executable on PATH: give its path (./{command} for one in this directory)")
        })?
    };
    // Absolute, symlinks kept: a multi-call binary (busybox) goes by its name.
    Ok(std::path::absolute(&path)
        .with_context(|| format!("certificate provider command {command}"))?
        .to_string_lossy()
        .into_owned())
}

fn registry_of(dir: Option<PathBuf>) -> Result<Registry> {
    let dir = dir.context("no data directory: pass --data-dir DIR or set IOTCORE_EMULATOR_DIR")?;
    if !dir.join("registry.sqlite3").exists() {
        bail!(
            "{} has no registry: run `iotcore-emulator init {}` first",
            dir.display(),
            dir.display()
        );
    }
    Ok(Registry::open(&dir)?)
}

/// How long `serve` waits, once stopped, for blocking work still running.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let json = cli.json;
    match cli.command {
        Command::Init {
            dir,
            policies,
            templates,
            claim_policy,
        } => init(&dir, policies, templates, &claim_policy),
        Command::Serve(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            let served = runtime.block_on(serve(args));
            // Dropping the runtime would wait for every blocking task still
            // running (a key generation takes up to a second): bounded, so
            // that SIGTERM ends the process promptly whatever is in flight.
            runtime.shutdown_timeout(SHUTDOWN_GRACE);
            served
        }
        Command::Things { cmd } => {
            let reg = registry_of(cli.data_dir)?;
            match cmd {
                ThingsCmd::List => print(json, &reg.things()?, |ts| {
                    for t in ts {
                        println!("{}\t{}", t.thing_name, t.certificates.join(","));
                    }
                }),
                ThingsCmd::Describe { name } => {
                    let t = reg
                        .thing(&name)?
                        .with_context(|| format!("thing {name} not found"))?;
                    print(json, &t, |t| println!("{t:#?}"))
                }
                ThingsCmd::Update {
                    name,
                    attributes,
                    remove,
                } => {
                    if attributes.is_empty() && remove.is_empty() {
                        bail!("nothing to change: give --attribute KEY=VALUE or --remove-attribute KEY");
                    }
                    if let Some((k, _)) = attributes.iter().find(|(k, _)| remove.contains(k)) {
                        bail!("attribute {k} is both set and removed");
                    }
                    // Merge semantics: the empty string removes.
                    let mut merge: std::collections::BTreeMap<String, String> =
                        remove.into_iter().map(|k| (k, String::new())).collect();
                    merge.extend(attributes);
                    let update = ThingUpdate {
                        attributes: Some(AttributeUpdate::Merge(merge)),
                        ..Default::default()
                    };
                    let t = reg
                        .update_thing(&name, &update)
                        .with_context(|| format!("updating thing {name}"))?;
                    print(json, &t, |t| {
                        let attrs: Vec<String> = t
                            .attributes
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect();
                        println!(
                            "{}\tversion {}\t{}",
                            t.thing_name,
                            t.version,
                            attrs.join(",")
                        )
                    })
                }
            }
        }
        Command::Certs { cmd } => {
            let reg = registry_of(cli.data_dir)?;
            match cmd {
                CertsCmd::List => print(json, &reg.certificates()?, |cs| {
                    for c in cs {
                        println!(
                            "{}\t{}\t{}",
                            c.certificate_id,
                            c.status.as_str(),
                            c.things.join(",")
                        );
                    }
                }),
                CertsCmd::Describe { id } => {
                    let c = reg
                        .certificate(&id)?
                        .with_context(|| format!("certificate {id} not found"))?;
                    print(json, &c, |c| {
                        println!(
                            "{}\t{}\npolicies: {}\nthings: {}\n{}",
                            c.certificate_id,
                            c.status.as_str(),
                            c.policies.join(","),
                            c.things.join(","),
                            c.certificate_pem
                        )
                    })
                }
                CertsCmd::SetStatus { id, status } => {
                    let status: CertStatus = status.parse()?;
                    reg.set_certificate_status(&id, status)?;
                    print(
                        json,
                        &serde_json::json!({"certificateId": id, "status": status}),
                        |_| println!("{id}\t{}", status.as_str()),
                    )
                }
            }
        }
        Command::Policies { cmd } => {
            let reg = registry_of(cli.data_dir)?;
            match cmd {
                PoliciesCmd::List => print(json, &reg.policies()?, |ps| {
                    for p in ps {
                        println!("{}", p.policy_name);
                    }
                }),
                PoliciesCmd::Create { name, file } => {
                    let doc = fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    reg.create_policy(&name, &doc)?;
                    print(json, &serde_json::json!({"policyName": name}), |_| {
                        println!("policy {name} created")
                    })
                }
                PoliciesCmd::Attach { name, cert_id } => {
                    reg.attach_policy(&name, &cert_id)?;
                    print(
                        json,
                        &serde_json::json!({"policyName": name, "certificateId": cert_id}),
                        |_| println!("policy {name} attached to {cert_id}"),
                    )
                }
            }
        }
        Command::Cas { cmd } => {
            let reg = registry_of(cli.data_dir)?;
            match cmd {
                CasCmd::List => print(json, &reg.ca_certificates()?, |cs| {
                    for c in cs {
                        println!(
                            "{}\t{}\t{}",
                            c.certificate_id,
                            c.status.as_str(),
                            c.auto_attach_policies.join(",")
                        );
                    }
                }),
                CasCmd::Register { file, policies } => {
                    let pem_str = fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    let names: Vec<&str> = policies.iter().map(String::as_str).collect();
                    let id = reg.register_ca_certificate(&pem_str, &names)?;
                    print(json, &serde_json::json!({"certificateId": id}), |_| {
                        println!("CA {id} registered")
                    })
                }
                CasCmd::SetStatus { id, status } => {
                    let status: CertStatus = status.parse()?;
                    reg.set_ca_certificate_status(&id, status)?;
                    print(
                        json,
                        &serde_json::json!({"certificateId": id, "status": status}),
                        |_| println!("{id}\t{}", status.as_str()),
                    )
                }
            }
        }
        Command::Jobs { cmd } => {
            let reg = registry_of(cli.data_dir)?;
            match cmd {
                JobsCmd::Create {
                    job_id,
                    document,
                    things,
                } => {
                    let text = fs::read_to_string(&document)
                        .with_context(|| format!("reading {}", document.display()))?;
                    let doc: serde_json::Value = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not JSON", document.display()))?;
                    let names: Vec<&str> = things.iter().map(String::as_str).collect();
                    let job = reg.create_job(&job_id, &doc, &names)?;
                    print(json, &job, |j| {
                        println!("job {} created for {}", j.job_id, j.targets.join(","))
                    })
                }
                JobsCmd::List => print(json, &reg.jobs()?, |js| {
                    for j in js {
                        println!("{}\t{}\t{}", j.job_id, j.status, j.targets.join(","));
                    }
                }),
                JobsCmd::Describe { job_id, thing } => match thing {
                    None => {
                        let j = reg
                            .job(&job_id)?
                            .with_context(|| format!("job {job_id} not found"))?;
                        print(json, &j, |j| println!("{j:#?}"))
                    }
                    Some(thing) => {
                        let e = reg.job_execution(&job_id, &thing)?.with_context(|| {
                            format!("job {job_id} has no execution on thing {thing}")
                        })?;
                        print(json, &e, |e| println!("{e:#?}"))
                    }
                },
            }
        }
        Command::ThingGroups { cmd } => {
            let reg = registry_of(cli.data_dir)?;
            match cmd {
                ThingGroupsCmd::Create {
                    name,
                    parent,
                    description,
                    attributes,
                } => {
                    let (g, created) = reg.create_thing_group(&NewThingGroup {
                        name: name.clone(),
                        parent_group_name: parent,
                        description,
                        attributes: attributes.into_iter().collect(),
                    })?;
                    print(json, &g, |g| {
                        let what = if created { "created" } else { "exists" };
                        println!("thing group {} {what}", g.thing_group_name)
                    })
                }
                ThingGroupsCmd::Describe { name } => {
                    let g = reg
                        .thing_group(&name)?
                        .with_context(|| format!("thing group {name} not found"))?;
                    print(json, &g, |g| println!("{g:#?}"))
                }
                ThingGroupsCmd::List => print(json, &reg.thing_groups()?, |gs| {
                    for g in gs {
                        println!(
                            "{}\t{}",
                            g.thing_group_name,
                            g.parent_group_name.as_deref().unwrap_or("-")
                        );
                    }
                }),
                ThingGroupsCmd::Delete {
                    name,
                    expected_version,
                } => {
                    let deleted = reg.delete_thing_group(&name, expected_version)?;
                    print(
                        json,
                        &serde_json::json!({"thingGroupName": name, "deleted": deleted}),
                        |_| {
                            if deleted {
                                println!("thing group {name} deleted")
                            } else {
                                println!("thing group {name} did not exist")
                            }
                        },
                    )
                }
            }
        }
        Command::ThingTypes { cmd } => {
            let reg = registry_of(cli.data_dir)?;
            match cmd {
                ThingTypesCmd::Create {
                    name,
                    description,
                    searchable,
                } => {
                    let (t, created) =
                        reg.create_thing_type(&name, description.as_deref(), &searchable)?;
                    print(json, &t, |t| {
                        let what = if created { "created" } else { "exists" };
                        println!("thing type {} {what}", t.thing_type_name)
                    })
                }
                ThingTypesCmd::Describe { name } => {
                    let t = reg
                        .thing_type(&name)?
                        .with_context(|| format!("thing type {name} not found"))?;
                    print(json, &t, |t| println!("{t:#?}"))
                }
                ThingTypesCmd::List => print(json, &reg.thing_types()?, |ts| {
                    for t in ts {
                        let state = if t.deprecated_at.is_some() {
                            "deprecated"
                        } else {
                            "active"
                        };
                        println!("{}\t{state}", t.thing_type_name);
                    }
                }),
                ThingTypesCmd::Deprecate { name, undo } => {
                    let t = reg.deprecate_thing_type(&name, undo)?;
                    print(json, &t, |t| {
                        if t.deprecated_at.is_some() {
                            println!("thing type {name} deprecated")
                        } else {
                            println!("thing type {name} no longer deprecated")
                        }
                    })
                }
                ThingTypesCmd::Delete { name } => {
                    reg.delete_thing_type(&name)?;
                    print(json, &serde_json::json!({"thingTypeName": name}), |_| {
                        println!("thing type {name} deleted")
                    })
                }
            }
        }
        Command::BillingGroups { cmd } => {
            let reg = registry_of(cli.data_dir)?;
            match cmd {
                BillingGroupsCmd::Create { name, description } => {
                    let (b, created) = reg.create_billing_group(&name, description.as_deref())?;
                    print(json, &b, |b| {
                        let what = if created { "created" } else { "exists" };
                        println!("billing group {} {what}", b.billing_group_name)
                    })
                }
                BillingGroupsCmd::Describe { name } => {
                    let b = reg
                        .billing_group(&name)?
                        .with_context(|| format!("billing group {name} not found"))?;
                    print(json, &b, |b| println!("{b:#?}"))
                }
                BillingGroupsCmd::List => print(json, &reg.billing_groups()?, |bs| {
                    for b in bs {
                        println!("{}", b.billing_group_name);
                    }
                }),
                BillingGroupsCmd::Delete {
                    name,
                    expected_version,
                } => {
                    let deleted = reg.delete_billing_group(&name, expected_version)?;
                    print(
                        json,
                        &serde_json::json!({"billingGroupName": name, "deleted": deleted}),
                        |_| {
                            if deleted {
                                println!("billing group {name} deleted")
                            } else {
                                println!("billing group {name} did not exist")
                            }
                        },
                    )
                }
            }
        }
        Command::CertificateProviders { cmd } => {
            let data_dir = cli.data_dir.clone();
            let reg = registry_of(cli.data_dir)?;
            match cmd {
                CertificateProvidersCmd::Create {
                    name,
                    command,
                    args,
                    operations,
                    lambda_function_arn,
                } => {
                    let executable = provider_executable(&command)?;
                    let argv: Vec<String> = std::iter::once(executable).chain(args).collect();
                    // `serve` takes region and account from EmulatorConfig::new
                    // of the same data directory (it has no flags for them):
                    // the ARN names the account `serve` reports.
                    let serving = EmulatorConfig::new(data_dir.unwrap_or_default());
                    let arn = lambda_function_arn.unwrap_or_else(|| {
                        format!(
                            "arn:aws:lambda:{}:{}:function:{name}",
                            serving.region, serving.account
                        )
                    });
                    let p = reg.create_certificate_provider(&name, &argv, &arn, &operations)?;
                    print(json, &p, |p| {
                        println!(
                            "certificate provider {} created: CreateCertificateFromCsr is now signed by {}",
                            p.certificate_provider_name,
                            p.command.join(" ")
                        )
                    })
                }
                CertificateProvidersCmd::List => print(json, &reg.certificate_providers()?, |ps| {
                    for p in ps {
                        println!("{}\t{}", p.certificate_provider_name, p.command.join(" "));
                    }
                }),
                CertificateProvidersCmd::Describe { name } => {
                    let p = reg
                        .certificate_provider(&name)?
                        .with_context(|| format!("certificate provider {name} not found"))?;
                    print(json, &p, |p| println!("{p:#?}"))
                }
                CertificateProvidersCmd::Delete { name } => {
                    let deleted = reg.delete_certificate_provider(&name)?;
                    print(
                        json,
                        &serde_json::json!({"certificateProviderName": name, "deleted": deleted}),
                        |_| {
                            if deleted {
                                println!("certificate provider {name} deleted: the emulator's CA signs CSRs again")
                            } else {
                                println!("certificate provider {name} did not exist")
                            }
                        },
                    )
                }
            }
        }
        Command::Templates { cmd } => {
            let reg = registry_of(cli.data_dir)?;
            match cmd {
                TemplatesCmd::List => print(json, &reg.templates()?, |ts| {
                    for t in ts {
                        println!(
                            "{}\t{}",
                            t.template_name,
                            if t.enabled { "enabled" } else { "disabled" }
                        );
                    }
                }),
                TemplatesCmd::Create {
                    name,
                    file,
                    hook,
                    disabled,
                } => {
                    let body = fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    reg.create_template(&name, &body, !disabled, hook.as_deref())?;
                    print(json, &serde_json::json!({"templateName": name}), |_| {
                        println!("template {name} created")
                    })
                }
                TemplatesCmd::Describe { name } => {
                    let t = reg
                        .template(&name)?
                        .with_context(|| format!("template {name} not found"))?;
                    print(json, &t, |t| println!("{t:#?}"))
                }
            }
        }
    }
}
