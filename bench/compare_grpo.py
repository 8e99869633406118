"""Keel vs TRL: one whole GRPO iteration (rollout + score + learn), alternating, same CPU.

Run through `bash bench/compare grpo`, which builds the Keel side
(`crates/keel-stages/examples/bench_grpo.rs`) and installs TRL into `bench/.venv` on first use.

Both sides start from the same checkpoint: `bench_grpo export` writes Keel's seed-0 `tiny-8m`
init (Hugging Face names and `config.json`), the byte-level BPE tokenizer it trained
(`tokenizer.json`) and `prompts.json` (the 8 rendered prompts, their token ids and answers). TRL
loads that directory as a local path (`LlamaForCausalLM`, no hub access), and this script checks
before timing that

* the tokenizers agree (TRL's `PreTrainedTokenizerFast` gives the prompt ids Keel recorded),
* the models agree (mean token log-prob of the concatenated prompts, to 1e-4),
* the rewards agree (the Python reward below, applied to one batch of Keel's completions, gives
  Keel's `MathReward` scores exactly).

The iteration, on both sides: 8 prompts × 8 sampled completions (temperature 1, no top-k/top-p),
at most 64 new tokens, reward = 1 if the last number in the completion equals the answer, GRPO
advantages scaled by the group std, per-sequence mean loss (TRL `loss_type="grpo"`), ε = 0.2,
β = 0.04 with the k3 estimator (so both compute reference log-probs), AdamW at lr 1e-5 without
weight decay, gradient clip 1.0, one optimiser step per iteration.

TRL runs its own training loop (`trainer.train()`); a callback times each step from
`on_step_begin` to `on_step_end` (generation, scoring, loss, backward and optimiser step all happen
in between) and runs one Keel iteration before or after it, alternating per round, so that load
from other processes lands on both sides alike. The first step of each side is a warm-up and is not
timed.

Environment: KEEL_BENCH_THREADS (default 2), KEEL_BENCH_ROUNDS (default 7), KEEL_BENCH_OUT (JSON
results, relative to the repository root; default target/keel-bench/grpo.json), KEEL_BENCH_BIN
(directory holding the Keel binaries; default target/keel-bench/bin).
"""

import json
import os
import re
import statistics
import sys
import time

import torch

from keel_proc import ROOT, KeelServer, keel_bin, keel_env, load_text, run_json, save_results


