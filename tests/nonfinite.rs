//! What NaN and ±∞ in q, k and v do (the policy the crate docs state, under
//! both plan families), and the opt-in check that refuses them.

mod common;

use common::{ctx, gpu_plan_ctx};
use xattn::check::inputs;
use xattn::{check_finite, AttentionProblem, Context, Error, FlashAttention};

/// Runs `p` with one element of q, k or v replaced; O's rows `[b, i, h]`
/// that are all finite, as a flag per (i, h).
fn finite_rows(
    ctx: &Context,
    p: &AttentionProblem,
    which: usize,
    at: usize,
    x: f32,
    lens: Option<&[u32]>,
) -> Vec<bool> {
    let (q, k, v) = inputs(p, 3);
    let mut t = [q, k, v];
    t[which][at] = x;
    let out = FlashAttention::new(ctx, p)
        .unwrap()
        .run(&t[0], &t[1], &t[2], lens)
        .unwrap();
    out.o
        .chunks(p.head_dim_v)
        .map(|row| row.iter().all(|v| v.is_finite()))
        .collect()
}

#[test]
fn non_finite_inputs_poison_exactly_the_rows_the_docs_say() {
    for ctx in [ctx(), gpu_plan_ctx()] {
        // 1 batch, 2 heads, 3 query rows, 40 keys (one kv head each), d 8.
        let p = AttentionProblem::new(1, 2, 3, 40, 8).with_kv_lens(true);
        let d = 8;
        let full = Some(&[40u32][..]);
        let row = |i: usize, h: usize| i * 2 + h;
        // NaN in query row 1 of head 0: that row only.
        let f = finite_rows(ctx, &p, 0, (row(1, 0)) * d + 3, f32::NAN, full);
        for i in 0..3 {
            for h in 0..2 {
                assert_eq!(f[row(i, h)], (i, h) != (1, 0), "q NaN: row {i} head {h}");
            }
        }
        // NaN in key 7 of head 1, or NaN or −∞ in its value: every row of
        // head 1 (all attend to key 7), none of head 0.
        let at = (7 * 2 + 1) * d + 2;
        for (which, x) in [(1, f32::NAN), (2, f32::NAN), (2, f32::NEG_INFINITY)] {
            let f = finite_rows(ctx, &p, which, at, x, full);
            for i in 0..3 {
                assert!(f[row(i, 0)], "{which} {x}: head 0 row {i} stays finite");
                assert!(!f[row(i, 1)], "{which} {x}: head 1 row {i} is not finite");
            }
        }
        // ±∞ in a key makes its score ±∞ by the sign of the query's
        // element: −∞ hides the key (the row stays finite), +∞ (or 0·∞)
        // makes the row NaN.
        let (q, _, _) = inputs(&p, 3);
        for x in [f32::INFINITY, f32::NEG_INFINITY] {
            let f = finite_rows(ctx, &p, 1, at, x, full);
            for i in 0..3 {
                let score = q[row(i, 1) * d + 2] * x;
                assert_eq!(f[row(i, 1)], score == f32::NEG_INFINITY, "k {x}: row {i}");
                assert!(f[row(i, 0)]);
            }
        }
        // A key past the batch entry's length is never read.
        let f = finite_rows(ctx, &p, 1, (30 * 2 + 1) * d, f32::NAN, Some(&[20]));
        assert!(f.iter().all(|&x| x), "NaN past kv_len");
        let f = finite_rows(ctx, &p, 2, (30 * 2 + 1) * d, f32::INFINITY, Some(&[20]));
        assert!(f.iter().all(|&x| x), "∞ past kv_len");
    }
}

#[test]
fn check_finite_refuses_naming_the_tensor_and_index() {
    assert!(check_finite("q", &[1.0, -2.0, 0.0]).is_ok());
    for (x, shown) in [
        (f32::NAN, "NaN"),
        (f32::INFINITY, "inf"),
        (f32::NEG_INFINITY, "-inf"),
    ] {
        match check_finite("v", &[1.0, 2.0, x, x]) {
            Err(
                e @ Error::NonFinite {
                    name: "v",
                    index: 2,
                    ..
                },
            ) => {
                assert!(
                    e.to_string()
                        .contains(&format!("({shown}) at flat index 2")),
                    "{e}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
