"""Running Keel's benchmark binaries from the Python drivers (compare.py, compare_grpo.py)."""

import json
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def keel_bin(name):
    """Keel example binary `name`: copied by `bench/compare` into KEEL_BENCH_BIN (default
    target/keel-bench/bin), else the cargo build output under CARGO_TARGET_DIR (default target/)."""
    copied = os.path.join(os.environ.get("KEEL_BENCH_BIN", os.path.join(ROOT, "target", "keel-bench", "bin")), name)
    if os.path.exists(copied):
        return copied
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "examples", name)


def keel_env(threads):
    """The environment with Keel's thread count set (the same count PyTorch is given)."""
    return dict(os.environ, RAYON_NUM_THREADS=str(threads))


def load_text(load):
    """`os.getloadavg()` as printed in the drivers' reports."""
    return f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def save_results(out_path, results):
    """Writes the results JSON (creating its folder) and says where."""
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)
    print(f"results: {out_path}")


def run_json(cmd, env=None):
    """Runs `cmd` and parses the JSON object on the last line of its output."""
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


class KeelServer:
    """A Keel benchmark binary in `serve` mode as a subprocess (`bench_figures serve`, `bench_grpo
    serve DIR`): one command line in, one JSON reply line out. `hello` is its greeting."""

    def __init__(self, args, threads):
        self.p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env=keel_env(threads))
        self.hello = self.ask("")  # the greeting line comes unasked
        if not self.hello.get("ready"):
            raise RuntimeError(f"Keel server did not start: {self.hello}")

    def ask(self, command):
        if command:
            self.p.stdin.write(command + "\n")
            self.p.stdin.flush()
        r = json.loads(self.p.stdout.readline())
        if "error" in r:
            raise RuntimeError(f"Keel `{command}`: {r['error']}")
        return r

    def close(self):
        self.p.stdin.write("quit\n")
        self.p.stdin.flush()
        self.p.wait(timeout=60)
