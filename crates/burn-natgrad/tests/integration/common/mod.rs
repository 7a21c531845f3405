//! Shared helpers for burn-natgrad's integration tests: backends, a deterministic MLP, data.
#![allow(dead_code)]

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_natgrad::{
    Capture, CgConfig, Curvature, FullConfig, KfacConfig, KfacInverse, NaturalGradient,
    NaturalGradientConfig, Solver,
};

/// The autodiff devices of every backend compiled in (cargo features `ndarray`, `flex`, `wgpu`).
/// A wgpu build on a machine without an adapter prints why it is left out, and fails instead
/// when `NATGRAD_REQUIRE_WGPU=1` (CI sets it, with Mesa's lavapipe installed).
// One push per compiled backend.
#[allow(clippy::vec_init_then_push)]
pub fn backends() -> Vec<(&'static str, Device)> {
    #[allow(unused_mut)]
    let mut out: Vec<(&'static str, Device)> = Vec::new();
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)]
    out.push(("ndarray", Device::ndarray().autodiff()));
    #[cfg(feature = "flex")]
    out.push(("flex", Device::flex().autodiff()));
    #[cfg(feature = "wgpu")]
    if let Some(device) = wgpu_device() {
        out.push(("wgpu", device.autodiff()));
    }
    assert!(
        !out.is_empty(),
        "no backend feature enabled: build with ndarray, flex or wgpu"
    );
    out
}

/// The wgpu device, if an adapter answers.
#[cfg(feature = "wgpu")]
pub fn wgpu_device() -> Option<Device> {
    use std::sync::OnceLock;
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    let probe = PROBE.get_or_init(|| {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let result = std::panic::catch_unwind(|| {
            let device = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
            Tensor::<1>::ones([4], &device).sum().into_scalar::<f32>()
        });
        std::panic::set_hook(hook);
        match result {
            Ok(4.0) => Ok(()),
            Ok(v) => Err(format!("the adapter computed 1+1+1+1 = {v}")),
            Err(e) => Err(e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into())),
        }
    });
    match probe {
        Ok(()) => Some(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        Err(why) => {
            let msg = format!(
                "wgpu: no usable adapter ({why}); install a Vulkan driver (CI: `apt-get install \
                 mesa-vulkan-drivers libvulkan1` for lavapipe)"
            );
            if std::env::var("NATGRAD_REQUIRE_WGPU").as_deref() == Ok("1") {
                panic!("{msg}, and NATGRAD_REQUIRE_WGPU=1 requires one");
            }
            eprintln!("{msg}: the wgpu backend is left out of this test");
            None
        }
    }
}

/// Deterministic pseudo-random values in [-1, 1) (a 64-bit LCG), the same on every backend.
pub fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn tensor<const D: usize>(
    seed: u64,
    shape: [usize; D],
    scale: f32,
    device: &Device,
) -> Tensor<D> {
    let n = shape.iter().product();
    let v: Vec<f32> = values(seed, n).into_iter().map(|x| x * scale).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

pub fn labels(seed: u64, n: usize, classes: usize, device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = values(seed, n)
        .into_iter()
        .map(|x| (((x + 1.0) / 2.0 * classes as f32) as i64).min(classes as i64 - 1))
        .collect();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

/// A ReLU MLP whose Linear layers are all captured.
#[derive(Module, Debug)]
pub struct Mlp {
    pub layers: Vec<Linear>,
}

impl Mlp {
    /// Deterministic weights (seeded LCG), identical on every backend.
    pub fn new(sizes: &[usize], bias: bool, seed: u64, device: &Device) -> Self {
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let mut l = LinearConfig::new(w[0], w[1]).with_bias(bias).init(device);
                let scale = 1.5 / (w[0] as f32).sqrt();
                l.weight =
                    Param::from_tensor(tensor(seed + 2 * i as u64, [w[0], w[1]], scale, device));
                if bias {
                    l.bias = Some(Param::from_tensor(tensor(
                        seed + 2 * i as u64 + 1,
                        [w[1]],
                        0.3,
                        device,
                    )));
                }
                l
            })
            .collect();
        Self { layers }
    }

    pub fn forward_with<const D: usize>(&self, x: Tensor<D>, capture: &mut Capture) -> Tensor<D> {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |h, (i, layer)| {
            let z = capture.linear(layer, h);
            if i < last {
                relu(z)
            } else {
                z
            }
        })
    }

    /// Logits `[N, C]` for `[N, in]` input.
    pub fn logits2(&self, x: Tensor<2>, capture: &mut Capture) -> Tensor<2> {
        self.forward_with(x, capture)
    }

    /// Logits `[N, C]` for sequence input `[N, T, in]`: the outputs averaged over `T`.
    pub fn logits3(&self, x: Tensor<3>, capture: &mut Capture) -> Tensor<2> {
        let out = self.forward_with(x, capture);
        let [n, _, c] = out.dims();
        out.mean_dim(1).reshape([n, c])
    }
}

