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
    /// Launches carry a softmax state (KernelTiles::Simd's `state`).
    pub state: bool,
    pub tr: u32,
    pub bc: u32,
    pub d4: u32,
    pub dv4: u32,
    /// Q is read from its texture mirror (`q_row4` a gather, not a storage
    /// load), so the block may read it again inside a loop.
    pub q_mirror: bool,
}

impl Unroll {
    /// Whether the lane's K and V rows are loaded vec4 by vec4 just before
    /// their use (past [`LAZY_VEC4S`]) instead of at the block's top.
    fn lazy(self) -> bool {
        self.d4 + self.dv4 > LAZY_VEC4S
    }

    /// Whether the block's Q·Kᵀ half is a loop over chunks of the head dim
    /// that reads Q from its mirror ([`rolls_scores`]).
    fn rolled(self) -> bool {
        rolls_scores(self.d4, self.dv4, self.q_mirror)
    }
}

/// Whether the simd kernel's block computes Q·Kᵀ in a loop over chunks of
/// the head dim (`rolled_scores`) for rows of `d4` and `dv4` vec4s: past
/// [`LAZY_VEC4S`], where Q has a texture mirror. The planner reads it too:
/// such a block compiles small enough for two query rows per lane.
pub(crate) fn rolls_scores(d4: u32, dv4: u32, q_mirror: bool) -> bool {
    d4 + dv4 > LAZY_VEC4S && q_mirror
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
        if u.rolled() {
            line!(
                s,
                "{i}let qb{t} = q_base(b, sq.q0 + min(qi{t}, sq.nq - 1u), h);"
            );
            line!(s, "{i}let ql{t} = qi{t} < i_end;");
        }
    }
    s
}

/// Most vec4s one iteration of a prologue or epilogue loop moves.
const CHUNK: u32 = 8;

/// vec4s per chunk of a row of `n4`: as even as the chunks can be, so few
/// slots fall past the row (d 40: two chunks of 5, not 8 + 2).
fn width(n4: u32) -> u32 {
    n4.div_ceil(n4.div_ceil(CHUNK).max(1)).max(1)
}

fn chunks(n4: u32) -> u32 {
    n4.div_ceil(width(n4))
}

/// Opens a loop over the chunks of a row of `n4` vec4s: `c{i}` is the vec4
/// of slot i in chunk `ch`. Its count is multiplied by `params.one` (1 at
/// run time), so the driver cannot unroll it: the loop body holds one
/// memory access per slot, where unrolled code held one per vec4. On
/// lavapipe each storage access in a shader is a loop over the SIMD lanes
/// of its own, and those accesses (Q in; O, LSE or the state out) were two
/// thirds of the d 160 compile.
fn open_chunks(s: &mut String, ind: &str, n4: u32) {
    line!(
        s,
        "{ind}for (var ch = 0u; ch < {}u * params.one; ch++) {{",
        chunks(n4)
    );
    for i in 0..width(n4) {
        line!(s, "{ind}    let c{i} = ch * {}u + {i}u;", width(n4));
    }
}

/// Moves `x{i}` into element `base + k·width + i` of `arr` for the chunk k
/// that is `ch`, by selects: the array stays indexed by constants.
fn scatter(s: &mut String, ind: &str, arr: &str, base: u32, n4: u32) {
    for k in 0..chunks(n4) {
        for i in 0..width(n4) {
            let e = base + k * width(n4) + i;
            if k * width(n4) + i < n4 {
                line!(s, "{ind}{arr}[{e}] = select({arr}[{e}], x{i}, ch == {k}u);");
            }
        }
    }
}

/// A loop over the chunks of a row of `n4` vec4s (`open_chunks`, at `ind`)
/// that loads slot n's vec4 as `load(n)` and moves it into `arr` from
/// element `base` (`scatter`).
fn load_chunks(
    s: &mut String,
    ind: &str,
    arr: &str,
    base: u32,
    n4: u32,
    load: impl Fn(u32) -> String,
) {
    open_chunks(s, ind, n4);
    for n in 0..width(n4) {
        line!(s, "{ind}    let x{n} = {};", load(n));
    }
    scatter(s, &format!("{ind}    "), arr, base, n4);
    line!(s, "{ind}}}");
}

/// `y{i}`: element `base + ch·width + i` of `arr`, picked by selects.
fn gather(s: &mut String, ind: &str, arr: &str, base: u32, n4: u32) {
    for i in 0..width(n4) {
        line!(s, "{ind}var y{i} = {arr}[{}];", base + i);
        for k in 1..chunks(n4) {
            if k * width(n4) + i < n4 {
                line!(
                    s,
                    "{ind}y{i} = select(y{i}, {arr}[{}], ch == {k}u);",
                    base + k * width(n4) + i
                );
            }
        }
    }
}

