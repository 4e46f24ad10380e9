//! A bound layer step: the attention plan, the buffers and every launch of
//! one query count on one [`EncoderKv`], prepared once and run for every
//! decode step.

use std::time::Instant;

use super::{CrossAttention, EncoderKv, LinearLaunch};
use crate::error::{Error, Result};
use crate::flash::{BoundAttention, FlashAttention};
use crate::mask::Masks;
use crate::probs::{AttentionProbs, ProbHeads};
use crate::tensor::AttentionBuffers;

/// Steps of a [`CrossAttention`] layer on one [`EncoderKv`], from
/// [`CrossAttention::bind`]: the plan, x, Q, O, LSE and y on the device, and
/// the launches (projections, the attention with its K/V mirrors filled
/// once) prepared for them. [`LayerStep::run`] uploads x, submits once and
/// downloads y.
#[derive(Debug)]
pub struct LayerStep<'a, 'c> {
    layer: &'a CrossAttention<'c>,
    flash: FlashAttention<'c>,
    attention: BoundAttention,
    x: wgpu::Buffer,
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    lens: Option<wgpu::Buffer>,
    o: wgpu::Buffer,
    lse: wgpu::Buffer,
    y: wgpu::Buffer,
    q_proj: LinearLaunch,
    o_proj: LinearLaunch,
    probs: Option<(AttentionProbs<'c>, wgpu::Buffer)>,
    /// B·n_q.
    rows: usize,
}

/// Wall-clock milliseconds of a step's three stages, each submitted and
/// waited for on its own (medians over the runs), from
/// [`LayerStep::times`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerTimes {
    /// x·W_Qᵀ + b_Q.
    pub q_proj_ms: f64,
    /// The fused attention (with its split combine, if planned).
    pub attention_ms: f64,
    /// O·W_Oᵀ + b_O (and the gate).
    pub o_proj_ms: f64,
}

impl<'a, 'c> LayerStep<'a, 'c> {
    pub(super) fn new(
        layer: &'a CrossAttention<'c>,
        n_q: usize,
        kv: &EncoderKv,
        kv_lens: Option<&[u32]>,
    ) -> Result<Self> {
        let (ctx, c) = (layer.ctx, &layer.config);
        let p = layer.problem(kv, n_q, kv_lens.is_some());
        let masks = Masks::kv_lens(kv_lens);
        p.validate()?;
        p.validate_masks(&masks)?;
        let rows = kv.batch * n_q;
        let x_bytes = (c.dtype.bytes() * rows * c.embed) as u64;
        ctx.caps().check_binding("x", x_bytes)?;
        let flash = FlashAttention::new(ctx, &p)?;
        let x = ctx.storage("x", x_bytes);
        let q = ctx.storage("q", p.tensor_bytes("q"));
        let o = ctx.storage("o", p.tensor_bytes("o"));
        let lse = ctx.storage("lse", p.tensor_bytes("lse"));
        let y = ctx.storage("y", x_bytes);
        let lens = kv_lens.map(|_| ctx.upload("kv lens", &masks.lens_words()));
        let (k, v) = (kv.k.clone(), kv.v.clone());
        let bufs = AttentionBuffers {
            q: &q,
            k: &k,
            v: &v,
            lens: lens.as_ref(),
            mask: None,
            o: &o,
            lse: &lse,
        };
        let attention = flash.bind_fixed_kv(&bufs)?;
        let kernels = &layer.kernels;
        let q_proj = LinearLaunch::new(ctx, kernels, &layer.proj[0], &x, rows, &q, None)?;
        let gate = c.gate.map(|a| (a.tanh(), &x));
        let o_proj = LinearLaunch::new(ctx, kernels, &layer.proj[3], &o, rows, &y, gate)?;
        Ok(Self {
            layer,
            flash,
            attention,
            x,
            q,
            k,
            v,
            lens,
            o,
            lse,
            y,
            q_proj,
            o_proj,
            probs: None,
            rows,
        })
    }

    /// Also writes the attention probabilities of `heads` at every
    /// [`LayerStep::run_probs`]: a second pass over the same Q and K from
    /// the fused launch's LSE (see [`AttentionProbs`]).
    pub fn with_probs(mut self, heads: ProbHeads) -> Result<Self> {
        let probs = AttentionProbs::new(&self.flash, heads)?;
        let buffer = self
            .layer
            .ctx
            .storage("probs", (4 * probs.len() as u64).max(4));
        self.probs = Some((probs, buffer));
        Ok(self)
    }

