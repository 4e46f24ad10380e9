//! Cross-attention as a layer: the projections of a model's weights around
//! the fused kernel. `project_context` turns a context sequence (encoder
//! frames, text tokens) into [`EncoderKv`] once; `forward` projects the
//! queries, attends and projects the output for every call (every decode
//! step), with Flamingo's optional tanh(α) gate on a residual.
//!
//! [`CrossAttention::bind`] prepares everything a decode loop repeats
//! (the attention plan, the buffers, the launches) once per query count
//! and context, and [`LayerStep::run`] then costs one upload of x, one
//! submission and one download; `forward` is bind-and-run for one call.
//! [`LayerStep::with_probs`] also writes the attention probabilities (the
//! maps of [`crate::AttentionProbs`]) from inside the layer.
//!
//! Shapes (row-major, PyTorch `nn.Linear` weights `[out, in]`): x
//! `[B, n_q, E]`, context `[B, n_kv, E_kv]`, W_Q `[H·d, E]`, W_K and W_V
//! `[H_kv·d, E_kv]`, W_O `[E, H·d]` with d = E / H; biases optional. Heads
//! are split and merged through the attention kernels' BSHD strides, with
//! no transpose copies. The host API is f32; on the device the weights and
//! every activation (x, Q, K, V, O, y) are stored in the config's
//! [`Dtype`] (f16 or bf16 halve the weights' and the cached K/V's memory),
//! with f32 arithmetic and f32 biases.

mod linear;
mod step;

pub use step::{LayerStep, LayerTimes};

use crate::context::Context;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::problem::AttentionProblem;
use crate::probs::ProbHeads;
use linear::{blocked, Linear, LinearKernels, LinearLaunch};

/// The layer's dimensions and options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerConfig {
    /// Model width E (queries and output).
    pub embed: usize,
    /// Context width E_kv (Whisper's encoder: E; Stable Diffusion's text: 768).
    pub kv_embed: usize,
    /// Query heads H (d = E / H).
    pub heads: usize,
    /// Key/value heads H_kv (GQA when fewer than H).
    pub kv_heads: usize,
    /// Softmax scale (default 1/√d; T5 uses 1).
    pub scale: Option<f32>,
    /// Flamingo's gate α: y = x + tanh(α)·attention(x, context).
    pub gate: Option<f32>,
    /// Device storage of the weights and activations (f32 arithmetic
    /// always). f16 and bf16 need E, E_kv and H_kv·d to be multiples of 4.
    pub dtype: Dtype,
}

impl LayerConfig {
    /// E, E_kv, H and H_kv, with the default scale (1/√d) and no gate.
    pub fn new(embed: usize, kv_embed: usize, heads: usize, kv_heads: usize) -> Self {
        Self {
            embed,
            kv_embed,
            heads,
            kv_heads,
            scale: None,
            gate: None,
            dtype: Dtype::F32,
        }
    }

    /// Head dim d = E / H.
    pub fn head_dim(&self) -> usize {
        self.embed / self.heads.max(1)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.heads == 0 || self.kv_heads == 0 || self.embed == 0 || self.kv_embed == 0 {
            return Err(Error::BadArgument {
                name: "layer".into(),
                reason: format!("zero dimension in {self:?}"),
            });
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::HeadsMismatch {
                heads: self.heads,
                kv_heads: self.kv_heads,
            });
        }
        if !self.embed.is_multiple_of(self.heads) {
            return Err(Error::BadArgument {
                name: "layer".into(),
                reason: format!(
                    "E = {} does not split into H = {} heads of equal width",
                    self.embed, self.heads
                ),
            });
        }
        let kvd = self.kv_heads * self.head_dim();
        if self.dtype != Dtype::F32 && !(blocked(self.embed, self.kv_embed) && blocked(kvd, 4)) {
            return Err(Error::Unsupported {
                kernel: "linear",
                feature: format!(
                    "{} storage with E = {}, E_kv = {}, H_kv·d = {kvd} (half-precision \
                     projections need multiples of 4)",
                    self.dtype, self.embed, self.kv_embed
                ),
                hint: "store this layer in f32 (LayerConfig::dtype)",
            });
        }
        Ok(())
    }
}

