//! The layer's projections: device weights (in the layer's storage type,
//! with a texture mirror on CPU adapters), the two projection kernels, and
//! one prepared launch (params, bind group, grid) recorded any number of
//! times.

use std::sync::Arc;

use crate::context::{Binding, Context, Kernel, PipelineKey};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::flash::KvMirror;
use crate::plan::{mirror_fits, mirror_width_log2, simd_fits};
use crate::source::{LinearKernel, LinearSpec, Shader, TensorIo};

/// Uniform parameters of `linear_common.wgsl`.
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

/// The bindings of a projection kernel: params, X, W, bias, residual, Y,
/// with X and W read from their mirrors (read-only storage textures) where
/// the spec has them.
fn bindings(spec: &LinearSpec) -> [Binding; 6] {
    let xw = match spec.texture {
        None => Binding::Read,
        Some(_) => Binding::Mirror(TensorIo::mirror_of(spec.dtype).texture_format()),
    };
    [
        Binding::Uniform,
        xw,
        xw,
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
    ]
}

/// Most rows a projection runs as a thin product (a decode step's few
/// rows): one row of invocations per workgroup, each over a 4 × 4 block.
/// On lavapipe a Whisper-large step's query projection (1 × 1 280 × 1 280)
/// took 10.8 ms with 8 × 8 workgroups (15 of every 16 rows computed are
/// padding) and 1.5 ms with 16 × 1 (8 × 1 and 64 × 1 the same).
const THIN_ROWS: usize = 4;

/// Rows per lane of `linear_simd.wgsl`. On lavapipe, Stable Diffusion's
/// query projection (4 096 × 320 × 320) took 54, 43, 34 and 32 ms at TR 1,
/// 2, 4 and 8, Whisper-large's context projection 608, 434, 369 and 380 ms
/// (8 × 8 blocks: 85 ms and 966 ms): 4, with half TR 8's generated code.
const SIMD_ROWS: u32 = 4;

/// How one storage type's projections are planned on an adapter.
#[derive(Debug)]
pub(super) struct LinearKernels {
    dtype: Dtype,
    /// CPU adapters: X and W through texture mirrors this wide (log₂
    /// texels).
    texture: Option<u32>,
    /// CPU adapters with subgroups of one fixed size: `linear_simd.wgsl`
    /// with subgroups of this size.
    simd: Option<u32>,
    /// Invocations per workgroup of a thin product: at least the largest
    /// subgroup, so that no GPU subgroup runs half empty.
    thin: u32,
}

impl LinearKernels {
    pub(super) fn new(ctx: &Context, dtype: Dtype) -> Self {
        let caps = ctx.caps();
        let cpu = caps.cpu_plans();
        Self {
            dtype,
            texture: mirror_width_log2(caps).filter(|_| cpu),
            simd: (cpu && simd_fits(caps)).then_some(caps.subgroup_max_size),
            thin: caps.subgroup_max_size.clamp(16, 64),
        }
    }

    /// The kernel for `m` rows through `l`, reading mirrors where `texture`.
    fn spec(&self, l: &Linear, m: usize, texture: Option<u32>) -> LinearSpec {
        let kernel = match self.simd {
            _ if !blocked(l.out, l.inp) => LinearKernel::Tiled,
            _ if m <= THIN_ROWS => LinearKernel::Blocked {
                wg_x: self.thin,
                wg_y: 1,
            },
            Some(sg) => LinearKernel::Simd { sg, tr: SIMD_ROWS },
            None => LinearKernel::Blocked { wg_x: 8, wg_y: 8 },
        };
        LinearSpec {
            kernel,
            dtype: self.dtype,
            texture: texture.filter(|_| kernel != LinearKernel::Tiled),
        }
    }
}

/// One projection's device weights (W in the layer's storage type, the
/// bias in f32), and their texture mirror on CPU adapters (filled once).
#[derive(Debug)]
pub(super) struct Linear {
    w: wgpu::Buffer,
    b: Option<wgpu::Buffer>,
    /// The mirror and its width (log₂ texels).
    mirror: Option<(KvMirror, u32)>,
    pub(super) out: usize,
    pub(super) inp: usize,
}

