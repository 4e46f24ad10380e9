//! `xattn layer`: a cross-attention layer from safetensors weights on .npy
//! inputs (projections, attention, output projection, optional gate), with
//! its attention maps.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use xattn::harness::npy;
use xattn::reference::{cross_attention_layer, cross_attention_layer_probs_in};
use xattn::{
    gate_from_safetensors, Context, CrossAttention, Error, LayerConfig, LayerWeights, WeightNames,
};

use crate::maps::ProbsArgs;
use crate::run::{read_u32s, shape_err};
use crate::DtypeArg;

#[derive(Args)]
pub struct LayerArgs {
    /// Weights (.safetensors): PyTorch nn.MultiheadAttention names
    /// (in_proj_weight, or q/k/v_proj_weight; out_proj.weight), Hugging
    /// Face names (q_proj.weight …, out_proj.weight) or T5's (q, k, v, o).
    #[arg(long)]
    weights: PathBuf,
    /// Name prefix of the layer's tensors, final dot included
    /// (model.decoder.layers.0.encoder_attn. for Whisper's first layer)
    #[arg(long, default_value = "")]
    prefix: String,
    /// Query heads H (d = E / H).
    #[arg(long)]
    heads: usize,
    /// Key/value heads (default H; fewer for GQA).
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Queries' token states X [B, n_q, E] (float32).
    #[arg(long)]
    x: PathBuf,
    /// Context C [B, n_kv, E_kv] (float32): encoder frames, text tokens.
    #[arg(long)]
    context: PathBuf,
    /// Output Y [B, n_q, E] (float32).
    #[arg(long)]
    out: PathBuf,
    /// Per-batch context lengths [B], int32 or int64.
    #[arg(long)]
    kv_lens: Option<PathBuf>,
    /// Softmax scale (default 1/sqrt(E/H); 1 for T5's names).
    #[arg(long)]
    scale: Option<f32>,
    /// Flamingo's gate α: Y = X + tanh(α)·attention(X, C). Without a value,
    /// α is the weights' `attn_gate` tensor (under the prefix).
    #[arg(long, allow_hyphen_values = true, num_args = 0..=1, value_name = "ALPHA")]
    gate: Option<Option<f32>>,
    /// Device storage of the weights and activations (f32 arithmetic).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
    /// Compute with the f64 CPU reference of the layer instead of the GPU.
    #[arg(long)]
    reference: bool,
    #[command(flatten)]
    maps: ProbsArgs,
    /// Refuse NaN or ±inf in X or C (exit 2 naming the tensor and the
    /// position) instead of running.
    #[arg(long)]
    check_finite: bool,
}

/// A [B, n, E] float32 array.
fn read_rows(path: &std::path::Path, name: &str) -> Result<npy::Array<f32>, Error> {
    let a = npy::read_f32(path)?;
    if a.shape.len() != 3 {
        return Err(shape_err(name, &a.shape, "[B, n, E]"));
    }
    Ok(a)
}

pub fn layer(a: &LayerArgs) -> Result<ExitCode, Error> {
    let inputs: Vec<&std::path::Path> = [
        Some(&a.weights),
        Some(&a.x),
        Some(&a.context),
        a.kv_lens.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| p.as_path())
    .collect();
    let mut outputs = vec![("--out", a.out.as_path())];
    outputs.extend(a.maps.outputs());
    crate::distinct_outputs(&inputs, &outputs)?;
    let x = read_rows(&a.x, "x")?;
    let context = read_rows(&a.context, "context")?;
    crate::check_finite(
        a.check_finite,
        &[("x", &x.data), ("context", &context.data)],
    )?;
    let [b, n_q, e] = [x.shape[0], x.shape[1], x.shape[2]];
    let [cb, n_kv, e_kv] = [context.shape[0], context.shape[1], context.shape[2]];
    if cb != b {
        return Err(shape_err(
            "context",
            &context.shape,
            &format!("[{b}, n_kv, E_kv] (the batch of x)"),
        ));
    }
    let mut c = LayerConfig::new(e, e_kv, a.heads, a.kv_heads.unwrap_or(a.heads));
    c.dtype = a.dtype.dtype();
    let bytes = std::fs::read(&a.weights).map_err(|e| Error::Io {
        path: a.weights.display().to_string(),
        reason: format!("cannot read: {e}"),
    })?;
    c.gate = match a.gate {
        None => None,
        Some(Some(alpha)) => Some(alpha),
        Some(None) => Some(gate_from_safetensors(&bytes, &a.prefix)?),
    };
    let (w, names) = LayerWeights::from_safetensors(&bytes, &a.prefix, &c)?;
    c.scale = a.scale.or(names.scale());
    let kv_lens = a
        .kv_lens
        .as_ref()
        .map(|f| read_u32s(f, "kv_lens", b))
        .transpose()?;
    let lens = kv_lens.as_deref();
    let which = a.maps.which();
    a.maps.grid(n_q)?;
    let n = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    let (y, probs, shape) = if a.reference {
        let y = n(cross_attention_layer(
            &c,
            &w,
            &x.data,
            &context.data,
            b,
            n_q,
            n_kv,
            lens,
        )?);
        let mut shape = None;
        let probs = match a.maps.probs {
            None => None,
            Some(_) => {
                let p = xattn::AttentionProblem::new(b, c.heads, n_q, n_kv, c.head_dim());
                which.validate(&p)?;
                shape = Some(which.shape(&p));
                Some(n(cross_attention_layer_probs_in::<f64>(
                    &c,
                    &w,
                    &x.data,
                    &context.data,
                    b,
                    n_q,
                    n_kv,
                    lens,
                    &which,
                )?))
            }
        };
        (y, probs, shape)
    } else {
        let ctx = Context::new()?;
        let layer = CrossAttention::new(&ctx, c, &w)?;
        let kv = layer.project_context(&context.data, b, n_kv)?;
        let step = layer.bind(n_q, &kv, lens)?;
        match a.maps.probs {
            None => (step.run(&x.data)?, None, None),
            Some(_) => {
                let step = step.with_probs(which)?;
                let (y, p) = step.run_probs(&x.data)?;
                (y, Some(p), step.probs_shape())
            }
        }
    };
    npy::write_f32(&a.out, &[b, n_q, e], &y)?;
    if let Some((p, shape)) = probs.zip(shape) {
        a.maps.write(&shape, c.heads, &p)?;
    }
    if names == WeightNames::T5 && a.scale.is_none() {
        eprintln!("note: T5 weight names: scale 1 (give --scale to override)");
    }
    Ok(ExitCode::SUCCESS)
}
