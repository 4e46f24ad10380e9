//! The layer's projections: device weights (in the layer's storage type,
//! with a texture mirror on CPU adapters), the two projection kernels, and
//! one prepared launch (params, bind group, grid) recorded any number of
//! times.

use std::sync::Arc;

use crate::context::{Binding, Context, Kernel, PipelineKey};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::flash::KvMirror;
use crate::plan::{mirror_fits, mirror_width_log2};
use crate::source::{linear4_source, linear_source, Shader, TensorIo};

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

/// The mirrors' texture form for a storage type: the same bytes, 4
/// elements per texel (rgba16float for f16, rgba16uint for bf16).
fn mirror_io(dtype: Dtype) -> TensorIo {
    match dtype {
        Dtype::F32 => TensorIo::F32,
        Dtype::F16 => TensorIo::F16Packed,
        Dtype::Bf16 => TensorIo::Bf16,
    }
}

/// The bindings of a projection kernel: params, X, W, bias, residual, Y,
/// with X and W as textures (float, or uint for bf16) where `texture`.
fn bindings(texture: Option<Dtype>) -> [Binding; 6] {
    let xw = match texture {
        None => Binding::Read,
        Some(d) => Binding::Texture {
            uint: d == Dtype::Bf16,
        },
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

/// The projection kernels of one storage type.
#[derive(Debug)]
pub(super) struct LinearKernels {
    dtype: Dtype,
    /// `linear.wgsl` (any width; f32 only).
    tiled: Option<Arc<Kernel>>,
    /// `linear4.wgsl` (K and N ≡ 0 mod 4).
    blocked: Arc<Kernel>,
    /// `linear4.wgsl` through texture mirrors and their width (log₂
    /// texels), on CPU adapters.
    texture: Option<(Arc<Kernel>, u32)>,
}

impl LinearKernels {
    pub(super) fn new(ctx: &Context, dtype: Dtype) -> Result<Self> {
        let compile = |shader: Shader, tex: Option<u32>| {
            let texture = tex.map(|_| dtype);
            ctx.pipeline(
                PipelineKey {
                    shader,
                    entry: "main",
                    spec: None,
                },
                &bindings(texture),
                || match shader {
                    Shader::Linear => linear_source(),
                    _ => linear4_source(dtype, tex),
                },
            )
        };
        let tiled = match dtype {
            Dtype::F32 => Some(compile(Shader::Linear, None)?),
            _ => None,
        };
        let blocked = compile(Shader::Linear4(dtype), None)?;
        // CPU adapters read X and W through texture mirrors (straight-line
        // gathers instead of per-lane loads).
        let texture = match mirror_width_log2(ctx.caps()).filter(|_| ctx.caps().cpu_plans()) {
            Some(log2) => Some((compile(Shader::Linear4Tex(dtype), Some(log2))?, log2)),
            None => None,
        };
        Ok(Self {
            dtype,
            tiled,
            blocked,
            texture,
        })
    }
}

/// One projection's device weights (W in the layer's storage type, the
/// bias in f32), and their texture mirror on CPU adapters (filled once).
#[derive(Debug)]
pub(super) struct Linear {
    w: wgpu::Buffer,
    b: Option<wgpu::Buffer>,
    mirror: Option<KvMirror>,
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
            .as_ref()
            .filter(|&&(_, log2)| blocked(out, inp) && mirror_fits(ctx.caps(), log2, out * inp))
            .map(|&(_, log2)| KvMirror::new(ctx.device(), &w, out * inp, mirror_io(dtype), log2));
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
        if let Some(m) = &self.mirror {
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
        // Register-blocked where the widths allow vec4 rows: 32 × 32
        // outputs per workgroup; else 16 × 16 tiles (f32 only: the layer
        // refuses other storage types at such widths).
        let (kernel, side) = match &kernels.tiled {
            Some(tiled) if !blocked(l.out, l.inp) => (tiled, 16),
            _ => (&kernels.blocked, 32),
        };
        let grid = (l.out.div_ceil(side), m.div_ceil(side));
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
        // Texture mirrors where the weights have one and X fits one.
        let tex = kernels
            .texture
            .as_ref()
            .zip(l.mirror.as_ref())
            .filter(|((_, log2), _)| mirror_fits(ctx.caps(), *log2, m * l.inp));
        Ok(match tex {
            Some(((kernel, log2), w_mirror)) => {
                let x_mirror =
                    KvMirror::new(ctx.device(), x, m * l.inp, mirror_io(kernels.dtype), *log2);
                let resources = vec![
                    params.as_entire_binding(),
                    wgpu::BindingResource::TextureView(&x_mirror.view),
                    wgpu::BindingResource::TextureView(&w_mirror.view),
                    b.as_entire_binding(),
                    r.as_entire_binding(),
                    y.as_entire_binding(),
                ];
                Self {
                    kernel: kernel.clone(),
                    bind: kernel.bind_resources(ctx.device(), resources),
                    grid: (grid.0 as u32, grid.1 as u32),
                    x_mirror: Some(x_mirror),
                }
            }
            None => Self {
                kernel: kernel.clone(),
                bind: kernel.bind(ctx.device(), &[&params, x, &l.w, b, r, y]),
                grid: (grid.0 as u32, grid.1 as u32),
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
