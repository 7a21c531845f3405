//! How factors travel inside Burn's [`GradientsParams`]: each factor tensor of parameter `id` is
//! registered under an id derived from `id` and a tag, so that the `GradientsParams` that
//! `TrainStep::step` returns carries them to `TrainStep::optimize` unchanged.

use burn::module::ParamId;
use burn::optim::GradientsParams;

use super::{BlockFactors, DataRows};

const TAG_INPUT: u64 = 0x6e67_5f69_6e70_7574; // "ng_input"
const TAG_OUTPUT_GRAD: u64 = 0x6e67_5f64_656c_7461; // "ng_delta"
const TAG_BIAS: u64 = 0x6e67_5f62_6961_7300; // "ng_bias"
const TAG_ROWS: u64 = 0x6e67_5f72_6f77_7300; // "ng_rows"
const TAG_GRADIENT_WEIGHT: u64 = 0x6e67_5f67_7765_6967; // "ng_gweig"
const TAG_DATA_INPUT: u64 = 0x6e67_5f64_696e_7075; // "ng_dinpu"
const TAG_DATA_OUTPUT_GRAD: u64 = 0x6e67_5f64_6465_6c74; // "ng_ddelt"
const TAG_DATA_BIAS: u64 = 0x6e67_5f64_6269_6173; // "ng_dbias"
const TAG_DATA_ROWS: u64 = 0x6e67_5f64_726f_7773; // "ng_drows"
const TAG_DATA_SHARED_INPUT: u64 = 0x6e67_5f64_7368_6172; // "ng_dshar"

/// Where the implicit-gradient weight `w` is registered: see [`Factors::gradient_weight`].
pub(crate) fn gradient_weight_id() -> ParamId {
    derived_id(ParamId::from(0), TAG_GRADIENT_WEIGHT)
}

/// The id under which a factor of parameter `id` is registered in a [`GradientsParams`].
///
/// A SplitMix64 mix of the parameter id and a tag: distinct from every parameter id and from the
/// other tags with overwhelming probability, and stable across runs.
pub(crate) fn derived_id(id: ParamId, tag: u64) -> ParamId {
    let mut z = id.val() ^ tag;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ParamId::from(z ^ (z >> 31))
}

impl BlockFactors {
    /// Registers the factors of parameter `id` in `grads` under derived ids.
    pub(crate) fn register(&self, id: ParamId, grads: &mut GradientsParams) {
        match self {
            BlockFactors::Weight { input, output_grad } => {
                grads.register(derived_id(id, TAG_INPUT), input.clone());
                grads.register(derived_id(id, TAG_OUTPUT_GRAD), output_grad.clone());
            }
            BlockFactors::Bias { output_grad } => {
                grads.register(derived_id(id, TAG_BIAS), output_grad.clone())
            }
            BlockFactors::Dense { rows } => grads.register(derived_id(id, TAG_ROWS), rows.clone()),
        }
    }

    /// Looks up the factors of parameter `id` in `grads`.
    pub(crate) fn lookup(id: ParamId, grads: &GradientsParams) -> Option<Self> {
        if let (Some(input), Some(output_grad)) = (
            grads.get::<3>(derived_id(id, TAG_INPUT)),
            grads.get::<3>(derived_id(id, TAG_OUTPUT_GRAD)),
        ) {
            return Some(BlockFactors::Weight { input, output_grad });
        }
        if let Some(output_grad) = grads.get::<2>(derived_id(id, TAG_BIAS)) {
            return Some(BlockFactors::Bias { output_grad });
        }
        grads
            .get::<2>(derived_id(id, TAG_ROWS))
            .map(|rows| BlockFactors::Dense { rows })
    }
}

impl DataRows {
    /// Registers the data rows of parameter `id` in `grads` under derived ids (a weight's input
    /// under a tag of its own when the Fisher rows' input is a prefix of it).
    pub(crate) fn register(&self, id: ParamId, grads: &mut GradientsParams) {
        match &self.factors {
            BlockFactors::Weight { input, output_grad } => {
                let tag = if self.shares_input {
                    TAG_DATA_SHARED_INPUT
                } else {
                    TAG_DATA_INPUT
                };
                grads.register(derived_id(id, tag), input.clone());
                grads.register(derived_id(id, TAG_DATA_OUTPUT_GRAD), output_grad.clone());
            }
            BlockFactors::Bias { output_grad } => {
                grads.register(derived_id(id, TAG_DATA_BIAS), output_grad.clone())
            }
            BlockFactors::Dense { rows } => {
                grads.register(derived_id(id, TAG_DATA_ROWS), rows.clone())
            }
        }
    }

    /// Looks up the data rows of parameter `id`, whose Fisher rows are `fisher`.
    pub(crate) fn lookup(
        id: ParamId,
        grads: &GradientsParams,
        fisher: &BlockFactors,
    ) -> Option<Self> {
        match fisher {
            BlockFactors::Weight { .. } => {
                let output_grad = grads.get::<3>(derived_id(id, TAG_DATA_OUTPUT_GRAD))?;
                let (input, shares_input) =
                    match grads.get::<3>(derived_id(id, TAG_DATA_SHARED_INPUT)) {
                        Some(input) => (input, true),
                        None => (grads.get::<3>(derived_id(id, TAG_DATA_INPUT))?, false),
                    };
                Some(DataRows {
                    factors: BlockFactors::Weight { input, output_grad },
                    shares_input,
                })
            }
            BlockFactors::Bias { .. } => {
                grads
                    .get::<2>(derived_id(id, TAG_DATA_BIAS))
                    .map(|output_grad| DataRows {
                        factors: BlockFactors::Bias { output_grad },
                        shares_input: false,
                    })
            }
            BlockFactors::Dense { .. } => {
                grads
                    .get::<2>(derived_id(id, TAG_DATA_ROWS))
                    .map(|rows| DataRows {
                        factors: BlockFactors::Dense { rows },
                        shares_input: false,
                    })
            }
        }
    }
}
