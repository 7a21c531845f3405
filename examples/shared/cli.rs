//! Command-line pieces shared by the MNIST examples (`mnist`, `mnist_cnn`): the backend choice,
//! the data source and the natural gradient's curvature.

use std::path::PathBuf;

use burn::tensor::Device;
use burn_natgrad::{
    FisherKind, FullConfig, KfacConfig, KfacInverse, NaturalGradientConfig, Solver,
};
use clap::ValueEnum;
use natgrad_mnist::{MnistData, OptimizerSpec};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    #[cfg(feature = "ndarray")]
    Ndarray,
    #[cfg(feature = "flex")]
    Flex,
    #[cfg(feature = "wgpu")]
    Wgpu,
}

/// Which optimizers to run (`--optimizer`, repeatable).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Opt {
    Ngd,
    Sgd,
    Adam,
    All,
}

/// The runs the command line asks for, natural gradient first, then SGD, then Adam: with
/// `--sweep` their grids (the natural gradient's given as `ngd_grid`), otherwise each once
/// (`ngd`, and SGD and Adam at `sgd_lr` and `adam_lr`).
pub fn chosen_specs(
    optimizers: &[Opt],
    sweep: bool,
    ngd_grid: Vec<OptimizerSpec>,
    ngd: OptimizerSpec,
    sgd_lr: f64,
    adam_lr: f64,
) -> Vec<OptimizerSpec> {
    let wants = |o: Opt| optimizers.contains(&Opt::All) || optimizers.contains(&o);
    let mut specs = Vec::new();
    if sweep {
        if wants(Opt::Ngd) {
            specs.extend(ngd_grid);
        }
        if wants(Opt::Sgd) {
            specs.extend(SGD_GRID.map(|lr| OptimizerSpec::Sgd { lr }));
        }
        if wants(Opt::Adam) {
            specs.extend(ADAM_GRID.map(|lr| OptimizerSpec::Adam { lr }));
        }
    } else {
        if wants(Opt::Ngd) {
            specs.push(ngd);
        }
        if wants(Opt::Sgd) {
            specs.push(OptimizerSpec::Sgd { lr: sgd_lr });
        }
        if wants(Opt::Adam) {
            specs.push(OptimizerSpec::Adam { lr: adam_lr });
        }
    }
    specs
}

/// SGD's learning-rate grid for `--sweep`, fixed in advance.
pub const SGD_GRID: [f64; 5] = [0.03, 0.1, 0.3, 0.5, 1.0];
/// Adam's learning-rate grid for `--sweep`, fixed in advance (3e-4 to 3e-3 until the MLP's
/// best sat at its edge; widened to five values, as many as SGD's).
pub const ADAM_GRID: [f64; 5] = [3e-4, 1e-3, 3e-3, 5e-3, 1e-2];

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Fisher {
    Empirical,
    Sampled,
    /// The exact Fisher of the softmax (one √p-weighted row per class and example).
    Exact,
}

/// Which Fisher the natural gradient preconditions with.
#[derive(clap::Args, Debug)]
pub struct FisherArgs {
    /// Fisher of the natural gradient.
    #[arg(long, value_enum, default_value_t = Fisher::Empirical)]
    pub fisher: Fisher,
    /// Labels sampled per example for `--fisher sampled`.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
}

impl FisherArgs {
    /// The library's value (MNIST's ten classes for the exact Fisher).
    pub fn kind(&self) -> FisherKind {
        match self.fisher {
            Fisher::Empirical => FisherKind::Empirical,
            Fisher::Sampled => FisherKind::Sampled {
                samples: self.samples,
            },
            Fisher::Exact => FisherKind::Exact { classes: 10 },
        }
    }

