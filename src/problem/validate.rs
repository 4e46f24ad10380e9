//! Validation: every inconsistency of a problem, its host data or its fit on
//! a device becomes a typed [`Error`] before anything touches the GPU.

use super::{AttentionProblem, MAX_HEAD_DIM};
use crate::caps::DeviceCaps;
use crate::error::{Error, Result};
use crate::mask::{mask_row_words, MaskShape, Masks, MAX_SEQ};

impl AttentionProblem {
    /// Checks every dimension and relation; the first inconsistency found is
    /// returned as a typed error.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("batch", self.batch),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("n_q", self.n_q),
        ] {
            if v == 0 {
                return Err(Error::ZeroDim { name });
            }
        }
        for (name, v) in [("head_dim", self.head_dim), ("head_dim_v", self.head_dim_v)] {
            if v == 0 || v > MAX_HEAD_DIM {
                return Err(Error::HeadDim {
                    name,
                    got: v,
                    max: MAX_HEAD_DIM,
                });
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::HeadsMismatch {
                heads: self.heads,
                kv_heads: self.kv_heads,
            });
        }
        if !self.scale().is_finite() {
            return Err(Error::BadScale { got: self.scale() });
        }
        let (_, nq) = self.q_dims();
        let (_, nk) = self.kv_dims();
        for (name, n) in [
            ("n_q", self.n_q),
            ("n_kv", self.n_kv),
            ("total_q", nq),
            ("total_kv", nk),
        ] {
            if n > MAX_SEQ {
                return Err(Error::BadSeqLens {
                    name,
                    reason: format!("{n} rows, past the {MAX_SEQ} the kernels index"),
                });
            }
        }
        if let Some(w) = self.window {
            for (side, v) in [("left", w.left), ("right", w.right)] {
                if v.is_some_and(|v| v > MAX_SEQ) {
                    return Err(Error::BadWindow {
                        reason: format!("{side} = {v:?} is past {MAX_SEQ}; use None for no limit"),
                    });
                }
            }
        }
        let words = self.mask_words();
        if words as u64 > u32::MAX as u64 {
            return Err(Error::TooManyElements {
                name: "mask",
                elements: words as u64,
            });
        }
        for (name, _, n) in self.tensors() {
            if n as u64 > u32::MAX as u64 {
                return Err(Error::TooManyElements {
                    name,
                    elements: n as u64,
                });
            }
        }
        Ok(())
    }

    /// Checks host key lengths against the problem.
    pub fn validate_kv_lens(&self, kv_lens: Option<&[u32]>) -> Result<()> {
        self.validate_masks(&Masks::kv_lens(kv_lens))
    }

    /// Bytes per element of tensor `name` (lse is always f32).
    pub fn element_bytes(&self, name: &str) -> usize {
        if name == "lse" {
            4
        } else {
            self.dtype.bytes()
        }
    }

    /// Bytes of tensor `name`, rounded up to whole 4-byte words (the
    /// granularity of device buffers).
    pub fn tensor_bytes(&self, name: &str) -> u64 {
        let n = self
            .tensors()
            .iter()
            .find(|t| t.0 == name)
            .map_or(0, |t| t.2);
        ((n * self.element_bytes(name)) as u64).next_multiple_of(4)
    }

    /// Checks that each tensor (and the bias or mask) fits one storage
    /// binding on this device.
    pub fn validate_limits(&self, caps: &DeviceCaps) -> Result<()> {
        let mask = ("mask", 4 * self.mask_words() as u64);
        for (name, bytes) in self
            .tensors()
            .map(|(name, _, n)| (name, (n * self.element_bytes(name)) as u64))
            .into_iter()
            .chain([mask])
        {
            caps.check_binding(name, bytes)?;
        }
        Ok(())
    }

    /// Checks the host data `m` against the problem: presence, counts, lengths within
    /// their sequences, cu_seqlens monotone from 0 to the packed totals with
    /// no sequence past n_q / n_kv, bias free of NaN and +∞.
    pub fn validate_masks(&self, m: &Masks<'_>) -> Result<()> {
        let bad = |name: &'static str, reason: String| Err(Error::BadSeqLens { name, reason });
        let b = self.batch;
        let present = |name: &'static str, declared: bool, got: Option<usize>, want: usize| match (
            declared, got,
        ) {
            (true, None) => bad(
                name,
                format!("the problem declares {name} but none was given"),
            ),
            (false, Some(_)) => bad(
                name,
                format!("{name} given but the problem does not declare it (use its with_* setter)"),
            ),
            (true, Some(n)) if n != want => bad(name, format!("{n} entries, expected {want}")),
            _ => Ok(()),
        };
        match (self.kv_lens, m.kv_lens) {
            (true, l) if l.map_or(0, <[u32]>::len) != b => {
                return Err(Error::KvLensCount {
                    got: l.map_or(0, <[u32]>::len),
                    expected: b,
                })
            }
            _ => present("kv_lens", self.kv_lens, m.kv_lens.map(<[u32]>::len), b)?,
        }
        present("q_lens", self.q_lens, m.q_lens.map(<[u32]>::len), b)?;
        let varlen = self.varlen.is_some();
        present(
            "cu_seqlens_q",
            varlen,
            m.cu_seqlens_q.map(<[u32]>::len),
            b + 1,
        )?;
        present(
            "cu_seqlens_k",
            varlen,
            m.cu_seqlens_k.map(<[u32]>::len),
            b + 1,
        )?;
        if let Some(vl) = self.varlen {
            for (name, cu, total, max) in [
                ("cu_seqlens_q", m.cu_seqlens_q, vl.total_q, self.n_q),
                ("cu_seqlens_k", m.cu_seqlens_k, vl.total_kv, self.n_kv),
            ] {
                let cu = cu.unwrap_or_default();
                if cu[0] != 0 || cu[b] as usize != total {
                    return bad(
                        name,
                        format!(
                            "must start at 0 and end at the packed total {total}, got {} … {}",
                            cu[0], cu[b]
                        ),
                    );
                }
                if let Some(s) = cu.windows(2).position(|w| w[1] < w[0]) {
                    return bad(
                        name,
                        format!("decreases at entry {} ({} > {})", s + 1, cu[s], cu[s + 1]),
                    );
                }
                if let Some(s) = cu.windows(2).position(|w| (w[1] - w[0]) as usize > max) {
                    return bad(
                        name,
                        format!(
                            "sequence {s} has {} rows, past the declared maximum {max} (n_q / n_kv)",
                            cu[s + 1] - cu[s]
                        ),
                    );
                }
            }
        }
        // Lengths within each entry's allocated rows.
        let alloc =
            |cu: Option<&[u32]>, n: usize, e: usize| cu.map_or(n, |c| (c[e + 1] - c[e]) as usize);
        if let Some(l) = m.kv_lens {
            if let Some(e) = (0..b).find(|&e| l[e] as usize > alloc(m.cu_seqlens_k, self.n_kv, e)) {
                return Err(Error::KvLenTooLong {
                    batch: e,
                    got: l[e] as i64,
                    n_kv: alloc(m.cu_seqlens_k, self.n_kv, e),
                });
            }
        }
        if let Some(l) = m.q_lens {
            if let Some(e) = (0..b).find(|&e| l[e] as usize > alloc(m.cu_seqlens_q, self.n_q, e)) {
                return bad(
                    "q_lens",
                    format!(
                        "q_lens[{e}] = {} exceeds the entry's {} query rows",
                        l[e],
                        alloc(m.cu_seqlens_q, self.n_q, e)
                    ),
                );
            }
        }
        let present = |name: &'static str,
                       declared: Option<MaskShape>,
                       given: Option<usize>,
                       want: usize,
                       setter: &str| {
            let bad = |reason: String| Err(Error::BadMask { name, reason });
            match (declared, given) {
                (Some(s), None) => bad(format!(
                    "the problem declares a {name} {s} but none was given"
                )),
                (None, Some(_)) => bad(format!(
                    "{name} given but the problem does not declare one ({setter})"
                )),
                (Some(s), Some(n)) if n != want => Err(Error::SizeMismatch {
                    name,
                    got: n as u64,
                    expected: want as u64,
                    shape: match name {
                        "mask" => format!(
                            "{s} packed: {} u32 words per row",
                            mask_row_words(self.n_kv)
                        ),
                        _ => s.to_string(),
                    },
                }),
                _ => Ok(()),
            }
        };
        present(
            "bias",
            self.bias,
            m.bias.map(<[f32]>::len),
            self.bias_words(),
            "with_bias",
        )?;
        present(
            "mask",
            self.bool_mask,
            m.mask.map(<[u32]>::len),
            self.bool_mask_words(),
            "with_bool_mask",
        )?;
        if let Some(x) = m.bias {
            if let Some(i) = x.iter().position(|v| v.is_nan() || *v == f32::INFINITY) {
                return Err(Error::NonFinite {
                    name: "bias",
                    index: i,
                    value: x[i],
                });
            }
        }
        Ok(())
    }

    /// Checks host q, k and v lengths and everything `masks` holds.
    pub fn validate_inputs(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        masks: &Masks<'_>,
    ) -> Result<()> {
        for ((name, shape, n), got) in self.tensors().into_iter().zip([q.len(), k.len(), v.len()]) {
            if got != n {
                return Err(Error::SizeMismatch {
                    name,
                    got: got as u64,
                    expected: n as u64,
                    shape: format!("{shape:?}"),
                });
            }
        }
        self.validate_masks(masks)
    }
}

/// The opt-in check that refuses non-finite inputs: the first NaN or ±∞
/// in `data` is an [`Error::NonFinite`] naming the tensor and its flat
/// index. The kernels themselves do not check (see the crate docs,
/// "Non-finite inputs"): NaN in a query row makes that row's output NaN;
/// NaN or ±∞ in a key or value makes NaN every row that attends to it.
pub fn check_finite(name: &'static str, data: &[f32]) -> Result<()> {
    match data.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::NonFinite {
            name,
            index,
            value: data[index],
        }),
    }
}