/// Each row's Q (scaled; zero past the workgroup's rows) and its state:
/// reset, or carried in from an earlier launch.
fn prologue(u: Unroll) -> String {
    let mut s = String::new();
    let (i, ii) = ("    ", "        ");
    for t in 0..u.tr {
        // A rolled block reads Q from its mirror (`block`), not from `qa`.
        if !u.rolled() {
            load_chunks(&mut s, i, "qa", t * u.d4, u.d4, |n| {
                format!("q_scaled4(b, sq.q0 + qi{t}, h, c{n}, qi{t} < i_end && c{n} < D4)")
            });
        }
        line!(s, "{i}ml[{t}] = vec2<f32>(NEG_BIG, 0.0);");
        for c in 0..u.dv4 {
            line!(s, "{i}oa[{}] = vec4<f32>(0.0);", t * u.dv4 + c);
        }
        if !u.state {
            continue;
        }
        line!(s, "{i}if (carried && qi{t} < sq.nq) {{");
        line!(
            s,
            "{ii}let sb = state_base(tile.split, row_index(b, h, sq.q0 + qi{t}));"
        );
        line!(s, "{ii}ml[{t}] = state[sb].xy;");
        load_chunks(&mut s, ii, "oa", t * u.dv4, u.dv4, |n| {
            format!("select(vec4<f32>(0.0), state[sb + 1u + min(c{n}, DV4 - 1u)], c{n} < DV4)")
        });
        line!(s, "{i}}}");
    }
    s
}

/// Each row's O/l and LSE, or its state for the next launch or the split-KV
/// combine; padded query rows (qi ≥ i_end) get O = 0, LSE = −∞.
fn epilogue(u: Unroll) -> String {
    let mut s = String::new();
    let (i, ii, iii, iv) = ("    ", "        ", "            ", "                ");
    for t in 0..u.tr {
        line!(s, "{i}if (qi{t} < sq.nq) {{");
        line!(s, "{ii}let live = qi{t} < i_end;");
        line!(s, "{ii}let m_t = select(NEG_BIG, ml[{t}].x, live);");
        line!(s, "{ii}let l_t = select(0.0, ml[{t}].y, live);");
        line!(s, "{ii}let row = row_index(b, h, sq.q0 + qi{t});");
        line!(s, "{ii}let ob = o_base(b, sq.q0 + qi{t}, h);");
        if u.state {
            line!(s, "{ii}let inv = select(1.0, inv_l(l_t), out);");
            line!(s, "{ii}let sb = state_base(tile.split, row);");
        } else {
            line!(s, "{ii}let inv = inv_l(l_t);");
        }
        out_or_state(
            &mut s,
            ii,
            u.state,
            "lse[row] = lse_of(m_t, l_t);",
            "state[sb] = vec4<f32>(m_t, l_t, 0.0, 0.0);",
        );
        // One loop for O (out) or the state (not out): its vec4s, scaled
        // by 1/l for O, zero for padded rows.
        open_chunks(&mut s, ii, u.dv4);
        gather(&mut s, iii, "oa", t * u.dv4, u.dv4);
        for n in 0..width(u.dv4) {
            line!(s, "{iii}if (c{n} < DV4) {{");
            line!(s, "{iv}let y = select(vec4<f32>(0.0), y{n} * inv, live);");
            out_or_state(
                &mut s,
                iv,
                u.state,
                &format!("store_o4(ob, c{n}, y);"),
                &format!("state[sb + 1u + c{n}] = y;"),
            );
            line!(s, "{iii}}}");
        }
        line!(s, "{ii}}}");
        line!(s, "{i}}}");
    }
    s
}

