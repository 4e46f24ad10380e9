//! Every shader parses and validates with naga for each specialisation used,
//! and each host params struct matches its WGSL mirror field by field.

use std::mem::{offset_of, size_of};

use xattn::wgpu;

use xattn::attention::{flash_source, FlashVariant, SPLIT_COMBINE_WGSL};
use xattn::check::grid;
use xattn::naive::NAIVE_WGSL;
use xattn::{
    plan, AttentionProblem, DeviceCaps, FlashParams, MaskShape, NaiveParams, TileOverride, Window,
};

fn validate(src: &str, what: &str) -> naga::Module {
    let module = naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(src)));
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(src)));
    module
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
fn flash_forward_validates_for_every_planned_specialisation() {
    let mut seen = std::collections::HashSet::new();
    let devices = [
        caps(wgpu::DeviceType::Cpu, 32768, 8),
        caps(wgpu::DeviceType::Cpu, 32768, 0),
        caps(wgpu::DeviceType::DiscreteGpu, 49152, 32),
        caps(wgpu::DeviceType::DiscreteGpu, 16384, 0),
    ];
    let extra = [
        AttentionProblem::new(1, 1, 1, 1, 1),
        AttentionProblem::new(1, 1, 1, 1, 256),
        AttentionProblem::new(1, 1, 4096, 77, 40),
    ];
    // Every problem plain, and with each mask kind and a window.
    let masked = |p: AttentionProblem| {
        [
            p,
            p.with_bias(MaskShape::full()).with_causal(),
            p.with_bool_mask(MaskShape::default()),
            p.with_window(Window::sliding(3, 2)).with_q_lens(true),
        ]
    };
    let problems: Vec<AttentionProblem> = grid(false)
        .into_iter()
        .map(|c| c.problem)
        .chain(extra)
        .flat_map(masked)
        .collect();
    let mut combines = std::collections::HashSet::new();
    for dev in &devices {
        for p in &problems {
            let mut variants = vec![None, Some(FlashVariant::Tiled), Some(FlashVariant::Decode)];
            if dev.subgroups && p.head_dim <= 64 && !p.has_masking() {
                variants.push(Some(FlashVariant::Lanes));
            }
            for variant in variants {
                let force = TileOverride {
                    variant,
                    ..Default::default()
                };
                let plan = plan(p, dev, force).unwrap();
                assert!(plan.workgroup_bytes <= dev.max_workgroup_storage);
                assert!(plan.wg <= dev.max_invocations);
                let spec = plan.spec(p);
                // Every storage form: f32, f16, f16 in u32 words, bf16.
                for dt in [0, 1, 2, 3] {
                    let spec: Vec<_> = spec
                        .iter()
                        .map(|&(n, v)| if n == "DT" { (n, dt) } else { (n, v) })
                        .collect();
                    if seen.insert((plan.variant, spec.clone())) {
                        validate(
                            &plan.variant.specialised(&spec),
                            &format!("{:?} {spec:?}", plan.variant),
                        );
                    }
                    let mut combine = spec[..7].to_vec();
                    combine.extend([("MASK", 0), ("WIN", 0), ("SKIP", 1)]);
                    if combines.insert(combine.clone()) {
                        validate(
                            &flash_source(SPLIT_COMBINE_WGSL, &combine),
                            &format!("split_combine {combine:?}"),
                        );
                    }
                }
            }
        }
    }
    assert!(seen.len() > 10);
    for (name, v) in [("MASK", 1), ("MASK", 2), ("WIN", 1)] {
        assert!(
            seen.iter().any(|(_, s)| s.contains(&(name, v))),
            "{name} = {v} never planned"
        );
    }
    for v in [
        FlashVariant::Lanes,
        FlashVariant::Tiled,
        FlashVariant::Decode,
    ] {
        assert!(seen.iter().any(|(s, _)| *s == v), "{v:?} never planned");
    }
    // Both tensor access forms of flash_io.wgsl, for every tensor.
    for flag in ["VEC_QK", "VEC_V"] {
        for on in [0, 1] {
            assert!(
                combines
                    .iter()
                    .any(|s| s.iter().any(|&(n, v)| n == flag && v == on)),
                "{flag} = {on} never planned"
            );
        }
    }
}

#[test]
fn naive_and_probe_validate() {
    validate(NAIVE_WGSL, "naive");
    validate(xattn::bench::PROBE_WGSL, "probe");
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
    let spec = [
        ("D", 64),
        ("DV", 64),
        ("D4", 16),
        ("DV4", 16),
        ("VEC_QK", 1),
        ("VEC_V", 1),
        ("DT", 0),
        ("MASK", 2),
        ("WIN", 1),
        ("SKIP", 1),
        ("BR", 64),
        ("BC", 16),
        ("TR", 4),
        ("WG", 16),
    ];
    let module = validate(&FlashVariant::Tiled.specialised(&spec), "flash");
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
        mask_stride_b,
        mask_stride_h,
        mask_stride_q,
        lse_stride_b,
        lse_stride_h,
        lse_rows,
        grid_stride,
        grid_rows,
        _pad0,
        _pad1,
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
    let module = validate(NAIVE_WGSL, "naive");
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
