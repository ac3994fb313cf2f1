//! Test-only (cargo feature `fault-injection`, refused in release builds):
//! `PROV_AGENT_MEMDUMP=FILE` makes the process write every writable memory
//! mapping of its own (heap, stacks, data) into FILE just before it exits,
//! so that a test can look through it as an attacker with a core image
//! would: tests/memory.rs searches it for the keys and PINs that went
//! through the process. Reads `/proc/self/maps` and `/proc/self/mem`,
//! which a process may always read of itself (non-dumpable or not).
//!
//! The running daemon writes one on SIGUSR2 too ([`live`]), into
//! `FILE.live-<n>` (the n-th since it started), so that a test sees what
//! an attacker who reads the memory of a daemon that keeps running would.
//!
//! Beside every dump `D` goes `D.map`, written before `D` appears under
//! its name (a dump is written as `D.partial` and renamed): one line per
//! writable mapping, `<start>-<end> <perms> <bytes read> <bytes mapped>
//! <name>`, tab-separated, then `error <at>: <why>` for a mapping that
//! could not be read whole (its other pages are still read); `tag <what>`
//! lines for what the process did ([`tag`]); and `environ <bytes>`, the
//! length of `/proc/self/environ` as it reads now, whose bytes go into
//! `D.environ`. A test checks that every mapping was read to its end.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// What the process did that a test wants to tell its dumps apart by.
static TAGS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
/// The live dumps written so far.
static LIVE: AtomicU32 = AtomicU32::new(0);

/// Records that the process did `what` (a key helper that imported a key
/// says "imported-key"); the dumps' `.map` files list it.
pub fn tag(what: &'static str) {
    let mut tags = TAGS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !tags.contains(&what) {
        tags.push(what);
    }
}

/// The dump's path, if `PROV_AGENT_MEMDUMP` asks for one. A key helper
/// (which inherits the daemon's environment) writes to
/// `FILE.helper-<pid>` instead, so that each helper's memory is looked
/// through too and none overwrites the daemon's.
fn target() -> Option<PathBuf> {
    let mut path = std::env::var_os("PROV_AGENT_MEMDUMP")?;
    if std::env::args().nth(1).as_deref() == Some("key-helper") {
        path.push(format!(".helper-{}", std::process::id()));
    }
    Some(path.into())
}

/// Writes the dump if `PROV_AGENT_MEMDUMP` asks for one; problems are
/// printed, never fatal. With `PROV_AGENT_MEMDUMP_MARK=M`, first leaves
/// `KEPT-M` in memory and frees `FREED-M`: the test's check that the dump
/// sees the heap and that freed memory is wiped.
pub fn at_exit() {
    if let Some(path) = target() {
        write(&path);
    }
}

/// The running process's dump, on demand (the daemon's SIGUSR2): into
/// `FILE.live-<n>`, as [`at_exit`] otherwise.
pub fn live() {
    if let Some(path) = target() {
        let n = LIVE.fetch_add(1, Ordering::Relaxed) + 1;
        let mut path = path.into_os_string();
        path.push(format!(".live-{n}"));
        write(Path::new(&path));
    }
}

fn write(path: &Path) {
    if let Ok(mark) = std::env::var("PROV_AGENT_MEMDUMP_MARK") {
        let kept = Box::leak(Box::new(format!("KEPT-{mark}")));
        std::hint::black_box(&*kept);
        // Past the allocator's own bookkeeping in a freed block (glibc
        // writes list pointers over its first bytes).
        let freed = format!("{}FREED-{mark}{}", " ".repeat(256), " ".repeat(4096));
        std::hint::black_box(&freed);
        drop(freed);
    }
    if let Err(e) = dump(path) {
        eprintln!("prov-agent: memory dump to {path:?} failed: {e}");
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_os_string();
    p.push(suffix);
    p.into()
}

fn create(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn dump(path: &Path) -> std::io::Result<()> {
    const PAGE: u64 = 4096;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut mem = std::fs::File::open("/proc/self/mem")?;
    let partial = with_suffix(path, ".partial");
    let mut out = create(&partial)?;
    let mut report = String::new();
    let mut chunk = vec![0u8; 1 << 16];
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with("rw") {
            continue;
        }
        // offset, device, inode, then the name (which may hold spaces).
        let name = fields.skip(3).collect::<Vec<_>>().join(" ");
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let mut read_total = 0u64;
        let mut errors = Vec::new();
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(chunk.len());
            let got = mem
                .seek(SeekFrom::Start(at))
                .and_then(|_| mem.read(&mut chunk[..n]));
            match got {
                Ok(read) if read > 0 => {
                    out.write_all(&chunk[..read])?;
                    at += read as u64;
                    read_total += read as u64;
                }
                // Skip the page that cannot be read and go on with the
                // next: the mapping is reported incomplete.
                failed => {
                    let why = match failed {
                        Ok(_) => "end of file".to_string(),
                        Err(e) => e.to_string(),
                    };
                    errors.push(format!("{at:x}: {why}"));
                    at = ((at / PAGE) + 1) * PAGE;
                }
            }
        }
        report.push_str(&format!(
            "{range}\t{perms}\t{read_total}\t{}\t{name}\n",
            end - start
        ));
        for e in errors.iter().take(4) {
            report.push_str(&format!("error {e}\n"));
        }
    }
    out.sync_all()?;
    drop(out);
    for tag in TAGS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
    {
        report.push_str(&format!("tag {tag}\n"));
    }
    let environ = std::fs::read("/proc/self/environ")?;
    report.push_str(&format!("environ {}\n", environ.len()));
    let mut side = create(&with_suffix(path, ".environ"))?;
    side.write_all(&environ)?;
    side.sync_all()?;
    let mut side = create(&with_suffix(path, ".map"))?;
    side.write_all(report.as_bytes())?;
    side.sync_all()?;
    std::fs::rename(&partial, path)
}
