//! Compile, bind, record, run: [`FlashAttention`] (one problem planned and
//! compiled) and [`BoundAttention`] (its launch with buffers bound once, for
//! decode loops).

use std::sync::Arc;

use crate::context::{Binding, Context, Kernel, PipelineKey};
use crate::error::{Error, Result};
use crate::mask::Masks;
use crate::params::FlashParams;
use crate::plan::{fold_grid, mirror_rows, plan, split_state_row_bytes, FlashPlan, TileOverride};
use crate::problem::AttentionProblem;
use crate::source::{FlashSpec, KernelTiles, KvAccess, TensorIo};
use crate::tensor::{AttentionBuffers, AttentionOutput, AttentionTensors};

/// The fused kernel, planned and compiled for one problem. Cheap to keep and
/// reuse: recording a launch costs one bind group per dispatch, or nothing
/// with [`FlashAttention::bind`].
#[derive(Debug)]
pub struct FlashAttention<'c> {
    ctx: &'c Context,
    problem: AttentionProblem,
    plan: FlashPlan,
    kernel: Arc<Kernel>,
    /// The split-KV combine, with its grid, when the plan has splits.
    combine: Option<(Arc<Kernel>, (u32, u32))>,
    /// One uniform buffer per key-range launch.
    params: Vec<wgpu::Buffer>,
    /// Softmax state carried between launches and the splits' partial states
    /// (absent for one unsplit launch).
    state: Option<wgpu::Buffer>,
}

impl<'c> FlashAttention<'c> {
    /// Validates, plans with the default heuristic and compiles (or fetches from
    /// the cache) the pipeline.
    pub fn new(ctx: &'c Context, problem: &AttentionProblem) -> Result<Self> {
        Self::with_tiles(ctx, problem, TileOverride::default())
    }

    /// As [`FlashAttention::new`], with tiles forced where `force` says.
    pub fn with_tiles(
        ctx: &'c Context,
        problem: &AttentionProblem,
        force: TileOverride,
    ) -> Result<Self> {
        problem.validate()?;
        problem.validate_limits(ctx.caps())?;
        let plan = plan(problem, ctx.caps(), force)?;
        let spec = plan.spec(problem);
        let kernel = ctx.flash_pipeline(spec)?;
        let combine = if plan.splits > 1 {
            let kernel = ctx.flash_pipeline(spec.combine())?;
            let rows_per_workgroup = KernelTiles::combine_rows(spec.dv) as usize;
            let grid = fold_grid(
                problem.lse_len().div_ceil(rows_per_workgroup),
                ctx.caps().max_workgroups_per_dim,
                "split_combine",
            )?;
            Some((kernel, grid))
        } else {
            None
        };
        let base = FlashParams::new(problem, &plan);
        let chunk = plan.chunk_keys as usize;
        let launches = plan.launches();
        let params = (0..launches)
            .map(|i| {
                let first = u32::from(i == 0) * FlashParams::FIRST_LAUNCH;
                let last = u32::from(i + 1 == launches) * FlashParams::LAST_LAUNCH;
                let p = FlashParams {
                    kv_begin: (i * chunk) as u32,
                    kv_end: ((i + 1) * chunk).min(plan.split_keys as usize) as u32,
                    flags: first | last,
                    ..base
                };
                ctx.upload_uniform("flash params", &p)
            })
            .collect();
        let state = plan.carries_state().then(|| {
            let rows = problem.lse_len() as u64 * plan.splits as u64;
            ctx.storage("flash state", rows * split_state_row_bytes(problem))
        });
        Ok(Self {
            ctx,
            problem: *problem,
            plan,
            kernel,
            combine,
            params,
            state,
        })
    }

    /// The plan in use.
    pub fn plan(&self) -> &FlashPlan {
        &self.plan
    }

    /// The uniform params of the last key-range launch (the split combine
    /// and the probabilities pass read them too).
    pub(crate) fn last_params(&self) -> &wgpu::Buffer {
        self.params.last().expect("at least one launch")
    }

