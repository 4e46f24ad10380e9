//! Timing: timed runs of a recorded launch (timestamp queries or wall
//! clock), their median and spread, and how many runs a median gets on a
//! shared, noisy machine.

use crate::context::Context;
use crate::error::Result;

/// Records one timed run: the closure gets the encoder and, where the device
/// has timestamp queries, the pass timestamp writes to attach to its pass.
pub type RecordFn<'a> = dyn Fn(&mut wgpu::CommandEncoder, Option<wgpu::ComputePassTimestampWrites<'_>>) -> Result<()>
    + 'a;

/// Milliseconds of each of `runs` runs after `warmup` untimed ones. Uses
/// timestamp queries around the pass where the device has them (GPU time
/// only), else wall-clock time around submit and a full device wait.
pub fn time_runs(
    ctx: &Context,
    warmup: usize,
    runs: usize,
    record: &RecordFn<'_>,
) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        ctx.submit(|enc| record(enc, None))?;
    }
    let mut out = Vec::with_capacity(runs);
    if !ctx.caps().timestamps {
        for _ in 0..runs {
            let t = std::time::Instant::now();
            ctx.submit(|enc| record(enc, None))?;
            out.push(t.elapsed().as_secs_f64() * 1e3);
        }
        return Ok(out);
    }
    let device = ctx.device();
    let set = device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("xattn timestamps"),
        ty: wgpu::QueryType::Timestamp,
        count: 2,
    });
    let resolve = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("xattn timestamp resolve"),
        size: 16,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let period_ns = ctx.queue().get_timestamp_period() as f64;
    for _ in 0..runs {
        ctx.submit(|enc| {
            record(
                enc,
                Some(wgpu::ComputePassTimestampWrites {
                    query_set: &set,
                    beginning_of_pass_write_index: Some(0),
                    end_of_pass_write_index: Some(1),
                }),
            )?;
            enc.resolve_query_set(&set, 0..2, &resolve, 0);
            Ok(())
        })?;
        let ticks: Vec<u64> = ctx.download(&resolve, 2)?;
        out.push(ticks[1].wrapping_sub(ticks[0]) as f64 * period_ns * 1e-6);
    }
    Ok(out)
}

/// Median and (max − min) / median of a sample.
pub fn median_spread(xs: &[f64]) -> (f64, f64) {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let med = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        0.5 * (v[v.len() / 2 - 1] + v[v.len() / 2])
    };
    (med, (v[v.len() - 1] - v[0]) / med)
}

/// How many timed runs a median (or a minimum) gets: at least `least`, and
/// more, up to `max_runs`, until the samples span `sample_ms`. A noise
/// burst of a few milliseconds on a shared machine then cannot move a
/// millisecond kernel's median, while a slow kernel still runs `least`
/// times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Fewest runs.
    pub least: usize,
    /// Milliseconds the samples span at least (below `max_runs`).
    pub sample_ms: f64,
    /// Most runs.
    pub max_runs: usize,
}

impl Sampling {
    /// Runs for samples of about `est_ms` each.
    pub fn runs_for(&self, est_ms: f64) -> usize {
        let wanted = (self.sample_ms / est_ms.max(1e-3)).ceil();
        (wanted.min(self.max_runs as f64) as usize)
            .max(self.least)
            .max(1)
    }
}

impl Sampling {
    /// The samples of `run(n)` (n more samples in ms): one run first, which
    /// estimates the time and is one of the samples, then the rest of
    /// [`Sampling::runs_for`] that estimate.
    pub fn gather(&self, mut run: impl FnMut(usize) -> Result<Vec<f64>>) -> Result<Vec<f64>> {
        let mut samples = run(1)?;
        let more = self.runs_for(samples.first().copied().unwrap_or(f64::NAN)) - 1;
        if more > 0 {
            samples.extend(run(more)?);
        }
        Ok(samples)
    }
}

/// Timed runs of `record` after `warmup` untimed ones, as many as
/// [`Sampling::gather`] asks for.
pub fn time_sampled(
    ctx: &Context,
    warmup: usize,
    sampling: Sampling,
    record: &RecordFn<'_>,
) -> Result<Vec<f64>> {
    // The warm-up goes before the first (estimating) run only.
    let mut warmup = warmup;
    sampling.gather(|n| time_runs(ctx, std::mem::take(&mut warmup), n, record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_runs_fill_the_sample_time_up_to_the_cap_and_slow_ones_keep_the_least() {
        let s = Sampling {
            least: 9,
            sample_ms: 300.0,
            max_runs: 101,
        };
        assert_eq!(s.runs_for(10.0), 30);
        assert_eq!(s.runs_for(1.0), 101);
        assert_eq!(s.runs_for(0.0), 101);
        assert_eq!(s.runs_for(200.0), 9);
        assert_eq!(s.runs_for(f64::NAN), 101);
        let one = Sampling {
            least: 0,
            sample_ms: 0.0,
            max_runs: 101,
        };
        assert_eq!(one.runs_for(5.0), 1);
    }

    #[test]
    fn gather_estimates_from_the_first_run_and_asks_for_the_rest_once() {
        let s = Sampling {
            least: 3,
            sample_ms: 100.0,
            max_runs: 50,
        };
        let mut asked = Vec::new();
        let got = s
            .gather(|n| {
                asked.push(n);
                Ok(vec![10.0; n])
            })
            .unwrap();
        assert_eq!((asked, got.len()), (vec![1, 9], 10));
        // A slow first run: the least, and no call for zero more runs.
        let one = Sampling { least: 1, ..s };
        let mut asked = Vec::new();
        one.gather(|n| {
            asked.push(n);
            Ok(vec![500.0; n])
        })
        .unwrap();
        assert_eq!(asked, vec![1]);
    }

    #[test]
    fn median_and_spread_of_odd_and_even_samples() {
        assert_eq!(median_spread(&[3.0, 1.0, 2.0]), (2.0, 1.0));
        assert_eq!(median_spread(&[4.0, 1.0, 2.0, 3.0]), (2.5, 3.0 / 2.5));
        assert!(median_spread(&[]).0.is_nan());
    }
}
