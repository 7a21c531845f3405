//! A Learner renderer: a progress bar redrawn in place on a terminal, plain progress lines
//! (every 10%) otherwise (CI, pipes).

use std::io::Write;

use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::MetricDefinition;
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};
use burn::train::LearnerSummary;

use crate::model::Recorder;

/// Progress of one optimizer's run.
pub struct ProgressRenderer {
    label: String,
    recorder: Recorder,
    bar: bool,
    quiet: bool,
    epoch: usize,
    epochs: usize,
    split: String,
    total: usize,
    last_decile: usize,
}

impl ProgressRenderer {
    /// A renderer for the run `label`; `bar` redraws one line in place.
    pub fn new(label: &str, recorder: Recorder, bar: bool, quiet: bool) -> Self {
        Self {
            label: label.to_string(),
            recorder,
            bar,
            quiet,
            epoch: 1,
            epochs: 1,
            split: String::new(),
            total: 0,
            last_decile: 0,
        }
    }

    fn show(&mut self, done: usize) {
        if self.quiet || self.total == 0 {
            return;
        }
        let loss = self.recorder.with(|r| r.losses.last().copied());
        let loss = loss.map_or(String::new(), |l| format!("  train loss {l:.4}"));
        let frac = done as f64 / self.total as f64;
        if self.bar {
            let width = 30;
            let filled = ((frac * width as f64) as usize).min(width);
            print!(
                "\r{:<14} epoch {}/{} {:<5} [{}{}] {:>6}/{}{}   ",
                self.label,
                self.epoch,
                self.epochs,
                self.split,
                "#".repeat(filled),
                "-".repeat(width - filled),
                done,
                self.total,
                loss
            );
            let _ = std::io::stdout().flush();
        } else {
            let decile = (frac * 10.0) as usize;
            if decile > self.last_decile || done == self.total {
                self.last_decile = decile;
                println!(
                    "{} epoch {}/{} {}: {done}/{} ({:.0}%){loss}",
                    self.label,
                    self.epoch,
                    self.epochs,
                    self.split,
                    self.total,
                    100.0 * frac
                );
            }
        }
    }
}

impl MetricsRendererTraining for ProgressRenderer {
    fn update_train(&mut self, _state: MetricState) {}
    fn update_valid(&mut self, _state: MetricState) {}
    fn on_train_end(
        &mut self,
        _summary: Option<LearnerSummary>,
    ) -> Result<(), Box<dyn core::error::Error>> {
        Ok(())
    }
}

impl TrainingProgressLogger for ProgressRenderer {
    fn start(
        &mut self,
        total_epochs: usize,
        starting_epoch: usize,
        _items: Option<usize>,
        _label: Option<&str>,
    ) {
        self.epochs = total_epochs;
        self.epoch = starting_epoch.max(1);
    }
    fn update_epoch(&mut self, epoch: usize) {
        self.epoch = epoch + 1;
    }
    fn start_split(&mut self, split: &str, total_items: usize) {
        self.split = split.to_string();
        self.total = total_items;
        self.last_decile = 0;
    }
    fn update_split(&mut self, items_processed: usize) {
        self.show(items_processed);
    }
    fn end_split(&mut self) {
        if self.bar && !self.quiet {
            println!();
        }
    }
    fn end(&mut self) {}
    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for ProgressRenderer {
    fn start_global_progress(&mut self, _total_tests: usize) {}
    fn start_test(&mut self, _name: &str, _total_items: usize) {}
    fn update_test_progress(&mut self, _items_processed: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRendererEvaluation for ProgressRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
}

impl MetricsRenderer for ProgressRenderer {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, _definition: MetricDefinition) {}
}
