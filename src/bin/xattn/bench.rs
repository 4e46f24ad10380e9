//! `xattn bench`: the harness. Fused vs naive vs CPU reference per shape,
//! with the FMA and copy probes of the same run, as a table, JSON and SVG.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use xattn::harness::bench::{self, BenchOptions};
use xattn::harness::report::{DecodeFigures, Report, ReportRow};
use xattn::{AttentionProblem, Context, Dtype, Error, FlashVariant, TileOverride};

use crate::{write_file, DtypeArg};

#[derive(Args)]
pub struct BenchArgs {
    /// One shape B,H,HKV,NQ,NKV,D instead of a suite.
    #[arg(long)]
    shape: Option<String>,
    /// Suite: seeds (the literature's workloads), square (n = 256 … 8192,
    /// d 64), decode (n_q 1 and 16 against n_kv 512 … 32 768, split-KV
    /// on and off, K/V GB/s, and a 448-step decode loop) or masks (block
    /// skipping on and off: causal 2k², a sliding window, 50% padding).
    #[arg(long, value_enum, default_value_t = Suite::Seeds)]
    suite: Suite,
    /// Least timed runs per median (fused and bound; the naive kernel and
    /// the CPU reference at least 3 and 1). Quick kernels get more, up to
    /// 101, until their samples span --sample-ms.
    #[arg(long, default_value_t = 9)]
    runs: usize,
    /// Milliseconds of samples each median gathers at least (see --runs).
    #[arg(long, default_value_t = 300.0)]
    sample_ms: f64,
    /// Force Bc (key rows per block).
    #[arg(long)]
    bc: Option<u32>,
    /// Force rows per invocation.
    #[arg(long)]
    tr: Option<u32>,
    /// Force invocations per workgroup.
    #[arg(long)]
    wg: Option<u32>,
    /// Skip the naive kernel.
    #[arg(long)]
    no_naive: bool,
    /// Force the fused kernel's variant: tiled, decode (CPU-shaped),
    /// lanes (GPU-shaped), or simd (adapters with fixed-size
    /// subgroups, e.g. lavapipe).
    #[arg(long, value_enum)]
    variant: Option<VariantArg>,
    /// Force the number of key splits (split-KV); 1 turns splitting off.
    #[arg(long)]
    splits: Option<u32>,
    /// Force the workgroup order's stride (1: plain order; the planner
    /// uses 16 on CPU adapters for masked or padded problems).
    #[arg(long)]
    grid_stride: Option<u32>,
    /// Force the workgroup order's heads fastest (true) or query blocks
    /// fastest (false); the planner runs heads fastest for the simd kernel
    /// on BSHD problems whose K/V fit in 512 KiB.
    #[arg(long)]
    heads_inner: Option<bool>,
    /// The simd kernel reads K/V from the storage buffers instead of their
    /// texture mirrors (to measure what the mirrors save).
    #[arg(long)]
    kv_storage: bool,
    /// The GPU decode kernel sums through workgroup memory even where the
    /// adapter has subgroups (as on GL), to measure what subgroups save.
    #[arg(long)]
    no_subgroups: bool,
    /// Storage type of q, k, v and o; for f16/bf16 the table adds the
    /// speed-up over the same kernel in f32 (the naive baseline is f32-only).
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    dtype: DtypeArg,
    /// Keep Mesa's shader cache (by default the harness points
    /// `MESA_SHADER_CACHE_DIR` at a fresh empty folder, unless it is set, so
    /// the "1st ms" column is a cold first call: compile included).
    #[arg(long)]
    warm_cache: bool,
    /// Write every figure, the adapter and the versions as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw a bar chart of GFLOP/s per shape and kernel (SVG).
    #[arg(long)]
    svg: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    Seeds,
    Square,
    Decode,
    Masks,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum VariantArg {
    Tiled,
    Decode,
    Lanes,
    Simd,
}

impl VariantArg {
    fn variant(self) -> FlashVariant {
        match self {
            VariantArg::Tiled => FlashVariant::Tiled,
            VariantArg::Decode => FlashVariant::Decode,
            VariantArg::Lanes => FlashVariant::Lanes,
            VariantArg::Simd => FlashVariant::Simd,
        }
    }
}

fn parse_shape(s: &str) -> Result<AttentionProblem, Error> {
    let v: Vec<usize> = s
        .split(',')
        .map(|x| x.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| Error::BadArgument {
            name: "--shape".into(),
            reason: format!("{s:?}: {e}; expected B,H,HKV,NQ,NKV,D"),
        })?;
    match v.as_slice() {
        &[b, h, hkv, nq, nkv, d] => Ok(AttentionProblem::new(b, h, nq, nkv, d).with_kv_heads(hkv)),
        _ => Err(Error::BadArgument {
            name: "--shape".into(),
            reason: format!("{s:?} has {} numbers; expected B,H,HKV,NQ,NKV,D", v.len()),
        }),
    }
}

pub fn bench(a: &BenchArgs) -> Result<ExitCode, Error> {
    let opt = BenchOptions {
        runs: a.runs,
        sample_ms: a.sample_ms,
        tiles: TileOverride {
            bc: a.bc,
            tr: a.tr,
            wg: a.wg,
            variant: a.variant.map(VariantArg::variant),
            splits: a.splits,
            grid_stride: a.grid_stride,
            heads_inner: a.heads_inner,
            kv_texture: a.kv_storage.then_some(false),
            subgroups: a.no_subgroups.then_some(false),
            ..TileOverride::default()
        },
        naive: !a.no_naive,
        ..Default::default()
    };
    let dtype = a.dtype.dtype();
    let cache = ShaderCache::choose(a.warm_cache)?;
    let ctx = Context::new()?;
    let (suite_name, shapes) = match (&a.shape, a.suite) {
        (Some(s), _) => ("custom", vec![("custom".to_string(), parse_shape(s)?)]),
        (None, Suite::Seeds) => ("seeds", bench::seeds()),
        (None, Suite::Square) => (
            "square",
            (8..=13)
                .map(|e| {
                    let n = 1usize << e;
                    (format!("square {n}"), AttentionProblem::new(1, 1, n, n, 64))
                })
                .collect(),
        ),
        (None, Suite::Decode) => ("decode", bench::decode_suite()),
        (None, Suite::Masks) => ("masks", Vec::new()),
    };
    // Check the output paths before minutes of measuring.
    for path in a.json.iter().chain(&a.svg) {
        write_file(path, b"")?;
    }
    let decode = a.suite == Suite::Decode && a.shape.is_none();
    let probe = bench::probe(&ctx)?;
    println!(
        "adapter: {} ({:?})  FMA probe {:.1} GFLOP/s  copy {:.1} GB/s  shader cache: {}",
        ctx.caps().info.name,
        ctx.caps().info.backend,
        probe.fma_gflops,
        probe.copy_gbps,
        cache.what
    );
    let masks = a.suite == Suite::Masks && a.shape.is_none();
    if !masks {
        print_header(decode, dtype);
    }
    let bar = indicatif::ProgressBar::new(shapes.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ({elapsed})")
            .expect("progress template"),
    );
    let mut report = Report {
        suite: suite_name.to_string(),
        runs: opt.runs,
        sample_ms: opt.sample_ms,
        adapter: ctx.caps().info.clone(),
        probe,
        shader_cache: cache.what.clone(),
        rows: Vec::new(),
        skipped: Vec::new(),
        decode_loop: None,
        skipping: Vec::new(),
    };
    if masks {
        println!(
            "{:<28} {:>8} {:>10} {:>11} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9}",
            "workload",
            "visible",
            "skip ms",
            "no-skip ms",
            "speedup",
            "dense ms",
            "GFLOP/s",
            "max diff",
            "skip err",
            "no-sk err"
        );
        for w in bench::masks_suite() {
            let r = bench::bench_skipping(&ctx, &w, &opt)?;
            println!(
                "{:<28} {:>7.1}% {:>10.2} {:>11.2} {:>7.2}x {:>10.2} {:>9.2} {:>9.1e} {:>9.1e} {:>9.1e}",
                w.name,
                100.0 * w.visible_fraction(),
                r.skip_ms,
                r.no_skip_ms,
                r.no_skip_ms / r.skip_ms,
                r.dense_ms,
                r.visible_gflops(),
                r.max_diff,
                r.skip_check.fused.o,
                r.no_skip_check.fused.o,
            );
            report.skipping.push(r);
        }
        println!(
            "skip: block skipping on (default); no-skip: every allocated key loaded and masked; \
             dense: same shape, no mask or lengths; GFLOP/s counts visible pairs only; \
             err: max |O − f64 reference|, both within the tolerance rule"
        );
    }
    for (name, p) in shapes {
        let p = p.with_dtype(dtype);
        bar.set_message(name.clone());
        let row = match bench::bench_problem(&ctx, &p, &opt) {
            Err(e @ Error::BindingTooLarge { .. }) => {
                bar.suspend(|| println!("{name:<22} skipped: {e}"));
                report.skipped.push((name, e.to_string()));
                bar.inc(1);
                continue;
            }
            r => r?,
        };
        let figures = if decode {
            let one = |variant| TileOverride {
                variant: Some(variant),
                splits: Some(1),
                ..opt.tiles
            };
            Some(DecodeFigures {
                one_split_ms: bench::time_fused(&ctx, &p, one(FlashVariant::Decode), &opt)?.0,
                fa2_ms: bench::time_fused(&ctx, &p, one(FlashVariant::Tiled), &opt)?.0,
            })
        } else {
            None
        };
        let f32_ms = if dtype == Dtype::F32 {
            None
        } else {
            let p32 = p.with_dtype(Dtype::F32);
            Some(bench::time_fused(&ctx, &p32, opt.tiles, &opt)?.0)
        };
        let r = ReportRow {
            name,
            row,
            decode: figures,
            f32_ms,
        };
        bar.suspend(|| print_row(&r, &report.probe));
        report.rows.push(r);
        bar.inc(1);
    }
    bar.finish_and_clear();
    // Why a column shows "-".
    let mut notes: Vec<String> = Vec::new();
    let mut over_budget: Vec<&str> = Vec::new();
    // Naive skips grouped by reason: (reason, shapes).
    let mut naive_skips: Vec<(&str, Vec<&str>)> = Vec::new();
    for r in &report.rows {
        if let Err(note) = &r.row.naive_ms {
            if note.starts_with("skipped") {
                match naive_skips.iter_mut().find(|(n, _)| n == note) {
                    Some((_, names)) => names.push(&r.name),
                    None => naive_skips.push((note, vec![&r.name])),
                }
            }
        }
        if r.row.cpu_ms.is_err() {
            over_budget.push(&r.name);
        }
    }
    for (note, names) in naive_skips {
        notes.push(format!("naive {note}: {}", names.join(", ")));
    }
    if !over_budget.is_empty() {
        notes.push(format!(
            "CPU reference skipped above {:.1} GFLOP: {}",
            opt.cpu_flop_budget / 1e9,
            over_budget.join(", ")
        ));
    }
    notes.push(
        "1st ms: wall time of the shape's first call in this process (plan, pipeline compile \
         unless an earlier shape built the same one, one launch)"
            .to_string(),
    );
    notes.push(format!(
        "medians of at least {} runs (naive: {}, CPU reference: 1) and {:.0} ms of samples, \
         at most {} runs",
        opt.runs,
        opt.runs.min(3),
        opt.sample_ms,
        opt.max_runs.max(opt.runs)
    ));
    if report
        .rows
        .iter()
        .any(|r| r.decode.is_none() && r.row.bound_ms.is_some())
    {
        notes.push(
            "fused ms copies K/V into the plan's texture mirrors at every call; bound ms: K/V \
             bound once (bind_fixed_kv), as a decoder's steps over one encoder sequence run; \
             x naive and x CPU are of fused ms"
                .to_string(),
        );
    }
    notes.extend(report.rows.iter().filter_map(decoder_step_note));
    for n in &notes {
        println!("note: {n}");
    }
    if decode {
        let whisper = AttentionProblem::new(1, 20, 1, 1500, 64);
        let steps = 448;
        let per_step = bench::decode_loop_ms(&ctx, &whisper, steps)?;
        println!(
            "Whisper decode loop, {steps} steps (1x20, 1x1500, d64, K/V bound once, one submit \
             per step): {per_step:.3} ms per step, {:.2} GB/s of K/V",
            whisper.kv_bytes() / (per_step * 1e-3) / 1e9
        );
        report.decode_loop = Some((steps, per_step));
    }
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&report.json()).expect("JSON of plain values");
        write_file(path, text.as_bytes())?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &a.svg {
        write_file(path, report.svg()?.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// For a table row the decode kernel ran with K/V in texture mirrors (a
/// decoder step on a CPU adapter): its figures as a decoder runs it, K/V bound once
/// for all the steps over one encoder sequence, where `fused ms` pays the
/// copy of all of K/V into the mirrors at every call.
fn decoder_step_note(r: &ReportRow) -> Option<String> {
    let row = &r.row;
    let bound = row
        .bound_ms
        .filter(|_| r.decode.is_none() && row.plan.variant == FlashVariant::Decode)?;
    Some(format!(
        "{} as a decoder runs it (K/V bound once): {bound:.3} ms, x naive {}, x CPU {}",
        r.name,
        times(&row.naive_ms, bound),
        times(&row.cpu_ms, bound)
    ))
}

/// How many times `ms` (where it was measured) is `of_ms`, for a table
/// column: one decimal, or "-".
fn times(ms: &Result<f64, String>, of_ms: f64) -> String {
    ms.as_ref()
        .map_or("-".to_string(), |ms| format!("{:.1}", ms / of_ms))
}

/// Where the driver's shader cache lives for this run.
struct ShaderCache {
    what: String,
    fresh: Option<PathBuf>,
}

impl ShaderCache {
    /// A fresh empty `MESA_SHADER_CACHE_DIR` (removed on drop), unless the
    /// caller keeps the cache or has set the variable.
    fn choose(warm: bool) -> Result<Self, Error> {
        if warm {
            return Ok(Self {
                what: "kept (--warm-cache)".into(),
                fresh: None,
            });
        }
        if let Some(dir) = std::env::var_os("MESA_SHADER_CACHE_DIR") {
            return Ok(Self {
                what: format!("MESA_SHADER_CACHE_DIR={}", dir.to_string_lossy()),
                fresh: None,
            });
        }
        let dir = std::env::temp_dir().join(format!("xattn-bench-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::BadArgument {
            name: "MESA_SHADER_CACHE_DIR".into(),
            reason: format!("cannot create {}: {e}", dir.display()),
        })?;
        // Before any driver is loaded and before any thread starts.
        std::env::set_var("MESA_SHADER_CACHE_DIR", &dir);
        Ok(Self {
            what: "empty (fresh MESA_SHADER_CACHE_DIR)".into(),
            fresh: Some(dir),
        })
    }
}

impl Drop for ShaderCache {
    fn drop(&mut self) {
        if let Some(dir) = &self.fresh {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn print_header(decode: bool, dtype: Dtype) {
    if dtype != Dtype::F32 {
        println!("storage: {dtype} (×f32: the same fused kernel storing f32, timed in this run)");
    }
    if decode {
        println!(
            "{:<24} {:>9} {:>9} {:>16} {:>8} {:>6} {:>10} {:>6} {:>10} {:>9} {:>7}",
            "workload",
            "fused ms",
            "1st ms",
            "variant, splits",
            "K/V GB/s",
            "%copy",
            "1-split ms",
            "×",
            "FA-2 ms",
            "naive ms",
            "×naive"
        );
    } else {
        println!(
            "{:<22} {:>26} {:>9} {:>8} {:>8} {:>8} {:>6} {:>9} {:>7} {:>9} {:>6} {:>20} {:>15}{}",
            "workload",
            "B×H:Hkv nq×nkv d",
            "fused ms",
            "bound ms",
            "1st ms",
            "GFLOP/s",
            "%peak",
            "naive ms",
            "×naive",
            "CPU ms",
            "×CPU",
            "plan Br×Bc/TR splits",
            "MiB fused/naive",
            if dtype == Dtype::F32 {
                ""
            } else {
                "    f32 ms   ×f32"
            }
        );
    }
}

fn print_row(r: &ReportRow, probe: &bench::Probe) {
    let (row, p) = (&r.row, &r.row.problem);
    let naive = row.naive_ms.as_ref().ok();
    let naive_ms = naive.map_or("-".to_string(), |ms| format!("{ms:.2}"));
    let speedup = times(&row.naive_ms, row.fused_ms);
    if let Some(d) = r.decode {
        let gbps = p.kv_bytes() / (row.fused_ms * 1e-3) / 1e9;
        println!(
            "{:<24} {:>9.3} {:>9.0} {:>16} {:>8.2} {:>5.0}% {:>10.3} {:>6.2} {:>10.3} {:>9} {:>7}",
            r.name,
            row.fused_ms,
            row.first_ms,
            format!("{} s{}", row.plan.variant.label(), row.plan.splits),
            gbps,
            100.0 * gbps / probe.copy_gbps,
            d.one_split_ms,
            d.one_split_ms / row.fused_ms,
            d.fa2_ms,
            naive_ms,
            speedup,
        );
        return;
    }
    let gf = row.fused_gflops();
    let cpu = row
        .cpu_ms
        .as_ref()
        .map_or("-".to_string(), |ms| format!("{ms:.1}"));
    let vs_cpu = times(&row.cpu_ms, row.fused_ms);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let vs_f32 = r.f32_ms.map_or(String::new(), |ms| {
        format!(" {:>9.3} {:>6.2}", ms, ms / row.fused_ms)
    });
    let bound = row
        .bound_ms
        .map_or("-".to_string(), |ms| format!("{ms:.3}"));
    println!(
        "{:<22} {:>26} {:>9.3} {:>8} {:>8.0} {:>8.1} {:>5.0}% {:>9} {:>7} {:>9} {:>6} {:>20} {:>15}{vs_f32}",
        r.name,
        format!(
            "{}×{}:{} {}×{} d{}",
            p.batch, p.heads, p.kv_heads, p.n_q, p.n_kv, p.head_dim
        ),
        row.fused_ms,
        bound,
        row.first_ms,
        gf,
        100.0 * gf / probe.fma_gflops,
        naive_ms,
        speedup,
        cpu,
        vs_cpu,
        format!(
            "{} {}x{}/{} s{}",
            row.plan.variant.label(),
            row.plan.br,
            row.plan.bc,
            row.plan.tr,
            row.plan.splits
        ),
        format!("{:.1}/{:.1}", mib(row.fused_bytes), mib(row.naive_bytes)),
    );
}
