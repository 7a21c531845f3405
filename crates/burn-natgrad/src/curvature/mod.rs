//! The curvatures a step can invert, given the captured factors: the batch's own Fisher
//! ([`full`]: the Gram solve and conjugate gradient) and its Kronecker-factored approximation
//! ([`kfac`]). Each holds its own settings ([`FullConfig`](full::FullConfig),
//! [`KfacConfig`](kfac::KfacConfig)); they see blocks of factors, never layers.

pub(crate) mod full;
pub(crate) mod kfac;
