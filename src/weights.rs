//! A cross-attention layer's weights from a safetensors file, under an
//! optional prefix (e.g. `model.decoder.layers.0.encoder_attn.`), in the
//! naming schemes models are saved with:
//!
//! - PyTorch `nn.MultiheadAttention`: `in_proj_weight` `[3E, E]` and
//!   `in_proj_bias` `[3E]`, or `q_proj_weight`, `k_proj_weight`,
//!   `v_proj_weight` when kdim/vdim ≠ E; then `out_proj.weight`,
//!   `out_proj.bias`.
//! - Hugging Face: `q_proj.weight`, `k_proj.weight`, `v_proj.weight`,
//!   `out_proj.weight`, each `.bias` optional (Whisper's k_proj has none).
//! - T5: `q.weight`, `k.weight`, `v.weight`, `o.weight`, no biases, and a
//!   softmax scale of 1.
//!
//! Tensors may be f32, f16 or bf16 (converted to f32). A missing or
//! mis-shaped tensor is a typed error naming it and the shape expected.

use safetensors::{Dtype as StDtype, SafeTensors};

use crate::error::{Error, Result};
use crate::layer::{LayerConfig, LayerWeights};

/// The naming scheme a file was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightNames {
    /// `nn.MultiheadAttention`'s state_dict.
    TorchMha,
    /// Hugging Face's `q_proj` / `k_proj` / `v_proj` / `out_proj`.
    HuggingFace,
    /// T5's `q` / `k` / `v` / `o` (no biases, scale 1).
    T5,
}

impl WeightNames {
    /// The softmax scale the scheme's models use, where it is not 1/√d.
    pub fn scale(self) -> Option<f32> {
        (self == WeightNames::T5).then_some(1.0)
    }
}

fn bad(name: &str, reason: String) -> Error {
    Error::Weights {
        name: name.to_string(),
        reason,
    }
}

struct File<'a> {
    st: SafeTensors<'a>,
    prefix: &'a str,
}

impl File<'_> {
    fn has(&self, name: &str) -> bool {
        self.st.tensor(&format!("{}{name}", self.prefix)).is_ok()
    }

    /// Tensor `name` as f32, checked against `shape`; `None` if absent.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Option<Vec<f32>>> {
        let full = format!("{}{name}", self.prefix);
        let Ok(t) = self.st.tensor(&full) else {
            return Ok(None);
        };
        if t.shape() != shape {
            return Err(bad(
                &full,
                format!("has shape {:?}, expected {shape:?}", t.shape()),
            ));
        }
        let data = t.data();
        let words = |n: usize| data.chunks_exact(n);
        let v: Vec<f32> = match t.dtype() {
            StDtype::F32 => words(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            StDtype::F16 => words(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            StDtype::BF16 => words(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(bad(
                    &full,
                    format!("is {other:?}; expected F32, F16 or BF16"),
                ))
            }
        };
        Ok(Some(v))
    }

    fn need(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.get(name, shape)?.ok_or_else(|| {
            bad(
                &format!("{}{name}", self.prefix),
                format!("is missing; expected a tensor of shape {shape:?}"),
            )
        })
    }
}