/// The layer's weights, host side: W_Q `[H·d, E]`, W_K and W_V
/// `[H_kv·d, E_kv]`, W_O `[E, H·d]`, each bias optional (Whisper's k_proj
/// has none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerWeights {
    /// Query projection.
    pub w_q: Vec<f32>,
    /// Its bias `[H·d]`.
    pub b_q: Option<Vec<f32>>,
    /// Key projection.
    pub w_k: Vec<f32>,
    /// Its bias `[H_kv·d]`.
    pub b_k: Option<Vec<f32>>,
    /// Value projection.
    pub w_v: Vec<f32>,
    /// Its bias `[H_kv·d]`.
    pub b_v: Option<Vec<f32>>,
    /// Output projection.
    pub w_o: Vec<f32>,
    /// Its bias `[E]`.
    pub b_o: Option<Vec<f32>>,
}

impl LayerWeights {
    /// (name, weight, bias, out, in) of the four projections.
    #[allow(clippy::type_complexity)]
    fn projections(
        &self,
        c: &LayerConfig,
    ) -> [(&'static str, &[f32], Option<&[f32]>, usize, usize); 4] {
        let (hd, kvd) = (c.heads * c.head_dim(), c.kv_heads * c.head_dim());
        [
            ("w_q", &self.w_q, self.b_q.as_deref(), hd, c.embed),
            ("w_k", &self.w_k, self.b_k.as_deref(), kvd, c.kv_embed),
            ("w_v", &self.w_v, self.b_v.as_deref(), kvd, c.kv_embed),
            ("w_o", &self.w_o, self.b_o.as_deref(), c.embed, hd),
        ]
    }

    /// Every weight and bias has the shape the config implies (a typed
    /// error names the tensor and the shape expected).
    pub fn validate(&self, c: &LayerConfig) -> Result<()> {
        c.validate()?;
        for (name, w, b, out, inp) in self.projections(c) {
            if w.len() != out * inp {
                return Err(Error::SizeMismatch {
                    name,
                    got: w.len() as u64,
                    expected: (out * inp) as u64,
                    shape: format!("[{out}, {inp}]"),
                });
            }
            if let Some(b) = b.filter(|b| b.len() != out) {
                return Err(Error::SizeMismatch {
                    name,
                    got: b.len() as u64,
                    expected: out as u64,
                    shape: format!("bias [{out}]"),
                });
            }
        }
        Ok(())
    }
}

/// A context sequence projected to K and V (`[B, n_kv, H_kv, d]` each, on
/// the device, in the layer's storage type), computed once and attended to
/// by every step.
#[derive(Debug)]
pub struct EncoderKv {
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    batch: usize,
    n_kv: usize,
}

impl EncoderKv {
    /// (B, n_kv).
    pub fn dims(&self) -> (usize, usize) {
        (self.batch, self.n_kv)
    }
}

/// A cross-attention layer on one context: weights uploaded once.
#[derive(Debug)]
pub struct CrossAttention<'c> {
    ctx: &'c Context,
    config: LayerConfig,
    kernels: LinearKernels,
    proj: [Linear; 4],
}

