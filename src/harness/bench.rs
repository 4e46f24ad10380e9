//! Timing and device probes shared by the CLI's bench harness and the
//! Criterion benches.

use crate::check::{self, max_err};
use crate::context::{Binding, Context, Kernel, PipelineKey};
use crate::error::{Error, Result};
use crate::flash::{BoundAttention, FlashAttention};
use crate::layout::Layout;
use crate::mask::{Masks, Window};
use crate::naive::NaiveAttention;
use crate::plan::{fold_grid, FlashPlan, TileOverride};
use crate::problem::AttentionProblem;
use crate::source::{KvAccess, Shader};
use crate::tensor::{AttentionOutput, AttentionTensors};

pub use super::timing::{median_spread, time_runs, RecordFn};
use super::timing::{time_sampled, Sampling};

/// What the probes measured on this adapter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    /// Peak f32 FMA throughput, GFLOP/s (2 flops per FMA).
    pub fma_gflops: f64,
    /// Copy bandwidth, GB/s (bytes read + bytes written).
    pub copy_gbps: f64,
}

const PROBE_BINDINGS: [Binding; 2] = [Binding::Read, Binding::ReadWrite];

/// Least ms of one dispatch of `kernel` over `buffers`: 1 warm-up, then at
/// least 5 runs and a second of samples (at most 101). A probe measures
/// what the device can do, and a shared machine's noise only ever slows a
/// run, so the fastest run is the estimate; a probe read low would inflate
/// every "% of peak" of the run (one median-of-5 probe read 62 GFLOP/s in
/// a busy minute where the usual is 110–120).
fn time_dispatch(
    ctx: &Context,
    kernel: &Kernel,
    buffers: &[&wgpu::Buffer],
    grid: (u32, u32),
) -> Result<f64> {
    let record = |enc: &mut wgpu::CommandEncoder,
                  ts: Option<wgpu::ComputePassTimestampWrites<'_>>| {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("probe"),
            timestamp_writes: ts,
        });
        kernel.dispatch(ctx.device(), &mut pass, buffers, grid);
        Ok(())
    };
    let sampling = Sampling {
        sample_ms: 1000.0,
        ..BenchOptions::default().sampling(5)
    };
    let samples = time_sampled(ctx, 1, sampling, &record)?;
    Ok(samples.iter().copied().fold(f64::INFINITY, f64::min))
}

/// Runs the FMA and copy probes (about two seconds on lavapipe).
pub fn probe(ctx: &Context) -> Result<Probe> {
    let kernel = |entry| {
        ctx.pipeline(
            PipelineKey {
                shader: Shader::Probe,
                entry,
                spec: None,
            },
            &PROBE_BINDINGS,
            || Shader::Probe.wgsl().to_string(),
        )
    };
    let (fma, copy) = (kernel("fma_peak")?, kernel("copy")?);
    let max = ctx.caps().max_workgroups_per_dim;

    // FMA: enough invocations to fill any device several times over, scaled
    // down on CPU adapters so the probe stays short.
    let cpu = ctx.caps().is_cpu();
    let invocations: usize = if cpu { 64 * 256 } else { 64 * 65536 };
    let small = ctx.upload("probe src", &vec![1.0f32; 4 * 1024]);
    let sink = ctx.storage("probe sink", 16 * 1024);
    let grid = fold_grid(invocations / 64, max, "probe")?;
    let ms = time_dispatch(ctx, &fma, &[&small, &sink], grid)?;
    let flops = invocations as f64 * 1024.0 * 8.0 * 4.0 * 2.0;
    let fma_gflops = flops / (ms * 1e-3) / 1e9;

    // Copy: 256 MiB each way on GPUs, 16 MiB on CPU adapters (past their caches).
    let bytes: u64 = if cpu { 16 << 20 } else { 256 << 20 };
    let bytes = bytes.min(ctx.caps().max_storage_binding);
    let src = ctx.storage("probe copy src", bytes);
    let dst = ctx.storage("probe copy dst", bytes);
    let n_vec4 = (bytes / 16) as usize;
    let grid = fold_grid(n_vec4.div_ceil(64), max, "probe")?;
    let ms = time_dispatch(ctx, &copy, &[&src, &dst], grid)?;
    let copy_gbps = 2.0 * bytes as f64 / (ms * 1e-3) / 1e9;
    if !fma_gflops.is_finite() || !copy_gbps.is_finite() {
        return Err(Error::Device("probe timing failed".into()));
    }
    Ok(Probe {
        fma_gflops,
        copy_gbps,
    })
}