/// Writes `to_out` where this launch writes the output and `to_state`
/// where it passes the state on (`out`), or just `to_out` where no launch
/// carries state.
fn out_or_state(s: &mut String, ind: &str, state: bool, to_out: &str, to_state: &str) {
    if state {
        line!(s, "{ind}if (out) {{");
        line!(s, "{ind}    {to_out}");
        line!(s, "{ind}}} else {{");
        line!(s, "{ind}    {to_state}");
        line!(s, "{ind}}}");
    } else {
        line!(s, "{ind}{to_out}");
    }
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
    let lazy = u.lazy();
    if !lazy {
        for c in 0..u.d4 {
            line!(s, "{i}let k{c} = k_row4(kr, {c}u, D);");
        }
        for c in 0..u.dv4 {
            line!(s, "{i}let v{c} = v_row4(vr, {c}u, DV);");
        }
    }
    // S = Q·Kᵀ, one head-dim vec4 at a time: each broadcast of this lane's key
    // vec4 c feeds TR dot products, added into the (row, key) scores. Scalar
    // sums: TR·Bc of them live across the loop over c, where vec4 partial sums
    // (summed across at the end) kept 4× as many, past the CPU's 16 vector
    // registers: in the JIT code of SD 64²'s block (d 40, 8 keys), 985 of 4545
    // instructions had a spilled operand, against 579 of 4344 with scalar
    // sums. Both kernels in one process, alternated, median ratio of 8–10
    // pairs (lavapipe, 2026-12-02): SD 64² 0.88× the time, SDXL 4096×77 0.90,
    // SD 32² 0.93, T5-base 0.93, Flamingo 0.87, Whisper teacher-forced 0.86,
    // square 2k 0.87, BLIP-2 0.76 and 0.99 in two runs; first calls unchanged
    // at d 40 to 128. Where K is loaded lazily (past LAZY_VEC4S) the vec4 sums
    // stay: at d 160 the scalar ones ran 0.88× but took the first call from
    // 4.3 to 7.5–8.0 s on the same machine.
    // Past LAZY_VEC4S with a Q mirror this half is a loop instead.
    let unrolled_d4 = if u.rolled() {
        rolled_scores(&mut s, i, u);
        0
    } else {
        u.d4
    };
    for c in 0..unrolled_d4 {
        if lazy {
            line!(s, "{i}let k{c} = k_row4(kr, {c}u, D);");
        }
        for t in 0..u.tr {
            line!(s, "{i}let q{t}_{c} = qa[{}];", t * u.d4 + c);
        }
        for n in 0..u.bc {
            line!(s, "{i}let ks{n}_{c} = subgroupBroadcast(k{c}, {n}u);");
            for t in 0..u.tr {
                let next = match (c, lazy) {
                    (0, false) => format!("var a{t}_{n} = dot(q{t}_0, ks{n}_0);"),
                    (_, false) => format!("a{t}_{n} += dot(q{t}_{c}, ks{n}_{c});"),
                    (0, true) => format!("var a{t}_{n} = q{t}_0 * ks{n}_0;"),
                    (_, true) => format!("a{t}_{n} = fma(q{t}_{c}, ks{n}_{c}, a{t}_{n});"),
                };
                line!(s, "{i}{next}");
            }
        }
    }
    for n in 0..u.bc {
        for t in 0..u.tr {
            let a = if lazy {
                format!("hsum4(a{t}_{n})")
            } else {
                format!("a{t}_{n}")
            };
            line!(
                s,
                "{i}let s{t}_{n} = keep({a}, kv0 + {n}u, end, win{t}, at{t});"
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

/// The Q·Kᵀ half of a lazy block (`Unroll::rolled`) as a loop over chunks
/// of the head dim (`open_chunks`): per chunk slot, this lane's K vec4, each
/// row's Q vec4 from its mirror (`q_row_scaled4`, as `q_scaled4` reads it;
/// zero for padded rows) and the Bc
/// broadcasts, added into vec4 partial sums `a{t}_{n}` in the unrolled
/// block's order, so the scores are bit-identical. Slots past ⌈d/4⌉ (a
/// last chunk that is not full) read a clamped vec4 and leave the sums as
/// they are. Only this half rolls: O's vec4s live in `oa`, which a loop
/// would index dynamically (a per-lane gather and scatter on a CPU driver;
/// reading Q as `qa[t·D4 + c]` here took SD 16²'s first call to 5.0 s).
///
/// On lavapipe, both versions in one process, alternated, empty shader
/// cache (2026-12-02): SD 16² (d 160) first call 0.59–0.89 s against
/// 1.71–1.95 s, 1.14–1.17× the time; SD 8² 0.87 against 1.88 s, 1.16×;
/// d 256 (1×8×1024²) 1.88 against 4.10 s, 1.32×. The time is the Q
/// gathers; the unrolled d 160 block had reached 2.13 s on a slow host.
fn rolled_scores(s: &mut String, i: &str, u: Unroll) {
    for n in 0..u.bc {
        for t in 0..u.tr {
            line!(s, "{i}var a{t}_{n} = vec4<f32>(0.0);");
        }
    }
    open_chunks(s, i, u.d4);
    let ii = format!("{i}    ");
    let full = |slot: u32| (chunks(u.d4) - 1) * width(u.d4) + slot < u.d4;
    for slot in 0..width(u.d4) {
        let c = if full(slot) {
            format!("c{slot}")
        } else {
            format!("min(c{slot}, D4 - 1u)")
        };
        line!(s, "{ii}let k{slot} = k_row4(kr, {c}, D);");
        for t in 0..u.tr {
            line!(
                s,
                "{ii}let q{t}_{slot} = select(vec4<f32>(0.0), q_row_scaled4(qb{t}, {c}), ql{t});"
            );
        }
        for n in 0..u.bc {
            line!(
                s,
                "{ii}let ks{n}_{slot} = subgroupBroadcast(k{slot}, {n}u);"
            );
            for t in 0..u.tr {
                let f = format!("fma(q{t}_{slot}, ks{n}_{slot}, a{t}_{n})");
                if full(slot) {
                    line!(s, "{ii}a{t}_{n} = {f};");
                } else {
                    line!(s, "{ii}a{t}_{n} = select(a{t}_{n}, {f}, c{slot} < D4);");
                }
            }
        }
    }
    line!(s, "{i}}}");
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
            state: true,
            tr: 2,
            bc: 4,
            d4: 3,
            dv4: 2,
            q_mirror: false,
        };
        let src = body(template, u);
        assert!(!src.contains('$'), "a marker is left");
        let mut lets = std::collections::HashSet::new();
        for line in src.lines() {
            let line = line.trim_start();
            if let Some(rest) = line.strip_prefix("let ") {
                let name = rest.split([' ', ':']).next().unwrap_or_default();
                // The template's own names and the chunk loops' (x, y, c
                // and a slot number, one loop body each) repeat across
                // scopes; the block's must be unique.
                let chunk_slot = name.len() > 1
                    && ["x", "y", "c"].contains(&&name[..1])
                    && name[1..].chars().all(|c| c.is_ascii_digit());
                if !chunk_slot
                    && ![
                        "inv", "ob", "kr", "vr", "j", "qi", "live", "m_t", "l_t", "row", "sb", "y",
                    ]
                    .contains(&name)
                {
                    assert!(lets.insert(name.to_string()), "{name} declared twice");
                }
            }
        }
        assert!(src.contains("let ks3_2 = subgroupBroadcast(k2, 3u);"));
        // Scores summed as scalars, one dot product per head-dim vec4.
        assert!(src.contains("var a1_3 = dot(q1_0, ks3_0);"));
        assert!(src.contains("a1_3 += dot(q1_2, ks3_2);"));
        assert!(src.contains("let s1_3 = keep(a1_3, kv0 + 3u, end, win1, at1);"));
        // Past LAZY_VEC4S, vec4 partial sums, summed across at the end.
        let wide = body(
            template,
            Unroll {
                d4: 40,
                dv4: 40,
                ..u
            },
        );
        assert!(wide.contains("a1_3 = fma(q1_2, ks3_2, a1_3);"));
        // With a Q mirror the wide block's Q·Kᵀ half is a loop over chunks
        // that reads Q from the mirror; P·V stays unrolled, and Q is not
        // loaded into `qa`. d/4 = 37: 5 chunks of 8 slots, the last 3 slots
        // of the last chunk past the row (clamped, sums kept).
        let rolled = body(
            template,
            Unroll {
                d4: 37,
                dv4: 40,
                q_mirror: true,
                ..u
            },
        );
        assert!(rolled.contains("for (var ch = 0u; ch < 5u * params.one; ch++) {"));
        assert!(rolled.contains("let k4 = k_row4(kr, c4, D);"));
        assert!(rolled.contains("let k5 = k_row4(kr, min(c5, D4 - 1u), D);"));
        assert!(rolled.contains("let q1_2 = select(vec4<f32>(0.0), q_row_scaled4(qb1, c2), ql1);"));
        assert!(rolled.contains("a1_3 = fma(q1_2, ks3_2, a1_3);"));
        assert!(rolled.contains("a1_3 = select(a1_3, fma(q1_7, ks3_7, a1_3), c7 < D4);"));
        assert!(rolled.contains("let s1_3 = keep(hsum4(a1_3), kv0 + 3u, end, win1, at1);"));
        assert!(rolled.contains("o1_39 = fma(vec4<f32>(p1_3), vs3_39, o1_39);"));
        assert!(!rolled.contains("qa["), "Q read from its mirror only");
        assert!(!wide.contains("q_row4(qb"), "no mirror: Q from qa");
        assert!(wide.contains("let s1_3 = keep(hsum4(a1_3), kv0 + 3u, end, win1, at1);"));
        assert!(src.contains("let mn1 = max(m1, max(max(s1_0, s1_1), max(s1_2, s1_3)));"));
        assert!(
            src.contains("oa[3] = o1_1;"),
            "O written back at constant indices"
        );
        // d/4 = 3 in one chunk: three slots, moved by selects.
        assert!(src.contains("for (var ch = 0u; ch < 1u * params.one; ch++) {"));
        assert!(src.contains("qa[5] = select(qa[5], x2, ch == 0u);"));
        assert!(!src.contains("let x3 "), "no slot past d/4");
        assert_eq!(
            tree("add", &["a".into(), "b".into(), "c".into()]),
            "(a + (b + c))"
        );
    }
}
