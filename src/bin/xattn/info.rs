//! `xattn info`: adapters, the chosen one and why, features, limits, plans
//! and the probes.

use std::process::ExitCode;

use clap::Args;
use xattn::{AttentionProblem, Context, ContextOptions, Error, TileOverride};

#[derive(Args)]
pub struct InfoArgs {
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

pub fn info(a: &InfoArgs) -> Result<ExitCode, Error> {
    let opts = ContextOptions::default();
    let adapter_json = |i: &xattn::wgpu::AdapterInfo| {
        serde_json::json!({
            "name": i.name, "backend": format!("{:?}", i.backend),
            "device_type": format!("{:?}", i.device_type),
            "driver": i.driver, "driver_info": i.driver_info,
        })
    };
    let adapters: Vec<_> = Context::adapters(&opts)
        .iter()
        .map(|a| a.get_info())
        .collect();
    let why = "hardware adapters first, then native APIs before GL";
    let ctx = Context::with_options(&opts)?;
    let c = ctx.caps();
    let p = AttentionProblem::new(1, 8, 2048, 2048, 64);
    let plan = xattn::plan(&p, c, TileOverride::default())?;
    let decode = AttentionProblem::new(1, 20, 1, 1500, 64);
    let decode_plan = xattn::plan(&decode, c, TileOverride::default())?;
    // The head dims of the seed shapes and the largest, with their register
    // estimates (plan family: `XATTN_PLAN=gpu` plans as a GPU).
    let by_head_dim = [40usize, 80, 128, 160, 256]
        .into_iter()
        .map(|d| {
            let p = AttentionProblem::new(1, 8, 2048, 2048, d);
            xattn::plan(&p, c, TileOverride::default()).map(|plan| (d, plan.why))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let probe = xattn::harness::bench::probe(&ctx)?;
    if a.json {
        let doc = serde_json::json!({
            "schema": "xattn-info/1",
            "xattn_version": env!("CARGO_PKG_VERSION"),
            "wgpu_version": xattn::harness::report::WGPU_VERSION,
            "adapters": adapters.iter().map(adapter_json).collect::<Vec<_>>(),
            "chosen": adapter_json(&c.info),
            "why": why,
            "features": {
                "shader_f16": c.shader_f16, "subgroups": c.subgroups,
                "subgroup_min_size": c.subgroup_min_size, "subgroup_max_size": c.subgroup_max_size,
                "timestamps": c.timestamps,
            },
            "limits": {
                "max_workgroup_storage_bytes": c.max_workgroup_storage,
                "max_invocations": c.max_invocations,
                "max_storage_binding_bytes": c.max_storage_binding,
                "max_buffer_bytes": c.max_buffer_size,
                "max_workgroups_per_dim": c.max_workgroups_per_dim,
            },
            "plans": {
                "square_2k_d64": plan.why,
                "whisper_decode_step": decode_plan.why,
                "square_2k_by_head_dim": by_head_dim
                    .iter()
                    .map(|(d, why)| serde_json::json!({ "d": d, "why": why }))
                    .collect::<Vec<_>>(),
            },
            "probe": { "fma_gflops": probe.fma_gflops, "copy_gbps": probe.copy_gbps },
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON of plain values")
        );
        return Ok(ExitCode::SUCCESS);
    }
    for i in &adapters {
        println!(
            "adapter: {} ({:?}, {:?}, driver {} {})",
            i.name, i.backend, i.device_type, i.driver, i.driver_info
        );
    }
    println!("chosen: {} ({:?}): {why}", c.info.name, c.info.backend);
    println!(
        "f16: {}  subgroups: {} (size {}..{})  timestamps: {}",
        c.shader_f16, c.subgroups, c.subgroup_min_size, c.subgroup_max_size, c.timestamps
    );
    println!(
        "workgroup storage: {} B  invocations: {}  max storage binding: {} B",
        c.max_workgroup_storage, c.max_invocations, c.max_storage_binding
    );
    println!("plan for 1x8, 2048x2048, d64: {}", plan.why);
    for (d, why) in &by_head_dim {
        println!("plan for 1x8, 2048x2048, d{d}: {why}");
    }
    println!(
        "plan for 1x20, 1x1500, d64 (Whisper decode step): {}",
        decode_plan.why
    );
    println!(
        "probe: FMA peak {:.1} GFLOP/s, copy {:.1} GB/s",
        probe.fma_gflops, probe.copy_gbps
    );
    Ok(ExitCode::SUCCESS)
}
