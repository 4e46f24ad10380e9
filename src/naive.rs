//! The naive, unfused baseline (`shaders/naive.wgsl`): scores, softmax and
//! P·V as three dispatches with the n_q × n_kv score matrix in device memory.
//! It exists to be measured against, and to set the tests' tolerance.

use std::sync::Arc;

use crate::context::{Binding, Context, Kernel, PipelineKey};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::plan::fold_grid;
use crate::problem::AttentionProblem;
use crate::source::Shader;
use crate::tensor::{AttentionBuffers, AttentionOutput, AttentionTensors};

const WG: usize = 64;

/// Bind group 0 of `naive.wgsl`: params, q, k, v, kv_len, scores, o, lse.
const NAIVE_BINDINGS: [Binding; 8] = [
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
];

/// Uniform parameters of `naive.wgsl`, mirrored by its `Params` struct.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NaiveParams {
    /// Batch size B.
    pub batch: u32,
    /// Query heads H.
    pub heads: u32,
    /// Query heads per key/value head.
    pub group: u32,
    /// Query rows.
    pub n_q: u32,
    /// Key rows.
    pub n_kv: u32,
    /// 1 when per-batch key lengths are bound.
    pub has_kv_len: u32,
    /// Head dim of Q and K.
    pub d: u32,
    /// Head dim of V and O.
    pub dv: u32,
    /// Softmax scale.
    pub scale: f32,
    /// Workgroups along x for the scores kernel.
    pub grid_x_scores: u32,
    /// Workgroups along x for the softmax kernel.
    pub grid_x_rows: u32,
    /// Workgroups along x for the P·V kernel.
    pub grid_x_out: u32,
}

/// The three naive kernels, ready to run one problem.
#[derive(Debug)]
pub struct NaiveAttention<'c> {
    ctx: &'c Context,
    problem: AttentionProblem,
    kernels: [Arc<Kernel>; 3],
    grids: [(u32, u32); 3],
    params: wgpu::Buffer,
}

impl<'c> NaiveAttention<'c> {
    /// Validates the problem and that its score matrix fits one storage
    /// binding; compiles (or fetches) the three pipelines.
    pub fn new(ctx: &'c Context, problem: &AttentionProblem) -> Result<Self> {
        problem.validate()?;
        if (problem.layout, problem.out_layout) != (Layout::Bshd, Layout::Bshd) {
            return Err(Error::Unplannable {
                kernel: "naive",
                reason: "the naive baseline reads and writes BSHD only".into(),
            });
        }
        if problem.has_masking() {
            // The tolerance rule's baseline for these is the f32 CPU naive
            // computation (`reference::attention_f32`), see `check::check_with`.
            return Err(Error::Unsupported {
                kernel: "naive",
                feature: "query lengths, packed batches, windows, bias or masks".into(),
                hint: "it implements key lengths only; use reference::attention_f32 as the \
                       unfused baseline",
            });
        }
        if problem.dtype != Dtype::F32 {
            // The tolerance rule's half-precision baseline is this kernel on
            // inputs rounded to the storage type, with O rounded on the way
            // out (`check::check_with`): the same loads, f32 arithmetic and
            // store a half-storage naive kernel would do.
            return Err(Error::Unplannable {
                kernel: "naive",
                reason: format!(
                    "the naive baseline stores f32 only (problem stores {})",
                    problem.dtype
                ),
            });
        }
        problem.validate_limits(ctx.caps())?;
        let s_bytes = 4 * Self::score_elements(problem) as u64;
        ctx.caps().check_binding("naive score matrix", s_bytes)?;
        // The softmax kernel loops over a row three times; CPU drivers stop a
        // shader's loops after 65 535 iterations in total (see
        // `plan::loop_safe_keys`), which would silently truncate rows.
        if ctx.caps().info.device_type == wgpu::DeviceType::Cpu
            && 3 * problem.n_kv + problem.head_dim.max(problem.head_dim_v) > 60_000
        {
            return Err(Error::Unplannable {
                kernel: "naive",
                reason: format!(
                    "n_kv = {} needs more loop iterations per row than this CPU driver runs \
                     (65 535 per invocation)",
                    problem.n_kv
                ),
            });
        }
        let max = ctx.caps().max_workgroups_per_dim;
        let counts = [
            Self::score_elements(problem),
            problem.lse_len(),
            problem.o_len(),
        ];
        let mut grids = [(1, 1); 3];
        for (g, n) in grids.iter_mut().zip(counts) {
            *g = fold_grid(n.div_ceil(WG), max, "naive")?;
        }
        let pipelines = ["scores", "softmax", "pv"].map(|e| {
            ctx.pipeline(
                PipelineKey {
                    shader: Shader::Naive,
                    entry: e,
                    spec: None,
                },
                &NAIVE_BINDINGS,
                || Shader::Naive.wgsl().to_string(),
            )
        });
        let [a, b, c] = pipelines;
        let kernels = [a?, b?, c?];
        let params = NaiveParams {
            batch: problem.batch as u32,
            heads: problem.heads as u32,
            group: (problem.heads / problem.kv_heads) as u32,
            n_q: problem.n_q as u32,
            n_kv: problem.n_kv as u32,
            has_kv_len: problem.kv_lens as u32,
            d: problem.head_dim as u32,
            dv: problem.head_dim_v as u32,
            scale: problem.scale(),
            grid_x_scores: grids[0].0,
            grid_x_rows: grids[1].0,
            grid_x_out: grids[2].0,
        };
        Ok(Self {
            ctx,
            problem: *problem,
            kernels,
            grids,
            params: ctx.upload_uniform("naive params", &params),
        })
    }