    /// Checks its values.
    pub fn check(&self, checks: &mut Checks) {
        checks.at_least_one("samples", self.samples);
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Curvature {
    /// The batch's Fisher, coupled across all layers.
    Full,
    /// Kronecker-factored (KFAC): per-layer A ⊗ G, moving averages, inverses every
    /// --kfac-inverse-period factor updates.
    Kfac,
}

/// Which approximation of the Fisher the natural gradient inverts.
#[derive(clap::Args, Debug)]
pub struct CurvatureArgs {
    /// Curvature of the natural gradient [default: kfac for the CNN, and for the MLP's sampled
    /// Fisher, whose rows do not span the gradient; full otherwise (see README, "Results")].
    #[arg(long, value_enum)]
    pub curvature: Option<Curvature>,
    /// Decay of KFAC's moving averages of its factors, in [0, 1).
    #[arg(long, default_value_t = 0.95)]
    pub kfac_decay: f64,
    /// KFAC's factor updates between its inversions (steps, with --kfac-factor-period 1).
    #[arg(long, default_value_t = 10)]
    pub kfac_inverse_period: usize,
    /// Steps between KFAC's factor updates; the steps in between run a plain backward pass
    /// and reuse the inverses in force (KFAC-PyTorch's TCov).
    #[arg(long, default_value_t = 1)]
    pub kfac_factor_period: usize,
    /// KFAC: factors wider than four times this get a low-rank-plus-identity inverse with this
    /// many eigenpairs (randomized KFAC); default: every inverse dense.
    #[arg(long)]
    pub kfac_rank: Option<usize>,
    /// KFAC: explicit per-example rows (a convolution, LayerNorm) of at most this many entries
    /// get their exact block; a larger one-group convolution its Kronecker factors (KFC), 0:
    /// every one-group convolution.
    #[arg(long, default_value_t = 2048)]
    pub kfac_block_limit: usize,
}

impl CurvatureArgs {
    /// `config` with this curvature (the full Fisher solved by `solver`).
    pub fn configure(
        &self,
        config: NaturalGradientConfig,
        solver: Solver,
    ) -> NaturalGradientConfig {
        config.with_curvature(self.kind(solver))
    }

    /// Fills in `default` unless `--curvature` was given. Runs before anything reads the
    /// curvature.
    pub fn resolve(&mut self, default: Curvature) {
        self.curvature.get_or_insert(default);
    }

    fn resolved(&self) -> Curvature {
        self.curvature
            .expect("CurvatureArgs::resolve runs before the curvature is read")
    }

    /// The library's value (the full Fisher solved by `solver`; `--kfac-inverse-period`
    /// counts factor updates, the library's `inv_update_steps` steps).
    pub fn kind(&self, solver: Solver) -> burn_natgrad::Curvature {
        match self.resolved() {
            Curvature::Full => burn_natgrad::Curvature::Full(FullConfig::new().with_solver(solver)),
            Curvature::Kfac => burn_natgrad::Curvature::Kfac(
                KfacConfig::new()
                    .with_factor_decay(self.kfac_decay)
                    .with_factor_update_steps(self.kfac_factor_period)
                    .with_inv_update_steps(self.kfac_factor_period * self.kfac_inverse_period)
                    .with_block_limit(self.kfac_block_limit)
                    .with_inverse(match self.kfac_rank {
                        Some(rank) => KfacInverse::LowRank { rank },
                        None => KfacInverse::Dense,
                    }),
            ),
        }
    }

    /// Checks its values; `solver_given`: whether `--solver` was given (it applies to the full
    /// Fisher only).
    pub fn check(&self, checks: &mut Checks, solver_given: bool) {
        checks
            .at_least_one("kfac-inverse-period", self.kfac_inverse_period)
            .at_least_one("kfac-factor-period", self.kfac_factor_period)
            .at_least_one("kfac-rank", self.kfac_rank.unwrap_or(1))
            .fraction("kfac-decay", self.kfac_decay);
        if self.kfac() {
            if solver_given {
                checks.refuse(
                    "--solver does not apply to KFAC, which inverts its Kronecker factors itself: \
                     leave it out, or use --curvature full",
                );
            }
        } else {
            for (flag, given) in [
                ("kfac-rank", self.kfac_rank.is_some()),
                ("kfac-factor-period", self.kfac_factor_period != 1),
            ] {
                if given {
                    checks.refuse(&format!(
                        "--{flag} applies only to --curvature kfac: the full Fisher inverts no \
                         factors"
                    ));
                }
            }
        }
    }

    /// Whether KFAC was asked for.
    pub fn kfac(&self) -> bool {
        self.resolved() == Curvature::Kfac
    }
}

/// The options every MNIST example has.
#[derive(clap::Args, Debug)]
pub struct Common {
    /// Epochs.
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// Backend (those compiled in, by cargo feature).
    #[arg(long, value_enum, default_value_t = default_backend())]
    pub backend: Backend,
    /// Folder with the four MNIST IDX files, gzipped or raw; default: burn-dataset's
    /// MnistDataset (downloads once into its cache).
    #[arg(long, env = "MNIST_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Train on the first N training examples only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Seed of the initial weights and the data order.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Evaluate an exponential moving average of the weights with this decay, in [0, 1),
    /// instead of the last iterate, for every optimizer; 0: the last iterate [default: the MLP
    /// example's decay tuned per configuration (0.9 or 0.99, see docs/tuning.md); the CNN
    /// example's last iterate].
    #[arg(long)]
    pub average: Option<f64>,
}

fn default_backend() -> Backend {
    #[cfg(feature = "ndarray")]
    return Backend::Ndarray;
    #[allow(unreachable_code)]
    #[cfg(feature = "flex")]
    return Backend::Flex;
    #[allow(unreachable_code)]
    #[cfg(feature = "wgpu")]
    return Backend::Wgpu;
}

/// The autodiff device of `backend`.
pub fn device(backend: Backend) -> Device {
    match backend {
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        Backend::Ndarray => Device::ndarray(),
        #[cfg(feature = "flex")]
        Backend::Flex => Device::flex(),
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
    }
    .autodiff()
}

/// The data, once the command line's checks passed; else what is wrong is printed and the
/// exit code is 2.
pub fn checked_data(
    checked: Result<(), String>,
    common: &Common,
) -> Result<MnistData, std::process::ExitCode> {
    checked.and_then(|()| load_data(common)).map_err(|e| {
        eprintln!("{e}");
        std::process::ExitCode::from(2)
    })
}

/// The data from `--data-dir` (or burn-dataset's cache), the training split cut to `--limit`;
/// the error as printed, for exit code 2.
fn load_data(common: &Common) -> Result<MnistData, String> {
    let data = match &common.data_dir {
        Some(dir) => MnistData::from_dir(dir),
        None => MnistData::from_burn_dataset(),
    }
    .map_err(|e| format!("error: {e}"))?
    .limit_train(common.limit);
    if data.train.is_empty() {
        return Err("error: no training examples (--limit 0?)".into());
    }
    Ok(data)
}

/// The command line's values checked before anything runs: every problem is named, and the
/// caller exits with code 2.
#[derive(Default)]
pub struct Checks(Vec<String>);

impl Checks {
    /// `--name` must be at least 1.
    pub fn at_least_one(&mut self, name: &str, value: usize) -> &mut Self {
        if value == 0 {
            self.0.push(format!("--{name} must be at least 1, got 0"));
        }
        self
    }

    /// `--name` must be at most `max` (`what` says what a larger value would cost).
    pub fn at_most(&mut self, name: &str, value: usize, max: usize, what: &str) -> &mut Self {
        if value > max {
            self.0.push(format!(
                "--{name} must be at most {max} ({what}), got {value}"
            ));
        }
        self
    }

    /// A problem no single value shows: two options that do not go together.
    pub fn refuse(&mut self, message: &str) -> &mut Self {
        self.0.push(message.to_string());
        self
    }

    /// `--name` must be a finite number > 0.
    pub fn positive(&mut self, name: &str, value: f64) -> &mut Self {
        if !(value.is_finite() && value > 0.0) {
            self.0
                .push(format!("--{name} must be a finite number > 0, got {value}"));
        }
        self
    }

    /// `--name` must be a finite number ≥ 0.
    pub fn non_negative(&mut self, name: &str, value: f64) -> &mut Self {
        if !(value.is_finite() && value >= 0.0) {
            self.0.push(format!(
                "--{name} must be a finite number >= 0, got {value}"
            ));
        }
        self
    }

    /// `--name` must lie in `[0, 1)`.
    pub fn fraction(&mut self, name: &str, value: f64) -> &mut Self {
        if !(0.0..1.0).contains(&value) {
            self.0
                .push(format!("--{name} must lie in [0, 1), got {value}"));
        }
        self
    }

    /// The natural gradient's configuration must be valid (checked only when every number
    /// passed, so that one problem gets one message).
    pub fn config(&mut self, config: &NaturalGradientConfig) -> &mut Self {
        if self.0.is_empty() {
            if let Err(e) = config.validate() {
                self.0.push(e.to_string());
            }
        }
        self
    }

    /// The common options, and `out` must be a folder this program can write into (created if
    /// missing). The error lists every problem, one per line.
    pub fn finish(&mut self, common: &Common, out: &std::path::Path) -> Result<(), String> {
        self.at_least_one("epochs", common.epochs);
        if let Some(decay) = common.average {
            self.fraction("average", decay);
        }
        if let Some(limit) = common.limit {
            self.at_least_one("limit", limit);
        }
        let probe = out.join(".natgrad-write-check");
        let writable = std::fs::create_dir_all(out)
            .and_then(|_| std::fs::write(&probe, b""))
            .and_then(|_| std::fs::remove_file(&probe));
        if let Err(e) = writable {
            self.0
                .push(format!("--out {}: cannot write there ({e})", out.display()));
        }
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(format!("error: {}", self.0.join("\nerror: ")))
        }
    }
}
