//! Cross-attention as a layer: the projections of a model's weights around
//! the fused kernel. `project_context` turns a context sequence (encoder
//! frames, text tokens) into [`EncoderKv`] once; `forward` projects the
//! queries, attends and projects the output for every call (every decode
//! step), with Flamingo's optional tanh(α) gate on a residual.
//!
//! Shapes (f32, row-major, PyTorch `nn.Linear` weights `[out, in]`):
//! x `[B, n_q, E]`, context `[B, n_kv, E_kv]`, W_Q `[H·d, E]`, W_K and W_V
//! `[H_kv·d, E_kv]`, W_O `[E, H·d]` with d = E / H; biases optional. Heads
//! are split and merged through the attention kernels' BSHD strides, with
//! no transpose copies.

use std::sync::Arc;

use crate::context::{Binding, Context, Kernel, PipelineKey};
use crate::error::{Error, Result};
use crate::flash::{FlashAttention, KvMirror};
use crate::plan::{mirror_fits, mirror_width_log2};
use crate::problem::AttentionProblem;
use crate::source::{linear4_source, linear_source, Shader, TensorIo};
use crate::tensor::AttentionBuffers;

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
        }
    }

    /// Head dim d = E / H.
    pub fn head_dim(&self) -> usize {
        self.embed / self.heads.max(1)
    }

    fn validate(&self) -> Result<()> {
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
/// the device), computed once and attended to by every `forward`.
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

/// One projection's device weights, and their texture mirror on CPU
/// adapters (filled once).
#[derive(Debug)]
struct Linear {
    w: wgpu::Buffer,
    b: Option<wgpu::Buffer>,
    mirror: Option<KvMirror>,
    out: usize,
    inp: usize,
}

/// Uniform parameters of `linear.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct LinearParams {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    gate: f32,
    _pad: [u32; 3],
}

/// `linear4.wgsl` with X and W from texture mirrors.
const LINEAR_TEX_BINDINGS: [Binding; 6] = [
    Binding::Uniform,
    Binding::Texture { uint: false },
    Binding::Texture { uint: false },
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
];

const LINEAR_BINDINGS: [Binding; 6] = [
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
];

/// A cross-attention layer on one context: weights uploaded once.
#[derive(Debug)]
pub struct CrossAttention<'c> {
    ctx: &'c Context,
    config: LayerConfig,
    /// `linear.wgsl` (any width) and `linear4.wgsl` (K ≡ 0 mod 4).
    linear: Arc<Kernel>,
    linear4: Arc<Kernel>,
    /// `linear4.wgsl` through texture mirrors and their width (log₂
    /// texels), on CPU adapters.
    linear4_tex: Option<(Arc<Kernel>, u32)>,
    proj: [Linear; 4],
}

