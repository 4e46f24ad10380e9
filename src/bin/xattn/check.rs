//! `xattn check`: the fused kernel against the f64 reference on a shape grid.

use std::process::ExitCode;

use clap::Args;
use xattn::{Context, Dtype, Error};

use crate::DtypeArg;

#[derive(Args)]
pub struct CheckArgs {
    /// Every third case only.
    #[arg(long)]
    quick: bool,
    /// One storage type instead of all three (f32, f16, bf16).
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
}

pub fn check(a: &CheckArgs) -> Result<ExitCode, Error> {
    let ctx = Context::new()?;
    println!(
        "adapter: {} ({:?})",
        ctx.caps().info.name,
        ctx.caps().info.backend
    );
    let (mut passed, mut failed) = (0, 0);
    let dtypes = a
        .dtype
        .map_or(vec![Dtype::F32, Dtype::F16, Dtype::Bf16], |d| {
            vec![d.dtype()]
        });
    for (dtype, case) in dtypes
        .iter()
        .flat_map(|&d| xattn::check::grid(a.quick).into_iter().map(move |c| (d, c)))
    {
        let p = case.problem.with_dtype(dtype);
        let r = xattn::check::check(&ctx, &p, case.kv_lens.as_deref(), case.seed)?;
        let ok = r.passed();
        println!(
            "{:<4} {:<4} {:<48} O {:.2e} (bound {:.2e})  LSE {:.2e} (bound {:.2e})",
            if ok { "ok" } else { "FAIL" },
            dtype.to_string(),
            case.name(),
            r.fused.o,
            r.o_bound(),
            r.fused.lse,
            r.lse_bound()
        );
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
