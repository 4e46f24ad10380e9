//! The generated parts of `flash_simd.wgsl`: each row's window and mask rows,
//! and the key block, unrolled over the TR rows of a lane, the SG keys of a
//! block and the vec4s of the head dims. WGSL has no unroll attribute,
//! and a CPU driver turns a loop-indexed private array into per-lane
//! gathers and a load inside a loop into a per-lane scalar loop (see the
//! shader's header), so the straight-line code is written here.
//!
//! Names in the generated code: `q{t}_{c}`, `o{t}_{c}` (row t's Q and O
//! vec4 c, read from and written back to the private arrays `qa`, `oa`);
//! `m{t}`, `mn{t}`, `al{t}` (row t's max before and after the block, and the
//! rescale of its O and l); `k{c}`, `v{c}` (this lane's key's K and V
//! vec4s); `ks{n}_{c}`, `vs{n}_{c}` (lane n's, broadcast); `s{t}_{n}`,
//! `p{t}_{n}` (row t's score and probability of the block's key n).

use std::fmt::Write;

/// Rows per lane, keys per block and the head dims in vec4s.
#[derive(Debug, Clone, Copy)]
pub(super) struct Unroll {
    pub tr: u32,
    pub bc: u32,
    pub d4: u32,
    pub dv4: u32,
}

/// The kernel body: `flash_simd.wgsl` with its `$ROWS` and `$BLOCK` lines
/// replaced by the generated code.
pub(super) fn body(template: &str, u: Unroll) -> String {
    template
        .replace("$ROWS\n", &rows(u))
        .replace("$PROLOGUE\n", &prologue(u))
        .replace("$BLOCK\n", &block(u))
        .replace("$EPILOGUE\n", &epilogue(u))
}

/// `writeln!` into a String cannot fail.
macro_rules! line {
    ($s:expr, $($arg:tt)*) => {
        let _ = writeln!($s, $($arg)*);
    };
}

fn rows(u: Unroll) -> String {
    let mut s = String::new();
    let i = "    ";
    for t in 0..u.tr {
        line!(s, "{i}let qi{t} = i0 + lane + SG * {t}u;");
        line!(
            s,
            "{i}let win{t} = select(vec2<u32>(0u), row_keys(sq, qi{t}), WIN != 0u);"
        );
        line!(
            s,
            "{i}let at{t} = select(vec2<u32>(0u), mask_row(b, h, min(qi{t}, sq.nq - 1u)), MASK != 0u);"
        );
    }
    s
}

/// Each row's Q (scaled; zero past the workgroup's rows) and its state:
/// reset, or carried in from an earlier launch.
fn prologue(u: Unroll) -> String {
    let mut s = String::new();
    let i = "    ";
    for t in 0..u.tr {
        for c in 0..u.d4 {
            line!(
                s,
                "{i}qa[{}] = q_scaled4(b, sq.q0 + qi{t}, h, {c}u, qi{t} < i_end);",
                t * u.d4 + c
            );
        }
        line!(s, "{i}ml[{t}] = vec2<f32>(NEG_BIG, 0.0);");
        for c in 0..u.dv4 {
            line!(s, "{i}oa[{}] = vec4<f32>(0.0);", t * u.dv4 + c);
        }
        line!(s, "{i}if (carried && qi{t} < sq.nq) {{");
        line!(
            s,
            "{i}    let sb = state_base(tile.split, row_index(b, h, sq.q0 + qi{t}));"
        );
        line!(s, "{i}    ml[{t}] = state[sb].xy;");
        for c in 0..u.dv4 {
            line!(s, "{i}    oa[{}] = state[sb + {}u];", t * u.dv4 + c, 1 + c);
        }
        line!(s, "{i}}}");
    }
    s
}

