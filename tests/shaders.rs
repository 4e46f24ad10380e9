//! Every shader parses and validates with naga for each specialisation used,
//! translates to every backend's shader language (SPIR-V for Vulkan, MSL for
//! Metal, HLSL for DX12, GLSL for GL) that can run it, and each host params
//! struct matches its WGSL mirror field by field.

use std::mem::{offset_of, size_of};

use rayon::prelude::*;

use xattn::wgpu;

use xattn::check::grid;
use xattn::{
    plan, AttentionProblem, DeviceCaps, Dtype, FlashParams, FlashSpec, FlashVariant, KernelTiles,
    KvAccess, LinearKernel, LinearSpec, MaskShape, NaiveParams, Shader, TensorIo, TileOverride,
    Window,
};

fn validate(src: &str, what: &str) -> naga::Module {
    validated(src, what).0
}

fn validated(src: &str, what: &str) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(src)));
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(src)));
    (module, info)
}

/// The backends wgpu runs on, and whether wgpu exposes f16 and subgroups
/// there (GL: neither, so the planner never picks a variant that needs them:
/// f32 or packed f16, and no simd kernel, as the planner tests check).
#[derive(Debug, Clone, Copy)]
enum Backend {
    Vulkan,
    Metal,
    Dx12,
    Gl,
}

impl Backend {
    const ALL: [Backend; 4] = [Backend::Vulkan, Backend::Metal, Backend::Dx12, Backend::Gl];

    fn runs(self, needs_f16: bool, needs_subgroups: bool) -> bool {
        !matches!(self, Backend::Gl) || !(needs_f16 || needs_subgroups)
    }

    /// Writes the validated `module` out in the backend's language: SPIR-V
    /// 1.3 (subgroup operations), MSL 2.4, HLSL shader model 6.2 (f16, wave
    /// operations), GLSL ES 3.10. A construct the backend cannot express is
    /// the writer's error.
    fn translate(self, module: &naga::Module, info: &naga::valid::ModuleInfo, what: &str) {
        fn failed<T>(what: &str, backend: Backend, e: impl std::fmt::Display) -> T {
            panic!("{what} to {backend:?}: {e}")
        }
        match self {
            Backend::Vulkan => {
                let options = naga::back::spv::Options {
                    lang_version: (1, 3),
                    ..Default::default()
                };
                let pipeline = naga::back::spv::PipelineOptions {
                    shader_stage: naga::ShaderStage::Compute,
                    entry_point: "main".into(),
                };
                let words = naga::back::spv::write_vec(module, info, &options, Some(&pipeline))
                    .unwrap_or_else(|e| failed(what, self, e));
                assert_eq!(words.first(), Some(&0x0723_0203), "SPIR-V magic");
            }
            Backend::Metal => {
                let options = naga::back::msl::Options {
                    lang_version: (2, 4),
                    ..Default::default()
                };
                let (msl, _) = naga::back::msl::write_string(
                    module,
                    info,
                    &options,
                    &naga::back::msl::PipelineOptions::default(),
                )
                .unwrap_or_else(|e| failed(what, self, e));
                assert!(msl.contains("kernel void main_"), "{what}: no MSL kernel");
            }
            Backend::Dx12 => {
                let options = naga::back::hlsl::Options {
                    shader_model: naga::back::hlsl::ShaderModel::V6_2,
                    ..Default::default()
                };
                let pipeline = naga::back::hlsl::PipelineOptions {
                    entry_point: Some((naga::ShaderStage::Compute, "main".into())),
                };
                let mut hlsl = String::new();
                naga::back::hlsl::Writer::new(&mut hlsl, &options, &pipeline)
                    .write(module, info, None)
                    .unwrap_or_else(|e| failed(what, self, e));
                assert!(hlsl.contains("[numthreads("), "{what}: no HLSL kernel");
            }
            Backend::Gl => {
                let pipeline = naga::back::glsl::PipelineOptions {
                    shader_stage: naga::ShaderStage::Compute,
                    entry_point: "main".into(),
                    multiview: None,
                };
                let options = naga::back::glsl::Options::default();
                let mut glsl = String::new();
                naga::back::glsl::Writer::new(
                    &mut glsl,
                    module,
                    info,
                    &options,
                    &pipeline,
                    naga::proc::BoundsCheckPolicies::default(),
                )
                .and_then(|mut w| w.write().map(|_| ()))
                .unwrap_or_else(|e| failed(what, self, e));
                assert!(
                    glsl.contains("layout(local_size_x"),
                    "{what}: no GLSL kernel"
                );
            }
        }
    }
}

/// `validate`, then every backend that can run the variant translates it.
fn validate_everywhere(src: &str, what: &str, needs_f16: bool, needs_subgroups: bool) {
    let (module, info) = validated(src, what);
    for backend in Backend::ALL {
        if backend.runs(needs_f16, needs_subgroups) {
            backend.translate(&module, &info, what);
        }
    }
}