    /// Elements of the materialised score matrix, B·H·n_q·n_kv.
    pub fn score_elements(p: &AttentionProblem) -> usize {
        p.batch * p.heads * p.n_q * p.n_kv
    }

    /// Device bytes the naive path allocates beyond the inputs and outputs.
    pub fn scratch_bytes(p: &AttentionProblem) -> u64 {
        4 * Self::score_elements(p) as u64
    }

    /// Records the three dispatches; `scores` must hold
    /// [`NaiveAttention::score_elements`] f32.
    pub fn record(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        bufs: &AttentionBuffers<'_>,
        scores: &wgpu::Buffer,
    ) -> Result<()> {
        self.record_timed(encoder, bufs, scores, None)
    }

    /// As [`NaiveAttention::record`], with optional timestamp writes around the
    /// one pass that holds all three dispatches.
    pub fn record_timed(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        bufs: &AttentionBuffers<'_>,
        scores: &wgpu::Buffer,
        timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        bufs.validate(&self.problem)?;
        if scores.size() < Self::scratch_bytes(&self.problem) {
            return Err(Error::SizeMismatch {
                name: "naive scores",
                got: scores.size() / 4,
                expected: Self::score_elements(&self.problem) as u64,
                shape: format!(
                    "[{}, {}, {}, {}]",
                    self.problem.batch, self.problem.heads, self.problem.n_q, self.problem.n_kv
                ),
            });
        }
        let kv = bufs.lens.unwrap_or(self.ctx.dummy_buffer());
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("naive"),
            timestamp_writes: timestamps,
        });
        for (kernel, grid) in self.kernels.iter().zip(self.grids) {
            kernel.dispatch(
                self.ctx.device(),
                &mut pass,
                &[
                    &self.params,
                    bufs.q,
                    bufs.k,
                    bufs.v,
                    kv,
                    scores,
                    bufs.o,
                    bufs.lse,
                ],
                grid,
            );
        }
        Ok(())
    }

    /// Simple API: uploads, runs, waits and downloads.
    pub fn run(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        kv_lens: Option<&[u32]>,
    ) -> Result<AttentionOutput> {
        let t = AttentionTensors::upload(self.ctx, &self.problem, q, k, v, kv_lens)?;
        let scores = self
            .ctx
            .storage("scores", Self::scratch_bytes(&self.problem));
        self.ctx
            .submit(|enc| self.record(enc, &t.buffers(), &scores))?;
        t.download(self.ctx)
    }
}
