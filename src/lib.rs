//! # xattn
//!
//! Fused, flash-style cross-attention kernels in WGSL for wgpu.
//!
//! `softmax(Q·Kᵀ·scale + mask)·V` where queries and keys come from different
//! sequences (n_q ≠ n_kv), multi-head, GQA/MQA, with key and query lengths,
//! packed batches, causal and sliding windows, bias and boolean masks. The
//! fused kernel streams K/V blocks through workgroup memory with an online
//! softmax (FlashAttention-2), so no n_q × n_kv score matrix is ever
//! written. It runs on every wgpu backend, including Mesa's software Vulkan
//! (lavapipe) on machines with no GPU, and is checked against an f64 CPU
//! reference ([`reference::attention`]).
//!
//! ```no_run
//! use xattn::{AttentionProblem, Context};
//! let ctx = Context::new()?;
//! // 2 batch entries, 8 heads, 4096 image latents attending to 77 text tokens, d = 40.
//! let p = AttentionProblem::new(2, 8, 4096, 77, 40);
//! let (q, k, v) = (vec![0.0f32; p.q_len()], vec![0.0f32; p.k_len()], vec![0.0f32; p.v_len()]);
//! let out = ctx.attention(&p, &q, &k, &v, None)?;
//! assert_eq!(out.o.len(), p.o_len());
//! # Ok::<(), xattn::Error>(())
//! ```
//!
//! Problem → plan → dispatch: [`AttentionProblem`] describes the shapes and
//! masks without data, [`plan()`] picks the kernel, tiles and key splits for a
//! device's [`DeviceCaps`] (a pure function: tests plan for any adapter),
//! [`FlashAttention`] compiles once (pipelines cached by their typed
//! [`FlashSpec`]) and records into your own `wgpu::CommandEncoder`
//! ([`FlashAttention::record`]) or runs on host slices
//! ([`FlashAttention::run`]). Decode loops bind their buffers once
//! ([`FlashAttention::bind`]) and record each step with
//! [`BoundAttention::record`].
//!
//! # Non-finite inputs
//!
//! The kernels do not scan their inputs (a scan would cost a pass over K/V
//! at every decode step). What NaN and ±∞ do, per head (tests/nonfinite.rs
//! checks each line under both plan families):
//!
//! - NaN or ±∞ in a query row: that row's output and LSE are NaN; no other
//!   row changes.
//! - NaN in a key, or NaN or ±∞ in a value: every row that attends to that
//!   key is NaN (or ±∞); rows that cannot see it (lengths, windows, masks)
//!   are unaffected, and elements past a length are never read.
//! - ±∞ in a key: its score is ±∞ by the sign of the query's element. −∞
//!   hides the key, as a −∞ bias does; +∞ (or 0·∞) makes the row NaN.
//! - The bias refuses NaN and +∞ ([`Error::NonFinite`]); −∞ hides a key.
//!
//! [`check_finite`] is the opt-in check (`xattn run --check-finite`, `xattn
//! layer --check-finite`): the first NaN or ±∞ is an [`Error::NonFinite`]
//! naming the tensor and its flat index.
//!
//! The `cli` feature (default on) adds the bench harness (`xattn::harness`) and
//! the `xattn` command line; `default-features = false` builds the library
//! alone, without their dependencies.

#![warn(missing_docs)]

// No module imports another that imports it back (tests/modules.rs checks).
pub mod caps;
pub mod check;
pub mod context;
pub mod dtype;
pub mod error;
pub mod flash;
#[cfg(feature = "cli")]
pub mod harness;
pub mod layer;
pub mod layout;
pub mod mask;
pub mod naive;
pub mod params;
pub mod plan;
pub mod problem;
pub mod probs;
pub mod reference;
pub mod source;
pub mod tensor;
pub mod weights;

pub use caps::DeviceCaps;
pub use context::{Context, ContextOptions};
pub use dtype::Dtype;
pub use error::{Error, Result};
pub use flash::{BoundAttention, FlashAttention};
pub use layer::{CrossAttention, EncoderKv, LayerConfig, LayerStep, LayerTimes, LayerWeights};
pub use layout::Layout;
pub use mask::{pack_mask, MaskShape, Masks, SeqLayout, VarLen, Window, MAX_SEQ};
pub use naive::{NaiveAttention, NaiveParams};
pub use params::FlashParams;
pub use plan::{plan, FlashPlan, FlashVariant, TileOverride, GPU_LIVE_FLOATS, MAX_SPLITS};
pub use problem::{check_finite, AttentionProblem, MAX_HEAD_DIM};
pub use probs::{AttentionProbs, ProbHeads};
pub use source::{FlashSpec, KernelTiles, KvAccess, LinearKernel, LinearSpec, Shader, TensorIo};
pub use tensor::{AttentionBuffers, AttentionOutput, AttentionTensors};
pub use weights::{gate_from_safetensors, WeightNames};
/// The wgpu this crate is built against, for callers of the integration API.
pub use wgpu;
