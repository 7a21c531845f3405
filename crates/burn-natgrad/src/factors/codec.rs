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
const TAG_IDS: u64 = 0x6e67_5f69_6473_0000; // "ng_ids"
const TAG_GATHER_DELTA: u64 = 0x6e67_5f67_6465_6c74; // "ng_gdelt"
const TAG_DATA_IDS: u64 = 0x6e67_5f64_6964_7300; // "ng_dids"
const TAG_DATA_GATHER_DELTA: u64 = 0x6e67_5f64_6764_656c; // "ng_dgdel"
const TAG_DATA_SHARED_INPUT: u64 = 0x6e67_5f64_7368_6172; // "ng_dshar"
const TAG_REUSE: u64 = 0x6e67_5f72_6575_7365; // "ng_reuse"

/// Where the implicit-gradient weight `w` is registered: see
/// [`Factors::gradient_weight`](super::Factors::gradient_weight).
pub(crate) fn gradient_weight_id() -> ParamId {
    derived_id(ParamId::from(0), TAG_GRADIENT_WEIGHT)
}

/// Where a step that reuses KFAC's factors (no capture, see
/// [`factor_update_steps`](crate::KfacConfig::factor_update_steps)) marks its plain
/// gradients, so that they are preconditioned with the factors in force instead of being
/// refused as uncaptured.
pub(crate) fn reuse_marker_id() -> ParamId {
    derived_id(ParamId::from(0), TAG_REUSE)
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

/// The tags of one set of rows (the Fisher rows, or the data rows), one per factor tensor.
struct Tags {
    input: u64,
    output_grad: u64,
    bias: u64,
    rows: u64,
    ids: u64,
    gather_delta: u64,
}

const FISHER: Tags = Tags {
    input: TAG_INPUT,
    output_grad: TAG_OUTPUT_GRAD,
    bias: TAG_BIAS,
    rows: TAG_ROWS,
    ids: TAG_IDS,
    gather_delta: TAG_GATHER_DELTA,
};

const DATA: Tags = Tags {
    input: TAG_DATA_INPUT,
    output_grad: TAG_DATA_OUTPUT_GRAD,
    bias: TAG_DATA_BIAS,
    rows: TAG_DATA_ROWS,
    ids: TAG_DATA_IDS,
    gather_delta: TAG_DATA_GATHER_DELTA,
};

impl BlockFactors {
    /// Registers the factors of parameter `id` in `grads` under derived ids.
    pub(crate) fn register(&self, id: ParamId, grads: &mut GradientsParams) {
        self.register_with(id, grads, &FISHER, FISHER.input);
    }

    fn register_with(&self, id: ParamId, grads: &mut GradientsParams, tags: &Tags, input_tag: u64) {
        let tag = |t| derived_id(id, t);
        match self {
            BlockFactors::Weight { input, output_grad } => {
                grads.register(tag(input_tag), input.clone());
                grads.register(tag(tags.output_grad), output_grad.clone());
            }
            BlockFactors::Bias { output_grad } => {
                grads.register(tag(tags.bias), output_grad.clone())
            }
            BlockFactors::Gather {
                ids, output_grad, ..
            } => {
                grads.register(tag(tags.ids), ids.clone());
                grads.register(tag(tags.gather_delta), output_grad.clone());
            }
            BlockFactors::Dense { rows } => grads.register(tag(tags.rows), rows.clone()),
        }
    }

    /// Looks up the factors of parameter `id` in `grads`.
    pub(crate) fn lookup(id: ParamId, grads: &GradientsParams) -> Option<Self> {
        Self::lookup_with(id, grads, &FISHER, FISHER.input)
    }

    fn lookup_with(
        id: ParamId,
        grads: &GradientsParams,
        tags: &Tags,
        input_tag: u64,
    ) -> Option<Self> {
        let tag = |t| derived_id(id, t);
        if let (Some(input), Some(output_grad)) = (
            grads.get::<3>(tag(input_tag)),
            grads.get::<3>(tag(tags.output_grad)),
        ) {
            return Some(BlockFactors::Weight { input, output_grad });
        }
        if let Some(output_grad) = grads.get::<2>(tag(tags.bias)) {
            return Some(BlockFactors::Bias { output_grad });
        }
        if let (Some(ids), Some(output_grad)) = (
            grads.get::<2>(tag(tags.ids)),
            grads.get::<3>(tag(tags.gather_delta)),
        ) {
            return Some(BlockFactors::Gather {
                ids,
                output_grad,
                vocab: 0,
            });
        }
        grads
            .get::<2>(tag(tags.rows))
            .map(|rows| BlockFactors::Dense { rows })
    }
}

impl DataRows {
    /// Registers the data rows of parameter `id` in `grads` under derived ids (a weight's input
    /// under a tag of its own when the Fisher rows' input is a prefix of it).
    pub(crate) fn register(&self, id: ParamId, grads: &mut GradientsParams) {
        let input_tag = if self.shares_input {
            TAG_DATA_SHARED_INPUT
        } else {
            DATA.input
        };
        self.factors.register_with(id, grads, &DATA, input_tag);
    }

    /// Looks up the data rows of parameter `id`, whose Fisher rows are `fisher`.
    pub(crate) fn lookup(
        id: ParamId,
        grads: &GradientsParams,
        fisher: &BlockFactors,
    ) -> Option<Self> {
        let shared = matches!(fisher, BlockFactors::Weight { .. })
            && grads
                .get::<3>(derived_id(id, TAG_DATA_SHARED_INPUT))
                .is_some();
        let input_tag = if shared {
            TAG_DATA_SHARED_INPUT
        } else {
            DATA.input
        };
        let factors = BlockFactors::lookup_with(id, grads, &DATA, input_tag)?;
        (std::mem::discriminant(&factors) == std::mem::discriminant(fisher)).then_some(DataRows {
            factors,
            shares_input: shared,
        })
    }
}