    /// The context it runs on.
    pub fn context(&self) -> &'c Context {
        self.ctx
    }

    /// The problem planned for.
    pub fn problem(&self) -> &AttentionProblem {
        &self.problem
    }

    /// Validates `bufs` once and makes every bind group the launch needs: the
    /// persistent handle for running many steps against the same buffers
    /// (decode loops over encoder K/V). Record each step with
    /// [`BoundAttention::record`]; write new queries into `bufs.q` between
    /// steps with `queue.write_buffer` or the caller's own kernels. Where
    /// the plan reads texture mirrors (CPU adapters, [`KvAccess::Texture`])
    /// q, k and v are copied from, so they need `BufferUsages::COPY_SRC`
    /// ([`Error::BufferUsage`] otherwise).
    pub fn bind(&self, bufs: &AttentionBuffers<'_>) -> Result<BoundAttention> {
        self.bind_with(bufs, true)
    }

    /// As [`FlashAttention::bind`] for K/V that stay as they are while the
    /// handle lives: a cross-attention decode loop over one encoder
    /// sequence's K/V. Where the plan reads K/V through texture mirrors (CPU
    /// adapters, [`KvAccess::Texture`]) they are filled once, here, instead
    /// of at every record; writes to `bufs.k` or `bufs.v` after this call
    /// are not seen by the handle (bind again). Otherwise the same as
    /// [`FlashAttention::bind`].
    pub fn bind_fixed_kv(&self, bufs: &AttentionBuffers<'_>) -> Result<BoundAttention> {
        let bound = self.bind_with(bufs, false)?;
        if !bound.mirrors.is_empty() {
            self.ctx.submit(|enc| {
                bound.fill_mirrors(enc);
                Ok(())
            })?;
        }
        Ok(bound)
    }

    fn bind_with(&self, bufs: &AttentionBuffers<'_>, refresh: bool) -> Result<BoundAttention> {
        bufs.validate(&self.problem)?;
        // The plan's texture mirrors are filled by copies from these buffers.
        if let KvAccess::Texture { q, .. } = self.plan.kv {
            for (name, buf, mirrored) in
                [("q", bufs.q, q), ("k", bufs.k, true), ("v", bufs.v, true)]
            {
                if mirrored && !buf.usage().contains(wgpu::BufferUsages::COPY_SRC) {
                    return Err(Error::BufferUsage {
                        name,
                        missing: "COPY_SRC",
                        why: "the plan for this adapter copies it into a texture mirror before \
                              each launch (CPU adapters); create it with COPY_SRC, or plan with \
                              TileOverride { kv_texture: Some(false), .. }"
                            .to_string(),
                    });
                }
            }
        }
        let device = self.ctx.device();
        let buffers_of = |params| flash_buffers(self.ctx, params, bufs, self.state.as_ref());
        let (mirrors, q_mirror) = match self.plan.kv {
            KvAccess::Storage => (Vec::new(), None),
            KvAccess::Texture { width_log2, q } => {
                let io = self.plan.io;
                let mirror = |buf, len| KvMirror::new(device, buf, len, io, width_log2);
                (
                    vec![
                        mirror(bufs.k, self.problem.k_len()),
                        mirror(bufs.v, self.problem.v_len()),
                    ],
                    q.then(|| mirror(bufs.q, self.problem.q_len())),
                )
            }
        };
        let launches = self
            .params
            .iter()
            .map(|params| {
                // The nine buffers, then the mirrors' views where the plan has them.
                let mut resources: Vec<_> = buffers_of(params)
                    .iter()
                    .map(|b| b.as_entire_binding())
                    .collect();
                // Bindings 9 and 10 (K, V), then 11 (Q) where mirrored.
                resources.extend(
                    mirrors
                        .iter()
                        .chain(&q_mirror)
                        .map(|m| wgpu::BindingResource::TextureView(&m.view)),
                );
                self.kernel.bind_resources(device, resources)
            })
            .collect();
        let combine = self.combine.as_ref().map(|(kernel, grid)| {
            let bind = kernel.bind(device, &buffers_of(self.last_params()));
            (kernel.clone(), bind, *grid)
        });
        Ok(BoundAttention {
            kernel: self.kernel.clone(),
            grid: self.plan.grid,
            mirrors,
            q_mirror,
            refresh,
            launches,
            combine,
        })
    }

    /// Records the launch into the caller's encoder (integration API). Nothing
    /// is submitted.
    pub fn record(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        bufs: &AttentionBuffers<'_>,
    ) -> Result<()> {
        self.record_timed(encoder, bufs, None)
    }

    /// As [`FlashAttention::record`], with optional timestamp writes around the pass.
    pub fn record_timed(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        bufs: &AttentionBuffers<'_>,
        timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        self.bind(bufs)?.record_timed(encoder, timestamps);
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
        self.run_with(q, k, v, &Masks::kv_lens(kv_lens))
    }

    /// [`FlashAttention::run`] with lengths, packed-sequence offsets, bias
    /// or mask, as the problem declares.
    pub fn run_with(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        masks: &Masks<'_>,
    ) -> Result<AttentionOutput> {
        let t = AttentionTensors::upload_with(self.ctx, &self.problem, q, k, v, masks)?;
        self.ctx.submit(|enc| self.record(enc, &t.buffers()))?;
        t.download(self.ctx)
    }
}

