mod common;

use std::sync::Arc;

use common::*;
use keel_core::{Example, FinishReason};
use keel_rollout::toy::BigramModel;
use keel_rollout::{
    build_rollouts, Engine, EngineConfig, KeyedPrompt, RolloutError, SamplingParams, TextCodec,
};

fn chain_engine() -> Engine<BigramModel, keel_rollout::toy::ToyCodec> {
    Engine::new(chain_model(), abcd_codec(), EngineConfig::default())
}

#[test]
fn greedy_chain_gives_known_sequence_and_logprobs() {
    let e = chain_engine();
    let out = e
        .generate_text(&["a"], &SamplingParams::greedy(10), 7)
        .unwrap();
    let c = &out[0][0];
    assert_eq!(c.token_ids, vec![2, 3, 4, 0]);
    assert_eq!(c.text, "bcd", "eos is kept in token_ids but not rendered");
    assert_eq!(c.finish, FinishReason::Stop);
    assert_eq!(c.policy_version, 7);
    // Every step: one logit of 5 against four of 0.
    let z = e5();
    let lp = (PEAK as f64 - z.ln()) as f32;
    let p = (PEAK as f64).exp() / z;
    let q = 1.0 / z;
    let h = (-(p * p.ln() + 4.0 * q * q.ln())) as f32;
    assert_eq!(c.logprobs.len(), 4);
    for (&l, &e) in c.logprobs.iter().zip(&c.entropies) {
        assert!((l - lp).abs() < 1e-6, "{l} vs {lp}");
        assert!((e - h).abs() < 1e-6, "{e} vs {h}");
    }
}

fn e5() -> f64 {
    (PEAK as f64).exp() + 4.0
}

#[test]
fn token_budget_gives_length_finish() {
    let e = chain_engine();
    let c = &e
        .generate_text(&["a"], &SamplingParams::greedy(2), 0)
        .unwrap()[0][0];
    assert_eq!(c.token_ids, vec![2, 3]);
    assert_eq!(c.text, "bc");
    assert_eq!(c.finish, FinishReason::Length);
    assert!(c.truncated());
}

#[test]
fn stop_strings_cut_text_and_keep_tokens() {
    let e = chain_engine();
    let p = SamplingParams {
        stop: vec!["cd".into(), "zz".into()],
        ..SamplingParams::greedy(10)
    };
    let c = &e.generate_text(&["a"], &p, 0).unwrap()[0][0];
    assert_eq!(c.token_ids, vec![2, 3, 4]);
    assert_eq!(c.text, "b");
    assert_eq!(c.finish, FinishReason::Stop);
    assert_eq!(c.logprobs.len(), 3);
    // the earliest occurrence among several stop strings wins
    let p = SamplingParams {
        stop: vec!["d".into(), "bc".into()],
        ..SamplingParams::greedy(10)
    };
    let c = &e.generate_text(&["a"], &p, 0).unwrap()[0][0];
    assert_eq!((c.text.as_str(), c.token_ids.len()), ("", 2));
}

#[test]
fn stop_token_ids_end_without_rendering() {
    let e = chain_engine();
    let p = SamplingParams {
        stop_token_ids: vec![3],
        ..SamplingParams::greedy(10)
    };
    let c = &e.generate_text(&["a"], &p, 0).unwrap()[0][0];
    assert_eq!(c.token_ids, vec![2, 3]);
    assert_eq!(c.text, "b");
    assert_eq!(c.finish, FinishReason::Stop);
}

#[test]
fn mixed_length_batch_with_groups_matches_single_prompts() {
    let e = chain_engine();
    let prompts = ["a", "dab", "c", "bbbbb"];
    let p = SamplingParams {
        n: 3,
        ..SamplingParams::greedy(6)
    };
    let batch = e.generate_text(&prompts, &p, 0).unwrap();
    assert_eq!(batch.len(), 4);
    let expected: [&[u32]; 4] = [&[2, 3, 4, 0], &[3, 4, 0], &[4, 0], &[3, 4, 0]];
    for (i, prompt) in prompts.iter().enumerate() {
        assert_eq!(batch[i].len(), 3);
        let single = e.generate_text(&[prompt], &p, 0).unwrap();
        for s in 0..3 {
            assert_eq!(batch[i][s].token_ids, expected[i], "prompt {prompt}");
            assert_eq!(batch[i][s], single[0][s]);
        }
    }
}

