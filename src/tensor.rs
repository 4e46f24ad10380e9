//! Device tensors of one attention launch, in two twins: [`AttentionBuffers`]
//! borrows the caller's buffers (integration API), [`AttentionTensors`] owns
//! buffers uploaded from host slices (simple API) and lends them as
//! [`AttentionBuffers`]; [`AttentionOutput`] is O and LSE back on the host.

use crate::context::Context;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::mask::Masks;
use crate::problem::AttentionProblem;

/// The device buffers of one launch. Any buffer with `STORAGE` usage and at
/// least the problem's size works.
#[derive(Debug, Clone, Copy)]
pub struct AttentionBuffers<'a> {
    /// `[B, n_q, H, d]` (or as the problem's layout / packing says).
    pub q: &'a wgpu::Buffer,
    /// `[B, n_kv, H_kv, d]`.
    pub k: &'a wgpu::Buffer,
    /// `[B, n_kv, H_kv, d_v]`.
    pub v: &'a wgpu::Buffer,
    /// u32 lengths and packed-sequence offsets, required iff the problem
    /// declares any: key lengths `[B]`, query lengths `[B]`, cu_seqlens_q
    /// `[B+1]`, cu_seqlens_k `[B+1]`, back to back in that order, each only
    /// if declared ([`crate::SeqLayout`]; with key lengths alone it is just
    /// them). Lengths past their sequence are clamped by the kernels;
    /// cu_seqlens must hold what [`AttentionProblem::validate_masks`] checks
    /// on the host.
    pub lens: Option<&'a wgpu::Buffer>,
    /// The bias (f32), then the packed boolean mask (u32 words), iff either
    /// is declared ([`Masks::mask_words`]).
    pub mask: Option<&'a wgpu::Buffer>,
    /// `[B, n_q, H, d_v]`, written.
    pub o: &'a wgpu::Buffer,
    /// `[B, H, n_q]` (packed: `[H, total_q]`), written (natural log).
    pub lse: &'a wgpu::Buffer,
}

impl AttentionBuffers<'_> {
    /// Checks buffer sizes against the problem.
    pub fn validate(&self, p: &AttentionProblem) -> Result<()> {
        let bufs = [self.q, self.k, self.v, self.o, self.lse];
        for ((name, shape, n), buf) in p.tensors().into_iter().zip(bufs) {
            let got = buf.size() / p.element_bytes(name) as u64;
            if got < n as u64 {
                return Err(Error::SizeMismatch {
                    name,
                    got,
                    expected: n as u64,
                    shape: format!("{shape:?}"),
                });
            }
        }
        let words = p.seq_layout().words;
        let lens_bad = |got: u64, reason: &str| Error::BadSeqLens {
            name: "lens",
            reason: format!(
                "{reason}: {got} u32s, expected {words} ({:?})",
                p.seq_layout()
            ),
        };
        match (words, self.lens) {
            (0, Some(b)) => {
                return Err(lens_bad(b.size() / 4, "buffer given but nothing declared"))
            }
            (w, None) if w > 0 && p.kv_lens && !p.has_masking() => {
                return Err(Error::KvLensCount {
                    got: 0,
                    expected: p.batch,
                })
            }
            (w, None) if w > 0 => return Err(lens_bad(0, "no buffer")),
            (w, Some(b)) if b.size() / 4 < w as u64 => {
                return Err(lens_bad(b.size() / 4, "buffer too small"))
            }
            _ => {}
        }
        let words = p.mask_words() as u64;
        let got = self.mask.map(|b| b.size() / 4);
        if (words > 0) != got.is_some() || got.is_some_and(|g| g < words) {
            return Err(Error::SizeMismatch {
                name: "mask",
                got: got.unwrap_or(0),
                expected: words,
                shape: format!(
                    "bias {:?} then boolean mask {:?}, u32 words",
                    p.bias, p.bool_mask
                ),
            });
        }
        Ok(())
    }
}

/// Result of the simple API: O and LSE on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionOutput {
    /// `[B, n_q, H, d_v]`.
    pub o: Vec<f32>,
    /// `[B, H, n_q]`, natural log; −∞ for rows with no visible key.
    pub lse: Vec<f32>,
}

