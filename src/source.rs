//! The shader sources and the typed specialisation that picks the code.
//!
//! Every WGSL file is embedded once here ([`Shader`]). The fused family
//! (`flash_forward`, `flash_decode`, `flash_lanes` and `split_combine`) is
//! compiled from generated source: `const` lines written by a [`FlashSpec`],
//! the tensor access for the storage type (`flash_io.wgsl`), the shared
//! params, bindings and addressing (`flash_common.wgsl`), the online-softmax
//! state (`softmax_state.wgsl`), then the kernel's body. Tile sizes must be
//! `const` (not pipeline `override`s) because they size function-scope
//! arrays, hence generated source; the spec is also the pipeline cache key,
//! so everything that changes the code is in it and nothing else is.

use crate::caps::DeviceCaps;
use crate::dtype::Dtype;

/// One WGSL file of the crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shader {
    /// `flash_forward.wgsl`: the tiled FlashAttention-2 kernel.
    FlashForward,
    /// `flash_decode.wgsl`: few query rows against many keys.
    FlashDecode,
    /// `flash_lanes.wgsl`: lane-per-key kernel for CPU adapters.
    FlashLanes,
    /// `split_combine.wgsl`: merges split-KV partial states.
    SplitCombine,
    /// `naive.wgsl`: the unfused three-pass baseline.
    Naive,
    /// `probe.wgsl`: the FMA and copy probes of the bench harness.
    Probe,
}

/// `flash_common.wgsl`: params, bindings, sequences, masks, addressing.
pub const FLASH_COMMON_WGSL: &str = include_str!("../shaders/flash_common.wgsl");
/// `softmax_state.wgsl`: the per-row online-softmax state (m, l, O), its
/// reset, load, store, rescale, merge and epilogue.
pub const SOFTMAX_STATE_WGSL: &str = include_str!("../shaders/softmax_state.wgsl");
/// `flash_io.wgsl`: tensor access templates, one per storage form.
pub const FLASH_IO_WGSL: &str = include_str!("../shaders/flash_io.wgsl");

impl Shader {
    /// The file's stem, used as the pipeline label.
    pub fn name(self) -> &'static str {
        match self {
            Shader::FlashForward => "flash_forward",
            Shader::FlashDecode => "flash_decode",
            Shader::FlashLanes => "flash_lanes",
            Shader::SplitCombine => "split_combine",
            Shader::Naive => "naive",
            Shader::Probe => "probe",
        }
    }

    /// The file's WGSL (for the fused family: the kernel body only, see
    /// [`FlashSpec::source`]).
    pub fn wgsl(self) -> &'static str {
        match self {
            Shader::FlashForward => include_str!("../shaders/flash_forward.wgsl"),
            Shader::FlashDecode => include_str!("../shaders/flash_decode.wgsl"),
            Shader::FlashLanes => include_str!("../shaders/flash_lanes.wgsl"),
            Shader::SplitCombine => include_str!("../shaders/split_combine.wgsl"),
            Shader::Naive => include_str!("../shaders/naive.wgsl"),
            Shader::Probe => include_str!("../shaders/probe.wgsl"),
        }
    }
}

/// How a kernel reads and writes q, k, v and o (`shaders/flash_io.wgsl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorIo {
    /// `array<f32>` / `array<vec4<f32>>`.
    F32,
    /// WGSL `f16` arrays (device has SHADER_F16).
    F16,
    /// f16 in `u32` words through `unpack2x16float` / `pack2x16float`.
    F16Packed,
    /// bf16 in `u32` words through shifts.
    Bf16,
}

impl TensorIo {
    /// The form for `dtype` on a device: f16 natively where the device has
    /// SHADER_F16, unless `packed_f16` (default: the device caps'
    /// [`DeviceCaps::packed_f16`]) asks for the u32-word path.
    pub fn choose(dtype: Dtype, caps: &DeviceCaps, packed_f16: Option<bool>) -> Self {
        let packed = packed_f16.unwrap_or(caps.packed_f16);
        match dtype {
            Dtype::F32 => TensorIo::F32,
            Dtype::F16 if caps.shader_f16 && !packed => TensorIo::F16,
            Dtype::F16 => TensorIo::F16Packed,
            Dtype::Bf16 => TensorIo::Bf16,
        }
    }

    /// The `DT` constant (0 f32, 1 f16, 2 packed f16, 3 bf16).
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The `flash_io.wgsl` template of a tensor whose rows are `vec4`-aligned
    /// or not.
    fn template(self, vec4: bool) -> &'static str {
        match (self, vec4) {
            (TensorIo::F32, true) => "vec4",
            (TensorIo::F32, false) => "scalar",
            (TensorIo::F16, true) => "f16_vec4",
            (TensorIo::F16, false) => "f16_scalar",
            (TensorIo::F16Packed | TensorIo::Bf16, _) => "packed",
        }
    }
}

