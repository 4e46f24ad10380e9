//! The bench harness's machine-readable output: a JSON document with every
//! figure, the adapter and the versions, and an SVG bar chart of GFLOP/s per
//! shape and kernel.

use plotters::prelude::*;
use serde_json::{json, Value};

use super::bench::{BenchRow, Probe, SkipRow};
use crate::error::{Error, Result};

/// Version of the JSON layout written by [`Report::json`]; bumped when a
/// field changes meaning or disappears.
pub const SCHEMA: &str = "xattn-bench/3";

/// The wgpu version this build resolved, read from Cargo.lock by `build.rs`.
pub const WGPU_VERSION: &str = env!("XATTN_WGPU_VERSION");

/// Extra figures of a `decode` suite row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeFigures {
    /// The decode kernel with splits forced to 1, median ms.
    pub one_split_ms: f64,
    /// The tiled FA-2 kernel with splits forced to 1 (split-KV off), median ms.
    pub fa2_ms: f64,
}

/// One measured shape.
#[derive(Debug, Clone)]
pub struct ReportRow {
    /// Workload name.
    pub name: String,
    /// The measurements.
    pub row: BenchRow,
    /// Decode-suite extras.
    pub decode: Option<DecodeFigures>,
    /// For f16/bf16 storage: the same fused kernel storing f32, median ms.
    pub f32_ms: Option<f64>,
}

/// Everything one `xattn bench` run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Suite name (`seeds`, `square`, `decode`, `custom`).
    pub suite: String,
    /// Least timed runs per median ([`crate::harness::bench::BenchOptions::runs`]).
    pub runs: usize,
    /// Least milliseconds of samples per median.
    pub sample_ms: f64,
    /// The adapter measured.
    pub adapter: wgpu::AdapterInfo,
    /// The harness's probes, measured in the same run.
    pub probe: Probe,
    /// The driver's shader cache during the run (empty: first calls are cold).
    pub shader_cache: String,
    /// The shapes.
    pub rows: Vec<ReportRow>,
    /// Shapes skipped, with the reason.
    pub skipped: Vec<(String, String)>,
    /// The decode loop: steps and wall-clock ms per step.
    pub decode_loop: Option<(usize, f64)>,
    /// The masks suite: block skipping on and off.
    pub skipping: Vec<SkipRow>,
}

fn ms_or_note(r: &std::result::Result<f64, String>) -> Value {
    match r {
        Ok(ms) => json!({ "ms": ms }),
        Err(note) => json!({ "ms": null, "note": note }),
    }
}

impl ReportRow {
    fn json(&self, probe: &Probe) -> Value {
        let r = &self.row;
        let p = &r.problem;
        let gflops = r.fused_gflops();
        let mut v = json!({
            "name": self.name,
            "problem": {
                "batch": p.batch, "heads": p.heads, "kv_heads": p.kv_heads,
                "n_q": p.n_q, "n_kv": p.n_kv, "head_dim": p.head_dim,
                "head_dim_v": p.head_dim_v, "scale": p.scale(),
            },
            "flops": p.flops(),
            "plan": {
                "variant": r.plan.variant.label(),
                "br": r.plan.br, "bc": r.plan.bc, "tr": r.plan.tr, "wg": r.plan.wg,
                "splits": r.plan.splits, "split_keys": r.plan.split_keys,
                "chunk_keys": r.plan.chunk_keys, "heads_inner": r.plan.heads_inner,
                "why": r.plan.why,
            },
            "fused": {
                "ms": r.fused_ms, "spread": r.fused_spread, "gflops": gflops,
                "percent_of_fma_peak": 100.0 * gflops / probe.fma_gflops,
                "kv_gbps": p.kv_bytes() / (r.fused_ms * 1e-3) / 1e9,
                "device_bytes": r.fused_bytes,
                "bound_kv_ms": r.bound_ms,
            },
            "first_call": {
                "ms": r.first_ms, "build_ms": r.build_ms, "compile_ms": r.compile_ms(),
            },
            "naive": ms_or_note(&r.naive_ms),
            "speedup_over_naive": r.naive_ms.as_ref().ok().map(|ms| ms / r.fused_ms),
            "cpu_reference": ms_or_note(&r.cpu_ms),
            "check": { "max_err": r.check_err, "bound": r.check_bound },
        });
        v["naive"]["device_bytes"] = json!(r.naive_bytes);
        v["problem"]["dtype"] = json!(p.dtype.to_string());
        if let Some(ms) = self.f32_ms {
            v["f32_fused_ms"] = json!(ms);
            v["speedup_over_f32"] = json!(ms / r.fused_ms);
        }
        if let Some(d) = self.decode {
            v["decode"] = json!({
                "one_split_ms": d.one_split_ms,
                "fa2_split_off_ms": d.fa2_ms,
            });
        }
        v
    }
}