impl LayerWeights {
    /// Reads the layer's weights for `config` from safetensors `bytes`
    /// under `prefix`, in whichever naming scheme the file uses (see the
    /// module docs); returns the scheme too (T5's means scale 1).
    pub fn from_safetensors(
        bytes: &[u8],
        prefix: &str,
        config: &LayerConfig,
    ) -> Result<(Self, WeightNames)> {
        config.validate()?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad("safetensors", format!("cannot be read: {e}")))?;
        let f = File { st, prefix };
        let c = config;
        let d = c.head_dim();
        let (hd, kvd, e, ekv) = (c.heads * d, c.kv_heads * d, c.embed, c.kv_embed);
        if f.has("in_proj_weight") {
            let w = f.need("in_proj_weight", &[3 * hd, e])?;
            let b = f.get("in_proj_bias", &[3 * hd])?;
            if hd != kvd || e != ekv {
                return Err(bad(
                    &format!("{prefix}in_proj_weight"),
                    "packs q, k and v of one width; this layer's k/v differ (GQA or \
                     kdim ≠ E): expected q_proj_weight, k_proj_weight, v_proj_weight"
                        .into(),
                ));
            }
            let third = |v: &Vec<f32>, i: usize| v[i * v.len() / 3..(i + 1) * v.len() / 3].to_vec();
            let weights = LayerWeights {
                w_q: third(&w, 0),
                b_q: b.as_ref().map(|b| third(b, 0)),
                w_k: third(&w, 1),
                b_k: b.as_ref().map(|b| third(b, 1)),
                w_v: third(&w, 2),
                b_v: b.as_ref().map(|b| third(b, 2)),
                w_o: f.need("out_proj.weight", &[e, hd])?,
                b_o: f.get("out_proj.bias", &[e])?,
            };
            return Ok((weights, WeightNames::TorchMha));
        }
        if f.has("q_proj_weight") {
            let b = f.get("in_proj_bias", &[hd + 2 * kvd])?;
            let weights = LayerWeights {
                w_q: f.need("q_proj_weight", &[hd, e])?,
                b_q: b.as_ref().map(|b| b[..hd].to_vec()),
                w_k: f.need("k_proj_weight", &[kvd, ekv])?,
                b_k: b.as_ref().map(|b| b[hd..hd + kvd].to_vec()),
                w_v: f.need("v_proj_weight", &[kvd, ekv])?,
                b_v: b.as_ref().map(|b| b[hd + kvd..].to_vec()),
                w_o: f.need("out_proj.weight", &[e, hd])?,
                b_o: f.get("out_proj.bias", &[e])?,
            };
            return Ok((weights, WeightNames::TorchMha));
        }
        if f.has("q.weight") {
            let weights = LayerWeights {
                w_q: f.need("q.weight", &[hd, e])?,
                w_k: f.need("k.weight", &[kvd, ekv])?,
                w_v: f.need("v.weight", &[kvd, ekv])?,
                w_o: f.need("o.weight", &[e, hd])?,
                ..Default::default()
            };
            return Ok((weights, WeightNames::T5));
        }
        let weights = LayerWeights {
            w_q: f.need("q_proj.weight", &[hd, e])?,
            b_q: f.get("q_proj.bias", &[hd])?,
            w_k: f.need("k_proj.weight", &[kvd, ekv])?,
            b_k: f.get("k_proj.bias", &[kvd])?,
            w_v: f.need("v_proj.weight", &[kvd, ekv])?,
            b_v: f.get("v_proj.bias", &[kvd])?,
            w_o: f.need("out_proj.weight", &[e, hd])?,
            b_o: f.get("out_proj.bias", &[e])?,
        };
        Ok((weights, WeightNames::HuggingFace))
    }
}

/// Flamingo's gate α from a safetensors file: the tensor `attn_gate` under
/// `prefix` (OpenFlamingo's `gated_cross_attn_layer.attn_gate`), one value
/// (shape `[]` or `[1]`), f32, f16 or bf16.
pub fn gate_from_safetensors(bytes: &[u8], prefix: &str) -> Result<f32> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| bad("safetensors", format!("cannot be read: {e}")))?;
    let f = File { st, prefix };
    let shape: &[usize] = match f.st.tensor(&format!("{prefix}attn_gate")) {
        Ok(t) if t.shape().is_empty() => &[],
        _ => &[1],
    };
    Ok(f.need("attn_gate", shape)?[0])
}

