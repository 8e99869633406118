"""Keel vs PyTorch, side by side, on the same CPU, configuration and weights.

Run through `bash bench/compare` (which builds the Keel binary and the venv first). Keel runs as a
long-lived `bench_figures serve` subprocess; PyTorch runs in this process. Every round times one
repetition of a workload on each side, alternating which side goes first, so that load from other
processes on a shared machine lands on both sides alike: the per-round Keel/PyTorch ratios (and
their median) stay meaningful even when absolute times drift. Peak memory is measured in separate,
fresh processes for each side (`once` mode), since one process holding both would mix them.

Environment: KEEL_BENCH_THREADS (default 2), KEEL_BENCH_ROUNDS (default 7),
KEEL_BENCH_OUT (JSON results path, relative to the repository root; default
target/keel-bench/results.json), KEEL_BENCH_BIN (directory holding the Keel binary).
"""

import os
import statistics
import sys

import torch

import torch_ref
from keel_proc import HERE, ROOT, KeelServer, keel_bin, keel_env, load_text, run_json, save_results


def train_flops(c, b, t):
    """Matmul FLOPs of one train step (forward + backward = 3x forward).

    Linear layers: 2 FLOPs per multiply-add per token; attention: QK^T and PV counted over the full
    T x T square (Keel computes all of it; PyTorch's SDPA may skip the masked half), so the count
    does not depend on the implementation. Element-wise work, norms and the optimiser are not
    counted (the usual MFU convention).
    """
    d, ff, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    nh, nkv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    per_token = L * (d * nh * hd + 2 * d * nkv * hd + nh * hd * d + 3 * d * ff) + d * V
    n = b * t
    linear = 2 * n * per_token
    attn = L * 2 * (2 * b * nh * t * t * hd)
    return 3 * (linear + attn)


def main():
    threads = int(os.environ.get("KEEL_BENCH_THREADS", "2"))
    rounds = int(os.environ.get("KEEL_BENCH_ROUNDS", "7"))
    # Relative paths are taken from the repository root (the script runs from bench/).
    out_path = os.path.join(ROOT, os.environ.get("KEEL_BENCH_OUT", os.path.join("target", "keel-bench", "results.json")))
    weights = os.path.join(ROOT, "target", "keel-bench", "weights")
    os.makedirs(weights, exist_ok=True)
    torch.set_num_threads(threads)
    load_before = os.getloadavg()

    exported = run_json([keel_bin("bench_figures"), "export", weights], env=keel_env(threads))
    tb = torch_ref.Bench(weights)
    n_torch = sum(p.numel() for p in tb.model.parameters())
    if n_torch != exported["parameters"]:
        sys.exit(f"parameter counts differ: Keel {exported['parameters']}, PyTorch {n_torch}")
    print(f"tiny-8m, {n_torch} parameters, batch {torch_ref.BATCH}x{torch_ref.SEQ}, f32, {threads} threads")
    print(f"load average before: {load_text(load_before)}")

    keel = KeelServer([keel_bin("bench_figures"), "serve"], threads)
    results = {"threads": threads, "rounds": rounds, "parameters": n_torch, "load_before": load_before}

    # Same weights: forward-only mean log-prob of the fixed batch must agree (f32 rounding only).
    kf = keel.ask("forward 1")["value"]
    tf = tb.measure("forward", 1)["value"]
    print(f"mean token log-prob: Keel {kf:.6f}  PyTorch {tf:.6f}  (|diff| {abs(kf - tf):.2e})")
    results["check"] = {"keel_mean_logprob": kf, "torch_mean_logprob": tf}
    if abs(kf - tf) > 1e-3:
        sys.exit("the two models disagree: not the same weights or not the same architecture")

    workloads = [("train", rounds), ("forward", rounds), ("generate", max(3, rounds - 2))]
    table = {}
    for what, r in workloads:
        kt, tt, ratios = [], [], []
        for i in range(r):
            if i % 2 == 0:
                k = keel.ask(f"{what} 1")
                t = tb.measure(what, 1)
            else:
                t = tb.measure(what, 1)
                k = keel.ask(f"{what} 1")
            kt.append(k["times"][0])
            tt.append(t["times"][0])
            ratios.append(kt[-1] / tt[-1])
        table[what] = {
            "keel_s": statistics.median(kt),
            "torch_s": statistics.median(tt),
            "ratio_median": statistics.median(ratios),
            "keel_times": kt,
            "torch_times": tt,
            "ratios": ratios,
            "keel_value": k["value"],
            "torch_value": t["value"],
        }
        print(f"{what:9s} Keel {table[what]['keel_s']:.3f} s  PyTorch {table[what]['torch_s']:.3f} s  "
              f"Keel/PyTorch {table[what]['ratio_median']:.2f} (median of {r} alternating rounds; "
              f"min {min(ratios):.2f}, max {max(ratios):.2f})")
    keel.close()
    results["workloads"] = table

    gen_tokens = torch_ref.BATCH * torch_ref.NEW_TOKENS
    for side, key in (("Keel", "keel_s"), ("PyTorch", "torch_s")):
        print(f"generation {side}: {gen_tokens / table['generate'][key]:.0f} new tokens/s")

    # Matmul peaks and MFU of the train step.
    kpeak = run_json([keel_bin("bench_figures"), "peak"], env=keel_env(threads))["matmul_gflops"]
    tpeak = torch_ref.matmul_peak()
    flops = train_flops(tb.model.c, torch_ref.BATCH, torch_ref.SEQ)
    kflops = flops / table["train"]["keel_s"] / 1e9
    tflops = flops / table["train"]["torch_s"] / 1e9
    results["mfu"] = {"train_gflop": flops / 1e9, "keel_gflops": kflops, "torch_gflops": tflops,
                      "candle_matmul_peak_gflops": kpeak, "torch_matmul_peak_gflops": tpeak}
    print(f"train step: {flops / 1e9:.1f} GFLOP; Keel {kflops:.0f} GFLOP/s, PyTorch {tflops:.0f} GFLOP/s")
    print(f"matmul peak (2048^3 f32): candle {kpeak:.0f} GFLOP/s, torch {tpeak:.0f} GFLOP/s; "
          f"MFU vs own peak: Keel {kflops / kpeak:.0%}, PyTorch {tflops / tpeak:.0%}; "
          f"vs the higher peak: Keel {kflops / max(kpeak, tpeak):.0%}, PyTorch {tflops / max(kpeak, tpeak):.0%}")

    # Peak resident memory of a train step, each side alone in a fresh process.
    del tb
    km = run_json([keel_bin("bench_figures"), "once", "train", "2"], env=keel_env(threads))["peak_rss_bytes"]
    tm = run_json([sys.executable, os.path.join(HERE, "torch_ref.py"), weights, "once", "train", "2"],
                  env=dict(os.environ, KEEL_BENCH_THREADS=str(threads)))["peak_rss_bytes"]
    results["peak_rss_bytes"] = {"keel": km, "torch": tm}
    print(f"train-step peak RSS (fresh process each): Keel {km / 2**20:.0f} MiB, PyTorch {tm / 2**20:.0f} MiB")

    load_after = os.getloadavg()
    results["load_after"] = load_after
    print(f"load average after: {load_text(load_after)}")
    save_results(out_path, results)


if __name__ == "__main__":
    main()
