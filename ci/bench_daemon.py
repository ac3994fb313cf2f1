#!/usr/bin/env python3
"""ci/bench.sh daemon: the daemon's resident memory and CPU time while
connected and idle (default 60 s), and the wall time of one rotation
triggered by an AWS IoT job. Release builds, emulator on loopback, SoftHSM
(BENCH_BACKEND=tpm: swtpm). Numbers only.

The daemon opens the key store in a `prov-agent key-helper` child process
for a handshake or a rotation only; the idle figures are the daemon alone,
and the child-process count shows that no helper is left running."""

import json
import os
import subprocess
import sys
import time

from benchlib import AGENT, EMULATOR, Bench, run

TICKS = os.sysconf("SC_CLK_TCK")


def proc_status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / TICKS  # utime + stime
    kib = lambda k: int(fields[k].split()[0])
    return kib("VmRSS"), kib("VmHWM"), cpu


def rollup(pid):
    """Rss, Pss and Anonymous (KiB) from /proc/PID/smaps_rollup."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].rstrip(":") in ("Rss", "Pss", "Anonymous"):
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            pass
    return found


def main():
    idle = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    bench = Bench("prov-agent-bench-daemon.")
    work, procs, env, cloud = bench.work, bench.procs, bench.env, bench.cloud
    try:
        backend = os.environ.get("BENCH_BACKEND", "softhsm")
        if backend == "tpm":
            bench.start_swtpm()
        cfg = bench.device(1, backend)
        run([AGENT, "--config", cfg, "enroll"], env=env)
        dev = os.path.dirname(cfg)
        identity = os.path.join(dev, "state/identity.json")
        with open(identity) as f:
            first = json.load(f)

        log = open(os.path.join(work, "daemon.log"), "w+")
        daemon = subprocess.Popen([AGENT, "--config", cfg, "run"], stdout=subprocess.DEVNULL, stderr=log, env=env)
        procs.append(daemon)
        for _ in range(200):
            log.seek(0)
            if "INFO connected" in log.read():
                break
            time.sleep(0.05)
        else:
            sys.exit("the daemon did not connect")
        rss0, hwm0, cpu0 = proc_status(daemon.pid)
        if os.environ.get("BENCH_SMAPS"):
            agg = {}
            name = None
            with open(f"/proc/{daemon.pid}/smaps") as f:
                for line in f:
                    parts = line.split()
                    if "-" in parts[0] and len(parts) >= 5 and ":" in parts[3]:
                        name = parts[5] if len(parts) > 5 else "[anon]"
                    elif line.startswith("Rss:"):
                        agg[name] = agg.get(name, 0) + int(parts[1])
            for n, kb in sorted(agg.items(), key=lambda x: -x[1])[:15]:
                print(f"  {kb:>7} KiB  {n}")
        time.sleep(idle)
        rss1, hwm1, cpu1 = proc_status(daemon.pid)
        idle_mem = rollup(daemon.pid)
        idle_children = children(daemon.pid)

        doc = os.path.join(work, "job.json")
        with open(doc, "w") as f:
            json.dump({"operation": "rotate-certificate"}, f)
        start = time.monotonic()
        run([EMULATOR, "-d", cloud, "jobs", "create", "bench-rotate", "--document", doc,
             "--thing", first["thingName"]])
        while True:
            with open(identity) as f:
                if json.load(f)["certificateId"] != first["certificateId"]:
                    break
            if time.monotonic() - start > 60:
                sys.exit("no rotation within 60 s")
            time.sleep(0.02)
        rotation = time.monotonic() - start
        rss2, hwm2, cpu2 = proc_status(daemon.pid)

        print(f"daemon idle {idle} s connected ({backend}): RSS {rss1 / 1024:.1f} MiB "
              f"(peak {hwm1 / 1024:.1f} MiB), CPU {cpu1 - cpu0:.2f} s ({100 * (cpu1 - cpu0) / idle:.3f} %)")
        print(f"  of which anonymous {idle_mem['Anonymous'] / 1024:.1f} MiB, PSS {idle_mem['Pss'] / 1024:.1f} MiB; "
              f"child processes while idle: {len(idle_children)}")
        print(f"one rotation (job created -> identity committed): {rotation * 1000:.0f} ms "
              "(includes the emulator's job poll interval)")
        print(f"after the rotation: RSS {rss2 / 1024:.1f} MiB (peak {hwm2 / 1024:.1f} MiB), CPU {cpu2 - cpu1:.2f} s")
    finally:
        bench.close()


if __name__ == "__main__":
    main()