/// How [`bench_problem`] measures.
#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    /// Untimed runs first.
    pub warmup: usize,
    /// Timed runs (the median is reported): the least per median. Quick
    /// kernels get more, up to `max_runs`, until their samples span
    /// `sample_ms`, so a noise burst of a few milliseconds on a shared
    /// machine cannot move a millisecond kernel's median.
    pub runs: usize,
    /// Milliseconds of samples each median gathers at least (fused, bound,
    /// naive and CPU reference alike; past `max_runs`, no more).
    pub sample_ms: f64,
    /// Most timed runs per median.
    pub max_runs: usize,
    /// Tiles forced instead of the planner's.
    pub tiles: TileOverride,
    /// Also time the naive kernel (where its score matrix fits).
    pub naive: bool,
    /// Time the CPU reference only below this many FLOPs.
    pub cpu_flop_budget: f64,
}

impl BenchOptions {
    /// The sampling of a median of at least `least` runs.
    pub fn sampling(&self, least: usize) -> Sampling {
        Sampling {
            least,
            sample_ms: self.sample_ms,
            max_runs: self.max_runs,
        }
    }
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            warmup: 1,
            runs: 9,
            sample_ms: 300.0,
            max_runs: 101,
            tiles: TileOverride::default(),
            naive: true,
            cpu_flop_budget: 2e9,
        }
    }
}

/// One shape's measurements.
#[derive(Debug, Clone)]
pub struct BenchRow {
    /// The problem.
    pub problem: AttentionProblem,
    /// The fused kernel's plan.
    pub plan: FlashPlan,
    /// Wall ms of the first call: planning, pipeline creation and one
    /// launch to completion (the driver's compile included wherever it
    /// happens: at pipeline creation or at the first dispatch).
    pub first_ms: f64,
    /// Wall ms of planning and pipeline creation alone.
    pub build_ms: f64,
    /// Fused kernel: median ms and relative spread.
    pub fused_ms: f64,
    /// (max − min) / median of the fused runs.
    pub fused_spread: f64,
    /// Where the plan reads K/V through texture mirrors (CPU adapters): the
    /// fused kernel's median ms with K/V bound once
    /// ([`FlashAttention::bind_fixed_kv`]), the mirrors filled before the
    /// timed runs, as the steps of a decode loop over one encoder sequence
    /// run. `fused_ms` copies K/V into the mirrors at every call.
    pub bound_ms: Option<f64>,
    /// Naive kernel median ms, or why it was not run.
    pub naive_ms: std::result::Result<f64, String>,
    /// CPU reference ms (one run), or why it was not run.
    pub cpu_ms: std::result::Result<f64, String>,
    /// Max |fused − ref_f64| on the checked slice (O).
    pub check_err: f64,
    /// Max |naive-order f32 − ref_f64| … the bound is 2× this + 1e-5.
    pub check_bound: f64,
    /// Device bytes of the fused launch (inputs, outputs).
    pub fused_bytes: u64,
    /// Device bytes of the naive launch (adds the score matrix).
    pub naive_bytes: u64,
}

impl BenchRow {
    /// Fused GFLOP/s.
    pub fn fused_gflops(&self) -> f64 {
        self.problem.flops() / (self.fused_ms * 1e-3) / 1e9
    }

    /// ms the first call spent beyond a warm run: the pipelines' compile
    /// (and first-touch costs), ≥ 0.
    pub fn compile_ms(&self) -> f64 {
        (self.first_ms - self.fused_ms).max(0.0)
    }
}

