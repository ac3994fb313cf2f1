//! Test-only (cargo feature `fault-injection`, refused in release builds):
//! `PROV_AGENT_MEMDUMP=FILE` makes the process write every writable memory
//! mapping of its own (heap, stacks, data) into FILE just before it exits,
//! so that a test can look through it as an attacker with a core image
//! would: tests/memory.rs searches it for the keys and PINs that went
//! through the process. Reads `/proc/self/maps` and `/proc/self/mem`,
//! which a process may always read of itself (non-dumpable or not).

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;

/// Writes the dump if `PROV_AGENT_MEMDUMP` asks for one; problems are
/// printed, never fatal. With `PROV_AGENT_MEMDUMP_MARK=M`, first leaves
/// `KEPT-M` in memory and frees `FREED-M`: the test's check that the dump
/// sees the heap and that freed memory is wiped.
///
/// A key helper (which inherits the daemon's environment) writes to
/// `FILE.helper-<pid>` instead, so that each helper's memory is looked
/// through too and none overwrites the daemon's.
pub fn at_exit() {
    let Some(mut path) = std::env::var_os("PROV_AGENT_MEMDUMP") else {
        return;
    };
    if std::env::args().nth(1).as_deref() == Some("key-helper") {
        path.push(format!(".helper-{}", std::process::id()));
    }
    if let Ok(mark) = std::env::var("PROV_AGENT_MEMDUMP_MARK") {
        let kept = Box::leak(Box::new(format!("KEPT-{mark}")));
        std::hint::black_box(&*kept);
        // Past the allocator's own bookkeeping in a freed block (glibc
        // writes list pointers over its first bytes).
        let freed = format!("{}FREED-{mark}{}", " ".repeat(256), " ".repeat(4096));
        std::hint::black_box(&freed);
        drop(freed);
    }
    if let Err(e) = dump(std::path::Path::new(&path)) {
        eprintln!("prov-agent: memory dump to {path:?} failed: {e}");
    }
}

fn dump(path: &std::path::Path) -> std::io::Result<()> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut mem = std::fs::File::open("/proc/self/mem")?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    let mut chunk = vec![0u8; 1 << 16];
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with("rw") {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(chunk.len());
            if mem.seek(SeekFrom::Start(at)).is_err() {
                break;
            }
            match mem.read(&mut chunk[..n]) {
                Ok(0) | Err(_) => break,
                Ok(read) => {
                    out.write_all(&chunk[..read])?;
                    at += read as u64;
                }
            }
        }
    }
    out.sync_all()
}