#[test]
fn sampling_frequencies_follow_processed_distribution() {
    let e = Engine::new(distribution_model(), abcd_codec(), EngineConfig::default());
    let n = 4000;
    let freq = |params: SamplingParams| -> Vec<f64> {
        let out = e
            .generate_text(
                &["a"],
                &SamplingParams {
                    n,
                    max_new_tokens: 1,
                    ..params
                },
                0,
            )
            .unwrap();
        let mut f = vec![0f64; 5];
        for c in &out[0] {
            assert_eq!(c.token_ids.len(), 1);
            f[c.token_ids[0] as usize] += 1.0 / n as f64;
        }
        f
    };
    let close = |got: &[f64], want: &[f64]| {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 0.03, "got {got:?}, want {want:?}");
        }
    };
    close(&freq(SamplingParams::default()), &AFTER_A.map(|p| p as f64));
    // top-p 0.6 keeps exactly {2: 0.45, 3: 0.25}, renormalised
    let f = freq(SamplingParams {
        top_p: 0.6,
        ..Default::default()
    });
    close(&f, &[0.0, 0.0, 0.45 / 0.7, 0.25 / 0.7, 0.0]);
    assert_eq!(f[0] + f[1] + f[4], 0.0);
    // top-k 3 keeps {2, 3, 4}
    let f = freq(SamplingParams {
        top_k: 3,
        ..Default::default()
    });
    close(&f, &[0.0, 0.0, 0.45 / 0.85, 0.25 / 0.85, 0.15 / 0.85]);
    // temperature 0.5 squares the probabilities
    let sq: Vec<f64> = AFTER_A.iter().map(|&p| (p as f64).powi(2)).collect();
    let z: f64 = sq.iter().sum();
    close(
        &freq(SamplingParams {
            temperature: 0.5,
            ..Default::default()
        }),
        &sq.iter().map(|x| x / z).collect::<Vec<_>>(),
    );
    // min-p 0.5 keeps tokens with p >= 0.225: {2, 3}
    let f = freq(SamplingParams {
        min_p: 0.5,
        ..Default::default()
    });
    assert_eq!(f[0] + f[1] + f[4], 0.0);
}

#[test]
fn recorded_logprob_is_temperature_scaled_policy_logprob() {
    let e = Engine::new(distribution_model(), abcd_codec(), EngineConfig::default());
    let t = 0.7;
    let p = SamplingParams {
        n: 50,
        max_new_tokens: 1,
        temperature: t as f32,
        top_k: 2,
        ..Default::default()
    };
    let out = e.generate_text(&["a"], &p, 0).unwrap();
    let z: Vec<f32> = AFTER_A.iter().map(|p| p.ln()).collect();
    for c in &out[0] {
        let k = c.token_ids[0] as usize;
        assert!(k == 2 || k == 3, "top-k 2 restricts samples");
        // recorded under log_softmax(z / T), not under the truncated distribution
        let (lp, h) = reference_logprob_entropy(&z, t, k);
        assert!((c.logprobs[0] as f64 - lp).abs() < 1e-6);
        assert!((c.entropies[0] as f64 - h).abs() < 1e-6);
    }
}

