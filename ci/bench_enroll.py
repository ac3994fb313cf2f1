#!/usr/bin/env python3
"""ci/bench.sh enroll: release builds of prov-agent and iotcore-emulator,
the emulator on loopback and again behind its simulated link (`serve
--latency 50`: 100 ms round-trip time), N enrollments and N rotations each
in csr and keys mode on SoftHSM and swtpm. Prints median wall time, peak
RSS, hardware signatures and TCP connections per operation (counted from
the agent's debug log), and the round trips: the extra time the simulated
link costs divided by its RTT (the emulator's link simulation holds a new
connection's first bytes for the TCP handshake's round trip, so a TCP
connect on the critical path counts and one overlapped by other work does
not, as on a real link). Numbers only."""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import AGENT, Bench

RTT_MS = 100
# Upper bound of one RSA-2048 key generation on the 2-core CI machine.
RSA_KEY_SECONDS = 0.5


def measured(cmd, env):
    """Runs cmd under GNU time: (seconds, peak RSS in KiB, stdout, stderr).
    Python's own wait4 would report the RSS of the forked Python image."""
    rss_file = tempfile.NamedTemporaryFile(prefix="rss.", delete=False)
    rss_file.close()
    start = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-o", rss_file.name, "-f", "%M"] + cmd,
                          capture_output=True, env=env)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout.decode()}\n{proc.stderr.decode()}")
    with open(rss_file.name) as f:
        rss = int(f.read().strip().splitlines()[-1])
    os.unlink(rss_file.name)
    return elapsed, rss, proc.stdout.decode(), proc.stderr.decode()


def run_series(bench, runs, first_device):
    """{(backend, mode, op): (times ms, peak RSS MiB, signatures, connections)}"""
    results = {}
    n = first_device
    for backend in ("softhsm", "swtpm"):
        for mode in ("csr", "keys"):
            for _ in range(runs):
                n += 1
                cfg = bench.device(n, backend, f"MODE = {mode}\n")
                for op, cmd in (("enroll", ["enroll", "--json"]), ("rotate", ["rotate", "--json"])):
                    elapsed, peak, out, err = measured([AGENT, "--config", cfg] + cmd, bench.env)
                    json.loads(out)
                    row = results.setdefault((backend, mode, op), ([], [], [], []))
                    row[0].append(elapsed * 1000)
                    row[1].append(peak / 1024)
                    row[2].append(err.count("hardware signature"))
                    row[3].append(err.count("TCP connect to"))
    return results, n


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    series = {}
    n = 0
    # BENCH_LOOPBACK_ONLY=1: no simulated link (ci/bench.sh alloc).
    rtts = (0,) if os.environ.get("BENCH_LOOPBACK_ONLY") else (0, RTT_MS)
    for rtt in rtts:
        # Keys mode takes the emulator's pre-made RSA keys (as the service
        # answers in milliseconds): a pool as large as the series uses,
        # filled before the clock starts.
        keys_used = 2 * 2 * runs
        args = ["--rsa-key-pool", str(keys_used)]
        if rtt:
            args += ["--latency", str(rtt // 2)]
        bench = Bench("prov-agent-bench.", log="prov_agent=debug", serve_args=args)
        try:
            bench.start_swtpm()
            time.sleep(RSA_KEY_SECONDS * keys_used)
            series[rtt], n = run_series(bench, runs, n)
        finally:
            bench.close()
    print(f"{'backend':<8} {'mode':<5} {'op':<7} {'RTT ms':>6} {'runs':>4} {'median ms':>10} "
          f"{'p90 ms':>8} {'peak RSS MiB':>13} {'HW sigs':>8} {'TCP conns':>9} {'round trips':>11}")
    for key in series[0]:
        base = statistics.median(series[0][key][0])
        for rtt in rtts:
            times, rss, sigs, conns = series[rtt][key]
            times = sorted(times)
            median = statistics.median(times)
            p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
            trips = ""
            if rtt:
                trips = f"{(median - base) / rtt:.1f}"
            backend, mode, op = key
            print(f"{backend:<8} {mode:<5} {op:<7} {rtt:>6} {runs:>4} {median:>10.1f} {p90:>8.1f} "
                  f"{max(rss):>13.1f} {statistics.median(sigs):>8.0f} "
                  f"{statistics.median(conns):>9.0f} {trips:>11}")


if __name__ == "__main__":
    main()
