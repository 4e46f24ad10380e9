//! Storage types of the tensors. All arithmetic in the kernels is f32 whatever
//! the storage; this module converts host f32 data to and from each type.

/// Storage type of Q, K, V and O. LSE is always f32, and all arithmetic
/// (scores, softmax, accumulation) is f32 whatever the storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// 32-bit float.
    #[default]
    F32,
    /// IEEE half. Read and written as WGSL `f16` where the device has
    /// `SHADER_F16`, else as `u32` words through `unpack2x16float` (see
    /// [`crate::TileOverride::packed_f16`]).
    F16,
    /// bfloat16, as `u32` words and bit shifts on every device; rounded to
    /// nearest even on the way out.
    Bf16,
}

impl Dtype {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }

    /// Rounds an f32 to this storage type and back (what a kernel that
    /// stores in this type sees).
    pub fn round(self, x: f32) -> f32 {
        match self {
            Dtype::F32 => x,
            Dtype::F16 => half::f16::from_f32(x).to_f32(),
            Dtype::Bf16 => half::bf16::from_f32(x).to_f32(),
        }
    }

    /// [`Dtype::round`] over a vector, in place.
    pub fn round_all(self, mut xs: Vec<f32>) -> Vec<f32> {
        if self != Dtype::F32 {
            xs.iter_mut().for_each(|x| *x = self.round(*x));
        }
        xs
    }

    /// Encodes f32 values in this storage type, little-endian bytes.
    pub fn encode(self, xs: &[f32]) -> Vec<u8> {
        match self {
            Dtype::F32 => bytemuck::cast_slice(xs).to_vec(),
            Dtype::F16 => xs
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            Dtype::Bf16 => xs
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
        }
    }

    /// Decodes `n` values of this storage type from little-endian bytes.
    pub fn decode(self, bytes: &[u8], n: usize) -> Vec<f32> {
        let w = self.bytes();
        bytes
            .chunks_exact(w)
            .take(n)
            .map(|b| match self {
                Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                Dtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                Dtype::Bf16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            })
            .collect()
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Dtype;
    use approx::assert_relative_eq;

    #[test]
    fn encode_then_decode_is_round() {
        let xs = [0.0f32, -1.5, 3.5e-3, 65504.0, 1e-3, -7.25e4, 1.0 / 3.0];
        for dt in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
            let bytes = dt.encode(&xs);
            assert_eq!(bytes.len(), xs.len() * dt.bytes());
            let back = dt.decode(&bytes, xs.len());
            for (&x, &y) in xs.iter().zip(&back) {
                assert_eq!(y.to_bits(), dt.round(x).to_bits(), "{dt} {x}");
            }
        }
    }

    #[test]
    fn rounding_keeps_the_types_precision() {
        // f16 keeps 11 significant bits, bf16 8: the relative rounding error
        // is at most half an ulp, 2^-11 and 2^-8.
        for x in [1.0f32 / 3.0, 2.7, -1234.567, 0.001_234_5] {
            assert_eq!(Dtype::F32.round(x), x);
            assert_relative_eq!(Dtype::F16.round(x), x, max_relative = 2f32.powi(-11));
            assert_relative_eq!(Dtype::Bf16.round(x), x, max_relative = 2f32.powi(-8));
            assert_ne!(Dtype::Bf16.round(x), x);
        }
        // Past f16's range: infinity; bf16 keeps f32's exponent range.
        assert_eq!(Dtype::F16.round(1e6), f32::INFINITY);
        assert_relative_eq!(Dtype::Bf16.round(1e30), 1e30, max_relative = 2f32.powi(-8));
        assert_eq!(
            Dtype::F16.round_all(vec![1.0, 1.0 + 2f32.powi(-12)]),
            vec![1.0, 1.0]
        );
    }

    #[test]
    fn little_endian_bytes() {
        assert_eq!(Dtype::F16.encode(&[1.0]), vec![0x00, 0x3c]);
        assert_eq!(Dtype::Bf16.encode(&[1.0]), vec![0x80, 0x3f]);
        assert_eq!(Dtype::F32.encode(&[1.0]), vec![0, 0, 0x80, 0x3f]);
    }
}
