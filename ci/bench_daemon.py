#!/usr/bin/env python3
"""ci/bench.sh daemon: the daemon's resident memory and CPU time while
connected and idle (default 60 s), and the wall time of one rotation
triggered by an AWS IoT job. Release builds, emulator on loopback, SoftHSM.
Numbers only."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT = os.path.join(ROOT, "target/release/prov-agent")
EMULATOR = os.path.join(ROOT, "target/release/iotcore-emulator")
TICKS = os.sysconf("SC_CLK_TCK")


def run(cmd, env=None):
    proc = subprocess.run(cmd, capture_output=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout.decode()}\n{proc.stderr.decode()}")
    return proc.stdout.decode()


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


def main():
    idle = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    work = tempfile.mkdtemp(prefix="prov-agent-bench-daemon.")
    procs = []
    try:
        cloud = os.path.join(work, "cloud")
        run([EMULATOR, "init", cloud])
        serve_out = open(os.path.join(work, "serve.out"), "w+")
        procs.append(subprocess.Popen([EMULATOR, "serve", cloud, "--port", "0", "--alpn-port", "0"],
                                      stdout=serve_out, stderr=subprocess.DEVNULL))
        for _ in range(100):
            serve_out.seek(0)
            m = re.search(r"127\.0\.0\.1:(\d+)", serve_out.read())
            if m:
                break
            time.sleep(0.1)
        else:
            sys.exit("the emulator did not start")
        port = int(m.group(1))

        os.makedirs(os.path.join(work, "tokens"), mode=0o700)
        conf = os.path.join(work, "softhsm2.conf")
        with open(conf, "w") as f:
            f.write(f"directories.tokendir = {work}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n")
        env = dict(os.environ, SOFTHSM2_CONF=conf, PROV_AGENT_LOG="info")
        pin = os.path.join(work, "pin")
        with open(pin, "w") as f:
            f.write("bench-pin\n")
        os.chmod(pin, 0o600)
        run(["softhsm2-util", "--init-token", "--free", "--label", "bench", "--so-pin", "bench-so",
             "--pin", "bench-pin"], env=env)

        dev = os.path.join(work, "device")
        os.makedirs(os.path.join(dev, "certs"))
        shutil.copy(os.path.join(cloud, "root-ca.pem"), os.path.join(dev, "certs/root-ca.pem"))
        shutil.copy(os.path.join(cloud, "claim/claim.pem.crt"), os.path.join(dev, "claim.pem.crt"))
        shutil.copy(os.path.join(cloud, "claim/claim.private.pem.key"), os.path.join(dev, "claim.key"))
        cfg = os.path.join(dev, "config.ini")
        with open(cfg, "w") as f:
            f.write("[SETTINGS]\nSECURE_CERT_PATH = certs\nROOT_CERT = root-ca.pem\nCLAIM_CERT = claim.pem.crt\n"
                    "IOT_ENDPOINT = localhost\nPRODUCTION_TEMPLATE = ProdTemplate\n"
                    "CERT_ROTATION_TEMPLATE = RotationTemplate\n[AGENT]\nSTATE_DIR = state\n"
                    f"[KEYSTORE]\nBACKEND = pkcs11\n[PKCS11]\nMODULE = /usr/lib/softhsm/libsofthsm2.so\n"
                    f"TOKEN_LABEL = bench\nPIN_SOURCE = file:{pin}\n"
                    f"[PROVISIONING]\nPORT = {port}\nSERIAL_NUMBER = BENCH-D\n"
                    "[TEMPLATE_PARAMETERS]\nSite = plant-a\n")
        run([AGENT, "--config", cfg, "claim", "import", "--cert", os.path.join(dev, "claim.pem.crt"),
             "--key", os.path.join(dev, "claim.key")], env=env)
        run([AGENT, "--config", cfg, "enroll"], env=env)
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

        print(f"daemon idle {idle} s connected: RSS {rss1 / 1024:.1f} MiB (peak {hwm1 / 1024:.1f} MiB), "
              f"CPU {cpu1 - cpu0:.2f} s ({100 * (cpu1 - cpu0) / idle:.3f} %)")
        print(f"one rotation (job created -> identity committed): {rotation * 1000:.0f} ms "
              "(includes the emulator's job poll interval)")
        print(f"after the rotation: RSS {rss2 / 1024:.1f} MiB (peak {hwm2 / 1024:.1f} MiB), CPU {cpu2 - cpu1:.2f} s")
    finally:
        for p in procs:
            p.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