/// The first `n` query rows of head 0 of batch entry 0, as its own problem.
fn first_slice(
    p: &AttentionProblem,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n: usize,
) -> (AttentionProblem, Vec<f32>, Vec<f32>, Vec<f32>) {
    let sub = AttentionProblem {
        batch: 1,
        heads: 1,
        kv_heads: 1,
        n_q: n,
        kv_lens: false,
        layout: Layout::Bshd,
        out_layout: Layout::Bshd,
        ..*p
    };
    let bshd = |x: &[f32], s: usize, h: usize, d: usize| {
        p.layout.convert(Layout::Bshd, x, [p.batch, s, h, d])
    };
    let (q, k, v) = (
        &bshd(q, p.n_q, p.heads, p.head_dim)[..],
        &bshd(k, p.n_kv, p.kv_heads, p.head_dim)[..],
        &bshd(v, p.n_kv, p.kv_heads, p.head_dim_v)[..],
    );
    let rows = |x: &[f32], count: usize, stride: usize, d: usize| -> Vec<f32> {
        (0..count)
            .flat_map(|i| x[i * stride..i * stride + d].iter().copied())
            .collect()
    };
    let (d, dv) = (p.head_dim, p.head_dim_v);
    (
        sub,
        rows(q, n, p.heads * d, d),
        rows(k, p.n_kv, p.kv_heads * d, d),
        rows(v, p.n_kv, p.kv_heads * dv, dv),
    )
}

/// Checks, then times, the fused kernel, the naive kernel and the CPU reference
/// on one problem (no key lengths; seeded normal × 3 inputs).
pub fn bench_problem(ctx: &Context, p: &AttentionProblem, opt: &BenchOptions) -> Result<BenchRow> {
    // Inputs in the storage type (exact in f32), as the kernel sees them.
    let round = |x| p.dtype.round_all(x);
    let (q, k, v) = check::inputs(p, 1);
    let (q, k, v) = (round(q), round(k), round(v));
    let tensors = AttentionTensors::upload(ctx, p, &q, &k, &v, None)?;
    let bufs = tensors.buffers();

    // The first call, timed as a user meets it: plan, pipelines (compiled
    // now unless this process or the driver's shader cache has them), one
    // launch to completion.
    let first = std::time::Instant::now();
    let flash = FlashAttention::with_tiles(ctx, p, opt.tiles)?;
    let build_ms = first.elapsed().as_secs_f64() * 1e3;
    ctx.submit(|enc| flash.record(enc, &bufs))?;
    ctx.wait()?;
    let first_ms = first.elapsed().as_secs_f64() * 1e3;

    // Correctness first, on the first rows of (batch 0, head 0): the fused
    // output of that launch against the reference and a naive-order f32
    // computation of that slice.
    let n_check = p.n_q.min(64);
    let (sub, sq, sk, sv) = first_slice(p, &q, &k, &v, n_check);
    let reference = crate::reference::attention(&sub, &sq, &sk, &sv, None)?;
    let o_all = p.out_layout.convert(
        Layout::Bshd,
        &tensors.download(ctx)?.o,
        [p.batch, p.n_q, p.heads, p.head_dim_v],
    );
    let dv = p.head_dim_v;
    let got: Vec<f32> = (0..n_check)
        .flat_map(|i| {
            o_all[i * p.heads * dv..i * p.heads * dv + dv]
                .iter()
                .copied()
        })
        .collect();
    let naive_f32 = crate::reference::attention_f32(&sub, &sq, &sk, &sv, &Default::default())?;
    // NaN anywhere is an infinite error (max_err), never dropped by a fold.
    let err = |a: &[f32]| max_err(a, &reference.o);
    // The naive-order result stored in the same type as the fused one.
    let naive_stored: Vec<f32> = round(naive_f32.o);
    let (check_err, naive_err) = (err(&got), err(&naive_stored));
    let max_o = reference.o.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
    let check_bound = 2.0 * naive_err + check::o_slack(p.dtype, max_o);
    if check_err.is_nan() || check_err > check_bound {
        return Err(Error::Device(format!(
            "fused kernel failed its check on {p:?}: max error {check_err:.3e} > bound {check_bound:.3e}"
        )));
    }

    // Bind groups made once, outside the timed runs (as a model would).
    let (fused_ms, fused_spread) = time_bound(ctx, opt, &flash.bind(&bufs)?)?;
    let bound_ms = match flash.plan().kv {
        KvAccess::Texture { .. } => Some(time_bound(ctx, opt, &flash.bind_fixed_kv(&bufs)?)?.0),
        _ => None,
    };

    let io_bytes = tensors.bytes();
    let scratch = NaiveAttention::scratch_bytes(p);
    let naive_ms = if !opt.naive {
        Err("not asked for".to_string())
    } else {
        match NaiveAttention::new(ctx, p) {
            Ok(naive) => {
                let sb = ctx.storage("scores", scratch);
                let record =
                    |enc: &mut wgpu::CommandEncoder,
                     ts: Option<wgpu::ComputePassTimestampWrites<'_>>| {
                        naive.record_timed(enc, &bufs, &sb, ts)
                    };
                let sampling = opt.sampling(opt.runs.min(3));
                Ok(median_spread(&time_sampled(ctx, 1, sampling, &record)?).0)
            }
            Err(e @ (Error::BindingTooLarge { .. } | Error::Unplannable { .. })) => {
                Err(format!("skipped: {e}"))
            }
            Err(e) => return Err(e),
        }
    };
    let cpu_ms = if p.flops() <= opt.cpu_flop_budget {
        let run = || -> Result<f64> {
            let t = std::time::Instant::now();
            crate::reference::attention(p, &q, &k, &v, None)?;
            Ok(t.elapsed().as_secs_f64() * 1e3)
        };
        // At least one run, at most `opt.runs`: the reference is slow.
        let sampling = Sampling {
            max_runs: opt.runs.min(opt.max_runs),
            ..opt.sampling(1)
        };
        let samples = sampling.gather(|n| (0..n).map(|_| run()).collect())?;
        Ok(median_spread(&samples).0)
    } else {
        Err(format!(
            "skipped: {:.1} GFLOP is over the CPU budget of {:.1}",
            p.flops() / 1e9,
            opt.cpu_flop_budget / 1e9
        ))
    };
    Ok(BenchRow {
        problem: *p,
        plan: flash.plan().clone(),
        first_ms,
        build_ms,
        fused_ms,
        fused_spread,
        bound_ms,
        naive_ms,
        cpu_ms,
        check_err,
        check_bound,
        fused_bytes: io_bytes,
        naive_bytes: io_bytes + scratch,
    })
}