/// Each row's O/l and LSE, or its state for the next launch or the split-KV
/// combine; padded query rows (qi ≥ i_end) get O = 0, LSE = −∞.
fn epilogue(u: Unroll) -> String {
    let mut s = String::new();
    let i = "    ";
    for t in 0..u.tr {
        line!(s, "{i}if (qi{t} < sq.nq) {{");
        line!(s, "{i}    let live = qi{t} < i_end;");
        line!(s, "{i}    let m_t = select(NEG_BIG, ml[{t}].x, live);");
        line!(s, "{i}    let l_t = select(0.0, ml[{t}].y, live);");
        line!(s, "{i}    let row = row_index(b, h, sq.q0 + qi{t});");
        line!(s, "{i}    if (out) {{");
        line!(s, "{i}        let inv = inv_l(l_t);");
        line!(s, "{i}        let ob = o_base(b, sq.q0 + qi{t}, h);");
        for c in 0..u.dv4 {
            line!(
                s,
                "{i}        store_o4(ob, {c}u, select(vec4<f32>(0.0), oa[{}] * inv, live));",
                t * u.dv4 + c
            );
        }
        line!(s, "{i}        lse[row] = lse_of(m_t, l_t);");
        line!(s, "{i}    }} else {{");
        line!(s, "{i}        let sb = state_base(tile.split, row);");
        line!(s, "{i}        state[sb] = vec4<f32>(m_t, l_t, 0.0, 0.0);");
        for c in 0..u.dv4 {
            line!(
                s,
                "{i}        state[sb + {}u] = select(vec4<f32>(0.0), oa[{}], live);",
                1 + c,
                t * u.dv4 + c
            );
        }
        line!(s, "{i}    }}");
        line!(s, "{i}}}");
    }
    s
}

/// Most ⌈d/4⌉ + ⌈d_v/4⌉ whose K and V rows the block loads at its top.
const LAZY_VEC4S: u32 = 64;

fn block(u: Unroll) -> String {
    let i = "        ";
    let mut s = String::new();
    // Where the lane's K and V rows are loaded. Up to LAZY_VEC4S vec4s
    // (d = d_v = 128), all at the top of the block, so the texture gathers
    // overlap (d 40 and 80 ran 15 % faster so); past it each vec4 just
    // before its use, which keeps the live set at the partial sums and one
    // vec4 of K, Q and V instead of whole rows: at d 160, 120 vec4s per
    // lane, which the driver's register allocator spent seconds on (SD 16²,
    // d 160, on lavapipe: first call 6.3–7.4 s eager, 4.3–5.3 s lazy, and
    // 13 ms against 14–20 ms per call).
    let lazy = u.d4 + u.dv4 > LAZY_VEC4S;
    if !lazy {
        for c in 0..u.d4 {
            line!(s, "{i}let k{c} = k_row4(kr, {c}u, D);");
        }
        for c in 0..u.dv4 {
            line!(s, "{i}let v{c} = v_row4(vr, {c}u, DV);");
        }
    }
    // S = Q·Kᵀ, one head-dim vec4 at a time: each broadcast of this lane's
    // key vec4 c feeds TR FMAs into the (row, key) partial sums.
    for c in 0..u.d4 {
        if lazy {
            line!(s, "{i}let k{c} = k_row4(kr, {c}u, D);");
        }
        for t in 0..u.tr {
            line!(s, "{i}let q{t}_{c} = qa[{}];", t * u.d4 + c);
        }
        for n in 0..u.bc {
            line!(s, "{i}let ks{n}_{c} = subgroupBroadcast(k{c}, {n}u);");
            for t in 0..u.tr {
                if c == 0 {
                    line!(s, "{i}let a{t}_{n}_0 = q{t}_0 * ks{n}_0;");
                } else {
                    line!(
                        s,
                        "{i}let a{t}_{n}_{c} = fma(q{t}_{c}, ks{n}_{c}, a{t}_{n}_{});",
                        c - 1
                    );
                }
            }
        }
    }
    for n in 0..u.bc {
        for t in 0..u.tr {
            line!(
                s,
                "{i}let s{t}_{n} = keep(hsum4(a{t}_{n}_{}), kv0 + {n}u, end, win{t}, at{t});",
                u.d4 - 1
            );
        }
    }
    // The online softmax, per row: new max, rescale, probabilities.
    for t in 0..u.tr {
        let scores: Vec<String> = (0..u.bc).map(|n| format!("s{t}_{n}")).collect();
        line!(s, "{i}let m{t} = ml[{t}].x;");
        line!(s, "{i}let mn{t} = max(m{t}, {});", tree("max", &scores));
        line!(s, "{i}let al{t} = merge_weight(m{t}, mn{t});");
        for n in 0..u.bc {
            line!(s, "{i}let p{t}_{n} = exp2(s{t}_{n} - mn{t});");
        }
        let probs: Vec<String> = (0..u.bc).map(|n| format!("p{t}_{n}")).collect();
        line!(
            s,
            "{i}ml[{t}] = vec2<f32>(mn{t}, fma(ml[{t}].y, al{t}, {}));",
            tree("add", &probs)
        );
    }
    // O = O·alpha + P·V: one broadcast of a value vec4 feeds TR FMAs.
    for c in 0..u.dv4 {
        if lazy {
            line!(s, "{i}let v{c} = v_row4(vr, {c}u, DV);");
        }
        for t in 0..u.tr {
            line!(s, "{i}var o{t}_{c} = oa[{}] * al{t};", t * u.dv4 + c);
        }
        for n in 0..u.bc {
            line!(s, "{i}let vs{n}_{c} = subgroupBroadcast(v{c}, {n}u);");
            for t in 0..u.tr {
                line!(
                    s,
                    "{i}o{t}_{c} = fma(vec4<f32>(p{t}_{n}), vs{n}_{c}, o{t}_{c});"
                );
            }
        }
        for t in 0..u.tr {
            line!(s, "{i}oa[{}] = o{t}_{c};", t * u.dv4 + c);
        }
    }
    s
}

