//! `xattn run`: attention on .npy inputs, with every mask the library has.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use xattn::harness::npy;
use xattn::{
    pack_mask, AttentionProblem, AttentionProbs, Context, Dtype, Error, FlashAttention, MaskShape,
    Masks, VarLen, Window,
};

use crate::maps::ProbsArgs;
use crate::DtypeArg;

#[derive(Args)]
pub struct RunArgs {
    /// Queries [B, n_q, H, d] ([total_q, H, d] with --cu-seqlens-q).
    #[arg(long)]
    q: PathBuf,
    /// Keys [B, n_kv, H_kv, d].
    #[arg(long)]
    k: PathBuf,
    /// Values [B, n_kv, H_kv, d_v].
    #[arg(long)]
    v: PathBuf,
    /// Output O [B, n_q, H, d_v].
    #[arg(long)]
    out: PathBuf,
    /// Also write LSE [B, H, n_q] (natural log).
    #[arg(long)]
    lse: Option<PathBuf>,
    /// Per-batch key lengths [B], int32 or int64.
    #[arg(long)]
    kv_lens: Option<PathBuf>,
    /// Per-batch query lengths [B], int32 or int64: rows past them get O = 0.
    #[arg(long)]
    q_lens: Option<PathBuf>,
    /// Packed batch: cumulative query rows [B+1] (int32/int64); q and o
    /// are then [total_q, H, d], lse [H, total_q].
    #[arg(long, requires = "cu_seqlens_k")]
    cu_seqlens_q: Option<PathBuf>,
    /// Packed batch: cumulative key rows [B+1]; k and v [total_kv, H_kv, d].
    #[arg(long, requires = "cu_seqlens_q")]
    cu_seqlens_k: Option<PathBuf>,
    /// Additive float32 bias [B|1, H|1, n_q|1, n_kv] (-inf hides a key);
    /// combines with --mask.
    #[arg(long)]
    bias: Option<PathBuf>,
    /// Boolean mask [B|1, H|1, n_q|1, n_kv], true = attend (bool or int).
    #[arg(long)]
    mask: Option<PathBuf>,
    /// Causal, aligned bottom-right (key j visible to query i iff
    /// j <= i + n_kv - n_q), as flash-attn; PyTorch's is_causal is top-left.
    /// With --window, caps the window's right side at 0 (flash-attn's meaning).
    #[arg(long)]
    causal: bool,
    /// Sliding window L,R: query i sees keys i+n_kv-n_q-L ..= i+n_kv-n_q+R;
    /// -1 for no limit on that side.
    #[arg(long, allow_hyphen_values = true)]
    window: Option<String>,
    /// Softmax scale (default 1/sqrt(d)).
    #[arg(long)]
    scale: Option<f32>,
    /// Compute with the f64 CPU reference instead of the GPU.
    #[arg(long)]
    reference: bool,
    #[command(flatten)]
    maps: ProbsArgs,
    /// Refuse NaN or ±inf in q, k, v or the bias (exit 2 naming the tensor
    /// and the position) instead of running; without it, NaN in a query
    /// row makes that row NaN and NaN or ±inf in a key or value every row
    /// that attends to it.
    #[arg(long)]
    check_finite: bool,
    /// Storage type on the device: float16 .npy inputs mean f16 (and O
    /// is written as float16); with float32 files, f16 or bf16 converts
    /// on the way in and O back to float32 on the way out.
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
}

pub fn shape_err(name: &str, got: &[usize], want: &str) -> Error {
    Error::Npy {
        path: name.to_string(),
        reason: format!("shape {got:?} does not fit: expected {want}"),
    }
}

/// A 1-D int array of `n` non-negative entries as u32.
pub fn read_u32s(path: &std::path::Path, name: &str, n: usize) -> Result<Vec<u32>, Error> {
    let l = npy::read_int(path)?;
    if l.shape != [n] {
        return Err(shape_err(name, &l.shape, &format!("[{n}]")));
    }
    l.data
        .iter()
        .map(|&x| {
            u32::try_from(x).map_err(|_| Error::Npy {
                path: path.display().to_string(),
                reason: format!("{name} holds {x}; expected values in 0..=4294967295"),
            })
        })
        .collect()
}

/// The broadcast shape of a [B|1, H|1, n_q|1, n_kv] bias or mask file.
fn mask_shape(name: &str, got: &[usize], p: &AttentionProblem) -> Result<MaskShape, Error> {
    let want = format!("[{}|1, {}|1, {}|1, {}]", p.batch, p.heads, p.n_q, p.n_kv);
    let dims = <[usize; 4]>::try_from(got).map_err(|_| shape_err(name, got, &want))?;
    let full = |i: usize, n: usize| match dims[i] {
        x if x == n => Ok(true),
        1 => Ok(false),
        _ => Err(shape_err(name, got, &want)),
    };
    if dims[3] != p.n_kv {
        return Err(shape_err(name, got, &want));
    }
    Ok(MaskShape {
        batch: full(0, p.batch)?,
        heads: full(1, p.heads)?,
        rows: full(2, p.n_q)?,
    })
}