/// Median ms and spread of a bound launch's timed records (at least
/// `opt.runs`, see [`BenchOptions::sample_ms`]).
fn time_bound(ctx: &Context, opt: &BenchOptions, bound: &BoundAttention) -> Result<(f64, f64)> {
    let record = |enc: &mut wgpu::CommandEncoder,
                  ts: Option<wgpu::ComputePassTimestampWrites<'_>>| {
        bound.record_timed(enc, ts);
        Ok(())
    };
    let samples = time_sampled(ctx, opt.warmup, opt.sampling(opt.runs), &record)?;
    Ok(median_spread(&samples))
}

/// The seed workloads of the cross-attention literature, named.
pub fn seeds() -> Vec<(String, AttentionProblem)> {
    let p = AttentionProblem::new;
    [
        ("SD1.5 64² (4096×77)", p(2, 8, 4096, 77, 40)),
        ("SD1.5 32² (1024×77)", p(2, 8, 1024, 77, 80)),
        ("SD1.5 16² (256×77)", p(2, 8, 256, 77, 160)),
        ("SD1.5 8² (64×77)", p(2, 8, 64, 77, 160)),
        ("SDXL 4096×77", p(2, 10, 4096, 77, 64)),
        ("SDXL 1024×77", p(2, 20, 1024, 77, 64)),
        ("Whisper decode step", p(1, 20, 1, 1500, 64)),
        ("Whisper teacher-forced", p(1, 20, 448, 1500, 64)),
        ("T5-base 512×512", p(1, 12, 512, 512, 64).with_scale(1.0)),
        ("BLIP-2 Q-Former", p(4, 12, 32, 257, 64)),
        ("Flamingo resampler", p(1, 8, 64, 4096, 64)),
        ("Perceiver IO", p(1, 1, 512, 50176, 64)),
        ("square 2k", p(1, 8, 2048, 2048, 64)),
    ]
    .into_iter()
    .map(|(n, p)| (n.to_string(), p))
    .collect()
}