/// Bindings 0–8 of the fused family (`FLASH_BINDINGS`): the launch's
/// params, the caller's tensors, and the split / carried `state` (dummies
/// where there are no lengths, no mask or no state).
pub(crate) fn flash_buffers<'a>(
    ctx: &'a Context,
    params: &'a wgpu::Buffer,
    bufs: &AttentionBuffers<'a>,
    state: Option<&'a wgpu::Buffer>,
) -> [&'a wgpu::Buffer; 9] {
    [
        params,
        bufs.q,
        bufs.k,
        bufs.v,
        bufs.lens.unwrap_or(ctx.dummy_buffer()),
        bufs.o,
        bufs.lse,
        state.unwrap_or(ctx.dummy_rw_buffer()),
        bufs.mask.unwrap_or(ctx.dummy_buffer()),
    ]
}

/// A [`FlashAttention`] launch with its buffers bound: validated once,
/// recorded any number of times with no allocation and no checks.
#[derive(Debug)]
pub struct BoundAttention {
    kernel: Arc<Kernel>,
    grid: (u32, u32),
    /// Texture mirrors of K and V (plans with [`KvAccess::Texture`]).
    mirrors: Vec<KvMirror>,
    /// The texture mirror of Q, where the plan reads one: filled at every
    /// record, also for K/V bound once.
    q_mirror: Option<KvMirror>,
    /// Whether each record copies K/V into the mirrors ([`FlashAttention::bind`])
    /// or they were filled once ([`FlashAttention::bind_fixed_kv`]).
    refresh: bool,
    launches: Vec<wgpu::BindGroup>,
    combine: Option<(Arc<Kernel>, wgpu::BindGroup, (u32, u32))>,
}

impl BoundAttention {
    /// Records the copies of K and V into their texture mirrors.
    fn fill_mirrors(&self, encoder: &mut wgpu::CommandEncoder) {
        for m in &self.mirrors {
            m.record_copy(encoder);
        }
    }

    /// Records the launch (the copies into the K/V texture mirrors where the
    /// plan reads them, every key-range dispatch, then the split-KV combine if
    /// the plan has splits) into the caller's encoder, in one compute pass
    /// after the copies.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        self.record_timed(encoder, None);
    }

    /// As [`BoundAttention::record`], with optional timestamp writes around
    /// the pass (and the mirror copies before it: the beginning timestamp is
    /// written by an empty pass ahead of them).
    pub fn record_timed(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        mut timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) {
        let copies = self.q_mirror.is_some() || (self.refresh && !self.mirrors.is_empty());
        if copies {
            if let Some(ts) = timestamps.as_mut() {
                encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("flash_attention start"),
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: ts.query_set,
                        beginning_of_pass_write_index: ts.beginning_of_pass_write_index.take(),
                        end_of_pass_write_index: None,
                    }),
                });
            }
            if self.refresh {
                self.fill_mirrors(encoder);
            }
            if let Some(q) = &self.q_mirror {
                q.record_copy(encoder);
            }
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("flash_attention"),
            timestamp_writes: timestamps,
        });
        // Dispatches in one pass are ordered and see each other's writes.
        for bind in &self.launches {
            self.kernel.dispatch_bound(&mut pass, bind, self.grid);
        }
        if let Some((kernel, bind, grid)) = &self.combine {
            kernel.dispatch_bound(&mut pass, bind, *grid);
        }
    }
}

