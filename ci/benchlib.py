"""Set-up shared by the benchmarks (ci/bench_enroll.py, ci/bench_daemon.py):
the release binaries, an emulator on loopback, a SoftHSM token, swtpm, and
device directories with a config.ini. Everything lives in one work dir and
is stopped by Bench.close()."""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# BENCH_AGENT: another build to measure (ci/bench.sh alloc).
AGENT = os.environ.get("BENCH_AGENT") or os.path.join(ROOT, "target/release/prov-agent")
EMULATOR = os.path.join(ROOT, "target/release/iotcore-emulator")
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def run(cmd, env=None):
    proc = subprocess.run(cmd, capture_output=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout.decode()}\n{proc.stderr.decode()}")
    return proc.stdout.decode()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Bench:
    def __init__(self, prefix, log="info", serve_args=(), hooks=False, serve_env=None):
        """hooks: keep the templates' pre-provisioning hook (run with
        serve_env, which needs the Python virtualenv with boto3 on PATH)."""
        self.work = tempfile.mkdtemp(prefix=prefix)
        self.procs = []
        self.cloud = os.path.join(self.work, "cloud")
        run([EMULATOR, "init", self.cloud])
        # The benchmarks measure the agent: the templates are registered
        # again without their pre-provisioning hook, whose Python start-up
        # (about 0.35 s per RegisterThing here) would dominate the figures.
        if not hooks:
            for name in ("ProdTemplate", "RotationTemplate"):
                run([EMULATOR, "-d", self.cloud, "templates", "create", name,
                     os.path.join(ROOT, "templates", f"{name}.json")])
        serve_out = open(os.path.join(self.work, "serve.out"), "w+")
        self.procs.append(subprocess.Popen(
            [EMULATOR, "serve", self.cloud, "--port", "0", "--alpn-port", "0", "--api-port", "0",
             *serve_args],
            stdout=serve_out, stderr=subprocess.DEVNULL, env=serve_env))
        for _ in range(100):
            serve_out.seek(0)
            m = re.search(r"127\.0\.0\.1:(\d+)", serve_out.read())
            if m:
                break
            time.sleep(0.1)
        else:
            sys.exit("the emulator did not start")
        self.port = int(m.group(1))

        os.makedirs(os.path.join(self.work, "tokens"), mode=0o700)
        conf = os.path.join(self.work, "softhsm2.conf")
        with open(conf, "w") as f:
            f.write(f"directories.tokendir = {self.work}/tokens\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
        self.env = dict(os.environ, SOFTHSM2_CONF=conf, PROV_AGENT_LOG=log)
        self.pin = os.path.join(self.work, "pin")
        with open(self.pin, "w") as f:
            f.write("bench-pin\n")
        os.chmod(self.pin, 0o600)
        run(["softhsm2-util", "--init-token", "--free", "--label", "bench", "--so-pin", "bench-so",
             "--pin", "bench-pin"], env=self.env)
        self.tpm_port = None

    def start_swtpm(self, ek_cert=False):
        """ek_cert: manufactured with an endorsement key certificate
        (swtpm_setup --create-ek-cert; its CA in self.ek_ca)."""
        self.tpm_port = free_port()
        state = os.path.join(self.work, "tpm")
        os.makedirs(state, mode=0o700)
        if ek_cert:
            self.ek_ca = os.path.join(self.work, "ek-ca")
            os.makedirs(self.ek_ca)
            localca = os.path.join(self.work, "swtpm-localca.conf")
            with open(localca, "w") as f:
                f.write(f"statedir = {self.ek_ca}\nsigningkey = {self.ek_ca}/signkey.pem\n"
                        f"issuercert = {self.ek_ca}/issuercert.pem\n"
                        f"certserial = {self.ek_ca}/certserial\n")
            setup = os.path.join(self.work, "swtpm_setup.conf")
            with open(setup, "w") as f:
                f.write("create_certs_tool = /usr/bin/swtpm_localca\n"
                        f"create_certs_tool_config = {localca}\n"
                        "create_certs_tool_options = /etc/swtpm-localca.options\n"
                        "active_pcr_banks = sha256\n")
            run(["swtpm_setup", "--tpm2", "--create-ek-cert", "--overwrite", "--tpmstate", state,
                 "--config", setup])
        self.procs.append(subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
             "--server", f"type=tcp,port={self.tpm_port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={self.tpm_port + 1},bindaddr=127.0.0.1",
             "--flags", "not-need-init,startup-clear"]))
        time.sleep(0.5)

    def keystore_section(self, backend, n):
        """[KEYSTORE] and the backend's section; key labels unique to device n."""
        keys = f"[KEYSTORE]\nCLAIM_KEY = claim{n}\nDEVICE_KEY = device{n}\n"
        if backend == "softhsm":
            return (keys + f"BACKEND = pkcs11\n[PKCS11]\nMODULE = {SOFTHSM_MODULE}\n"
                    f"TOKEN_LABEL = bench\nPIN_SOURCE = file:{self.pin}\n")
        return keys + f"BACKEND = tpm\n[TPM]\nTCTI = swtpm:host=127.0.0.1,port={self.tpm_port}\n"

    def device(self, n, backend, provisioning=""):
        """A device directory with the claim files and a config; returns the
        config path after `claim import`."""
        dev = os.path.join(self.work, f"dev{n}")
        os.makedirs(os.path.join(dev, "certs"))
        shutil.copy(os.path.join(self.cloud, "root-ca.pem"), os.path.join(dev, "certs/root-ca.pem"))
        shutil.copy(os.path.join(self.cloud, "claim/claim.pem.crt"), os.path.join(dev, "claim.pem.crt"))
        shutil.copy(os.path.join(self.cloud, "claim/claim.private.pem.key"), os.path.join(dev, "claim.key"))
        cfg = os.path.join(dev, "config.ini")
        with open(cfg, "w") as f:
            f.write("[SETTINGS]\nSECURE_CERT_PATH = certs\nROOT_CERT = root-ca.pem\n"
                    "CLAIM_CERT = claim.pem.crt\nIOT_ENDPOINT = localhost\n"
                    "PRODUCTION_TEMPLATE = ProdTemplate\nCERT_ROTATION_TEMPLATE = RotationTemplate\n"
                    "[AGENT]\nSTATE_DIR = state\n"
                    + self.keystore_section(backend, n)
                    + f"[PROVISIONING]\nPORT = {self.port}\nSERIAL_NUMBER = BENCH-{n}\n{provisioning}"
                    "[TEMPLATE_PARAMETERS]\nSite = plant-a\n")
        run([AGENT, "--config", cfg, "claim", "import", "--cert",
             os.path.join(dev, "claim.pem.crt"), "--key", os.path.join(dev, "claim.key")], env=self.env)
        return cfg

    def close(self):
        for p in self.procs:
            p.terminate()
        shutil.rmtree(self.work, ignore_errors=True)