/// The `decode` suite: Whisper large's decoder step (1×20 heads, 1×1500,
/// d 64), then 1×8 heads at d 64 (20 heads of 32 768 keys would pass
/// lavapipe's 128 MiB binding limit), n_q 1 and 16 against n_kv 512 … 32 768.
pub fn decode_suite() -> Vec<(String, AttentionProblem)> {
    let whisper = (
        "Whisper step q1 kv1500".to_string(),
        AttentionProblem::new(1, 20, 1, 1500, 64),
    );
    std::iter::once(whisper)
        .chain([1usize, 16].into_iter().flat_map(|n_q| {
            (9..=15).map(move |e| {
                let n_kv = 1usize << e;
                (
                    format!("decode q{n_q} kv{n_kv}"),
                    AttentionProblem::new(1, 8, n_q, n_kv, 64),
                )
            })
        }))
        .collect()
}

/// Median ms of the fused kernel with `force` (inputs seeded; correctness is
/// the test suite's job, this only times).
pub fn time_fused(
    ctx: &Context,
    p: &AttentionProblem,
    force: TileOverride,
    opt: &BenchOptions,
) -> Result<(f64, FlashPlan)> {
    time_fused_masked(ctx, p, &Masks::default(), force, opt)
}

/// [`time_fused`] with lengths, packing, bias or mask.
pub fn time_fused_masked(
    ctx: &Context,
    p: &AttentionProblem,
    masks: &Masks<'_>,
    force: TileOverride,
    opt: &BenchOptions,
) -> Result<(f64, FlashPlan)> {
    let flash = FlashAttention::with_tiles(ctx, p, force)?;
    let (q, k, v) = check::inputs(p, 2);
    let tensors = AttentionTensors::upload_with(ctx, p, &q, &k, &v, masks)?;
    let ms = time_bound(ctx, opt, &flash.bind(&tensors.buffers())?)?.0;
    Ok((ms, flash.plan().clone()))
}

/// A decode loop as a model runs it: the encoder's K/V uploaded and bound
/// once ([`FlashAttention::bind_fixed_kv`]), then `steps` times a new query
/// row written, one launch recorded and submitted; one wait at the end.
/// Returns wall-clock ms per step.
pub fn decode_loop_ms(ctx: &Context, p: &AttentionProblem, steps: usize) -> Result<f64> {
    let flash = FlashAttention::new(ctx, p)?;
    let (q, k, v) = check::inputs(p, 3);
    let tensors = AttentionTensors::upload(ctx, p, &q, &k, &v, None)?;
    let bound = flash.bind_fixed_kv(&tensors.buffers())?;
    let queries: Vec<Vec<f32>> = (0..8).map(|s| check::inputs(p, 100 + s).0).collect();
    ctx.wait()?;
    let t = std::time::Instant::now();
    for step in 0..steps {
        tensors.write_q(ctx, &queries[step % queries.len()])?;
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        bound.record(&mut enc);
        ctx.queue().submit([enc.finish()]);
    }
    ctx.wait()?;
    Ok(t.elapsed().as_secs_f64() * 1e3 / steps.max(1) as f64)
}

/// A masked workload: the problem and its lengths.
#[derive(Debug, Clone)]
pub struct MaskedWorkload {
    /// Name in the table.
    pub name: String,
    /// The problem (window, lengths declared).
    pub problem: AttentionProblem,
    /// Key lengths, if declared.
    pub kv_lens: Option<Vec<u32>>,
    /// Query lengths, if declared.
    pub q_lens: Option<Vec<u32>>,
}

impl MaskedWorkload {
    /// The host masks.
    pub fn masks(&self) -> Masks<'_> {
        Masks {
            kv_lens: self.kv_lens.as_deref(),
            q_lens: self.q_lens.as_deref(),
            ..Masks::default()
        }
    }

    /// Fraction of the (query, key) pairs of the padded problem that are
    /// visible (FLOPs actually needed / dense FLOPs).
    pub fn visible_fraction(&self) -> f64 {
        let p = &self.problem;
        let mut seen = 0usize;
        for b in 0..p.batch {
            let nq = self.q_lens.as_ref().map_or(p.n_q, |l| l[b] as usize);
            let nk = self.kv_lens.as_ref().map_or(p.n_kv, |l| l[b] as usize);
            seen += (0..nq)
                .map(|i| {
                    let (lo, hi) = p.window.map_or((0, nk), |w| w.keys(i, nq, nk));
                    hi - lo
                })
                .sum::<usize>();
        }
        seen as f64 / (p.batch * p.n_q * p.n_kv) as f64
    }
}