#[test]
fn same_seed_same_samples_and_batch_composition_invariance() {
    let prompts: Vec<Vec<u32>> = vec![vec![1, 2, 3], vec![5], vec![7, 7, 7, 7, 7, 7], vec![11, 4]];
    let params = SamplingParams {
        n: 3,
        max_new_tokens: 12,
        temperature: 1.0,
        seed: 1234,
        ..Default::default()
    };
    let base = context_engine(EngineConfig::default());
    let all = base.generate(&prompts, &params, 3).unwrap();
    assert_eq!(
        all,
        base.generate(&prompts, &params, 3).unwrap(),
        "same seed, same completions"
    );
    let other_seed = base
        .generate(
            &prompts,
            &SamplingParams {
                seed: 1235,
                ..params.clone()
            },
            3,
        )
        .unwrap();
    assert_ne!(all, other_seed);
    // some rows finish early (eos) and some hit the budget, so masking of finished rows is exercised
    let finishes: Vec<FinishReason> = all.iter().flatten().map(|c| c.finish).collect();
    assert!(
        finishes.contains(&FinishReason::Stop) && finishes.contains(&FinishReason::Length),
        "{finishes:?}"
    );
    // the samples of a group differ
    assert!(all.iter().any(|g| g[0].token_ids != g[1].token_ids));

    // one prompt at a time (batch of 1 row per call is also covered by n = 1 below)
    for (i, p) in prompts.iter().enumerate() {
        let one = base
            .generate_keyed(
                &[KeyedPrompt {
                    ids: p,
                    index: i as u64,
                }],
                &params,
                3,
            )
            .unwrap();
        assert_eq!(one[0], all[i], "prompt {i} alone");
    }
    // tiny micro-batches, no length sorting
    let small = context_engine(EngineConfig {
        max_batch_rows: 2,
        sort_by_length: false,
    });
    assert_eq!(small.generate(&prompts, &params, 3).unwrap(), all);
    let single_rows = context_engine(EngineConfig {
        max_batch_rows: 1,
        sort_by_length: true,
    });
    assert_eq!(single_rows.generate(&prompts, &params, 3).unwrap(), all);
    // reversed order with explicit keys
    let rev: Vec<KeyedPrompt<'_>> = prompts
        .iter()
        .enumerate()
        .rev()
        .map(|(i, p)| KeyedPrompt {
            ids: p,
            index: i as u64,
        })
        .collect();
    let out = base.generate_keyed(&rev, &params, 3).unwrap();
    for (j, i) in (0..prompts.len()).rev().enumerate() {
        assert_eq!(out[j], all[i]);
    }
}

#[test]
fn context_model_first_logprob_matches_hand_computation() {
    // prompt [1, 2, 3]: S = 6, n = 3, centre 9 of 12; logits -0.7 * circular distance.
    let e = context_engine(EngineConfig::default());
    let params = SamplingParams {
        max_new_tokens: 1,
        temperature: 1.3,
        n: 20,
        seed: 5,
        ..Default::default()
    };
    let out = e.generate(&[vec![1, 2, 3]], &params, 0).unwrap();
    let z: Vec<f32> = (0..12usize)
        .map(|k| {
            let d = k.abs_diff(9);
            -0.7 * d.min(12 - d) as f32
        })
        .collect();
    for c in &out[0] {
        let (lp, h) = reference_logprob_entropy(&z, 1.3, c.token_ids[0] as usize);
        assert!((c.logprobs[0] as f64 - lp).abs() < 1e-6);
        assert!((c.entropies[0] as f64 - h).abs() < 1e-6);
    }
}

#[test]
fn rollouts_are_grouped_per_example() {
    let e = chain_engine();
    let examples: Vec<Arc<Example>> = vec![
        Arc::new(Example::new("x0", "a", "toy")),
        Arc::new(Example::new("x1", "c", "toy")),
    ];
    let render = |ex: &Example| format!("{}{}", "d", ex.prompt.user_text());
    let params = SamplingParams {
        n: 2,
        ..SamplingParams::greedy(5)
    };
    let rollouts = build_rollouts(&e, &examples, render, &params, 9).unwrap();
    assert_eq!(rollouts.len(), 4);
    assert_eq!(
        rollouts.iter().map(|r| r.group).collect::<Vec<_>>(),
        vec![0, 0, 1, 1]
    );
    assert_eq!(rollouts[0].prompt_text, "da");
    assert_eq!(rollouts[0].prompt_ids, vec![4, 1]);
    assert_eq!(rollouts[2].prompt_ids, abcd_codec().encode("dc").unwrap());
    assert_eq!(rollouts[2].example.id, "x1");
    assert_eq!(rollouts[0].completion.text, "bcd");
    assert_eq!(rollouts[3].completion.text, "d");
    assert!(rollouts.iter().all(|r| r.completion.policy_version == 9));
}