impl Linear {
    /// Uploads W `[out, inp]` and its bias (the mirror is filled by
    /// [`Linear::record_fill`]).
    pub(super) fn new(
        ctx: &Context,
        kernels: &LinearKernels,
        name: &str,
        w: &[f32],
        b: Option<&[f32]>,
        out: usize,
        inp: usize,
    ) -> Self {
        let dtype = kernels.dtype;
        let w = ctx.upload(name, &dtype.encode(w));
        let mirror = kernels
            .texture
            .filter(|&log2| blocked(out, inp) && mirror_fits(ctx.caps(), log2, out * inp))
            .map(|log2| {
                (
                    KvMirror::new(
                        ctx.device(),
                        &w,
                        out * inp,
                        TensorIo::mirror_of(dtype),
                        log2,
                    ),
                    log2,
                )
            });
        Self {
            w,
            b: b.map(|b| ctx.upload(name, b)),
            mirror,
            out,
            inp,
        }
    }
}

impl Linear {
    /// Records the copy of W into its texture mirror, if it has one.
    pub(super) fn record_fill(&self, enc: &mut wgpu::CommandEncoder) {
        if let Some((m, _)) = &self.mirror {
            m.record_copy(enc);
        }
    }
}

/// Whether a projection runs register-blocked (`linear4.wgsl`).
pub(super) fn blocked(out: usize, inp: usize) -> bool {
    out.is_multiple_of(4) && inp.is_multiple_of(4)
}

/// One projection launch, y = x·Wᵀ + b (or the gated residual), prepared
/// once for fixed buffers: params, bind group, grid, and the mirror of X
/// where the kernel reads one (refilled at every record).
#[derive(Debug)]
pub(super) struct LinearLaunch {
    kernel: Arc<Kernel>,
    bind: wgpu::BindGroup,
    grid: (u32, u32),
    x_mirror: Option<KvMirror>,
}

impl LinearLaunch {
    /// Prepares y = x·Wᵀ + b for `m` rows of `x`, or with `gate` = (tanh α,
    /// r) y = r + tanh(α)·(x·Wᵀ + b).
    pub(super) fn new(
        ctx: &Context,
        kernels: &LinearKernels,
        l: &Linear,
        x: &wgpu::Buffer,
        m: usize,
        y: &wgpu::Buffer,
        gate: Option<(f32, &wgpu::Buffer)>,
    ) -> Result<Self> {
        let max = ctx.caps().max_workgroups_per_dim as usize;
        // Texture mirrors where the weights have one and X fits one.
        let texture = l
            .mirror
            .as_ref()
            .map(|&(_, log2)| log2)
            .filter(|&log2| mirror_fits(ctx.caps(), log2, m * l.inp));
        let spec = kernels.spec(l, m, texture);
        let kernel = ctx.pipeline(
            PipelineKey {
                shader: Shader::Linear(spec),
                entry: "main",
                spec: None,
            },
            &bindings(&spec),
            || spec.source(),
        )?;
        let (cols, rows) = spec.tile();
        let grid = (l.out.div_ceil(cols as usize), m.div_ceil(rows as usize));
        if grid.0 > max || grid.1 > max {
            return Err(Error::Unplannable {
                kernel: "linear",
                reason: format!(
                    "{m} rows × {} outputs need a {grid:?} grid, past the adapter's {max} \
                     workgroups per dimension",
                    l.out
                ),
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
        let params = ctx.upload_uniform("linear params", &params);
        let dummy = ctx.dummy_buffer();
        let (b, r) = (l.b.as_ref().unwrap_or(dummy), gate.map_or(dummy, |g| g.1));
        let grid = (grid.0 as u32, grid.1 as u32);
        Ok(match (texture, &l.mirror) {
            (Some(log2), Some((w_mirror, _))) => {
                let x_mirror = KvMirror::new(
                    ctx.device(),
                    x,
                    m * l.inp,
                    TensorIo::mirror_of(kernels.dtype),
                    log2,
                );
                let resources = vec![
                    params.as_entire_binding(),
                    wgpu::BindingResource::TextureView(&x_mirror.view),
                    wgpu::BindingResource::TextureView(&w_mirror.view),
                    b.as_entire_binding(),
                    r.as_entire_binding(),
                    y.as_entire_binding(),
                ];
                Self {
                    bind: kernel.bind_resources(ctx.device(), resources),
                    kernel,
                    grid,
                    x_mirror: Some(x_mirror),
                }
            }
            _ => Self {
                bind: kernel.bind(ctx.device(), &[&params, x, &l.w, b, r, y]),
                kernel,
                grid,
                x_mirror: None,
            },
        })
    }

    /// Records the launch (after the copy of X into its mirror, where the
    /// kernel reads one).
    pub(super) fn record(&self, enc: &mut wgpu::CommandEncoder) {
        if let Some(m) = &self.x_mirror {
            m.record_copy(enc);
        }
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("linear"),
            timestamp_writes: None,
        });
        self.kernel.dispatch_bound(&mut pass, &self.bind, self.grid);
    }
}