/// `L,R` with -1 for no limit.
fn parse_window(s: &str) -> Result<Window, Error> {
    let bad = || Error::BadWindow {
        reason: format!("{s:?}: expected L,R (keys before and after the diagonal, -1 = no limit)"),
    };
    let side = |x: &str| -> Result<Option<usize>, Error> {
        match x.trim().parse::<i64>().map_err(|_| bad())? {
            -1 => Ok(None),
            v if v >= 0 => Ok(Some(v as usize)),
            _ => Err(bad()),
        }
    };
    let (l, r) = s.split_once(',').ok_or_else(bad)?;
    Ok(Window {
        left: side(l)?,
        right: side(r)?,
    })
}

pub fn run(a: &RunArgs) -> Result<ExitCode, Error> {
    let inputs: Vec<&std::path::Path> = [
        Some(&a.q),
        Some(&a.k),
        Some(&a.v),
        a.kv_lens.as_ref(),
        a.q_lens.as_ref(),
        a.cu_seqlens_q.as_ref(),
        a.cu_seqlens_k.as_ref(),
        a.bias.as_ref(),
        a.mask.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| p.as_path())
    .collect();
    let mut outputs = vec![("--out", a.out.as_path())];
    outputs.extend(a.lse.as_deref().map(|p| ("--lse", p)));
    outputs.extend(a.maps.outputs());
    crate::distinct_outputs(&inputs, &outputs)?;
    let (q, q16) = npy::read_float(&a.q)?;
    let (k, k16) = npy::read_float(&a.k)?;
    let (v, v16) = npy::read_float(&a.v)?;
    let name = |f16: bool| if f16 { "float16" } else { "float32" };
    for (arr, path, f16) in [("k", &a.k, k16), ("v", &a.v, v16)] {
        if f16 != q16 {
            return Err(Error::Npy {
                path: path.display().to_string(),
                reason: format!(
                    "{arr} is {} but q is {}; give q, k and v in one dtype",
                    name(f16),
                    name(q16)
                ),
            });
        }
    }
    let dtype = match (q16, a.dtype.map(DtypeArg::dtype)) {
        (true, None | Some(Dtype::F16)) => Dtype::F16,
        (true, Some(d)) => {
            return Err(Error::Npy {
                path: a.q.display().to_string(),
                reason: format!("float16 inputs cannot run as --dtype {d}; give float32 files"),
            })
        }
        (false, d) => d.unwrap_or(Dtype::F32),
    };
    // Packed batches: [total, H, d] tensors, read as BSHD with B = 1.
    let packed = a.cu_seqlens_q.is_some();
    let rank = |arr: &npy::Array<f32>, name: &str, want4: &str, want3: &str| {
        let s = &arr.shape;
        match (packed, s.len()) {
            (false, 4) => Ok([s[0], s[1], s[2], s[3]]),
            (true, 3) => Ok([1, s[0], s[1], s[2]]),
            _ => Err(shape_err(name, s, if packed { want3 } else { want4 })),
        }
    };
    let [b, nq, h, d] = rank(&q, "q", "[B, n_q, H, d]", "[total_q, H, d]")?;
    let [kb, nkv, hkv, kd] = rank(&k, "k", "[B, n_kv, H_kv, d]", "[total_kv, H_kv, d]")?;
    let want_k = format!("[{b}, n_kv, H_kv, {d}] (batch and d of q)");
    if kb != b || kd != d {
        return Err(shape_err("k", &k.shape, &want_k));
    }
    let [vb, vn, vh, dv] = rank(&v, "v", "[B, n_kv, H_kv, d_v]", "[total_kv, H_kv, d_v]")?;
    let want_v = format!("[{b}, {nkv}, {hkv}, d_v] (B, n_kv, H_kv of k)");
    if (vb, vn, vh) != (b, nkv, hkv) {
        return Err(shape_err("v", &v.shape, &want_v));
    }
    // The batch as the kernels see it: packed batches take B, the longest
    // sequences and the totals from cu_seqlens.
    let cu = match a.cu_seqlens_q.as_ref().zip(a.cu_seqlens_k.as_ref()) {
        None => None,
        Some((cq, ck)) => {
            let nq_file = npy::read_int(cq)?.shape;
            let n = nq_file.first().copied().unwrap_or(0);
            if nq_file.len() != 1 || n < 2 {
                return Err(shape_err("cu_seqlens_q", &nq_file, "[B+1] with B >= 1"));
            }
            Some((
                read_u32s(cq, "cu_seqlens_q", n)?,
                read_u32s(ck, "cu_seqlens_k", n)?,
            ))
        }
    };
    let mut p = match &cu {
        None => AttentionProblem::new(b, h, nq, nkv, d),
        Some((cq, ck)) => {
            let (vl, max_q, max_k) = VarLen::from_cu_seqlens(cq, ck);
            if (vl.total_q, vl.total_kv) != (nq, nkv) {
                return Err(Error::BadSeqLens {
                    name: "cu_seqlens_q",
                    reason: format!(
                        "cu_seqlens end at {} and {}, but q and k hold {nq} and {nkv} rows",
                        vl.total_q, vl.total_kv
                    ),
                });
            }
            AttentionProblem::new(cq.len() - 1, h, max_q, max_k, d).with_varlen(vl)
        }
    }
    .with_kv_heads(hkv)
    .with_head_dim_v(dv)
    .with_dtype(dtype);
    let batch = p.batch;
    let kv_lens = a
        .kv_lens
        .as_ref()
        .map(|f| read_u32s(f, "kv_lens", batch))
        .transpose()?;
    let q_lens = a
        .q_lens
        .as_ref()
        .map(|f| read_u32s(f, "q_lens", batch))
        .transpose()?;
    p = p
        .with_kv_lens(kv_lens.is_some())
        .with_q_lens(q_lens.is_some());
    if let Some(s) = a.scale {
        p = p.with_scale(s);
    }
    if a.causal {
        p = p.with_causal();
    }
    if let Some(w) = &a.window {
        p = p.with_window(parse_window(w)?);
    }
    let bias = match &a.bias {
        None => None,
        Some(path) => {
            let x = npy::read_f32(path)?;
            p = p.with_bias(mask_shape("bias", &x.shape, &p)?);
            Some(x.data)
        }
    };
    let bits = match &a.mask {
        None => None,
        Some(path) => {
            let x = npy::read_bool(path)?;
            p = p.with_bool_mask(mask_shape("mask", &x.shape, &p)?);
            Some(pack_mask(&x.data, p.n_kv))
        }
    };
    p.validate()?;
    let masks = Masks {
        kv_lens: kv_lens.as_deref(),
        q_lens: q_lens.as_deref(),
        cu_seqlens_q: cu.as_ref().map(|c| c.0.as_slice()),
        cu_seqlens_k: cu.as_ref().map(|c| c.1.as_slice()),
        bias: bias.as_deref(),
        mask: bits.as_deref(),
    };
    // What the device stores: the inputs rounded to the storage type.
    let round = |x| dtype.round_all(x);
    crate::check_finite(
        a.check_finite,
        &[("q", &q.data), ("k", &k.data), ("v", &v.data)],
    )?;
    let (q, k, v) = (round(q.data), round(k.data), round(v.data));
    p.validate_inputs(&q, &k, &v, &masks)?;
    a.maps.grid(p.n_q)?;
    let which = a.maps.which();
    let with_probs = a.maps.probs.is_some();
    if with_probs {
        which.validate(&p)?;
    }
    let f32s = |x: Vec<f64>| x.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let (o, lse, probs) = if a.reference {
        let r = xattn::reference::attention_masked(&p, &q, &k, &v, &masks)?;
        let probs = with_probs
            .then(|| xattn::reference::probabilities(&p, &q, &k, &masks, &which).map(f32s))
            .transpose()?;
        (f32s(r.o), f32s(r.lse), probs)
    } else {
        let ctx = Context::new()?;
        let flash = FlashAttention::new(&ctx, &p)?;
        if with_probs {
            let (r, probs) =
                AttentionProbs::new(&flash, which.clone())?.run_with(&flash, &q, &k, &v, &masks)?;
            (r.o, r.lse, Some(probs))
        } else {
            let r = flash.run_with(&q, &k, &v, &masks)?;
            (r.o, r.lse, None)
        }
    };
    let (o_shape, lse_shape) = if packed {
        (vec![nq, h, dv], vec![h, nq])
    } else {
        (vec![b, nq, h, dv], vec![b, h, nq])
    };
    if q16 {
        npy::write_f16(&a.out, &o_shape, &o)?;
    } else {
        npy::write_f32(&a.out, &o_shape, &o)?;
    }
    if let Some(path) = &a.lse {
        npy::write_f32(path, &lse_shape, &lse)?;
    }
    if let Some(probs) = probs {
        a.maps.write(&which.shape(&p), p.heads, &probs)?;
    }
    Ok(ExitCode::SUCCESS)
}