/// Collects, in module order, the tensors `grads` holds for a module's trainable parameters
/// (host, f64).
pub struct Gather<'a> {
    pub grads: &'a burn::optim::GradientsParams,
    pub out: &'a mut Vec<f64>,
}

impl burn::module::ModuleVisitor for Gather<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        match self.grads.get::<D>(param.id) {
            Some(t) => self.out.extend(host(t)),
            // A buffer (a BatchNorm's running statistics) or a frozen parameter.
            None if !param.val().is_require_grad() => {}
            None => panic!("a tensor for every trainable parameter"),
        }
    }
}

/// The tensors `grads` holds for `model`'s parameters, in module order (host, f64).
pub fn gathered(model: &Mlp, grads: &burn::optim::GradientsParams) -> Vec<f64> {
    let mut out = Vec::new();
    model.visit(&mut Gather {
        grads,
        out: &mut out,
    });
    out
}

/// `ng`'s natural-gradient directions for `grads` at learning rate `lr`, in module order (host,
/// f64). Panics if the step is refused or skipped.
pub fn directions_of(
    ng: &NaturalGradient,
    model: &Mlp,
    lr: f64,
    grads: &burn::optim::GradientsParams,
) -> Vec<f64> {
    let dirs = ng
        .precondition(model, lr, grads)
        .unwrap()
        .directions
        .expect("a finite step");
    gathered(model, &dirs)
}

/// Host copy of a tensor as f64.
pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap()
}

/// `max |a − b| / max |b|`.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let den = b.iter().map(|y| y.abs()).fold(0.0, f64::max).max(1e-30);
    num / den
}

/// Serializes the tests that seed a backend's random generator and then draw from it: the
/// generator is global per backend, and the tests of this binary run on parallel threads.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The message of the panic `f` raises (the default hook silenced meanwhile).
pub fn panic_message(f: impl FnOnce()) -> String {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let err =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).expect_err("expected a panic");
    std::panic::set_hook(hook);
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Asserts that two collections of blocks (a rule's and the per-example loop's) hold the same
/// per-example rows and gradients, block by block (relative error ≤ 1e-5).
pub fn assert_blocks_match(
    a: &burn_natgrad::testing::Factors,
    b: &burn_natgrad::testing::Factors,
    what: &str,
) {
    assert_eq!(a.blocks.len(), b.blocks.len(), "{what}: block count");
    for (i, (x, y)) in a.blocks.iter().zip(&b.blocks).enumerate() {
        assert_eq!(x.path, y.path, "{what}");
        let rows = rel_err(&host(x.factors.dense_rows()), &host(y.factors.dense_rows()));
        let grad = rel_err(&host(a.gradient(i)), &host(b.gradient(i)));
        assert!(
            rows <= 1e-5 && grad <= 1e-5,
            "{what} {}: per-example rows rel err {rows:e}, grad {grad:e}",
            x.path
        );
    }
}

/// A small CNN: one Conv2d (any configuration), ReLU, flatten, one Linear to the logits.
#[derive(Module, Debug)]
pub struct ConvNet {
    pub conv: burn::nn::conv::Conv2d,
    pub fc: Linear,
}

impl ConvNet {
    /// Deterministic weights (seeded LCG) for `config` on `[N, C, hw[0], hw[1]]` inputs.
    pub fn new(
        config: burn::nn::conv::Conv2dConfig,
        hw: [usize; 2],
        classes: usize,
        seed: u64,
        device: &Device,
    ) -> Self {
        let mut conv = config.init(device);
        let dims = conv.weight.val().dims();
        let fan_in = (dims[1] * dims[2] * dims[3]) as f32;
        conv.weight = Param::from_tensor(tensor(seed, dims, 1.5 / fan_in.sqrt(), device));
        if let Some(b) = &conv.bias {
            let d = b.val().dims();
            conv.bias = Some(Param::from_tensor(tensor(seed + 1, d, 0.3, device)));
        }
        let probe = Tensor::<4>::zeros([1, config.channels[0], hw[0], hw[1]], device);
        let features = conv.forward(probe).shape().num_elements();
        let mut fc = LinearConfig::new(features, classes).init(device);
        let scale = 1.5 / (features as f32).sqrt();
        fc.weight = Param::from_tensor(tensor(seed + 2, [features, classes], scale, device));
        fc.bias = Some(Param::from_tensor(tensor(seed + 3, [classes], 0.3, device)));
        Self { conv, fc }
    }