/// The buffers of one problem, owned: q, k, v (and key lengths) uploaded from
/// host f32 slices (converted to the problem's storage type), o and lse
/// allocated; O comes back as f32. [`AttentionTensors::buffers`] lends them
/// to any kernel's `record`.
#[derive(Debug)]
pub struct AttentionTensors {
    problem: AttentionProblem,
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    lens: Option<wgpu::Buffer>,
    mask: Option<wgpu::Buffer>,
    o: wgpu::Buffer,
    lse: wgpu::Buffer,
}

impl AttentionTensors {
    /// Validates the host slices against `problem` and uploads them.
    pub fn upload(
        ctx: &Context,
        problem: &AttentionProblem,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        kv_lens: Option<&[u32]>,
    ) -> Result<Self> {
        Self::upload_with(ctx, problem, q, k, v, &Masks::kv_lens(kv_lens))
    }

    /// [`AttentionTensors::upload`] with lengths, packed-sequence offsets,
    /// bias or mask (validated against the problem, then uploaded into the
    /// `lens` and `mask` buffers).
    pub fn upload_with(
        ctx: &Context,
        problem: &AttentionProblem,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        masks: &Masks<'_>,
    ) -> Result<Self> {
        problem.validate()?;
        problem.validate_inputs(q, k, v, masks)?;
        let (lens, mask) = (masks.lens_words(), masks.mask_words());
        Ok(Self {
            problem: *problem,
            q: upload_as(ctx, "q", problem.dtype, q),
            k: upload_as(ctx, "k", problem.dtype, k),
            v: upload_as(ctx, "v", problem.dtype, v),
            lens: (!lens.is_empty()).then(|| ctx.upload("lens", &lens)),
            mask: (!mask.is_empty()).then(|| ctx.upload("mask", &mask)),
            o: ctx.storage("o", problem.tensor_bytes("o")),
            lse: ctx.storage("lse", problem.tensor_bytes("lse")),
        })
    }

    /// The buffers, borrowed for recording.
    pub fn buffers(&self) -> AttentionBuffers<'_> {
        AttentionBuffers {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            lens: self.lens.as_ref(),
            mask: self.mask.as_ref(),
            o: &self.o,
            lse: &self.lse,
        }
    }

    /// Replaces the queries (a decode step's new rows) without touching K, V
    /// or any bind group made from these buffers; ordered before work
    /// submitted afterwards.
    pub fn write_q(&self, ctx: &Context, q: &[f32]) -> Result<()> {
        let (name, shape, n) = self.problem.tensors()[0];
        if q.len() != n {
            return Err(Error::SizeMismatch {
                name,
                got: q.len() as u64,
                expected: n as u64,
                shape: format!("{shape:?}"),
            });
        }
        if self.problem.dtype == Dtype::F32 {
            ctx.queue()
                .write_buffer(&self.q, 0, bytemuck::cast_slice(q));
        } else {
            let mut bytes = self.problem.dtype.encode(q);
            // Queue writes go in whole 4-byte words.
            bytes.resize(bytes.len().next_multiple_of(4), 0);
            ctx.queue().write_buffer(&self.q, 0, &bytes);
        }
        Ok(())
    }

    /// Bytes of device memory these tensors hold.
    pub fn bytes(&self) -> u64 {
        [&self.q, &self.k, &self.v, &self.o, &self.lse]
            .iter()
            .map(|b| b.size())
            .sum::<u64>()
            + [&self.lens, &self.mask]
                .iter()
                .filter_map(|b| b.as_ref())
                .map(|b| b.size())
                .sum::<u64>()
    }

    /// Copies O and LSE back to the host.
    pub fn download(&self, ctx: &Context) -> Result<AttentionOutput> {
        Ok(AttentionOutput {
            o: self.problem.dtype.decode(
                &ctx.download::<u8>(&self.o, self.problem.tensor_bytes("o") as usize)?,
                self.problem.o_len(),
            ),
            lse: ctx.download(&self.lse, self.problem.lse_len())?,
        })
    }
}

/// Uploads f32 host data in `dtype`: as it is for f32 (no copy), encoded
/// otherwise.
fn upload_as(ctx: &Context, label: &str, dtype: Dtype, data: &[f32]) -> wgpu::Buffer {
    match dtype {
        Dtype::F32 => ctx.upload(label, data),
        _ => ctx.upload(label, &dtype.encode(data)),
    }
}