/// The tile constants of each kernel of the fused family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelTiles {
    /// `flash_forward.wgsl`: BR = TR·WG query rows per workgroup, BC keys per
    /// K/V block, TR rows per invocation, WG invocations.
    Tiled {
        /// Query rows per workgroup.
        br: u32,
        /// Key rows per K/V block.
        bc: u32,
        /// Query rows per invocation.
        tr: u32,
        /// Invocations per workgroup.
        wg: u32,
    },
    /// `flash_lanes.wgsl`: BR rows in every lane, SG lanes, KPL keys per lane
    /// per block.
    Lanes {
        /// Query rows per workgroup (all in every lane).
        br: u32,
        /// Subgroup (= workgroup) size.
        sg: u32,
        /// Keys per lane per block.
        kpl: u32,
    },
    /// `flash_decode.wgsl`: BR packed query rows, WG lanes each streaming its
    /// own keys, DVC vec4 columns of O merged per step.
    Decode {
        /// Packed query rows per workgroup.
        br: u32,
        /// Invocations per workgroup.
        wg: u32,
        /// Vec4 columns merged per step.
        dvc: u32,
    },
    /// `split_combine.wgsl`: one invocation per row, no tiles.
    Combine,
}

/// Everything that changes the generated source of a fused-family kernel:
/// the pipeline cache key and the writer of its `const` lines. Each field is
/// typed, so no constant can be misspelt or forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlashSpec {
    /// Head dim of Q and K (`D`).
    pub d: u32,
    /// Head dim of V and O (`DV`).
    pub dv: u32,
    /// Storage form of q, k, v and o (`DT`).
    pub io: TensorIo,
    /// An additive bias is bound (`MASK` bit 0).
    pub bias: bool,
    /// A boolean mask is bound (`MASK` bit 1).
    pub bool_mask: bool,
    /// A causal or sliding window applies (`WIN`).
    pub window: bool,
    /// Block skipping on (`SKIP`).
    pub skip: bool,
    /// The kernel and its tiles.
    pub tiles: KernelTiles,
}

impl FlashSpec {
    /// The kernel this spec compiles.
    pub fn shader(&self) -> Shader {
        match self.tiles {
            KernelTiles::Tiled { .. } => Shader::FlashForward,
            KernelTiles::Lanes { .. } => Shader::FlashLanes,
            KernelTiles::Decode { .. } => Shader::FlashDecode,
            KernelTiles::Combine => Shader::SplitCombine,
        }
    }

    /// The split-KV combine for this spec's tensors: the same storage forms,
    /// no mask, window or tiles.
    pub fn combine(&self) -> Self {
        Self {
            bias: false,
            bool_mask: false,
            window: false,
            skip: true,
            tiles: KernelTiles::Combine,
            ..*self
        }
    }

    /// Query rows of softmax state each invocation holds (`ROWS`).
    pub fn rows_per_invocation(&self) -> u32 {
        match self.tiles {
            KernelTiles::Tiled { tr, .. } => tr,
            KernelTiles::Lanes { br, .. } | KernelTiles::Decode { br, .. } => br,
            KernelTiles::Combine => 1,
        }
    }

    /// The `const NAME: u32 = V;` lines.
    pub fn constants(&self) -> String {
        let (d, dv) = (self.d, self.dv);
        let mask = u32::from(self.bias) | u32::from(self.bool_mask) << 1;
        let mut consts = vec![
            ("D", d),
            ("DV", dv),
            ("D4", d.div_ceil(4)),
            ("DV4", dv.div_ceil(4)),
            ("VEC_QK", u32::from(d.is_multiple_of(4))),
            ("VEC_V", u32::from(dv.is_multiple_of(4))),
            ("DT", self.io.code()),
            ("MASK", mask),
            ("WIN", u32::from(self.window)),
            ("SKIP", u32::from(self.skip)),
            ("ROWS", self.rows_per_invocation()),
        ];
        match self.tiles {
            KernelTiles::Tiled { br, bc, tr, wg } => {
                consts.extend([("BR", br), ("BC", bc), ("TR", tr), ("WG", wg)])
            }
            KernelTiles::Lanes { br, sg, kpl } => {
                consts.extend([("BR", br), ("SG", sg), ("KPL", kpl)])
            }
            KernelTiles::Decode { br, wg, dvc } => {
                consts.extend([("BR", br), ("WG", wg), ("DVC", dvc)])
            }
            KernelTiles::Combine => {}
        }
        consts
            .iter()
            .map(|(name, v)| format!("const {name}: u32 = {v}u;\n"))
            .collect()
    }