impl<'c> CrossAttention<'c> {
    /// Validates the weights against `config` and uploads them.
    pub fn new(ctx: &'c Context, config: LayerConfig, weights: &LayerWeights) -> Result<Self> {
        weights.validate(&config)?;
        let compile = |shader: Shader, bindings: &[Binding], tex: Option<u32>| {
            ctx.pipeline(
                PipelineKey {
                    shader,
                    entry: "main",
                    spec: None,
                },
                bindings,
                || match shader {
                    Shader::Linear => linear_source(),
                    _ => linear4_source(tex),
                },
            )
        };
        let linear = compile(Shader::Linear, &LINEAR_BINDINGS, None)?;
        let linear4 = compile(Shader::Linear4, &LINEAR_BINDINGS, None)?;
        // CPU adapters read X and W through texture mirrors (straight-line
        // gathers instead of per-lane loads): 16 384 texels wide.
        let linear4_tex = match mirror_width_log2(ctx.caps()).filter(|_| ctx.caps().cpu_plans()) {
            Some(log2) => Some((
                compile(Shader::Linear4Tex, &LINEAR_TEX_BINDINGS, Some(log2))?,
                log2,
            )),
            None => None,
        };
        let proj = weights.projections(&config).map(|(name, w, b, out, inp)| {
            let w = ctx.upload(name, w);
            let mirror = linear4_tex
                .as_ref()
                .filter(|&&(_, log2)| {
                    inp.is_multiple_of(4) && mirror_fits(ctx.caps(), log2, out * inp)
                })
                .map(|&(_, log2)| KvMirror::new(ctx.device(), &w, out * inp, TensorIo::F32, log2));
            Linear {
                w,
                b: b.map(|b| ctx.upload(name, b)),
                mirror,
                out,
                inp,
            }
        });
        ctx.submit(|enc| {
            for m in proj.iter().filter_map(|l| l.mirror.as_ref()) {
                m.record_copy(enc);
            }
            Ok(())
        })?;
        Ok(Self {
            ctx,
            config,
            linear,
            linear4,
            linear4_tex,
            proj,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LayerConfig {
        &self.config
    }

    /// Records y = x·Wᵀ + b (rows of `x`: `m`), or with `gate` = (tanh α, r)
    /// y = r + tanh(α)·(x·Wᵀ + b).
    fn record_linear(
        &self,
        enc: &mut wgpu::CommandEncoder,
        l: &Linear,
        x: &wgpu::Buffer,
        m: usize,
        y: &wgpu::Buffer,
        gate: Option<(f32, &wgpu::Buffer)>,
    ) -> Result<()> {
        let max = self.ctx.caps().max_workgroups_per_dim as usize;
        // Register-blocked where K allows vec4 rows: 32 × 32 outputs per
        // workgroup; else 16 × 16 tiles.
        let (kernel, side) = if l.inp.is_multiple_of(4) {
            (&self.linear4, 32)
        } else {
            (&self.linear, 16)
        };
        let grid = (l.out.div_ceil(side), m.div_ceil(side));
        if grid.0 > max || grid.1 > max {
            return Err(Error::Unplannable {
                kernel: "linear",
                reason: format!("{m} rows × {} outputs need a {grid:?} grid", l.out),
            });
        }
        let params = LinearParams {
            m: m as u32,
            n: l.out as u32,
            k: l.inp as u32,
            flags: u32::from(l.b.is_some()) | u32::from(gate.is_some()) << 1,
            gate: gate.map_or(0.0, |g| g.0),
            _pad: [0; 3],
        };
        let params = self.ctx.upload_uniform("linear params", &params);
        let dummy = self.ctx.dummy_buffer();
        let (b, r) = (l.b.as_ref().unwrap_or(dummy), gate.map_or(dummy, |g| g.1));
        // Texture mirrors where the weights have one and X fits one.
        let tex = self
            .linear4_tex
            .as_ref()
            .zip(l.mirror.as_ref())
            .filter(|((_, log2), _)| mirror_fits(self.ctx.caps(), *log2, m * l.inp));
        let (kernel, bind) = match tex {
            Some(((kernel, log2), w_mirror)) => {
                let x_mirror = KvMirror::new(self.ctx.device(), x, m * l.inp, TensorIo::F32, *log2);
                x_mirror.record_copy(enc);
                let resources = vec![
                    params.as_entire_binding(),
                    wgpu::BindingResource::TextureView(&x_mirror.view),
                    wgpu::BindingResource::TextureView(&w_mirror.view),
                    b.as_entire_binding(),
                    r.as_entire_binding(),
                    y.as_entire_binding(),
                ];
                (kernel, kernel.bind_resources(self.ctx.device(), resources))
            }
            None => (
                kernel,
                kernel.bind(self.ctx.device(), &[&params, x, &l.w, b, r, y]),
            ),
        };
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("linear"),
            timestamp_writes: None,
        });
        kernel.dispatch_bound(&mut pass, &bind, (grid.0 as u32, grid.1 as u32));
        Ok(())
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
        let rows = batch * n_kv;
        let bytes = (4 * rows * c.kv_heads * c.head_dim()).max(4) as u64;
        let input = self.ctx.upload("context", context);
        let k = self.ctx.storage("encoder k", bytes);
        let v = self.ctx.storage("encoder v", bytes);
        self.ctx.submit(|enc| {
            self.record_linear(enc, &self.proj[1], &input, rows, &k, None)?;
            self.record_linear(enc, &self.proj[2], &input, rows, &v, None)
        })?;
        Ok(EncoderKv { k, v, batch, n_kv })
    }

    /// The attention problem of `forward` for `n_q` query rows.
    pub fn problem(&self, kv: &EncoderKv, n_q: usize, kv_lens: bool) -> AttentionProblem {
        let c = &self.config;
        let mut p = AttentionProblem::new(kv.batch, c.heads, n_q, kv.n_kv, c.head_dim())
            .with_kv_heads(c.kv_heads)
            .with_kv_lens(kv_lens);
        if let Some(s) = c.scale {
            p = p.with_scale(s);
        }
        p
    }

    /// x `[B, n_q, E]` attending to `kv` (per-batch key lengths optional):
    /// y `[B, n_q, E]`.
    pub fn forward(
        &self,
        x: &[f32],
        n_q: usize,
        kv: &EncoderKv,
        kv_lens: Option<&[u32]>,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let rows = kv.batch * n_q;
        if x.len() != rows * c.embed {
            return Err(Error::SizeMismatch {
                name: "x",
                got: x.len() as u64,
                expected: (rows * c.embed) as u64,
                shape: format!("[{}, {n_q}, {}]", kv.batch, c.embed),
            });
        }
        let p = self.problem(kv, n_q, kv_lens.is_some());
        let flash = FlashAttention::new(self.ctx, &p)?;
        let ctx = self.ctx;
        let xb = ctx.upload("x", x);
        let q = ctx.storage("q", (4 * p.q_len()).max(4) as u64);
        let o = ctx.storage("o", (4 * p.o_len()).max(4) as u64);
        let lse = ctx.storage("lse", (4 * p.lse_len()).max(4) as u64);
        let y = ctx.storage("y", (4 * x.len()).max(4) as u64);
        let lens = kv_lens.map(|l| ctx.upload("kv lens", l));
        let bufs = AttentionBuffers {
            q: &q,
            k: &kv.k,
            v: &kv.v,
            lens: lens.as_ref(),
            mask: None,
            o: &o,
            lse: &lse,
        };
        let gate = c.gate.map(|a| (a.tanh(), &xb));
        ctx.submit(|enc| {
            self.record_linear(enc, &self.proj[0], &xb, rows, &q, None)?;
            flash.record(enc, &bufs)?;
            self.record_linear(enc, &self.proj[3], &o, rows, &y, gate)
        })?;
        ctx.download(&y, x.len())
    }
}