    /// The attention plan in use.
    pub fn attention(&self) -> &FlashAttention<'c> {
        &self.flash
    }

    /// The probabilities' shape (`[B, H', n_q, n_kv]`, or `[B, n_q, n_kv]`
    /// for the mean), if the step writes them.
    pub fn probs_shape(&self) -> Option<Vec<usize>> {
        self.probs.as_ref().map(|(p, _)| p.shape())
    }

    fn buffers(&self) -> AttentionBuffers<'_> {
        AttentionBuffers {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            lens: self.lens.as_ref(),
            mask: None,
            o: &self.o,
            lse: &self.lse,
        }
    }

    /// Checks x `[B, n_q, E]` and writes it to the device.
    fn write_x(&self, x: &[f32]) -> Result<()> {
        let c = &self.layer.config;
        let want = self.rows * c.embed;
        if x.len() != want {
            let p = self.flash.problem();
            return Err(Error::SizeMismatch {
                name: "x",
                got: x.len() as u64,
                expected: want as u64,
                shape: format!("[{}, {}, {}]", p.batch, p.n_q, c.embed),
            });
        }
        let ctx = self.layer.ctx;
        if want > 0 {
            ctx.queue().write_buffer(&self.x, 0, &c.dtype.encode(x));
        }
        Ok(())
    }

    fn download_y(&self) -> Result<Vec<f32>> {
        let (ctx, dtype) = (self.layer.ctx, self.layer.config.dtype);
        let n = self.rows * self.layer.config.embed;
        let bytes: Vec<u8> = ctx.download(&self.y, n * dtype.bytes())?;
        Ok(dtype.decode(&bytes, n))
    }

    /// x `[B, n_q, E]` → y `[B, n_q, E]`: one upload, one submission (the
    /// query projection, the attention, the output projection), one
    /// download.
    pub fn run(&self, x: &[f32]) -> Result<Vec<f32>> {
        self.write_x(x)?;
        self.layer.ctx.submit(|enc| {
            self.q_proj.record(enc);
            self.attention.record(enc);
            self.o_proj.record(enc);
            Ok(())
        })?;
        self.download_y()
    }

    /// As [`LayerStep::run`], with the probabilities asked for by
    /// [`LayerStep::with_probs`] (an error if it was not called): y, P.
    pub fn run_probs(&self, x: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let Some((probs, buffer)) = &self.probs else {
            return Err(Error::BadArgument {
                name: "probs".into(),
                reason: "this step writes no probabilities: call LayerStep::with_probs first"
                    .into(),
            });
        };
        self.write_x(x)?;
        let ctx = self.layer.ctx;
        ctx.submit(|enc| {
            self.q_proj.record(enc);
            self.attention.record(enc);
            probs.record(enc, &self.buffers(), buffer)?;
            self.o_proj.record(enc);
            Ok(())
        })?;
        Ok((self.download_y()?, ctx.download(buffer, probs.len())?))
    }

    /// Profiles a step on `x`: each stage submitted and waited for on its
    /// own, `runs` times after a warm-up; medians in milliseconds. (A real
    /// step submits the three together: [`LayerStep::run`].)
    pub fn times(&self, x: &[f32], runs: usize) -> Result<LayerTimes> {
        self.write_x(x)?;
        let ctx = self.layer.ctx;
        let stage = |f: &dyn Fn(&mut wgpu::CommandEncoder)| -> Result<f64> {
            ctx.submit(|enc| {
                f(enc);
                Ok(())
            })?;
            let mut ms = (0..runs.max(1))
                .map(|_| {
                    let t = Instant::now();
                    ctx.submit(|enc| {
                        f(enc);
                        Ok(())
                    })
                    .map(|_| t.elapsed().as_secs_f64() * 1e3)
                })
                .collect::<Result<Vec<f64>>>()?;
            ms.sort_by(f64::total_cmp);
            Ok(ms[ms.len() / 2])
        };
        Ok(LayerTimes {
            q_proj_ms: stage(&|enc| self.q_proj.record(enc))?,
            attention_ms: stage(&|enc| self.attention.record(enc))?,
            o_proj_ms: stage(&|enc| self.o_proj.record(enc))?,
        })
    }
}
