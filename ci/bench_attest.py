#!/usr/bin/env python3
"""ci/bench.sh attest: what hardware attestation (docs/attestation.md)
costs an enrollment and a rotation, release builds, swtpm manufactured
with an EK certificate, csr mode. N gateways enroll and rotate without
attestation and N with it (attest init and activate done beforehand,
outside the clock), alternating, first against the emulator without the
pre-provisioning hook (the agent's cost: TPM2_Certify and the larger
request), then with the shipped hook (end to end: the hook checks the
proof, with ATTESTATION_CA, or does only its other checks). Prints median
wall times and the ratio. Numbers only."""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import AGENT, ROOT, Bench, run


def python_bin():
    return subprocess.run([os.path.join(ROOT, "ci/python-venv.sh")], check=True,
                          capture_output=True, text=True).stdout.strip()


def timed(cmd, env):
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, env=env)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout.decode()}\n{proc.stderr.decode()}")
    return elapsed * 1000


def series(runs, hooks):
    """{(attested, op): [ms]}: plain gateways against one emulator, attested
    ones against another (with the hook, the second has ATTESTATION_CA),
    each with its own swtpm, runs alternating."""
    venv = python_bin()
    ca_tool = [os.path.join(venv, "python3"), os.path.join(ROOT, "factory/manufacturer_ca.py")]
    ca_dir = tempfile.mkdtemp(prefix="prov-agent-bench-ca.")
    ca = os.path.join(ca_dir, "ca")
    run(ca_tool + ["init", "--dir", ca, "--subject", "Bench Manufacturing CA"])
    ca_cert = next(os.path.join(ca, f) for f in sorted(os.listdir(ca))
                   if f.endswith(".pem") and "BEGIN CERTIFICATE" in open(os.path.join(ca, f)).read())

    def serve_env(attested):
        if not hooks:
            return None
        env = dict(os.environ, PATH=f"{venv}:{os.environ.get('PATH', '')}")
        if attested:
            env["ATTESTATION_CA"] = ca_cert
        return env

    benches = {}
    try:
        for attested in (False, True):
            benches[attested] = Bench(f"prov-agent-bench-attest{int(attested)}.", hooks=hooks,
                                      serve_env=serve_env(attested))
            benches[attested].start_swtpm(ek_cert=True)
        results = {}
        for n in range(1, runs + 1):
            for attested in (False, True):
                bench = benches[attested]
                extra = "MODE = csr\n" + ("[ATTESTATION]\nMODE = tpm\n" if attested else "")
                cfg = bench.device(n, "swtpm", extra)
                if attested:
                    req = os.path.join(bench.work, f"req{n}.json")
                    chal = os.path.join(bench.work, f"chal{n}.json")
                    run([AGENT, "--config", cfg, "attest", "init", "--out", req], env=bench.env)
                    run(ca_tool + ["challenge", "--ca", ca, "--ek-ca",
                                   os.path.join(bench.ek_ca, "issuercert.pem"), "--ek-ca",
                                   os.path.join(bench.ek_ca, "swtpm-localca-rootca-cert.pem"),
                                   "--request", req, "--out", chal])
                    run([AGENT, "--config", cfg, "attest", "activate", "--challenge", chal],
                        env=bench.env)
                for op in ("enroll", "rotate"):
                    ms = timed([AGENT, "--config", cfg, op], bench.env)
                    results.setdefault((attested, op), []).append(ms)
        return results
    finally:
        for bench in benches.values():
            bench.close()
        shutil.rmtree(ca_dir, ignore_errors=True)


def import_cost(runs):
    """Median ms of a fresh Python importing the hook alone, and the hook
    with the attestation module (and cryptography): what each hook run in
    the emulator pays and a warm Lambda pays once."""
    python = os.path.join(python_bin(), "python3")
    hooks = os.path.join(ROOT, "templates/hooks")
    out = {}
    for name, modules in (("hook", "provisioning_hook"),
                          ("hook+attestation", "provisioning_hook, tpm_attestation")):
        code = f"import sys; sys.path.insert(0, {hooks!r}); import {modules}"
        out[name] = statistics.median(timed([python, "-c", code], None) for _ in range(runs))
    return out


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    cost = import_cost(runs)
    print(f"== Python start-up of the hook: {cost['hook']:.1f} ms alone, "
          f"{cost['hook+attestation']:.1f} ms with tpm_attestation and cryptography "
          f"(median of {runs}; paid at every hook run in the emulator, once per warm Lambda)")
    for hooks in (False, True):
        results = series(runs, hooks)
        where = ("with the shipped hook (plain: its other checks; attested: also the proof)"
                 if hooks else "without the hook (the agent's own cost)")
        print(f"== {where}")
        for op in ("enroll", "rotate"):
            plain = statistics.median(results[(False, op)])
            attested = statistics.median(results[(True, op)])
            print(f"swtpm csr {op}: plain {plain:.1f} ms, attested {attested:.1f} ms, "
                  f"ratio {attested / plain:.3f} (median of {runs})")


if __name__ == "__main__":
    main()