impl<'c> CrossAttention<'c> {
    /// Validates the weights against `config` and uploads them (in
    /// `config.dtype`).
    pub fn new(ctx: &'c Context, config: LayerConfig, weights: &LayerWeights) -> Result<Self> {
        weights.validate(&config)?;
        for (name, _, _, out, inp) in weights.projections(&config) {
            ctx.caps()
                .check_binding(name, (config.dtype.bytes() * out * inp) as u64)?;
        }
        let kernels = LinearKernels::new(ctx, config.dtype);
        let proj = weights
            .projections(&config)
            .map(|(name, w, b, out, inp)| Linear::new(ctx, &kernels, name, w, b, out, inp));
        ctx.submit(|enc| {
            proj.iter().for_each(|l| l.record_fill(enc));
            Ok(())
        })?;
        Ok(Self {
            ctx,
            config,
            kernels,
            proj,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LayerConfig {
        &self.config
    }

    /// The context it runs on.
    pub fn context(&self) -> &'c Context {
        self.ctx
    }

    /// Projects a context `[B, n_kv, E_kv]` to K and V, once per context.
    pub fn project_context(&self, context: &[f32], batch: usize, n_kv: usize) -> Result<EncoderKv> {
        let c = &self.config;
        let want = batch * n_kv * c.kv_embed;
        if context.len() != want || batch == 0 {
            return Err(Error::SizeMismatch {
                name: "context",
                got: context.len() as u64,
                expected: want as u64,
                shape: format!("[{batch}, {n_kv}, {}]", c.kv_embed),
            });
        }
        let ctx = self.ctx;
        let rows = batch * n_kv;
        let bytes = (c.dtype.bytes() * rows * c.kv_heads * c.head_dim()) as u64;
        ctx.caps()
            .check_binding("context", (c.dtype.bytes() * context.len()) as u64)?;
        ctx.caps().check_binding("k", bytes)?;
        let input = ctx.upload("context", &c.dtype.encode(context));
        let k = ctx.storage("encoder k", bytes);
        let v = ctx.storage("encoder v", bytes);
        let launch = |l, y| LinearLaunch::new(ctx, &self.kernels, l, &input, rows, y, None);
        let (pk, pv) = (launch(&self.proj[1], &k)?, launch(&self.proj[2], &v)?);
        ctx.submit(|enc| {
            pk.record(enc);
            pv.record(enc);
            Ok(())
        })?;
        Ok(EncoderKv { k, v, batch, n_kv })
    }

    /// The attention problem of a step of `n_q` query rows on `kv`.
    pub fn problem(&self, kv: &EncoderKv, n_q: usize, kv_lens: bool) -> AttentionProblem {
        let c = &self.config;
        let mut p = AttentionProblem::new(kv.batch, c.heads, n_q, kv.n_kv, c.head_dim())
            .with_kv_heads(c.kv_heads)
            .with_kv_lens(kv_lens)
            .with_dtype(c.dtype);
        if let Some(s) = c.scale {
            p = p.with_scale(s);
        }
        p
    }

    /// Prepares steps of `n_q` query rows per batch entry attending to `kv`
    /// (per-batch key lengths optional): plans the attention, allocates
    /// every buffer and prepares every launch, once.
    pub fn bind(
        &self,
        n_q: usize,
        kv: &EncoderKv,
        kv_lens: Option<&[u32]>,
    ) -> Result<LayerStep<'_, 'c>> {
        LayerStep::new(self, n_q, kv, kv_lens)
    }

    /// x `[B, n_q, E]` attending to `kv` (per-batch key lengths optional):
    /// y `[B, n_q, E]`. One call of [`CrossAttention::bind`] and
    /// [`LayerStep::run`]; a decode loop keeps the step instead.
    pub fn forward(
        &self,
        x: &[f32],
        n_q: usize,
        kv: &EncoderKv,
        kv_lens: Option<&[u32]>,
    ) -> Result<Vec<f32>> {
        self.bind(n_q, kv, kv_lens)?.run(x)
    }

    /// As [`CrossAttention::forward`], with the attention probabilities of
    /// `heads` (see [`crate::AttentionProbs`]): y, then P `[B, H', n_q,
    /// n_kv]` (or `[B, n_q, n_kv]` for the mean over heads).
    pub fn forward_probs(
        &self,
        x: &[f32],
        n_q: usize,
        kv: &EncoderKv,
        kv_lens: Option<&[u32]>,
        heads: ProbHeads,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        self.bind(n_q, kv, kv_lens)?.with_probs(heads)?.run_probs(x)
    }
}
