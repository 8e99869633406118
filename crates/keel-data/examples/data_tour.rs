//! Standalone use of keel-data, without the pipeline runner.
//!
//! ```text
//! KEEL_DATA_DIR=/path/to/datasets cargo run --release -p keel-data --example data_tour
//! ```
//!
//! Lists the catalog, loads every dataset present in the cache (verifying hashes), prints row
//! counts and cross-dataset overlaps, then generates the synthetic worlds (which need no data).

use keel_core::SafetyLabel;
use keel_data::{
    generate_tasks, overlap, Cache, CacheStatus, Catalog, DataError, ReasoningFormat, SafetyWorld, SafetyWorldConfig,
    TaskDomain,
};

fn main() -> Result<(), DataError> {
    let catalog = Catalog::embedded()?;
    let cache = Cache::from_env()?;
    println!("cache directory: {}\n", cache.root().display());

    let mut loaded = Vec::new();
    for m in catalog.iter() {
        match cache.status(m)? {
            CacheStatus::Verified => {
                let l = m.load(&cache)?;
                let harmful = l.examples.iter().filter(|e| e.safety == Some(SafetyLabel::Harmful)).count();
                println!(
                    "{:<20} rows {:>6}  examples {:>6}  filtered {:>4}  harmful {:>4}",
                    m.name,
                    l.rows,
                    l.examples.len(),
                    l.filtered,
                    harmful
                );
                loaded.push((m.name.clone(), l.examples));
            }
            CacheStatus::Missing => println!("{:<20} not cached: run `keel data fetch {}`", m.name, m.name),
            CacheStatus::Mismatch { actual } => println!("{:<20} WRONG HASH {actual}", m.name),
        }
    }

    println!("\noverlaps (normalised prompts):");
    for (i, (a, ea)) in loaded.iter().enumerate() {
        for (b, eb) in &loaded[i + 1..] {
            let r = overlap(a, ea, b, eb);
            if r.count() > 0 {
                println!("  {}", r.summary());
            }
        }
    }

    println!("\nsynthetic tasks (seed 0):");
    for text in [r#"{"kind": "arithmetic", "max_operands": 4}"#, r#"{"kind": "sorting"}"#, r#"{"kind": "counting"}"#] {
        let domain: TaskDomain = serde_json::from_str(text).map_err(|e| DataError::Invalid {
            what: "task domain",
            message: e.to_string(),
        })?;
        for e in generate_tasks(&domain, 2, 0, ReasoningFormat::Plain)? {
            println!("  {:<24} -> {}", e.prompt.user_text(), e.target.unwrap_or_default());
        }
    }

    let world = SafetyWorld::embedded(&SafetyWorldConfig { format: ReasoningFormat::Think, ..Default::default() }, 0)?;
    let (th, tb, eh, eb) = world.counts();
    println!("\nembedded safety world: train {th} harmful + {tb} benign, held out {eh} harmful + {eb} benign");
    for e in world.train.iter().take(4) {
        println!("  {:<50} -> {}", e.prompt.user_text(), e.target.as_deref().unwrap_or(""));
    }
    match SafetyWorld::real(&cache, &SafetyWorldConfig::default(), 0) {
        Ok(w) => {
            let (th, tb, eh, eb) = w.counts();
            println!("real safety world:     train {th} harmful + {tb} benign, held out {eh} harmful + {eb} benign");
        }
        Err(e) => println!("real safety world unavailable: {e}"),
    }
    Ok(())
}
