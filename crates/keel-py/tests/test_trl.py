"""A tiny TRL GRPOTrainer run on CPU whose reward functions are keel.rewards.math_verify and
keel.judges.gcg, passed as they are. The model and tokenizer are made here from scratch
(nothing is downloaded); HF_HUB_OFFLINE makes sure of it."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import keel  # noqa: E402

PROMPTS = [f"Compute {a}+{b}. " for a, b in [(1, 2), (3, 4), (2, 2), (5, 1)]]
ANSWERS = [str(a + b) for a, b in [(1, 2), (3, 4), (2, 2), (5, 1)]]


def _tiny_model(dir):
    """A 1-layer Llama with a byte-level BPE tokenizer trained on a few arithmetic lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"Compute {a}+{b}. Answer: {a + b}" for a in range(10) for b in range(10)]
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<pad>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    config = LlamaConfig(
        vocab_size=hf_tok.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
    )
    import torch

    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(dir)
    hf_tok.save_pretrained(dir)
    return hf_tok


def test_grpo_trainer_uses_keel_rewards_for_two_steps(tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model_dir = tmp_path / "tiny"
    tokenizer = _tiny_model(model_dir)
    dataset = Dataset.from_dict({"prompt": PROMPTS, "answer": ANSWERS, "safety": ["benign"] * len(PROMPTS)})

    seen = []

    def recorder(prompts, completions, answer, **kwargs):
        """Records what TRL passed, so the logged reward can be recomputed; weight 0."""
        seen.append((list(completions), list(answer)))
        return [0.0] * len(completions)

    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        learning_rate=1e-3,
        beta=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        dataloader_num_workers=0,
        reward_weights=[1.0, 1.0, 0.0],
    )
    trainer = GRPOTrainer(
        model=str(model_dir),
        reward_funcs=[keel.rewards.math_verify, keel.judges.gcg, recorder],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.train()

    logs = [h for h in trainer.state.log_history if "rewards/math_verify/mean" in h]
    assert len(logs) == 2, trainer.state.log_history
    assert trainer.state.global_step == 2
    assert len(seen) == 2 and all(len(c) == 4 for c, _ in seen)
    for (completions, answers), log in zip(seen, logs):
        assert all(a in ANSWERS for a in answers)
        # What TRL logged is the mean of what Keel's verifier returns for those completions.
        expected = keel.rewards.math_verify(completions, answers)
        assert abs(log["rewards/math_verify/mean"] - sum(expected) / len(expected)) < 1e-6
        # Benign prompts: the lexicon rewards answering, so refusing scores 0.
        refusals = keel.judges.gcg(["p"] * len(completions), completions, safety=["benign"] * len(completions))
        assert abs(log["rewards/gcg/mean"] - sum(refusals) / len(refusals)) < 1e-6
