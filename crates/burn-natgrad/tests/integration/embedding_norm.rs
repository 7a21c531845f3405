//! The Embedding and LayerNorm rules against the exact per-example loop (the oracle), with
//! repeated ids, 2-D and 3-D LayerNorm inputs, on every backend.

use crate::common::*;
use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_natgrad::testing::{gram, Block, Factors};
use burn_natgrad::{per_example_classification, Capture, FisherKind, NaturalGradientConfig};

/// Embedding `[7, 4]` → LayerNorm over `[N, T, 4]` → mean over `T` → Linear → ReLU → LayerNorm
/// over `[N, 5]` → Linear.
#[derive(Module, Debug)]
pub(crate) struct TokenNet {
    embedding: Embedding,
    norm1: LayerNorm,
    fc1: Linear,
    norm2: LayerNorm,
    fc2: Linear,
}

impl TokenNet {
    pub(crate) fn new(device: &Device) -> Self {
        let mut embedding = EmbeddingConfig::new(7, 4).init(device);
        embedding.weight = Param::from_tensor(tensor(1, [7, 4], 1.0, device));
        let mut norm1 = LayerNormConfig::new(4).init(device);
        norm1.gamma = Param::from_tensor(tensor(2, [4], 0.5, device).add_scalar(1.0));
        norm1.beta = Some(Param::from_tensor(tensor(3, [4], 0.2, device)));
        let mut norm2 = LayerNormConfig::new(5).init(device);
        norm2.gamma = Param::from_tensor(tensor(4, [5], 0.5, device).add_scalar(1.0));
        let mlp = Mlp::new(&[4, 5, 3], true, 5, device);
        let mut layers = mlp.layers.into_iter();
        Self {
            embedding,
            norm1,
            fc1: layers.next().unwrap(),
            norm2,
            fc2: layers.next().unwrap(),
        }
    }

    /// Logits `[N, 3]` for ids `[N, T]` given as floats (the per-example loop's input type).
    pub(crate) fn logits(&self, ids: Tensor<2>, cap: &mut Capture) -> Tensor<2> {
        let [n, _] = ids.dims();
        let ids: Tensor<2, Int> = ids.int();
        let h = cap.embedding(&self.embedding, ids);
        let h = cap.layer_norm(&self.norm1, h);
        let h = h.mean_dim(1).reshape([n, 4]);
        let h = relu(cap.linear(&self.fc1, h));
        let h = cap.layer_norm(&self.norm2, h);
        cap.linear(&self.fc2, h)
    }
}

/// Ids with repeats inside and across examples: `[N, 3]` from a vocabulary of 7.
fn ids(n: usize, device: &Device) -> Tensor<2> {
    token_ids(n, 0, device)
}

/// [`ids`], shifted by `seed`.
pub(crate) fn token_ids(n: usize, seed: u64, device: &Device) -> Tensor<2> {
    let v: Vec<f32> = (0..n * 3)
        .map(|i| ((i as u64 * 5 + i as u64 / 4 + seed) % 7) as f32)
        .collect();
    Tensor::from_data(TensorData::new(v, [n, 3]), device)
}

#[test]
fn embedding_and_layer_norm_rules_match_the_per_example_loop() {
    for (name, device) in backends() {
        let model = TokenNet::new(&device);
        for fisher in [FisherKind::Empirical, FisherKind::Sampled { samples: 2 }] {
            let ng = NaturalGradientConfig::new().with_fisher(fisher).build();
            let n = 6;
            let (x, y) = (ids(n, &device), labels(8, n, 3, &device));
            let _rng = rng_lock();
            device.seed(5);
            let (mut cap, xc) = ng.capture(x.clone());
            let logits = model.logits(xc, &mut cap);
            assert_eq!(cap.len(), 5, "{name}");
            let probe = ng
                .try_classification(&model, cap, logits, y.clone())
                .unwrap();
            device.seed(5);
            let looped = per_example_classification(&ng, &model, x, y, |m: &TokenNet, x| {
                m.logits(x, &mut Capture::disabled())
            })
            .unwrap();
            let fp = Factors::from_grads(&model, &probe.grads).unwrap();
            let fl = Factors::from_grads(&model, &looped.grads).unwrap();
            // embedding; norm1 γ, β; fc1 w, b; norm2 γ, β; fc2 w, b.
            assert_eq!(fp.blocks.len(), 9, "{name}");
            if fisher == FisherKind::Empirical {
                assert_blocks_match(&fp, &fl, &format!("{name} {fisher:?}"));
            }
            // The Gram the solvers use against G Gᵀ of the rule's own materialised rows.
            let blocks: Vec<&Block> = fp.blocks.iter().collect();
            let u = burn_natgrad::testing::dense_rows(&blocks);
            let expected = host(u.clone().matmul(u.transpose()));
            let err = rel_err(&host(gram(&blocks)), &expected);
            assert!(err <= 1e-5, "{name} {fisher:?}: Gram rel err {err:e}");
            // Every solver against the dense solve.
            let g: Vec<f64> = (0..blocks.len())
                .flat_map(|i| host(fp.gradient(i)))
                .collect();
            let damping = 0.05;
            let dense = dense_direction(&blocks, g, damping);
            assert_solvers_match_dense(&model, &probe.grads, fisher, &dense, damping, name);
        }
    }
}

/// One table read twice (tied embeddings): the uses merge along `T` into one gather block (no
/// one-hot rows), whose per-example gradients are the loop's.
#[derive(Module, Debug)]
struct TiedNet {
    embedding: Embedding,
    fc: Linear,
}

impl TiedNet {
    pub(crate) fn logits(&self, ids: Tensor<2>, cap: &mut Capture) -> Tensor<2> {
        let [n, _] = ids.dims();
        let shifted: Tensor<2, Int> = ids.clone().add_scalar(1.0).int().remainder_scalar(7);
        let a = cap.embedding(&self.embedding, ids.int());
        let b = cap.embedding(&self.embedding, shifted);
        let h = (a + b).mean_dim(1).reshape([n, 4]);
        cap.linear(&self.fc, h)
    }
}

#[test]
fn an_embedding_used_twice_stays_one_gather_block() {
    for (name, device) in backends() {
        let base = TokenNet::new(&device);
        let model = TiedNet {
            embedding: base.embedding,
            fc: Mlp::new(&[4, 3], true, 6, &device).layers.remove(0),
        };
        let ng = NaturalGradientConfig::new().build();
        let (x, y) = (ids(5, &device), labels(9, 5, 3, &device));
        let (mut cap, xc) = ng.capture(x.clone());
        let logits = model.logits(xc, &mut cap);
        let probe = ng
            .try_classification(&model, cap, logits, y.clone())
            .unwrap();
        let looped = per_example_classification(&ng, &model, x, y, |m: &TiedNet, x| {
            m.logits(x, &mut Capture::disabled())
        })
        .unwrap();
        let fp = Factors::from_grads(&model, &probe.grads).unwrap();
        let fl = Factors::from_grads(&model, &looped.grads).unwrap();
        assert!(
            matches!(
                fp.blocks[0].factors,
                burn_natgrad::testing::BlockFactors::Gather { .. }
            ),
            "{name}: the two uses were not merged into a gather block"
        );
        assert_blocks_match(&fp, &fl, name);
    }
}
