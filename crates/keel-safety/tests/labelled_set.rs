//! The repository's judge-accuracy labelled set (`data/judge_labels/labelled.jsonl`) parses, every
//! label is one of the three, the set is what its README says, and the lexicon judges' agreement
//! with the labels equals counts computed independently of Keel.
//!
//! The golden confusions below come from `scripts/judge-labels-lexicon-counts.py`, a Python
//! re-implementation of the two published lexicons (llm-attacks' `test_prefixes` as substrings,
//! XSTest's prefixes on the lower-cased, left-stripped answer) run over the same file.

use std::path::PathBuf;

use keel_core::SafetyLabel;
use keel_safety::judges::LexiconJudge;
use keel_safety::{judge_accuracy, load_labelled, Confusion, HumanLabel, LabelledPair};

fn labelled() -> Vec<LabelledPair> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/judge_labels/labelled.jsonl");
    load_labelled(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_labelled_set_parses_and_matches_its_readme() {
    let pairs = labelled();
    assert_eq!(pairs.len(), 100);
    let count = |model: Option<&str>, label: HumanLabel| {
        pairs
            .iter()
            .filter(|p| model.is_none_or(|m| p.model == m) && p.label == label)
            .count()
    };
    // 23 refused, 27 harmful compliance, 50 harmless compliance (SmolLM2 3/14/33, Qwen 20/13/17).
    assert_eq!(
        [
            count(None, HumanLabel::Refused),
            count(None, HumanLabel::HarmfulCompliance),
            count(None, HumanLabel::HarmlessCompliance)
        ],
        [23, 27, 50]
    );
    let smol = Some("smollm2-135m-instruct");
    let qwen = Some("qwen2.5-coder-0.5b-instruct");
    assert_eq!(
        [
            count(smol, HumanLabel::Refused),
            count(smol, HumanLabel::HarmfulCompliance)
        ],
        [3, 14]
    );
    assert_eq!(
        [
            count(qwen, HumanLabel::Refused),
            count(qwen, HumanLabel::HarmfulCompliance)
        ],
        [20, 13]
    );
    for p in &pairs {
        // The id is model/row, the row names its dataset, and the dataset fixes the prompt label
        // except for XSTest, which holds both.
        assert_eq!(p.id, format!("{}/{}", p.model, p.row));
        assert!(p.row.starts_with(&format!("{}-", p.dataset)), "{}", p.id);
        match p.dataset.as_str() {
            "advbench" | "jbb-harmful" => {
                assert_eq!(p.prompt_safety, SafetyLabel::Harmful, "{}", p.id)
            }
            "alpaca-instructions" => assert_eq!(p.prompt_safety, SafetyLabel::Benign, "{}", p.id),
            "xstest" => {}
            other => panic!("{}: unexpected dataset {other}", p.id),
        }
        // Harmful compliance needs a harmful request.
        if p.label == HumanLabel::HarmfulCompliance {
            assert_eq!(p.prompt_safety, SafetyLabel::Harmful, "{}", p.id);
        }
    }
    // Both models answered the same 50 prompts.
    let rows = |m: &str| {
        let mut r: Vec<&str> = pairs
            .iter()
            .filter(|p| p.model == m)
            .map(|p| p.row.as_str())
            .collect();
        r.sort();
        r
    };
    assert_eq!(
        rows("smollm2-135m-instruct"),
        rows("qwen2.5-coder-0.5b-instruct")
    );
}

#[test]
fn lexicon_agreement_equals_independent_counts() {
    let pairs = labelled();
    let c = |tp, fp, fn_, tn| Confusion { tp, fp, fn_, tn };
    // (lexicon, refusal confusion, harm confusion); tp / fp / fn / tn against the human labels.
    let golden = [
        ("gcg", c(17, 2, 6, 75), c(26, 18, 1, 55)),
        ("xstest", c(14, 1, 9, 76), c(27, 21, 0, 52)),
        ("both", c(17, 2, 6, 75), c(26, 18, 1, 55)),
    ];
    for (setting, refusal, harm) in golden {
        let judge = LexiconJudge::new(setting).unwrap();
        let acc = judge_accuracy(&judge, &pairs).unwrap();
        assert_eq!(acc.unparsed, 0);
        assert_eq!(acc.refusal, Some(refusal), "{setting} refusal");
        assert_eq!(acc.harm, harm, "{setting} harm");
        assert_eq!(
            acc.misses.len(),
            refusal.fp + refusal.fn_ + harm.fp + harm.fn_
        );
    }
    // The README's headline: "both" gets 92 of 100 refusal calls and 81 of 100 harm calls right.
    let both = judge_accuracy(&LexiconJudge::new("both").unwrap(), &pairs).unwrap();
    assert_eq!(both.refusal.unwrap().accuracy(), Some(0.92));
    assert_eq!(both.harm.accuracy(), Some(0.81));
}
