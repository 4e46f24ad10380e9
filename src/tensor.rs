//! Device tensors of one attention launch: the inputs uploaded, the outputs
//! allocated, and the way back to the host.

use crate::attention::{validate_host, AttentionBuffers, AttentionOutput, AttentionProblem, Dtype};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::mask::{Mask, Masks};

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
        validate_host(problem, q, k, v, masks)?;
        let (lens, mask) = (masks.lens_words(problem), masks.mask_words());
        Ok(Self {
            problem: *problem,
            q: upload_as(ctx, "q", problem.dtype, q),
            k: upload_as(ctx, "k", problem.dtype, k),
            v: upload_as(ctx, "v", problem.dtype, v),
            lens: (!lens.is_empty()).then(|| ctx.upload("lens", &lens)),
            mask: (problem.mask != Mask::None).then(|| ctx.upload("mask", &mask)),
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
