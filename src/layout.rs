//! Memory order of the q, k, v and o tensors.

/// Memory order of a 4-D tensor of (batch, sequence, heads, head dim).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `[B, S, H, D]`, flash-attn's order (the default).
    #[default]
    Bshd,
    /// `[B, H, S, D]`, PyTorch SDPA's order.
    Bhsd,
}

impl Layout {
    /// Element strides (batch, sequence, head) of a tensor with `s` rows,
    /// `h` heads and head dim `d`.
    pub fn strides(self, s: usize, h: usize, d: usize) -> [usize; 3] {
        match self {
            Layout::Bshd => [s * h * d, h * d, d],
            Layout::Bhsd => [h * s * d, d, s * d],
        }
    }

    /// The shape in memory order.
    pub fn shape(self, b: usize, s: usize, h: usize, d: usize) -> [usize; 4] {
        match self {
            Layout::Bshd => [b, s, h, d],
            Layout::Bhsd => [b, h, s, d],
        }
    }

    /// Copies `data` (in this layout, `[b, s, h, d]` logically) into
    /// `target`'s order.
    pub fn convert<T: Copy + Default>(
        self,
        target: Layout,
        data: &[T],
        [b, s, h, d]: [usize; 4],
    ) -> Vec<T> {
        if self == target {
            return data.to_vec();
        }
        let (from, to) = (self.strides(s, h, d), target.strides(s, h, d));
        let mut out = vec![T::default(); data.len()];
        for bi in 0..b {
            for si in 0..s {
                for hi in 0..h {
                    let src = bi * from[0] + si * from[1] + hi * from[2];
                    let dst = bi * to[0] + si * to[1] + hi * to[2];
                    out[dst..dst + d].copy_from_slice(&data[src..src + d]);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Layout;

    #[test]
    fn strides_address_the_same_element() {
        let [b, s, h, d] = [2, 3, 4, 5];
        let (bshd, bhsd) = (Layout::Bshd.strides(s, h, d), Layout::Bhsd.strides(s, h, d));
        assert_eq!(bshd, [s * h * d, h * d, d]);
        assert_eq!(bhsd, [h * s * d, d, s * d]);
        assert_eq!(Layout::Bhsd.shape(b, s, h, d), [b, h, s, d]);
        // Element (1, 2, 3, 4) holds the same value in both orders.
        let data: Vec<u32> = (0..(b * s * h * d) as u32).collect();
        let conv = Layout::Bshd.convert(Layout::Bhsd, &data, [b, s, h, d]);
        let at = |st: [usize; 3]| st[0] + 2 * st[1] + 3 * st[2] + 4;
        assert_eq!(conv[at(bhsd)], data[at(bshd)]);
    }

    #[test]
    fn conversion_round_trips_and_is_a_permutation() {
        let dims = [2, 7, 3, 5];
        let data: Vec<u32> = (0..dims.iter().product::<usize>() as u32).collect();
        let there = Layout::Bshd.convert(Layout::Bhsd, &data, dims);
        assert_ne!(there, data);
        let mut sorted = there.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, data);
        assert_eq!(Layout::Bhsd.convert(Layout::Bshd, &there, dims), data);
        assert_eq!(Layout::Bshd.convert(Layout::Bshd, &data, dims), data);
    }
}
