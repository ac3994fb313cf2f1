#!/usr/bin/env python3
"""ci/bench.sh enroll: release builds of prov-agent and iotcore-emulator,
the emulator on loopback, N enrollments each in csr and keys mode on SoftHSM
and swtpm. Prints median wall time, peak RSS and hardware signatures per
enrollment (counted from the agent's debug log). Numbers only."""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import AGENT, Bench


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


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    bench = Bench("prov-agent-bench.", log="prov_agent=debug")
    try:
        bench.start_swtpm()
        print(f"{'backend':<8} {'mode':<5} {'runs':>4} {'median ms':>10} {'p90 ms':>8} "
              f"{'peak RSS MiB':>13} {'HW signatures':>14}")
        n = 0
        for backend in ("softhsm", "swtpm"):
            for mode in ("csr", "keys"):
                times, rss, sigs = [], [], []
                for _ in range(runs):
                    n += 1
                    cfg = bench.device(n, backend, f"MODE = {mode}\n")
                    elapsed, peak, out, err = measured([AGENT, "--config", cfg, "enroll", "--json"],
                                                       bench.env)
                    json.loads(out)
                    times.append(elapsed * 1000)
                    rss.append(peak / 1024)
                    sigs.append(err.count("hardware signature"))
                times.sort()
                p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
                print(f"{backend:<8} {mode:<5} {runs:>4} {statistics.median(times):>10.1f} {p90:>8.1f} "
                      f"{max(rss):>13.1f} {statistics.median(sigs):>14.0f}")
    finally:
        bench.close()


if __name__ == "__main__":
    main()
