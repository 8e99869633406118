//! Progress bars for long stages, drawn with indicatif on standard error.

use indicatif::{MultiProgress, ProgressBar as Bar, ProgressDrawTarget, ProgressStyle};
use keel_pipeline::{ProgressBar, ProgressSink};

/// Shows one bar per stage activity; hidden when standard error is not a terminal or with --quiet.
pub struct Bars {
    multi: MultiProgress,
}

impl Bars {
    /// Bars drawn on standard error (indicatif hides them when it is not a terminal).
    pub fn new(quiet: bool) -> Self {
        let target = if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
        Bars { multi: MultiProgress::with_draw_target(target) }
    }
}

struct OneBar(Bar);

impl ProgressBar for OneBar {
    fn set_position(&self, position: u64) {
        self.0.set_position(position);
    }
    fn finish(&self) {
        self.0.finish();
    }
}

impl ProgressSink for Bars {
    fn begin(&self, stage: &str, label: &str, total: Option<u64>) -> Box<dyn ProgressBar> {
        let bar = match total {
            Some(n) => {
                let b = Bar::new(n);
                b.set_style(
                    ProgressStyle::with_template("{prefix:>14} {bar:30} {pos}/{len} {msg} [{elapsed_precise} eta {eta}]")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b
            }
            None => {
                let b = Bar::new_spinner();
                b.set_style(
                    ProgressStyle::with_template("{prefix:>14} {spinner} {pos} {msg} [{elapsed_precise}]")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                b
            }
        };
        let bar = self.multi.add(bar);
        bar.set_prefix(stage.to_string());
        bar.set_message(label.to_string());
        Box::new(OneBar(bar))
    }
}