/// A texture holding a copy of a K or V buffer's bytes as they are
/// ([`KvAccess::Texture`]): `2^width_log2` texels per row, one texel per 4
/// elements, as many rows as the tensor fills.
#[derive(Debug)]
pub(crate) struct KvMirror {
    src: wgpu::Buffer,
    texture: wgpu::Texture,
    pub(crate) view: wgpu::TextureView,
    /// Texels of the tensor.
    texels: u32,
    width: u32,
    texel_bytes: u32,
}

impl KvMirror {
    pub(crate) fn new(
        device: &wgpu::Device,
        src: &wgpu::Buffer,
        elements: usize,
        io: TensorIo,
        width_log2: u32,
    ) -> Self {
        let format = io.texture_format();
        let texel_bytes = format.block_copy_size(None).unwrap_or(16);
        let width = 1u32 << width_log2;
        // The planner checked that the rows fit the adapter's texture size.
        let texels = (elements / 4) as u32;
        let texture = device.create_texture(&wgpu::TextureDescriptor {
            label: Some("xattn kv mirror"),
            size: wgpu::Extent3d {
                width,
                height: mirror_rows(texels as usize, width_log2) as u32,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format,
            usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
        Self {
            src: src.clone(),
            texture,
            view,
            texels,
            width,
            texel_bytes,
        }
    }

    /// The buffer-to-texture copies: the full rows, then the last part row.
    pub(crate) fn record_copy(&self, encoder: &mut wgpu::CommandEncoder) {
        let rows = self.texels / self.width;
        let rest = self.texels % self.width;
        let row_bytes = self.width * self.texel_bytes;
        let mut copy = |y: u32, width: u32, height: u32| {
            encoder.copy_buffer_to_texture(
                wgpu::TexelCopyBufferInfo {
                    buffer: &self.src,
                    layout: wgpu::TexelCopyBufferLayout {
                        offset: u64::from(y) * u64::from(row_bytes),
                        bytes_per_row: Some(row_bytes),
                        rows_per_image: Some(height),
                    },
                },
                wgpu::TexelCopyTextureInfo {
                    texture: &self.texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d { x: 0, y, z: 0 },
                    aspect: wgpu::TextureAspect::All,
                },
                wgpu::Extent3d {
                    width,
                    height,
                    depth_or_array_layers: 1,
                },
            );
        };
        if rows > 0 {
            copy(0, self.width, rows);
        }
        if rest > 0 {
            copy(rows, rest, 1);
        }
    }
}

/// Bind group 0 of the fused family: params, q, k, v, lens, o, lse, state,
/// mask: 8 storage buffers, WebGPU's default limit.
const FLASH_BINDINGS: [Binding; 9] = [
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::Read,
];

impl Context {
    /// The fused-family pipeline for `spec`, compiled on first use.
    pub(crate) fn flash_pipeline(&self, spec: FlashSpec) -> Result<Arc<Kernel>> {
        let mut bindings = FLASH_BINDINGS.to_vec();
        if let KernelTiles::Probs { .. } = spec.tiles {
            // Binding 9 the probabilities, 10 the heads written.
            bindings.extend([Binding::ReadWrite, Binding::Read]);
        }
        if let KvAccess::Texture { .. } = spec.kv {
            // Bindings 9 and 10 (KvAccess::TEXTURE_BINDINGS), and 11 for Q.
            let mirrors = if spec.kv.q_mirror() { 3 } else { 2 };
            bindings.extend(vec![Binding::Mirror(spec.io.texture_format()); mirrors]);
        }
        self.pipeline(
            PipelineKey {
                shader: spec.shader(),
                entry: "main",
                spec: Some(spec),
            },
            &bindings,
            || spec.source(),
        )
    }

    /// Runs the fused kernel on host data: `softmax(Q·Kᵀ·scale)·V` with LSE.
    /// Shapes as in [`AttentionProblem`]; `kv_lens` iff `problem.kv_lens`.
    pub fn attention(
        &self,
        problem: &AttentionProblem,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        kv_lens: Option<&[u32]>,
    ) -> Result<AttentionOutput> {
        FlashAttention::new(self, problem)?.run(q, k, v, kv_lens)
    }
}