    /// The full source the device compiles: constants, tensor access, the
    /// shared params and bindings, the softmax state, the kernel body.
    pub fn source(&self) -> String {
        let mut src = String::new();
        if self.io == TensorIo::F16 {
            src.push_str("enable f16;\n");
        }
        src.push_str(&self.constants());
        match self.io {
            TensorIo::F16Packed => src.push_str(io_template("unpack_f16")),
            TensorIo::Bf16 => src.push_str(io_template("unpack_bf16")),
            _ => {}
        }
        let (qk, v) = (
            self.io.template(self.d.is_multiple_of(4)),
            self.io.template(self.dv.is_multiple_of(4)),
        );
        for (name, binding, form) in [("q", 1, qk), ("k", 2, qk), ("v", 3, v)] {
            src.push_str(
                &io_template(form)
                    .replace("$NAME", name)
                    .replace("$BINDING", &binding.to_string()),
            );
        }
        src.push_str(io_template(&format!("out_{v}")));
        for part in [FLASH_COMMON_WGSL, SOFTMAX_STATE_WGSL, self.shader().wgsl()] {
            src.push('\n');
            src.push_str(part);
        }
        src
    }
}

/// The `//@ name` section of [`FLASH_IO_WGSL`]. The names are the fixed set
/// [`TensorIo::template`] and [`FlashSpec::source`] ask for; a missing one is
/// a bug in this file, caught by every test that compiles a kernel.
fn io_template(name: &str) -> &'static str {
    let marker = format!("//@ {name}\n");
    let start = FLASH_IO_WGSL
        .find(&marker)
        .map(|i| i + marker.len())
        .unwrap_or_else(|| panic!("flash_io.wgsl has no section {name}"));
    let end = FLASH_IO_WGSL[start..]
        .find("//@ ")
        .map_or(FLASH_IO_WGSL.len(), |i| start + i);
    &FLASH_IO_WGSL[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(tiles: KernelTiles) -> FlashSpec {
        FlashSpec {
            d: 59,
            dv: 64,
            io: TensorIo::F32,
            bias: true,
            bool_mask: true,
            window: false,
            skip: true,
            tiles,
        }
    }

    #[test]
    fn constants_are_typed_and_complete() {
        let tiled = spec(KernelTiles::Tiled {
            br: 64,
            bc: 16,
            tr: 2,
            wg: 32,
        });
        let c = tiled.constants();
        for line in [
            "const D: u32 = 59u;",
            "const D4: u32 = 15u;",
            "const DV4: u32 = 16u;",
            "const VEC_QK: u32 = 0u;",
            "const VEC_V: u32 = 1u;",
            "const MASK: u32 = 3u;",
            "const ROWS: u32 = 2u;",
            "const BC: u32 = 16u;",
        ] {
            assert!(c.contains(line), "{line} missing from\n{c}");
        }
        let combine = tiled.combine();
        assert_eq!(combine.shader(), Shader::SplitCombine);
        let c = combine.constants();
        assert!(c.contains("const MASK: u32 = 0u;") && c.contains("const ROWS: u32 = 1u;"));
        assert!(!c.contains("BC"));
    }

    #[test]
    fn every_storage_form_has_its_templates() {
        for io in [
            TensorIo::F32,
            TensorIo::F16,
            TensorIo::F16Packed,
            TensorIo::Bf16,
        ] {
            let src = FlashSpec {
                io,
                ..spec(KernelTiles::Combine)
            }
            .source();
            assert!(src.contains("fn q_row4") && src.contains("fn store_o4"));
            assert_eq!(src.starts_with("enable f16;"), io == TensorIo::F16);
        }
    }

    #[test]
    fn f16_preference_comes_from_the_caps() {
        let mut caps = DeviceCaps::lavapipe(2);
        assert_eq!(TensorIo::choose(Dtype::F16, &caps, None), TensorIo::F16);
        caps.packed_f16 = true;
        assert_eq!(
            TensorIo::choose(Dtype::F16, &caps, None),
            TensorIo::F16Packed
        );
        assert_eq!(
            TensorIo::choose(Dtype::F16, &caps, Some(false)),
            TensorIo::F16
        );
        caps.shader_f16 = false;
        assert_eq!(
            TensorIo::choose(Dtype::F16, &caps, Some(false)),
            TensorIo::F16Packed
        );
        assert_eq!(TensorIo::choose(Dtype::Bf16, &caps, None), TensorIo::Bf16);
    }
}