fn caps(device_type: wgpu::DeviceType, workgroup_bytes: u32, subgroup: u32) -> DeviceCaps {
    let mut c =
        DeviceCaps::webgpu_defaults(wgpu::AdapterInfo::new(device_type, wgpu::Backend::Noop));
    c.max_workgroup_storage = workgroup_bytes;
    c.subgroups = subgroup > 0;
    c.subgroup_min_size = subgroup;
    c.subgroup_max_size = subgroup;
    c
}

#[test]
fn flash_family_validates_for_every_planned_specialisation() {
    let devices = [
        DeviceCaps::lavapipe(2),
        caps(wgpu::DeviceType::Cpu, 32768, 0),
        DeviceCaps::discrete_gpu(32),
        DeviceCaps::discrete_gpu(64),
        caps(wgpu::DeviceType::DiscreteGpu, 16384, 0),
    ];
    let extra = [
        AttentionProblem::new(1, 1, 1, 1, 1),
        AttentionProblem::new(1, 1, 1, 1, 256),
        AttentionProblem::new(1, 1, 4096, 77, 40),
    ];
    // Every problem plain, and with each mask kind, both together, causal
    // with a window.
    let masked = |p: AttentionProblem| {
        [
            p,
            p.with_bias(MaskShape::full()).with_causal(),
            p.with_bool_mask(MaskShape::default()),
            p.with_bias(MaskShape::default())
                .with_bool_mask(MaskShape::full()),
            p.with_window(Window::sliding(3, 2))
                .with_causal()
                .with_q_lens(true),
        ]
    };
    let problems: Vec<AttentionProblem> = grid(false)
        .into_iter()
        .map(|c| c.problem)
        .chain(extra)
        .flat_map(masked)
        .collect();
    let mut seen: std::collections::HashSet<FlashSpec> = Default::default();
    let mut combines: std::collections::HashSet<FlashSpec> = Default::default();
    let mut work = Vec::new();
    for dev in &devices {
        for p in &problems {
            let mut variants = vec![
                (None, None),
                (Some(FlashVariant::Tiled), None),
                (Some(FlashVariant::Decode), None),
                (Some(FlashVariant::Lanes), None),
            ];
            if dev.subgroups {
                // The GPU decode kernel's workgroup-memory reductions too.
                variants.push((Some(FlashVariant::Lanes), Some(false)));
            }
            if dev.subgroups && dev.subgroup_min_size == dev.subgroup_max_size {
                variants.push((Some(FlashVariant::Simd), None));
            }
            for (variant, subgroups) in variants {
                let force = TileOverride {
                    variant,
                    subgroups,
                    ..Default::default()
                };
                let plan = plan(p, dev, force).unwrap();
                assert!(plan.workgroup_bytes <= dev.max_workgroup_storage);
                assert!(plan.wg <= dev.max_invocations);
                // Every storage form: f32, f16, f16 in u32 words, bf16.
                for io in [
                    TensorIo::F32,
                    TensorIo::F16,
                    TensorIo::F16Packed,
                    TensorIo::Bf16,
                ] {
                    let spec = FlashSpec { io, ..plan.spec(p) };
                    let f16 = io == TensorIo::F16;
                    if seen.insert(spec) {
                        work.push((spec, f16, spec.uses_subgroups()));
                    }
                    if combines.insert(spec.combine()) {
                        work.push((spec.combine(), f16, false));
                    }
                    // The probabilities pass, for chosen heads and the mean.
                    for heads in [0, 3] {
                        if combines.insert(spec.probs(heads)) {
                            work.push((spec.probs(heads), f16, false));
                        }
                    }
                }
            }
        }
    }
    // Naga's parse, validation and four writers, over both cores.
    work.par_iter().for_each(|(spec, f16, simd)| {
        validate_everywhere(&spec.source(), &format!("{spec:?}"), *f16, *simd);
    });
    assert!(seen.len() > 10);
    for (what, planned) in [
        ("bias", seen.iter().any(|s| s.bias && !s.bool_mask)),
        ("boolean mask", seen.iter().any(|s| s.bool_mask && !s.bias)),
        ("bias and mask", seen.iter().any(|s| s.bias && s.bool_mask)),
        ("window", seen.iter().any(|s| s.window)),
    ] {
        assert!(planned, "{what} never planned");
    }
    for shader in [
        Shader::FlashSimd,
        Shader::FlashForward,
        Shader::FlashDecode,
        Shader::FlashLanes,
    ] {
        assert!(
            seen.iter().any(|s| s.shader() == shader),
            "{shader:?} never planned"
        );
    }
    // The GPU decode kernel with both kinds of reduction.
    for sub in [false, true] {
        assert!(
            seen.iter().any(|s| matches!(
                s.tiles,
                KernelTiles::Lanes { subgroups, .. } if subgroups == sub
            )),
            "lanes with subgroups {sub} never planned"
        );
    }
    // K/V from storage buffers and from texture mirrors (the simd kernel
    // where the head dims are multiples of 4).
    for texture in [false, true] {
        assert!(
            seen.iter()
                .any(|s| matches!(s.kv, KvAccess::Texture { .. }) == texture),
            "K/V texture mirrors planned: {texture} never seen"
        );
    }
    assert!(combines.iter().any(|s| s.shader() == Shader::Probs));
    // Both tensor access forms of flash_io.wgsl, for every tensor.
    for vec4 in [false, true] {
        assert!(combines.iter().any(|s| s.d.is_multiple_of(4) == vec4));
        assert!(combines.iter().any(|s| s.dv.is_multiple_of(4) == vec4));
    }
}

