mod common;
use xattn::AttentionProblem;

#[test]
fn smoke() {
    for (nq, nkv, d) in [(1, 1, 32), (113, 203, 59), (256, 512, 64)] {
        let p = AttentionProblem::new(1, 2, nq, nkv, d);
        let (f, n) = common::check(&p, 1, None);
        println!("{nq} {nkv} {d}: fused {f:?} naive {n:?}");
    }
}