impl LayerWeights {
    /// Writes the weights as a safetensors file under `prefix` in the
    /// naming scheme `names`, stored as `dtype` (biases too): the inverse
    /// of [`LayerWeights::from_safetensors`], for exporting a layer or
    /// building test files. `nn.MultiheadAttention` names pack q, k and v
    /// into `in_proj_weight` where they have one width (else
    /// `q_proj_weight` …) and need all three input biases or none; T5's
    /// names take no biases. A config with a gate writes it as `attn_gate`
    /// `[1]` (read back by [`gate_from_safetensors`]).
    pub fn to_safetensors(
        &self,
        config: &LayerConfig,
        prefix: &str,
        names: WeightNames,
        dtype: crate::Dtype,
    ) -> Result<Vec<u8>> {
        self.validate(config)?;
        let c = config;
        let d = c.head_dim();
        let (hd, kvd, e, ekv) = (c.heads * d, c.kv_heads * d, c.embed, c.kv_embed);
        let mut out: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        let mut put = |name: &str, shape: Vec<usize>, v: &[f32]| {
            out.push((format!("{prefix}{name}"), shape, v.to_vec()))
        };
        let in_biases = [&self.b_q, &self.b_k, &self.b_v];
        match names {
            WeightNames::HuggingFace => {
                let projections = [
                    ("q_proj", &self.w_q, &self.b_q, hd, e),
                    ("k_proj", &self.w_k, &self.b_k, kvd, ekv),
                    ("v_proj", &self.w_v, &self.b_v, kvd, ekv),
                    ("out_proj", &self.w_o, &self.b_o, e, hd),
                ];
                for (n, w, b, rows, cols) in projections {
                    put(&format!("{n}.weight"), vec![rows, cols], w);
                    if let Some(b) = b {
                        put(&format!("{n}.bias"), vec![rows], b);
                    }
                }
            }
            WeightNames::T5 => {
                if self.b_q.is_some()
                    || self.b_k.is_some()
                    || self.b_v.is_some()
                    || self.b_o.is_some()
                {
                    return Err(bad(prefix, "has biases; T5's names take none".into()));
                }
                put("q.weight", vec![hd, e], &self.w_q);
                put("k.weight", vec![kvd, ekv], &self.w_k);
                put("v.weight", vec![kvd, ekv], &self.w_v);
                put("o.weight", vec![e, hd], &self.w_o);
            }
            WeightNames::TorchMha => {
                let some = in_biases.iter().filter(|b| b.is_some()).count();
                if some != 0 && some != 3 {
                    return Err(bad(
                        &format!("{prefix}in_proj_bias"),
                        "needs the q, k and v biases all present or all absent".into(),
                    ));
                }
                let bias: Option<Vec<f32>> = (some == 3).then(|| {
                    in_biases
                        .iter()
                        .flat_map(|b| b.iter().flatten())
                        .copied()
                        .collect()
                });
                if hd == kvd && e == ekv {
                    let w = [&self.w_q[..], &self.w_k, &self.w_v].concat();
                    put("in_proj_weight", vec![3 * hd, e], &w);
                } else {
                    put("q_proj_weight", vec![hd, e], &self.w_q);
                    put("k_proj_weight", vec![kvd, ekv], &self.w_k);
                    put("v_proj_weight", vec![kvd, ekv], &self.w_v);
                }
                if let Some(b) = &bias {
                    put("in_proj_bias", vec![b.len()], b);
                }
                put("out_proj.weight", vec![e, hd], &self.w_o);
                if let Some(b) = &self.b_o {
                    put("out_proj.bias", vec![e], b);
                }
            }
        }
        if let Some(g) = c.gate {
            out.push((format!("{prefix}attn_gate"), vec![1], vec![g]));
        }
        let st_dtype = match dtype {
            crate::Dtype::F32 => StDtype::F32,
            crate::Dtype::F16 => StDtype::F16,
            crate::Dtype::Bf16 => StDtype::BF16,
        };
        let bytes: Vec<Vec<u8>> = out.iter().map(|(_, _, v)| dtype.encode(v)).collect();
        let views = out
            .iter()
            .zip(&bytes)
            .map(|((n, s, _), b)| {
                safetensors::tensor::TensorView::new(st_dtype, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| bad(n, format!("cannot be written: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, &None)
            .map_err(|e| bad(prefix, format!("cannot be written: {e}")))
    }
}
