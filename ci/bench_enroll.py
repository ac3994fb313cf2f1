#!/usr/bin/env python3
"""ci/bench.sh enroll: release builds of prov-agent and iotcore-emulator,
the emulator on loopback, N enrollments each in csr and keys mode on SoftHSM
and swtpm. Prints median wall time, peak RSS and hardware signatures per
enrollment (counted from the agent's debug log). Numbers only."""

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT = os.path.join(ROOT, "target/release/prov-agent")
EMULATOR = os.path.join(ROOT, "target/release/iotcore-emulator")
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(cmd, env=None):
    proc = subprocess.run(cmd, capture_output=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout.decode()}\n{proc.stderr.decode()}")
    return proc.stdout.decode()


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
    work = tempfile.mkdtemp(prefix="prov-agent-bench.")
    procs = []
    try:
        cloud = os.path.join(work, "cloud")
        run([EMULATOR, "init", cloud])
        serve_out = open(os.path.join(work, "serve.out"), "w+")
        procs.append(subprocess.Popen([EMULATOR, "serve", cloud, "--port", "0", "--alpn-port", "0"],
                                      stdout=serve_out, stderr=subprocess.DEVNULL))
        for _ in range(100):
            serve_out.seek(0)
            line = serve_out.read()
            m = re.search(r"127\.0\.0\.1:(\d+)", line)
            if m:
                break
            time.sleep(0.1)
        else:
            sys.exit("the emulator did not start")
        port = int(m.group(1))

        # SoftHSM: one token for all runs; swtpm: one TPM.
        os.makedirs(os.path.join(work, "tokens"), mode=0o700)
        conf = os.path.join(work, "softhsm2.conf")
        with open(conf, "w") as f:
            f.write(f"directories.tokendir = {work}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n")
        env = dict(os.environ, SOFTHSM2_CONF=conf, PROV_AGENT_LOG="prov_agent=debug")
        pin = os.path.join(work, "pin")
        with open(pin, "w") as f:
            f.write("bench-pin\n")
        os.chmod(pin, 0o600)
        run(["softhsm2-util", "--init-token", "--free", "--label", "bench", "--so-pin", "bench-so",
             "--pin", "bench-pin"], env=env)
        tpm_port = free_port()
        tpm_state = os.path.join(work, "tpm")
        os.makedirs(tpm_state, mode=0o700)
        procs.append(subprocess.Popen(["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={tpm_state}",
                                       "--server", f"type=tcp,port={tpm_port},bindaddr=127.0.0.1",
                                       "--ctrl", f"type=tcp,port={tpm_port + 1},bindaddr=127.0.0.1",
                                       "--flags", "not-need-init,startup-clear"]))
        time.sleep(0.5)

        backends = {
            "softhsm": f"[KEYSTORE]\nBACKEND = pkcs11\n[PKCS11]\nMODULE = {SOFTHSM_MODULE}\n"
                       f"TOKEN_LABEL = bench\nPIN_SOURCE = file:{pin}\n",
            "swtpm": f"[KEYSTORE]\nBACKEND = tpm\n[TPM]\nTCTI = swtpm:host=127.0.0.1,port={tpm_port}\n",
        }
        print(f"{'backend':<8} {'mode':<5} {'runs':>4} {'median ms':>10} {'p90 ms':>8} "
              f"{'peak RSS MiB':>13} {'HW signatures':>14}")
        n = 0
        for backend, section in backends.items():
            for mode in ("csr", "keys"):
                times, rss, sigs = [], [], []
                for i in range(runs):
                    n += 1
                    dev = os.path.join(work, f"dev{n}")
                    os.makedirs(os.path.join(dev, "certs"))
                    shutil.copy(os.path.join(cloud, "root-ca.pem"), os.path.join(dev, "certs/root-ca.pem"))
                    shutil.copy(os.path.join(cloud, "claim/claim.pem.crt"), os.path.join(dev, "claim.pem.crt"))
                    shutil.copy(os.path.join(cloud, "claim/claim.private.pem.key"), os.path.join(dev, "claim.key"))
                    cfg = os.path.join(dev, "config.ini")
                    keys = section.replace(
                        "[KEYSTORE]\n", f"[KEYSTORE]\nCLAIM_KEY = claim{n}\nDEVICE_KEY = device{n}\n")
                    with open(cfg, "w") as f:
                        f.write("[SETTINGS]\nSECURE_CERT_PATH = certs\nROOT_CERT = root-ca.pem\n"
                                "CLAIM_CERT = claim.pem.crt\nIOT_ENDPOINT = localhost\n"
                                "PRODUCTION_TEMPLATE = ProdTemplate\n[AGENT]\nSTATE_DIR = state\n"
                                + keys
                                + f"[PROVISIONING]\nMODE = {mode}\nPORT = {port}\nSERIAL_NUMBER = BENCH-{n}\n"
                                "[TEMPLATE_PARAMETERS]\nSite = plant-a\n")
                    run([AGENT, "--config", cfg, "claim", "import", "--cert",
                         os.path.join(dev, "claim.pem.crt"), "--key", os.path.join(dev, "claim.key")], env=env)
                    elapsed, peak, out, err = measured([AGENT, "--config", cfg, "enroll", "--json"], env)
                    json.loads(out)
                    times.append(elapsed * 1000)
                    rss.append(peak / 1024)
                    sigs.append(err.count("hardware signature"))
                times.sort()
                p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
                print(f"{backend:<8} {mode:<5} {runs:>4} {statistics.median(times):>10.1f} {p90:>8.1f} "
                      f"{max(rss):>13.1f} {statistics.median(sigs):>14.0f}")
    finally:
        for p in procs:
            p.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
