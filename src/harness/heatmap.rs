//! Heat maps of attention probabilities as SVG: one panel per head (or per
//! head and key), queries × keys, or the queries folded into an image grid
//! (Stable Diffusion's per-token maps: 4 096 latents as 64 × 64).

use std::fmt::Write;

/// One panel: `rows` × `cols` values, row-major, drawn with its own scale
/// (0 white, the panel's max darkest).
#[derive(Debug, Clone)]
pub struct Panel {
    /// Caption above the panel.
    pub title: String,
    /// Rows of cells.
    pub rows: usize,
    /// Columns of cells.
    pub cols: usize,
    /// `rows · cols` values.
    pub data: Vec<f32>,
}

/// Most cells drawn along a side: larger panels are averaged down in blocks,
/// so a 4 096 × 77 map stays a small file.
pub const MAX_CELLS: usize = 96;

impl Panel {
    /// The panel averaged in blocks to at most [`MAX_CELLS`] per side.
    fn downsampled(&self) -> Panel {
        let (fy, fx) = (
            self.rows.div_ceil(MAX_CELLS).max(1),
            self.cols.div_ceil(MAX_CELLS).max(1),
        );
        if fy == 1 && fx == 1 {
            return self.clone();
        }
        let (rows, cols) = (self.rows.div_ceil(fy), self.cols.div_ceil(fx));
        let mut data = vec![0.0f32; rows * cols];
        let mut count = vec![0u32; rows * cols];
        for r in 0..self.rows {
            for c in 0..self.cols {
                let i = (r / fy) * cols + c / fx;
                data[i] += self.data[r * self.cols + c];
                count[i] += 1;
            }
        }
        for (x, n) in data.iter_mut().zip(&count) {
            *x /= (*n).max(1) as f32;
        }
        Panel {
            title: format!("{} ({}×{} blocks)", self.title, fy, fx),
            rows,
            cols,
            data,
        }
    }
}

/// Panels of [B, P, n_q, n_kv] (or [B, n_q, n_kv], P = 1) probabilities
/// for batch entry 0: one queries × keys panel per plane, or, with `grid`
/// = (W, H) where W·H = n_q, one W × H image per plane and key in `keys`.
pub fn panels(
    probs: &[f32],
    planes: &[String],
    n_q: usize,
    n_kv: usize,
    grid: Option<(usize, usize)>,
    keys: &[usize],
) -> Vec<Panel> {
    let plane = |p: usize| &probs[p * n_q * n_kv..][..n_q * n_kv];
    let mut out = Vec::new();
    for (p, name) in planes.iter().enumerate() {
        match grid {
            None => out.push(Panel {
                title: format!("{name}: queries × keys"),
                rows: n_q,
                cols: n_kv,
                data: plane(p).to_vec(),
            }),
            Some((w, h)) => {
                for &j in keys.iter().filter(|&&j| j < n_kv) {
                    out.push(Panel {
                        title: format!("{name}, key {j}"),
                        rows: h,
                        cols: w,
                        data: (0..n_q).map(|i| plane(p)[i * n_kv + j]).collect(),
                    });
                }
            }
        }
    }
    out
}

/// The SVG of `panels`, laid out in rows of up to four.
pub fn svg(panels: &[Panel]) -> String {
    const SIDE: f32 = 240.0;
    const GAP: f32 = 36.0;
    let per_row = panels.len().clamp(1, 4);
    let rows = panels.len().div_ceil(per_row).max(1);
    let (width, height) = (
        per_row as f32 * (SIDE + GAP) + GAP,
        rows as f32 * (SIDE + GAP) + GAP,
    );
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (n, panel) in panels.iter().enumerate() {
        let p = panel.downsampled();
        let x0 = GAP + (n % per_row) as f32 * (SIDE + GAP);
        let y0 = GAP + (n / per_row) as f32 * (SIDE + GAP);
        let max = p.data.iter().fold(0.0f32, |a, &b| a.max(b));
        let (cw, ch) = (SIDE / p.cols.max(1) as f32, SIDE / p.rows.max(1) as f32);
        let _ = writeln!(
            s,
            r#"<text x="{x0}" y="{}">{} (max {max:.3})</text>"#,
            y0 - 6.0,
            escape(&panel.title)
        );
        for r in 0..p.rows {
            for c in 0..p.cols {
                let v = p.data[r * p.cols + c];
                if v <= 0.0 || max <= 0.0 {
                    continue;
                }
                let t = (v / max).clamp(0.0, 1.0);
                // White to dark blue.
                let (red, green, blue) = (
                    255.0 * (1.0 - t),
                    255.0 * (1.0 - 0.8 * t),
                    255.0 - 120.0 * t,
                );
                let _ = writeln!(
                    s,
                    r#"<rect x="{:.2}" y="{:.2}" width="{:.2}" height="{:.2}" fill="rgb({:.0},{:.0},{:.0})"/>"#,
                    x0 + c as f32 * cw,
                    y0 + r as f32 * ch,
                    cw,
                    ch,
                    red,
                    green,
                    blue
                );
            }
        }
        let _ = writeln!(
            s,
            r#"<rect x="{x0}" y="{y0}" width="{SIDE}" height="{SIDE}" fill="none" stroke="gray"/>"#
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_fold_queries_into_a_grid_and_large_maps_are_averaged() {
        // 2 planes of 6 queries × 3 keys; key 1 of plane 1 as a 3 × 2 image.
        let probs: Vec<f32> = (0..36).map(|x| x as f32).collect();
        let names = ["h0".to_string(), "h1".to_string()];
        let flat = panels(&probs, &names, 6, 3, None, &[]);
        assert_eq!(flat.len(), 2);
        assert_eq!((flat[1].rows, flat[1].cols), (6, 3));
        let grid = panels(&probs, &names, 6, 3, Some((3, 2)), &[1, 9]);
        assert_eq!(grid.len(), 2, "key 9 does not exist");
        assert_eq!((grid[1].rows, grid[1].cols), (2, 3));
        assert_eq!(grid[1].data, vec![19.0, 22.0, 25.0, 28.0, 31.0, 34.0]);
        let big = Panel {
            title: "big".into(),
            rows: 4096,
            cols: 77,
            data: vec![1.0; 4096 * 77],
        };
        let small = big.downsampled();
        assert!(small.rows <= MAX_CELLS && small.cols <= MAX_CELLS);
        assert!(small.data.iter().all(|&x| (x - 1.0).abs() < 1e-6));
        let text = svg(&grid);
        assert!(text.starts_with("<svg") && text.contains("h1, key 1"));
    }
}