    /// Logits `[N, classes]` for `[N, C, H, W]` input.
    pub fn logits(&self, x: Tensor<4>, capture: &mut Capture) -> Tensor<2> {
        let h = relu(capture.conv2d(&self.conv, x));
        let [n, c, hh, ww] = h.dims();
        capture.linear(&self.fc, h.reshape([n, c * hh * ww]))
    }
}

/// Dense `(UᵀU + λI)⁻¹ g` on the host (f64) for the given blocks and gradient.
pub fn dense_direction(
    blocks: &[&burn_natgrad::testing::Block],
    g: Vec<f64>,
    damping: f64,
) -> Vec<f64> {
    let m = blocks[0].factors.rows();
    let u = host(burn_natgrad::testing::dense_rows(blocks));
    let p = u.len() / m;
    let mut f = vec![0.0; p * p];
    for r in 0..m {
        for i in 0..p {
            for j in 0..p {
                f[i * p + j] += u[r * p + i] * u[r * p + j];
            }
        }
    }
    burn_natgrad::testing::cholesky_solve(&f, &g, p, damping).unwrap()
}

/// `dᵀ F d` on the host (f64) with the dense rows `U` of the blocks, `F = UᵀU`.
pub fn dense_quadratic(blocks: &[&burn_natgrad::testing::Block], d: &[f64]) -> f64 {
    let m = blocks[0].factors.rows();
    let u = host(burn_natgrad::testing::dense_rows(blocks));
    let p = u.len() / m;
    assert_eq!(p, d.len(), "direction length");
    (0..m)
        .map(|r| {
            let ud: f64 = (0..p).map(|i| u[r * p + i] * d[i]).sum();
            ud * ud
        })
        .sum()
}

/// Every solver's direction for `grads` against `dense` (the dense solve at `damping`,
/// relative error ≤ 1e-4), parameters in module order.
pub fn assert_solvers_match_dense<M: Module>(
    model: &M,
    grads: &burn::optim::GradientsParams,
    fisher: burn_natgrad::FisherKind,
    dense: &[f64],
    damping: f64,
    what: &str,
) {
    let cg = CgConfig::new().with_max_iters(300).with_tolerance(1e-9);
    for solver in solvers(cg) {
        let ng = burn_natgrad::NaturalGradientConfig::new()
            .with_fisher(fisher)
            .with_curvature(full(solver, false))
            .with_damping(damping)
            .build();
        let pre = ng.precondition(model, 1.0, grads).unwrap();
        let mut got = Vec::new();
        model.visit(&mut Gather {
            grads: pre.directions.as_ref().expect("a finite step"),
            out: &mut got,
        });
        let err = rel_err(&got, dense);
        assert!(err <= 1e-4, "{what} {fisher:?} {solver:?}: rel err {err:e}");
    }
}

/// The Fisher `UᵀU` of the blocks at `paths` (their rows in any order: the per-example loop's
/// come example by example, a capture's stacked copies copy by copy).
pub fn fisher_of(f: &burn_natgrad::testing::Factors, paths: &[&str]) -> Vec<f64> {
    let blocks: Vec<&burn_natgrad::testing::Block> = paths
        .iter()
        .map(|path| f.blocks.iter().find(|b| b.path == *path).expect(path))
        .collect();
    let u = burn_natgrad::testing::dense_rows(&blocks);
    host(u.clone().transpose().matmul(u))
}

/// The three solvers of the full Fisher, conjugate gradient with `cg`'s stopping rules.
pub fn solvers(cg: CgConfig) -> [Solver; 3] {
    [Solver::Gram, Solver::CgSample(cg), Solver::CgParam(cg)]
}

/// The full Fisher solved by `solver`, coupled or block-diagonal.
pub fn full(solver: Solver, block_diagonal: bool) -> Curvature {
    Curvature::Full(
        FullConfig::new()
            .with_solver(solver)
            .with_block_diagonal(block_diagonal),
    )
}

/// `config` (a KFAC configuration) with its KFAC settings changed by `f`.
pub fn map_kfac(
    config: NaturalGradientConfig,
    f: impl FnOnce(KfacConfig) -> KfacConfig,
) -> NaturalGradientConfig {
    let Curvature::Kfac(k) = config.curvature else {
        panic!("map_kfac needs a KFAC configuration")
    };
    config.with_curvature(Curvature::Kfac(f(k)))
}

/// Low-rank inverses of `rank` eigenpairs; `None`: dense.
pub fn inverse(rank: Option<usize>) -> KfacInverse {
    match rank {
        Some(rank) => KfacInverse::LowRank { rank },
        None => KfacInverse::Dense,
    }
}