# The reward, written the way Keel's `MathReward(Gsm8kFlexible)` computes it: the text after a
# `</think>` (if any), the last number in it (lm-evaluation-harness "flexible-extract" regex), `$`
# and thousands commas dropped, compared numerically with the answer.
NUMBER = re.compile(r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")


def answer_reward(text, answer):
    if "</think>" in text:
        text = text.split("</think>", 1)[1]
    found = NUMBER.findall(text)
    if not found:
        return 0.0
    pred = found[-1].replace(",", "").replace("$", "").rstrip(".").strip()
    try:
        p, g = float(pred), float(answer)
    except ValueError:
        return 0.0
    return 1.0 if abs(p - g) <= 1e-9 + 1e-9 * max(abs(p), abs(g)) else 0.0


def trl_reward(completions, answer, **_):
    """TRL reward function: `answer` is the dataset column, one entry per completion."""
    return [answer_reward(c, a) for c, a in zip(completions, answer)]


def build_trainer(model_dir, meta, steps, threads, callback):
    """TRL's GRPOTrainer in its best CPU configuration for this workload."""
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer

    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"),
                                  bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    prompts = meta["prompts"]
    for p in prompts:
        ids = tok(p["prompt"])["input_ids"]
        if ids != p["prompt_ids"]:
            sys.exit(f"tokenizers disagree on {p['prompt']!r}: TRL {ids}, Keel {p['prompt_ids']}")
    # Plain-text prompts, already rendered with the chat template by Keel: TRL tokenises them as
    # they are, so both sides feed identical ids.
    data = Dataset.from_list([{"prompt": p["prompt"], "answer": p["answer"]} for p in prompts])
    group = meta["group"]
    args = GRPOConfig(
        output_dir=os.path.join(ROOT, "target", "keel-bench", "trl-out"),
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,   # TRL defaults to True; memory is not the constraint here
        per_device_train_batch_size=len(prompts) * group,  # one step = 8 prompts x 8 completions
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        num_generations=group,
        max_completion_length=meta["max_new_tokens"],
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=meta["beta"],
        epsilon=0.2,
        loss_type="grpo",
        scale_rewards="group",
        learning_rate=meta["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=steps,
        logging_steps=10_000,           # log nothing during the run
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
        seed=0,
        model_init_kwargs={"dtype": torch.float32},
    )
    trainer = GRPOTrainer(model=model_dir, reward_funcs=trl_reward, args=args, train_dataset=data,
                          processing_class=tok, callbacks=[callback])
    torch.set_num_threads(threads)  # after accelerate's setup, in case it changed the count
    return trainer, tok


def mean_logprob(model, ids):
    with torch.inference_mode():
        x = torch.tensor([ids])
        logits = model(x).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, x[:, 1:, None]).squeeze(-1)
        return lp.mean().item()


def main():
    import warnings

    import transformers
    from transformers import TrainerCallback

    # Progress bars and advice messages would interleave with the table; timings are unaffected.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")

    threads = int(os.environ.get("KEEL_BENCH_THREADS", "2"))
    rounds = int(os.environ.get("KEEL_BENCH_ROUNDS", "7"))
    out_path = os.path.join(ROOT, os.environ.get("KEEL_BENCH_OUT", os.path.join("target", "keel-bench", "grpo.json")))
    model_dir = os.path.join(ROOT, "target", "keel-bench", "grpo-model")
    torch.set_num_threads(threads)
    load_before = os.getloadavg()

    exported = run_json([keel_bin("bench_grpo"), "export", model_dir], env=keel_env(threads))
    with open(os.path.join(model_dir, "prompts.json")) as f:
        meta = json.load(f)
    keel = KeelServer([keel_bin("bench_grpo"), "serve", model_dir], threads)

    class Alternate(TrainerCallback):
        """Times TRL steps and interleaves Keel iterations (Keel first on even rounds)."""

        def __init__(self):
            self.trl, self.keel, self.t0 = [], [], None

        def on_step_begin(self, args, state, control, **kw):
            r = state.global_step - 1  # step 0 is the warm-up
            if r >= 0 and r % 2 == 0:
                self.keel.append(keel.ask("grpo 1"))
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            dt = time.perf_counter() - self.t0
            r = state.global_step - 2  # global_step was incremented before on_step_end
            if r >= 0:
                self.trl.append(dt)
                if r % 2 == 1:
                    self.keel.append(keel.ask("grpo 1"))

    cb = Alternate()
    trainer, tok = build_trainer(model_dir, meta, rounds + 1, threads, cb)

    versions = {}
    for name in ("torch", "transformers", "trl", "accelerate", "datasets"):
        versions[name] = __import__(name).__version__
    print(f"tiny-8m, {exported['parameters']} parameters, vocab {exported['vocab_size']}, f32, {threads} threads; "
          + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"load average before: {load_text(load_before)}")
    n_trl = sum(p.numel() for p in trainer.model.parameters())
    if n_trl != exported["parameters"]:
        sys.exit(f"parameter counts differ: Keel {exported['parameters']}, TRL {n_trl}")

    # Same weights: mean log-prob of the concatenated prompts under both models.
    ids = [i for p in meta["prompts"] for i in p["prompt_ids"]]
    kc = keel.ask("check")
    tc = mean_logprob(trainer.model, ids)
    print(f"mean token log-prob of the prompts: Keel {kc['mean_logprob']:.6f}  TRL model {tc:.6f}  "
          f"(|diff| {abs(kc['mean_logprob'] - tc):.1e})")
    if abs(kc["mean_logprob"] - tc) > 1e-4:
        sys.exit("the two models disagree: not the same weights or not the same architecture")
    # Same reward: the Python reward on Keel's completions.
    samples = keel.ask("samples")["samples"]
    mismatch = [s for s in samples if answer_reward(s["text"], s["answer"]) != s["reward"]]
    print(f"reward check on {len(samples)} Keel completions: {len(samples) - len(mismatch)} agree, "
          f"{sum(s['reward'] for s in samples):.0f} correct")
    if mismatch:
        sys.exit(f"rewards disagree, e.g. {mismatch[0]}")

    print(f"timing {rounds} alternating rounds after one warm-up iteration per side ...", flush=True)
    keel.ask("grpo 1")  # Keel's warm-up (its first call is untimed anyway)
    trainer.train()
    keel.close()

    kt = [k["times"][0] for k in cb.keel]
    tt = cb.trl
    n = min(len(kt), len(tt))
    ratios = [kt[i] / tt[i] for i in range(n)]
    phases = {p: statistics.median(k[p][0] for k in cb.keel) for p in ("rollout", "score", "learn")}
    table = {
        "keel_s": statistics.median(kt), "trl_s": statistics.median(tt),
        "ratio_median": statistics.median(ratios), "keel_times": kt, "trl_times": tt, "ratios": ratios,
        "keel_phases_median_s": phases,
        "keel_reward_mean": [k["value"] for k in cb.keel],
        "keel_completion_len": [k["completion_len"] for k in cb.keel],
    }
    print(f"GRPO iteration: Keel {table['keel_s']:.3f} s  TRL {table['trl_s']:.3f} s  "
          f"Keel/TRL {table['ratio_median']:.2f} (median of {n} alternating rounds; "
          f"min {min(ratios):.2f}, max {max(ratios):.2f}); TRL/Keel speed-up {1 / table['ratio_median']:.2f}x")
    print("Keel phases (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in phases.items()))
    load_after = os.getloadavg()
    print(f"load average after: {load_text(load_after)}")
    results = {"threads": threads, "rounds": rounds, "parameters": exported["parameters"],
               "versions": versions, "load_before": load_before, "load_after": load_after,
               "check": {"keel_mean_logprob": kc["mean_logprob"], "trl_mean_logprob": tc},
               "grpo": table}
    save_results(out_path, results)


if __name__ == "__main__":
    main()
