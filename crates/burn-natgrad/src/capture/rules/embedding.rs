//! The Embedding rule: `yₙₜ = W[idₙₜ]`, a gather of the table `W` `[V, d]` at integer ids.
//!
//! Factors: the ids `[N, T]` and the probe's gradient `Δ` `[N, T, d]`; the per-example gradient
//! `Σ_t e(idₙₜ) ⊗ Δₙₜ` is a one-hot product that is never formed: the shared gather products
//! (`factors/gather.rs`) get the Gram from index equality, `Σ_{t,s} [idₙₜ = idₘₛ] Δₙₜ·Δₘₛ`, and
//! the back-projection from a scatter-add into the table's rows.

use burn::module::ParamId;
use burn::nn::Embedding;
use burn::tensor::{Gradients, Int, Tensor};

use super::{constant, probed, require_autodiff, Recorded};
use crate::capture::Capture;
use crate::factors::BlockFactors;

/// The most rows an Embedding table may have for its ids to be carried exactly: 2²⁴, below
/// which every integer is an `f32`.
pub(crate) const MAX_ROWS: usize = 1 << 24;

/// One use of an Embedding layer.
#[derive(Clone, Debug)]
pub(crate) struct EmbeddingUse {
    weight: ParamId,
    /// The ids as floats, `[N, T]`.
    ids: Tensor<2>,
    /// The probe leaf, `[N, T, d]`.
    probe: Tensor<3>,
}

impl EmbeddingUse {
    pub(crate) fn blocks(self, grads: &Gradients) -> Option<Vec<(ParamId, BlockFactors)>> {
        let output_grad = self.probe.grad(grads)?;
        let block = BlockFactors::Gather {
            ids: self.ids,
            output_grad,
            vocab: 0,
        };
        Some(vec![(self.weight, block)])
    }
}

impl Capture {
    /// `layer.forward(ids)` for an Embedding read at `ids` `[N, T]` (`N` examples of `T`
    /// tokens), recording the ids and making its output `[N, T, d]` a probe leaf. The
    /// table enters the graph as a constant; a frozen table is not recorded.
    ///
    /// # Panics
    /// If the capture is enabled and the table is not on an autodiff device, or it has
    /// more than 2²⁴ rows (the ids travel as `f32` inside Burn's `GradientsParams`,
    /// exact below 2²⁴): before any weight moves.
    pub fn embedding(&mut self, layer: &Embedding, ids: Tensor<2, Int>) -> Tensor<3> {
        if !self.is_enabled() || !layer.weight.val().is_require_grad() {
            return layer.forward(ids);
        }
        let table = layer.weight.val();
        let rows = table.dims()[0];
        assert!(
            rows <= MAX_ROWS,
            "natural gradient: an Embedding table of {rows} rows is larger than the capture \
             carries exactly ({MAX_ROWS} rows: its ids travel as f32 inside Burn's \
             GradientsParams, and ids from 2^24 on would be merged); split the table, or leave \
             it out of the natural gradient (freeze it, or capture the layer without \
             `Capture::embedding`, under `UncoveredPolicy::DampedGradient`)"
        );
        require_autodiff(&table, "embedding");
        let output = burn::tensor::module::embedding(constant(table), ids.clone());
        let dims = output.dims();
        let (probe, output) = probed(output, dims);
        self.records.push(Recorded::Embedding(EmbeddingUse {
            weight: layer.weight.id,
            ids: ids.float().inner(),
            probe,
        }));
        output
    }
}