#[test]
fn bad_inputs_are_reported_with_context() {
    let e = chain_engine();
    assert!(matches!(
        e.generate(&[vec![1], vec![]], &SamplingParams::greedy(3), 0),
        Err(RolloutError::EmptyPrompt { index: 1 })
    ));
    let err = e
        .generate(&[vec![1, 99]], &SamplingParams::greedy(3), 0)
        .unwrap_err();
    assert!(err.to_string().contains("token id 99"), "{err}");
    let err = e
        .generate(
            &[vec![1]],
            &SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            0,
        )
        .unwrap_err();
    assert!(matches!(
        err,
        RolloutError::InvalidParams { field: "top_p", .. }
    ));
    let err = e
        .generate_text(&["x"], &SamplingParams::greedy(3), 0)
        .unwrap_err();
    assert!(matches!(err, RolloutError::Codec { .. }), "{err}");
    // NaN logits are an error, not garbage samples
    let mut table = vec![0f32; 25];
    table[5 + 2] = f32::NAN;
    let nan = Engine::new(
        BigramModel::new(&table, 5).unwrap(),
        abcd_codec(),
        EngineConfig::default(),
    );
    let err = nan
        .generate(
            &[vec![4], vec![1]],
            &SamplingParams {
                n: 2,
                ..Default::default()
            },
            0,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            RolloutError::NonFiniteLogits {
                prompt_index: 1,
                step: 0,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn prompts_beyond_the_context_window_are_refused_before_generation() {
    // Context window 10: a prompt of 5 tokens may generate 5, one of 6 may not.
    let e = Engine::new(
        keel_rollout::toy::ContextModel::new(12, 0.7).with_context_window(10),
        letters_codec(),
        EngineConfig::default(),
    );
    let params = SamplingParams::greedy(5);
    let fits = e.generate_text(&["abcde"], &params, 0).unwrap();
    assert_eq!(
        fits[0][0].token_ids.len(),
        5,
        "exactly at the limit is fine"
    );
    let err = e
        .generate_text(&["abcde", "abcdef"], &params, 0)
        .unwrap_err();
    match &err {
        RolloutError::ContextOverflow {
            index,
            prompt_tokens,
            max_new_tokens,
            context,
        } => assert_eq!(
            (*index, *prompt_tokens, *max_new_tokens, *context),
            (1, 6, 5, 10)
        ),
        other => panic!("expected ContextOverflow, got {other}"),
    }
    let msg = err.to_string();
    for needle in [
        "prompt 1",
        "6 tokens",
        "max_new_tokens is 5",
        "context window is 10",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
    // A million-token prompt is refused by arithmetic, not by running out of memory; an absurd
    // budget does not overflow the sum.
    let huge = vec![1u32; 1_000_000];
    let err = e.generate(&[huge], &params, 0).unwrap_err();
    assert!(
        matches!(
            err,
            RolloutError::ContextOverflow {
                prompt_tokens: 1_000_000,
                ..
            }
        ),
        "{err}"
    );
    let err = e
        .generate(&[vec![1]], &SamplingParams::greedy(usize::MAX), 0)
        .unwrap_err();
    assert!(matches!(err, RolloutError::ContextOverflow { .. }), "{err}");
    // The rollout path (build_rollouts over the backend trait) gets the same check.
    let ex = Arc::new(Example::new("long", "abcdefghijk", "toy"));
    let err =
        build_rollouts(&e, &[ex], |x| x.prompt.user_text().to_string(), &params, 0).unwrap_err();
    assert!(
        matches!(
            err,
            RolloutError::ContextOverflow {
                prompt_tokens: 11,
                ..
            }
        ),
        "{err}"
    );
}