/// The block-skipping suite: causal 2k × 2k, a sliding window, and a padded
/// batch whose query and key lengths leave half of each padding.
pub fn masks_suite() -> Vec<MaskedWorkload> {
    let square = AttentionProblem::new(1, 8, 2048, 2048, 64);
    let lens = vec![1024u32, 512, 384, 128];
    vec![
        MaskedWorkload {
            name: "causal 1x8 2048x2048 d64".into(),
            problem: square.with_causal(),
            kv_lens: None,
            q_lens: None,
        },
        MaskedWorkload {
            name: "window 256,0 1x8 2048² d64".into(),
            problem: square.with_window(Window::sliding(256, 0)),
            kv_lens: None,
            q_lens: None,
        },
        MaskedWorkload {
            name: "50% padding 4x4 1024² d64".into(),
            problem: AttentionProblem::new(4, 4, 1024, 1024, 64)
                .with_kv_lens(true)
                .with_q_lens(true),
            kv_lens: Some(lens.clone()),
            q_lens: Some(lens),
        },
    ]
}

/// What block skipping saves on one masked workload, measured in one run.
#[derive(Debug, Clone)]
pub struct SkipRow {
    /// The workload.
    pub workload: MaskedWorkload,
    /// Plan of the skipping launch.
    pub plan: FlashPlan,
    /// Median ms with block skipping (the default).
    pub skip_ms: f64,
    /// Median ms with skipping off: every allocated key loaded and masked.
    pub no_skip_ms: f64,
    /// Median ms of the same shape with no mask and no lengths (dense).
    pub dense_ms: f64,
    /// Max |O_skip − O_no_skip|.
    pub max_diff: f64,
    /// The tolerance check of the skipping launch against the f64 reference.
    pub skip_check: check::CheckReport,
    /// The same for the launch with skipping off.
    pub no_skip_check: check::CheckReport,
}

impl SkipRow {
    /// GFLOP/s counting only the visible (query, key) pairs.
    pub fn visible_gflops(&self) -> f64 {
        self.workload.problem.flops() * self.workload.visible_fraction()
            / (self.skip_ms * 1e-3)
            / 1e9
    }
}

/// Checks a masked workload with and without block skipping against the f64
/// reference (the tolerance rule), then times both and the dense shape.
pub fn bench_skipping(ctx: &Context, w: &MaskedWorkload, opt: &BenchOptions) -> Result<SkipRow> {
    let p = &w.problem;
    let masks = w.masks();
    let off = TileOverride {
        block_skip: Some(false),
        ..opt.tiles
    };
    let mut outputs: Vec<AttentionOutput> = Vec::new();
    let mut checked = |force: TileOverride| -> Result<check::CheckReport> {
        let flash = FlashAttention::with_tiles(ctx, p, force)?;
        let r = check::check_masked(ctx, p, &masks, 2, |q, k, v| {
            let out = flash.run_with(q, k, v, &masks)?;
            outputs.push(out.clone());
            Ok(out)
        })?;
        if !r.passed() {
            return Err(Error::Device(format!(
                "{} (block skipping {:?}) failed its check: O {:.3e} > {:.3e} or LSE {:.3e} > {:.3e}",
                w.name,
                force.block_skip,
                r.fused.o,
                r.o_bound(),
                r.fused.lse,
                r.lse_bound()
            )));
        }
        Ok(r)
    };
    let (skip_check, no_skip_check) = (checked(opt.tiles)?, checked(off)?);
    let max_diff = outputs[0]
        .o
        .iter()
        .zip(&outputs[1].o)
        .map(|(&x, &y)| check::abs_err(x as f64, y as f64))
        .fold(0.0, check::nan_max);
    let (skip_ms, plan) = time_fused_masked(ctx, p, &masks, opt.tiles, opt)?;
    let (no_skip_ms, _) = time_fused_masked(ctx, p, &masks, off, opt)?;
    let dense = AttentionProblem::new(p.batch, p.heads, p.n_q, p.n_kv, p.head_dim);
    let (dense_ms, _) = time_fused(ctx, &dense, opt.tiles, opt)?;
    Ok(SkipRow {
        workload: w.clone(),
        plan,
        skip_ms,
        no_skip_ms,
        dense_ms,
        max_diff,
        skip_check,
        no_skip_check,
    })
}
