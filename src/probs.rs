//! Attention probabilities (`shaders/probs.wgsl`): P = softmax(Q·Kᵀ·scale +
//! bias) with every mask, length and window applied, written by a second
//! pass after the fused kernel (whose LSE says which rows see no key), for
//! the heads asked for or averaged over heads. Each row takes its own max
//! and sum over the scores it writes, so the largest P is exactly 1/l. The
//! attention output itself stays fused and O(n); only this pass writes
//! n_q × n_kv values per head.

use std::sync::Arc;

use crate::context::{Context, Kernel};
use crate::error::{Error, Result};
use crate::flash::{flash_buffers, FlashAttention};
use crate::mask::Masks;
use crate::plan::fold_grid;
use crate::problem::AttentionProblem;
use crate::tensor::{AttentionBuffers, AttentionOutput, AttentionTensors};

/// Which probabilities to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbHeads {
    /// Every head: `[B, H, n_q, n_kv]`.
    All,
    /// These heads, in this order: `[B, heads.len(), n_q, n_kv]` (e.g.
    /// Whisper's alignment heads).
    Heads(Vec<usize>),
    /// The mean over all heads: `[B, n_q, n_kv]` (torch MHA's
    /// `average_attn_weights=True`).
    Mean,
}

impl ProbHeads {
    /// The head indices written (empty for [`ProbHeads::Mean`]), checked
    /// against the problem: padded batches only, heads in range, at least
    /// one.
    pub fn validate(&self, p: &AttentionProblem) -> Result<Vec<u32>> {
        if p.varlen.is_some() {
            return Err(Error::Unsupported {
                kernel: "probs",
                feature: "packed sequences (varlen)".into(),
                hint: "run the probabilities on a padded batch",
            });
        }
        let heads: Vec<usize> = match self {
            ProbHeads::All => (0..p.heads).collect(),
            ProbHeads::Heads(h) => h.clone(),
            ProbHeads::Mean => return Ok(Vec::new()),
        };
        if heads.is_empty() {
            return Err(Error::BadArgument {
                name: "heads".into(),
                reason: "no head asked for; give at least one, or All or Mean".into(),
            });
        }
        if let Some(&h) = heads.iter().find(|&&h| h >= p.heads) {
            return Err(Error::BadArgument {
                name: "heads".into(),
                reason: format!("head {h} does not exist: the problem has {} heads", p.heads),
            });
        }
        Ok(heads.iter().map(|&h| h as u32).collect())
    }

    /// The shape written for `p`.
    pub fn shape(&self, p: &AttentionProblem) -> Vec<usize> {
        match self {
            ProbHeads::All => vec![p.batch, p.heads, p.n_q, p.n_kv],
            ProbHeads::Heads(h) => vec![p.batch, h.len(), p.n_q, p.n_kv],
            ProbHeads::Mean => vec![p.batch, p.n_q, p.n_kv],
        }
    }
}

/// The probabilities pass for one problem on one context: compiled once,
/// recorded after the fused launch that wrote the LSE it reads.
#[derive(Debug)]
pub struct AttentionProbs<'c> {
    ctx: &'c Context,
    problem: AttentionProblem,
    which: ProbHeads,
    kernel: Arc<Kernel>,
    params: wgpu::Buffer,
    heads: wgpu::Buffer,
    grid: (u32, u32),
    len: usize,
}

impl<'c> AttentionProbs<'c> {
    /// Plans and compiles the pass for what `flash` computes. Typed errors
    /// for packed sequences, heads out of range, and an output past the
    /// adapter's binding size or 2³² elements.
    pub fn new(flash: &FlashAttention<'c>, which: ProbHeads) -> Result<Self> {
        let ctx = flash.context();
        let p = *flash.problem();
        let heads = which.validate(&p)?;
        let len: usize = which.shape(&p).iter().product();
        let bytes = 4 * len as u64;
        if len as u64 > u32::MAX as u64 {
            return Err(Error::TooManyElements {
                name: "probs",
                elements: len as u64,
            });
        }
        ctx.caps().check_binding("probs", bytes)?;
        let spec = flash.plan().spec(&p).probs(heads.len() as u32);
        let kernel = ctx.flash_pipeline(spec)?;
        // The fused launch's params: the same strides, scale and masks.
        let params = flash.last_params().clone();
        // At least one word: a zero-sized binding is not allowed.
        let heads = ctx.upload("probs heads", &[heads, vec![0]].concat());
        // One invocation per written row.
        let rows = len / p.n_kv.max(1);
        let grid = fold_grid(
            rows.div_ceil(64),
            ctx.caps().max_workgroups_per_dim,
            "probs",
        )?;
        Ok(Self {
            ctx,
            problem: p,
            which,
            kernel,
            params,
            heads,
            grid,
            len,
        })
    }

    /// The shape written: `[B, H', n_q, n_kv]`, or `[B, n_q, n_kv]` for the
    /// mean.
    pub fn shape(&self) -> Vec<usize> {
        self.which.shape(&self.problem)
    }

    /// Elements written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is written (a zero-sized problem).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records the pass into the caller's encoder, after the fused launch
    /// that wrote `bufs.lse` from the same q, k and masks; `probs` must hold
    /// [`AttentionProbs::len`] f32 values.
    pub fn record(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        bufs: &AttentionBuffers<'_>,
        probs: &wgpu::Buffer,
    ) -> Result<()> {
        bufs.validate(&self.problem)?;
        if probs.size() < 4 * self.len as u64 {
            return Err(Error::SizeMismatch {
                name: "probs",
                got: probs.size() / 4,
                expected: self.len as u64,
                shape: format!("{:?}", self.shape()),
            });
        }
        if self.len == 0 {
            return Ok(());
        }
        let ctx = self.ctx;
        // The fused family's nine bindings (no state), then 9 and 10.
        let mut buffers = flash_buffers(ctx, &self.params, bufs, None).to_vec();
        buffers.extend([probs, &self.heads]);
        let resources = buffers.iter().map(|b| b.as_entire_binding()).collect();
        let bind = self.kernel.bind_resources(ctx.device(), resources);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("probs"),
            timestamp_writes: None,
        });
        self.kernel.dispatch_bound(&mut pass, &bind, self.grid);
        Ok(())
    }

    /// Simple API: uploads, runs the fused kernel and this pass, waits and
    /// downloads O, LSE and the probabilities.
    pub fn run_with(
        &self,
        flash: &FlashAttention<'_>,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        masks: &Masks<'_>,
    ) -> Result<(AttentionOutput, Vec<f32>)> {
        let ctx = self.ctx;
        let t = AttentionTensors::upload_with(ctx, &self.problem, q, k, v, masks)?;
        let probs = ctx.storage("probs", (4 * self.len as u64).max(4));
        ctx.submit(|enc| {
            flash.record(enc, &t.buffers())?;
            self.record(enc, &t.buffers(), &probs)
        })?;
        Ok((t.download(ctx)?, ctx.download(&probs, self.len)?))
    }
}
