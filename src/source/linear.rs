//! The sources of the layer's projection kernels: `linear.wgsl` (any
//! width, f32), `linear4.wgsl` (register blocks) and `linear_simd.wgsl`
//! (CPU adapters: one subgroup, W shared by broadcast, the step body
//! generated here), each after `linear_common.wgsl`, with `linear4.wgsl`'s
//! sections for the epilogue, the storage form and the X/W access.

use std::fmt::Write;

use super::{io_template, section, Shader, TensorIo};
use crate::dtype::Dtype;

/// `linear_common.wgsl`: the projections' params and bias binding.
pub const LINEAR_COMMON_WGSL: &str = include_str!("../../shaders/linear_common.wgsl");

/// The shape of a projection kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinearKernel {
    /// `linear.wgsl`: 16 × 16 workgroup tiles, one output per invocation;
    /// any width, f32 only.
    Tiled,
    /// `linear4.wgsl`: a 4 × 4 block of outputs per invocation, `wg_x` ×
    /// `wg_y` invocations per workgroup.
    Blocked {
        /// Invocations along the output columns.
        wg_x: u32,
        /// Invocations along the rows.
        wg_y: u32,
    },
    /// `linear_simd.wgsl`: one subgroup of `sg` lanes per workgroup, `tr`
    /// rows per lane, `sg` columns shared by subgroup broadcast.
    Simd {
        /// The adapter's (fixed) subgroup size.
        sg: u32,
        /// Rows per lane.
        tr: u32,
    },
}

/// A projection kernel's specialisation: its shape, the storage type of X,
/// W, R and Y, and where X and W come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinearSpec {
    /// The kernel.
    pub kernel: LinearKernel,
    /// Storage of X, W, R and Y (f32 arithmetic; the bias is f32).
    pub dtype: Dtype,
    /// X and W from texture mirrors `2^log2` texels wide, else from the
    /// storage buffers.
    pub texture: Option<u32>,
}

impl LinearSpec {
    /// Outputs (columns, rows) of Y per workgroup.
    pub fn tile(&self) -> (u32, u32) {
        match self.kernel {
            LinearKernel::Tiled => (16, 16),
            LinearKernel::Blocked { wg_x, wg_y } => (4 * wg_x, 4 * wg_y),
            LinearKernel::Simd { sg, tr } => (sg, sg * tr),
        }
    }

    /// The WGSL source.
    pub fn source(&self) -> String {
        let shader = Shader::Linear(*self);
        if self.kernel == LinearKernel::Tiled {
            return format!("{LINEAR_COMMON_WGSL}{}", shader.wgsl());
        }
        let sections = Shader::Linear(LinearSpec {
            kernel: LinearKernel::Blocked { wg_x: 8, wg_y: 8 },
            ..*self
        })
        .wgsl();
        let (form, unpack) = match self.dtype {
            Dtype::F32 => ("f32", ""),
            Dtype::F16 => ("half", io_template("unpack_f16")),
            Dtype::Bf16 => ("half", io_template("unpack_bf16")),
        };
        let (mut head, access) = match self.texture {
            None if self.dtype == Dtype::F32 => (String::new(), "storage_f32"),
            None => (String::new(), "storage_half"),
            Some(log2) => (
                format!(
                    "const TEXW: u32 = {}u;\nconst TEXW_LOG2: u32 = {log2}u;\n",
                    1u32 << log2
                ),
                if self.dtype == Dtype::Bf16 {
                    "texture_bf16"
                } else {
                    "texture"
                },
            ),
        };
        let body = match self.kernel {
            LinearKernel::Blocked { wg_x, wg_y } => {
                let _ = writeln!(
                    head,
                    "const WG_X: u32 = {wg_x}u;\nconst WG_Y: u32 = {wg_y}u;"
                );
                let wgsl = shader.wgsl();
                wgsl[..wgsl.find("//@ ").unwrap_or(wgsl.len())].to_string()
            }
            LinearKernel::Simd { sg, tr } => {
                let _ = writeln!(head, "const SG: u32 = {sg}u;\nconst TR: u32 = {tr}u;");
                simd_body(shader.wgsl(), sg, tr)
            }
            LinearKernel::Tiled => unreachable!("returned above"),
        };
        format!(
            "{head}{LINEAR_COMMON_WGSL}{body}{}{unpack}{}{}",
            section(sections, "finish4"),
            section(sections, form),
            section(sections, access).replace(
                "$TEXFMT",
                TensorIo::mirror_of(self.dtype).wgsl_texel_format()
            )
        )
    }
}

/// `writeln!` into a String cannot fail.
macro_rules! line {
    ($s:expr, $($arg:tt)*) => {
        let _ = writeln!($s, $($arg)*);
    };
}

/// `linear_simd.wgsl` with its SETUP, BLOCK and STORE markers replaced:
/// row t's X base `xb{t}` and accumulators `a{t}_{n}` (column c0 + n); per
/// K step, row t's X vec4 `xv{t}`, lane n's W vec4 `wv{n}` by broadcast, and
/// the dot-product steps; the stores, four columns at a time.
fn simd_body(template: &str, sg: u32, tr: u32) -> String {
    let (mut setup, mut block, mut store) = (String::new(), String::new(), String::new());
    for t in 0..tr {
        line!(
            setup,
            "    let xb{t} = min(r0 + lane + SG * {t}u, params.m - 1u) * k4;"
        );
        for n in 0..sg {
            line!(setup, "    var a{t}_{n} = 0.0;");
        }
        line!(block, "        let xv{t} = x4(xb{t} + kk);");
    }
    for n in 0..sg {
        line!(block, "        let wv{n} = subgroupBroadcast(w, {n}u);");
        for t in 0..tr {
            line!(
                block,
                "        a{t}_{n} = fma(xv{t}.w, wv{n}.w, fma(xv{t}.z, wv{n}.z, fma(xv{t}.y, wv{n}.y, fma(xv{t}.x, wv{n}.x, a{t}_{n}))));"
            );
        }
    }
    for t in 0..tr {
        for j in 0..sg / 4 {
            let a = |c: u32| format!("a{t}_{}", 4 * j + c);
            line!(
                store,
                "    finish4(r0 + lane + SG * {t}u, c0 + {}u, vec4<f32>({}, {}, {}, {}));",
                4 * j,
                a(0),
                a(1),
                a(2),
                a(3)
            );
        }
    }
    template
        .replace("$SETUP\n", &setup)
        .replace("$BLOCK\n", &block)
        .replace("$STORE\n", &store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simd_body_is_unrolled_over_rows_and_broadcast_columns() {
        let spec = LinearSpec {
            kernel: LinearKernel::Simd { sg: 8, tr: 2 },
            dtype: Dtype::F16,
            texture: None,
        };
        let src = spec.source();
        assert!(src.contains("let wv7 = subgroupBroadcast(w, 7u);"));
        assert!(src.contains("a1_7 = fma(xv1.w, wv7.w"));
        assert!(src
            .contains("finish4(r0 + lane + SG * 1u, c0 + 4u, vec4<f32>(a1_4, a1_5, a1_6, a1_7));"));
        assert!(!src.contains('$'));
        assert_eq!(spec.tile(), (8, 16));
    }
}