#[test]
fn naive_and_probe_validate() {
    validate(Shader::Naive.wgsl(), "naive");
    validate(Shader::Probe.wgsl(), "probe");
    // The layer's projections: no f16, no subgroups, so every backend.
    // The projections: every kernel in every storage type, through storage
    // buffers and texture mirrors (f16 and bf16 as u32 words: no f16
    // capability; the simd kernel needs subgroups).
    let tiled = LinearSpec {
        kernel: LinearKernel::Tiled,
        dtype: Dtype::F32,
        texture: None,
    };
    validate_everywhere(&tiled.source(), "linear", false, false);
    for kernel in [
        LinearKernel::Blocked { wg_x: 8, wg_y: 8 },
        LinearKernel::Blocked { wg_x: 16, wg_y: 1 },
        LinearKernel::Simd { sg: 8, tr: 2 },
    ] {
        for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
            for texture in [None, Some(14)] {
                let spec = LinearSpec {
                    kernel,
                    dtype,
                    texture,
                };
                let simd = matches!(kernel, LinearKernel::Simd { .. });
                validate_everywhere(&spec.source(), &format!("{spec:?}"), false, simd);
            }
        }
    }
}

/// (name, offset) of each member of the WGSL struct `Params`, and its size.
fn wgsl_layout(module: &naga::Module) -> (Vec<(String, u32)>, u32) {
    for (_, ty) in module.types.iter() {
        if ty.name.as_deref() == Some("Params") {
            if let naga::TypeInner::Struct { members, span } = &ty.inner {
                return (
                    members
                        .iter()
                        .map(|m| (m.name.clone().unwrap(), m.offset))
                        .collect(),
                    *span,
                );
            }
        }
    }
    panic!("no struct Params");
}

macro_rules! layout {
    ($t:ty, $($f:ident),* $(,)?) => {
        vec![$((stringify!($f).to_string(), offset_of!($t, $f) as u32)),*]
    };
}

#[test]
fn flash_params_match_the_wgsl_struct() {
    let spec = FlashSpec {
        d: 64,
        dv: 64,
        io: TensorIo::F32,
        kv: KvAccess::Storage,
        bias: true,
        bool_mask: true,
        window: true,
        skip: true,
        tiles: KernelTiles::Tiled {
            br: 64,
            bc: 16,
            tr: 4,
            wg: 16,
        },
    };
    let module = validate(&spec.source(), "flash");
    let (members, span) = wgsl_layout(&module);
    let host = layout!(
        FlashParams,
        batch,
        heads,
        kv_heads,
        n_q,
        n_kv,
        seq_flags,
        q_blocks,
        grid_x,
        q_stride_b,
        q_stride_s,
        q_stride_h,
        k_stride_b,
        k_stride_s,
        k_stride_h,
        v_stride_b,
        v_stride_s,
        v_stride_h,
        o_stride_b,
        o_stride_s,
        o_stride_h,
        scale_log2,
        group,
        kv_begin,
        kv_end,
        flags,
        splits,
        split_keys,
        kv_lens_at,
        q_lens_at,
        cu_q_at,
        cu_k_at,
        win_left,
        win_right,
        bias_stride_b,
        bias_stride_h,
        bias_stride_q,
        bits_at,
        bits_stride_b,
        bits_stride_h,
        bits_stride_q,
        lse_stride_b,
        lse_stride_h,
        lse_rows,
        grid_stride,
        grid_rows,
        one,
        heads_inner,
        _pad2
    );
    assert_eq!(members, host);
    assert_eq!(span as usize, size_of::<FlashParams>());
    assert_eq!(
        size_of::<FlashParams>() % 16,
        0,
        "uniform buffers want 16-byte multiples"
    );
}

#[test]
fn naive_params_match_the_wgsl_struct() {
    let module = validate(Shader::Naive.wgsl(), "naive");
    let (members, span) = wgsl_layout(&module);
    let host = layout!(
        NaiveParams,
        batch,
        heads,
        group,
        n_q,
        n_kv,
        has_kv_len,
        d,
        dv,
        scale,
        grid_x_scores,
        grid_x_rows,
        grid_x_out
    );
    assert_eq!(members, host);
    assert_eq!(span as usize, size_of::<NaiveParams>());
}
