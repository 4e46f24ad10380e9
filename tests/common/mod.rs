//! Shared test helpers.
#![allow(dead_code)]

use std::sync::OnceLock;

use xattn::check::{self, CheckReport};
use xattn::{AttentionProblem, Context, ContextOptions};

/// One device per test binary. No adapter is a failure whose message says how
/// to get one (never a skip).
pub fn ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| match Context::new() {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    })
}

/// The same adapter planned as a discrete GPU (`XATTN_PLAN=gpu`): the GPU
/// kernels and tiles, checked on whatever adapter runs the tests.
pub fn gpu_plan_ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        let opts = ContextOptions {
            plan_as_gpu: true,
            ..Default::default()
        };
        Context::with_options(&opts).unwrap_or_else(|e| panic!("{e}"))
    })
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