impl Report {
    /// The whole run as one JSON document (layout [`SCHEMA`]).
    pub fn json(&self) -> Value {
        let a = &self.adapter;
        let unix_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        json!({
            "schema": SCHEMA,
            "xattn_version": env!("CARGO_PKG_VERSION"),
            "wgpu_version": WGPU_VERSION,
            "unix_time": unix_time,
            "suite": self.suite,
            "runs": self.runs,
            "sample_ms": self.sample_ms,
            "adapter": {
                "name": a.name, "backend": format!("{:?}", a.backend),
                "device_type": format!("{:?}", a.device_type),
                "driver": a.driver, "driver_info": a.driver_info,
            },
            "probe": { "fma_gflops": self.probe.fma_gflops, "copy_gbps": self.probe.copy_gbps },
            "shader_cache": self.shader_cache,
            "rows": self.rows.iter().map(|r| r.json(&self.probe)).collect::<Vec<_>>(),
            "skipped": self.skipped.iter().map(|(n, why)| json!({"name": n, "why": why})).collect::<Vec<_>>(),
            "decode_loop": self.decode_loop.map(|(steps, ms)| json!({"steps": steps, "ms_per_step": ms})),
            "block_skipping": self.skipping.iter().map(|r| {
                let w = &r.workload;
                let p = &w.problem;
                json!({
                    "name": w.name,
                    "problem": {
                        "batch": p.batch, "heads": p.heads, "n_q": p.n_q, "n_kv": p.n_kv,
                        "head_dim": p.head_dim,
                        "window": p.key_window().map(|w| json!({"left": w.left, "right": w.right})),
                        "kv_lens": w.kv_lens, "q_lens": w.q_lens,
                    },
                    "visible_fraction": w.visible_fraction(),
                    "plan": {
                        "variant": r.plan.variant.label(), "splits": r.plan.splits, "why": r.plan.why,
                    },
                    "skip_ms": r.skip_ms,
                    "no_skip_ms": r.no_skip_ms,
                    "dense_ms": r.dense_ms,
                    "speedup_from_skipping": r.no_skip_ms / r.skip_ms,
                    "visible_gflops": r.visible_gflops(),
                    "max_diff_skip_vs_no_skip": r.max_diff,
                    "check": {
                        "skip": { "o_err": r.skip_check.fused.o, "o_bound": r.skip_check.o_bound(),
                                  "lse_err": r.skip_check.fused.lse, "lse_bound": r.skip_check.lse_bound() },
                        "no_skip": { "o_err": r.no_skip_check.fused.o, "o_bound": r.no_skip_check.o_bound(),
                                     "lse_err": r.no_skip_check.fused.lse, "lse_bound": r.no_skip_check.lse_bound() },
                    },
                })
            }).collect::<Vec<_>>(),
        })
    }

    /// A grouped bar chart of GFLOP/s per shape: fused, naive and CPU
    /// reference, with the FMA probe in the title.
    pub fn svg(&self) -> Result<String> {
        let mut out = String::new();
        let n = self.rows.len().max(1);
        let gflops = |ms: f64, r: &BenchRow| r.problem.flops() / (ms * 1e-3) / 1e9;
        let series: Vec<(&str, RGBColor, Vec<Option<f64>>)> = vec![
            (
                "fused",
                RGBColor(31, 119, 180),
                self.rows
                    .iter()
                    .map(|r| Some(r.row.fused_gflops()))
                    .collect(),
            ),
            (
                "naive",
                RGBColor(255, 127, 14),
                self.rows
                    .iter()
                    .map(|r| r.row.naive_ms.as_ref().ok().map(|&ms| gflops(ms, &r.row)))
                    .collect(),
            ),
            (
                "CPU reference",
                RGBColor(44, 160, 44),
                self.rows
                    .iter()
                    .map(|r| r.row.cpu_ms.as_ref().ok().map(|&ms| gflops(ms, &r.row)))
                    .collect(),
            ),
        ];
        let top = series
            .iter()
            .flat_map(|s| s.2.iter().flatten())
            .fold(0.0f64, |a, &b| a.max(b))
            .max(1e-3)
            * 1.15;
        {
            let root = SVGBackend::with_string(&mut out, ((160 + 70 * n as u32).max(640), 560))
                .into_drawing_area();
            let draw =
                |e: DrawingAreaErrorKind<_>| Error::Device(format!("drawing the chart: {e}"));
            root.fill(&WHITE).map_err(draw)?;
            let title = format!(
                "xattn bench {}: GFLOP/s on {} (FMA probe {:.1} GFLOP/s)",
                self.suite, self.adapter.name, self.probe.fma_gflops
            );
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 16))
                .margin(12)
                .x_label_area_size(150)
                .y_label_area_size(60)
                .build_cartesian_2d(0f64..n as f64, 0f64..top)
                .map_err(draw)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .light_line_style(WHITE)
                .bold_line_style(BLACK.mix(0.15))
                .y_desc("GFLOP/s")
                .draw()
                .map_err(draw)?;
            // Shape names under their bar groups, written downwards.
            let style = ("sans-serif", 12)
                .into_font()
                .transform(FontTransform::Rotate90)
                .color(&BLACK);
            for (i, r) in self.rows.iter().enumerate() {
                let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
                root.draw(&Text::new(r.name.clone(), (x - 6, y + 8), style.clone()))
                    .map_err(draw)?;
            }
            let width = 0.8 / series.len() as f64;
            for (k, (label, color, values)) in series.iter().enumerate() {
                let color = *color;
                chart
                    .draw_series(values.iter().enumerate().filter_map(|(i, v)| {
                        v.map(|v| {
                            let x0 = i as f64 + 0.1 + k as f64 * width;
                            Rectangle::new([(x0, 0.0), (x0 + width * 0.95, v)], color.filled())
                        })
                    }))
                    .map_err(draw)?
                    .label(*label)
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(draw)?;
            root.present().map_err(draw)?;
        }
        Ok(out)
    }
}