/// `op` (max or add) over `xs` as a balanced tree: log₂ n dependent steps.
fn tree(op: &str, xs: &[String]) -> String {
    match xs.len() {
        0 => unreachable!("a block has at least one key"),
        1 => xs[0].clone(),
        n => {
            let (a, b) = xs.split_at(n / 2);
            let (a, b) = (tree(op, a), tree(op, b));
            if op == "add" {
                format!("({a} + {b})")
            } else {
                format!("{op}({a}, {b})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_marker_is_filled_and_names_are_unique() {
        let template = include_str!("../../shaders/flash_simd.wgsl");
        let u = Unroll {
            tr: 2,
            bc: 4,
            d4: 3,
            dv4: 2,
        };
        let src = body(template, u);
        assert!(!src.contains('$'), "a marker is left");
        let mut lets = std::collections::HashSet::new();
        for line in src.lines() {
            let line = line.trim_start();
            if let Some(rest) = line.strip_prefix("let ") {
                let name = rest.split([' ', ':']).next().unwrap_or_default();
                // The template's own names repeat across its scopes; the
                // generated ones must be unique.
                if ![
                    "inv", "ob", "kr", "vr", "j", "qi", "live", "m_t", "l_t", "row", "sb",
                ]
                .contains(&name)
                {
                    assert!(lets.insert(name.to_string()), "{name} declared twice");
                }
            }
        }
        assert!(src.contains("let ks3_2 = subgroupBroadcast(k2, 3u);"));
        assert!(src.contains("let mn1 = max(m1, max(max(s1_0, s1_1), max(s1_2, s1_3)));"));
        assert!(
            src.contains("oa[3] = o1_1;"),
            "O written back at constant indices"
        );
        assert_eq!(
            tree("add", &["a".into(), "b".into(), "c".into()]),
            "(a + (b + c))"
        );
    }
}
