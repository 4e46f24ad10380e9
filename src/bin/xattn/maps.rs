//! The attention-map options shared by `xattn run` and `xattn layer`:
//! which probabilities to write, and the SVG heat map of them.

use std::path::PathBuf;

use clap::Args;
use xattn::harness::{heatmap, npy};
use xattn::{Error, ProbHeads};

#[derive(Args)]
pub struct ProbsArgs {
    /// Also write the attention probabilities P = softmax(QKᵀ·scale + bias),
    /// masks applied, float32: [B, H, n_q, n_kv] (padded batches only).
    #[arg(long)]
    pub probs: Option<PathBuf>,
    /// With --probs: only these heads, in this order (e.g. 3,5):
    /// [B, heads, n_q, n_kv].
    #[arg(
        long,
        requires = "probs",
        conflicts_with = "probs_mean",
        value_delimiter = ','
    )]
    probs_heads: Option<Vec<usize>>,
    /// With --probs: the mean over heads, [B, n_q, n_kv].
    #[arg(long, requires = "probs")]
    probs_mean: bool,
    /// With --probs: draw the first batch entry's maps as an SVG heat map,
    /// one panel per head written (queries × keys).
    #[arg(long, requires = "probs")]
    svg: Option<PathBuf>,
    /// With --svg: fold the queries into a W×H image (W·H = n_q; e.g. 64,64
    /// for Stable Diffusion's 4 096 latents), one panel per head and key.
    #[arg(long, requires = "svg")]
    grid: Option<String>,
    /// With --grid: the keys (tokens) drawn (default 0,1,2,3).
    #[arg(long, requires = "grid", value_delimiter = ',')]
    svg_keys: Option<Vec<usize>>,
}

impl ProbsArgs {
    /// The files written: (flag, path).
    pub fn outputs(&self) -> Vec<(&'static str, &std::path::Path)> {
        let mut v = Vec::new();
        if let Some(p) = &self.probs {
            v.push(("--probs", p.as_path()));
        }
        if let Some(p) = &self.svg {
            v.push(("--svg", p.as_path()));
        }
        v
    }

    /// The heads asked for.
    pub fn which(&self) -> ProbHeads {
        match (&self.probs_heads, self.probs_mean) {
            (Some(h), _) => ProbHeads::Heads(h.clone()),
            (None, true) => ProbHeads::Mean,
            (None, false) => ProbHeads::All,
        }
    }

    /// Checks --grid against n_q before any work: (W, H).
    pub fn grid(&self, n_q: usize) -> Result<Option<(usize, usize)>, Error> {
        self.grid.as_deref().map(|g| parse_grid(g, n_q)).transpose()
    }

    /// Writes `probs` (shape `shape`, n_q × n_kv planes) and, with --svg,
    /// its heat map.
    pub fn write(&self, shape: &[usize], heads: usize, probs: &[f32]) -> Result<(), Error> {
        let Some(path) = &self.probs else {
            return Ok(());
        };
        npy::write_f32(path, shape, probs)?;
        let Some(svg) = &self.svg else {
            return Ok(());
        };
        let (n_q, n_kv) = (shape[shape.len() - 2], shape[shape.len() - 1]);
        let planes: Vec<String> = match self.which() {
            ProbHeads::All => (0..heads).map(|h| format!("head {h}")).collect(),
            ProbHeads::Heads(hs) => hs.iter().map(|h| format!("head {h}")).collect(),
            ProbHeads::Mean => vec!["mean of heads".into()],
        };
        let keys = self.svg_keys.clone().unwrap_or_else(|| vec![0, 1, 2, 3]);
        let panels = heatmap::panels(probs, &planes, n_q, n_kv, self.grid(n_q)?, &keys);
        crate::write_file(svg, heatmap::svg(&panels).as_bytes())
    }
}

/// `W,H` with W·H = n_q.
fn parse_grid(s: &str, n_q: usize) -> Result<(usize, usize), Error> {
    let bad = |why: String| Error::BadArgument {
        name: "--grid".into(),
        reason: format!("{s:?}: {why}"),
    };
    let (w, h) = s
        .split_once(',')
        .and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)))
        .ok_or_else(|| bad("expected W,H".into()))?;
    if w * h != n_q {
        return Err(bad(format!("W·H = {} but there are {n_q} queries", w * h)));
    }
    Ok((w, h))
}
