//! Shared test helpers.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use xattn::check::{self, CheckReport};
use xattn::{AttentionProblem, Context, ContextOptions};

/// Devices per test binary. A CPU driver compiles a pipeline at its first
/// dispatch, on the device's one queue thread: on a single device the
/// compiles of tests running side by side wait for each other. Two devices
/// let the test harness's two threads (on a 2-core machine) compile at once:
/// two cold pipelines built from two threads took 1.18–1.45 s on two
/// lavapipe devices against 2.15–2.70 s on one.
const DEVICES: usize = 2;

/// Which of the [`DEVICES`] this thread's tests use: each test runs on a
/// thread of its own, and consecutive tests take turns, so tests running at
/// the same time mostly sit on different devices. Everything one test does
/// from its own thread stays on one device.
fn device_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % DEVICES;
    }
    SLOT.with(|s| *s)
}

/// A device for this test (one of [`DEVICES`] per test binary). No adapter is
/// a failure whose message says how to get one (never a skip).
pub fn ctx() -> &'static Context {
    ctx_at(device_slot())
}

/// Device `slot` (below [`DEVICES`]) of this test binary.
pub fn ctx_at(slot: usize) -> &'static Context {
    static CTX: [OnceLock<Context>; DEVICES] = [const { OnceLock::new() }; DEVICES];
    CTX[slot].get_or_init(|| match Context::new() {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    })
}

/// The same adapter planned as a discrete GPU (`XATTN_PLAN=gpu`): the GPU
/// kernels and tiles, checked on whatever adapter runs the tests (one of
/// [`DEVICES`], as [`ctx`]).
pub fn gpu_plan_ctx() -> &'static Context {
    gpu_plan_ctx_at(device_slot())
}

/// Device `slot` of this test binary planned as a discrete GPU.
pub fn gpu_plan_ctx_at(slot: usize) -> &'static Context {
    static CTX: [OnceLock<Context>; DEVICES] = [const { OnceLock::new() }; DEVICES];
    CTX[slot].get_or_init(|| {
        let opts = ContextOptions {
            plan_as_gpu: true,
            ..Default::default()
        };
        Context::with_options(&opts).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// `check(device, item)` for every item, the items dealt out in turn to one
/// thread per device (`device(slot)`: [`ctx_at`] or [`gpu_plan_ctx_at`]), so
/// a long list of cases compiles its pipelines on all [`DEVICES`] at once.
/// The results come back in the items' order; a failing check fails the
/// test with its own message.
///
/// Only where it pays: on lavapipe (2 cores, empty shader cache, two runs
/// of each binary alternated) tests/half.rs, whose two long tests sit on
/// different device sets, took 64–66 s with it against 97–105 s without;
/// the shape grid (tests/attention.rs) and the decode kernel's GQA cases
/// (tests/decode.rs) ran 113–120 against 108–116 s and 139–155 against
/// 98–117 s, their workers then sharing devices with the binary's other
/// tests on cores that were already busy.
pub fn each_on_devices<T: Sync, R: Send>(
    items: &[T],
    device: fn(usize) -> &'static Context,
    check: impl Fn(&'static Context, &T) -> R + Sync,
) -> Vec<R> {
    let check = &check;
    let mut dealt: Vec<Vec<(usize, R)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..DEVICES)
            .map(|slot| {
                s.spawn(move || {
                    let ctx = device(slot);
                    (slot..items.len())
                        .step_by(DEVICES)
                        .map(|i| (i, check(ctx, &items[i])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut all: Vec<(usize, R)> = dealt.drain(..).flatten().collect();
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// Runs fused, naive and the f64 reference; asserts the tolerance rule.
pub fn assert_close(p: &AttentionProblem, kv_lens: Option<&[u32]>, seed: u64) -> CheckReport {
    assert_close_on(ctx(), p, kv_lens, seed)
}

/// [`assert_close`] on a given context.
pub fn assert_close_on(
    ctx: &Context,
    p: &AttentionProblem,
    kv_lens: Option<&[u32]>,
    seed: u64,
) -> CheckReport {
    let r = check::check(ctx, p, kv_lens, seed).unwrap_or_else(|e| panic!("{p:?}: {e}"));
    assert!(
        r.passed(),
        "{p:?} kv_lens {kv_lens:?}: fused O {:.3e} (bound {:.3e}), LSE {:.3e} (bound {:.3e})",
        r.fused.o,
        r.o_bound(),
        r.fused.lse,
        r.lse_bound()
    );
    r
}
