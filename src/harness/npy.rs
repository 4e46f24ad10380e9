//! Reading and writing the .npy files the command-line tool exchanges.
//!
//! Reading trusts nothing in a file: the header's declared length and the
//! data its shape declares are checked against the file's size before
//! anything is allocated at them; truncated data, a wrong magic, an
//! unsupported dtype or a corrupt header are an [`Error::Npy`] with a
//! one-line reason. Little- and big-endian data and C- and Fortran-order
//! arrays are read (Fortran order is reordered to C order). Writing goes
//! to a temporary file beside the target, renamed over it once complete:
//! a failed write leaves no partial file and never truncates an existing
//! one.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek};
use std::path::{Path, PathBuf};

use npyz::{TypeChar, WriterBuilder};

use crate::error::{Error, Result};

/// A C-order array: shape and flat data.
#[derive(Debug, Clone, PartialEq)]
pub struct Array<T> {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Elements in C order.
    pub data: Vec<T>,
}

fn err(path: &Path, reason: impl Into<String>) -> Error {
    // One line: the messages of the .npy parser may span several.
    let reason: String = reason.into();
    Error::Npy {
        path: path.display().to_string(),
        reason: reason.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// An opened array: its parsed header, with the reader at the data.
struct Opened {
    npy: npyz::NpyFile<BufReader<File>>,
    shape: Vec<usize>,
    fortran: bool,
}

/// Opens `path`, checking the header's length and the data its shape and
/// dtype declare against the file's size before reading either.
fn open(path: &Path) -> Result<Opened> {
    let mut f = File::open(path).map_err(|e| err(path, format!("cannot open: {e}")))?;
    let size = f
        .metadata()
        .map_err(|e| err(path, format!("cannot open: {e}")))?
        .len();
    // Magic (6), version (2), header length (2 bytes in v1, 4 in v2/v3).
    let mut pre = [0u8; 12];
    let got = read_up_to(&mut f, &mut pre).map_err(|e| err(path, format!("cannot read: {e}")))?;
    if got < 10 || &pre[..6] != b"\x93NUMPY" {
        return Err(err(path, "not a .npy file: no \\x93NUMPY magic"));
    }
    let (header_len, fixed) = match pre[6] {
        1 => (u64::from(u16::from_le_bytes([pre[8], pre[9]])), 10),
        2 | 3 if got == 12 => (
            u64::from(u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]])),
            12,
        ),
        v => {
            return Err(err(
                path,
                format!("not a .npy file: unknown format version {v}"),
            ))
        }
    };
    if fixed + header_len > size {
        return Err(err(
            path,
            format!("header declares {header_len} bytes but the file holds {size}: truncated or corrupt"),
        ));
    }
    f.rewind()
        .map_err(|e| err(path, format!("cannot read: {e}")))?;
    let mut reader = BufReader::new(f);
    let header = npyz::NpyHeader::from_reader(&mut reader)
        .map_err(|e| err(path, format!("not a .npy file: {e}")))?;
    let start = reader
        .stream_position()
        .map_err(|e| err(path, format!("cannot read: {e}")))?;
    let npy = npyz::NpyFile::with_header(header, reader);
    let elem = match npy.dtype() {
        npyz::DType::Plain(t) => t.num_bytes().unwrap_or(0) as u64,
        _ => 0,
    };
    let declared = npy.shape().iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    let need = declared.and_then(|n| n.checked_mul(elem));
    let have = size.saturating_sub(start);
    match need {
        Some(need) if need <= have => {}
        _ => {
            return Err(err(
                path,
                format!(
                    "shape {:?} declares {} bytes of data but the file holds {have}: truncated or \
                     corrupt",
                    npy.shape(),
                    need.map_or("more than 2^64".to_string(), |n| n.to_string())
                ),
            ))
        }
    }
    let shape = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| err(path, "shape too large for this machine"))?;
    let fortran = npy.order() == npyz::Order::Fortran;
    Ok(Opened {
        npy,
        shape,
        fortran,
    })
}

/// Reads into `buf` until it is full or the file ends; the bytes read.
fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

impl Opened {
    fn type_str(&self) -> Option<npyz::TypeStr> {
        match self.npy.dtype() {
            npyz::DType::Plain(t) => Some(t),
            _ => None,
        }
    }

    /// The elements as `T`, in C order.
    fn read<T: npyz::Deserialize + Copy>(self, path: &Path) -> Result<Array<T>> {
        let data: Vec<T> = self
            .npy
            .into_vec()
            .map_err(|e| err(path, format!("cannot read data: {e}")))?;
        let data = if self.fortran {
            fortran_to_c(&self.shape, &data)
        } else {
            data
        };
        Ok(Array {
            shape: self.shape,
            data,
        })
    }
}

/// A Fortran-order (column-major) array's elements in C order.
fn fortran_to_c<T: Copy>(shape: &[usize], data: &[T]) -> Vec<T> {
    let mut out = Vec::with_capacity(data.len());
    let mut index = vec![0usize; shape.len()];
    for _ in 0..data.len() {
        // C order: the last index fastest; Fortran offsets: the first
        // dimension has stride 1.
        let mut offset = 0;
        let mut stride = 1;
        for (i, &n) in index.iter().zip(shape) {
            offset += i * stride;
            stride *= n;
        }
        out.push(data[offset]);
        for (i, &n) in index.iter_mut().zip(shape).rev() {
            *i += 1;
            if *i < n {
                break;
            }
            *i = 0;
        }
    }
    out
}

/// Reads a float32 array.
pub fn read_f32(path: &Path) -> Result<Array<f32>> {
    match read_float(path)? {
        (a, false) => Ok(a),
        (_, true) => Err(err(
            path,
            "dtype <f2 is not float32; convert with .astype(np.float32)",
        )),
    }
}

/// Reads a float32 or float16 array as f32; the flag says float16.
pub fn read_float(path: &Path) -> Result<(Array<f32>, bool)> {
    let file = open(path)?;
    let bytes = match file.type_str() {
        Some(t) if t.type_char() == TypeChar::Float && matches!(t.num_bytes(), Some(2 | 4)) => {
            t.num_bytes()
        }
        other => {
            return Err(err(
                path,
                format!(
                    "dtype {} is not float32 or float16; convert with .astype(np.float32)",
                    other.map_or("structured".to_string(), |t| t.to_string())
                ),
            ))
        }
    };
    if bytes == Some(2) {
        let a = file.read::<half::f16>(path)?;
        let data = a.data.into_iter().map(half::f16::to_f32).collect();
        Ok((
            Array {
                shape: a.shape,
                data,
            },
            true,
        ))
    } else {
        Ok((file.read::<f32>(path)?, false))
    }
}

/// Writes a float16 ('<f2') array in C order, rounding to nearest.
pub fn write_f16(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write(path, shape, data.iter().map(|&x| half::f16::from_f32(x)))
}

/// Writes `data` as a C-order array of its element type: to a temporary
/// file beside `path`, then renamed over it.
fn write<T: npyz::AutoSerialize>(
    path: &Path,
    shape: &[usize],
    data: impl Iterator<Item = T>,
) -> Result<()> {
    let tmp = temporary(path);
    let result = write_to(&tmp, shape, data).and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|e| err(path, format!("cannot write: {e}")))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| match e {
        Error::Npy { reason, .. } => err(path, reason),
        e => e,
    })
}

/// `.name.xattn-<pid>.tmp` beside `path`.
fn temporary(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.xattn-{}.tmp", std::process::id()))
}

fn write_to<T: npyz::AutoSerialize>(
    path: &Path,
    shape: &[usize],
    data: impl Iterator<Item = T>,
) -> Result<()> {
    let f = File::create(path).map_err(|e| err(path, format!("cannot create: {e}")))?;
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(BufWriter::new(f))
        .begin_nd()
        .map_err(|e| err(path, format!("cannot write: {e}")))?;
    w.extend(data)
        .and_then(|_| w.finish())
        .map_err(|e| err(path, format!("cannot write: {e}")))
}

/// Reads an int32 or int64 array as i64.
pub fn read_int(path: &Path) -> Result<Array<i64>> {
    ints(open(path)?, path)
}

/// An opened int32 or int64 array as i64.
fn ints(file: Opened, path: &Path) -> Result<Array<i64>> {
    match file.type_str() {
        Some(t) if t.type_char() == TypeChar::Int && t.num_bytes() == Some(4) => {
            let a = file.read::<i32>(path)?;
            Ok(Array {
                shape: a.shape,
                data: a.data.into_iter().map(i64::from).collect(),
            })
        }
        Some(t) if t.type_char() == TypeChar::Int && t.num_bytes() == Some(8) => file.read(path),
        other => Err(err(
            path,
            format!(
                "dtype {} is not int32 or int64",
                other.map_or("structured".to_string(), |t| t.to_string())
            ),
        )),
    }
}

/// Reads a boolean array: numpy bool, or int32 / int64 where nonzero is true.
pub fn read_bool(path: &Path) -> Result<Array<bool>> {
    let file = open(path)?;
    if file
        .type_str()
        .is_some_and(|t| t.type_char() == TypeChar::Bool)
    {
        return file.read(path);
    }
    let a = ints(file, path).map_err(|e| match e {
        Error::Npy { path, reason } => Error::Npy {
            path,
            reason: format!("{reason}; a mask is bool (or int32/int64, nonzero = attend)"),
        },
        e => e,
    })?;
    Ok(Array {
        shape: a.shape,
        data: a.data.iter().map(|&x| x != 0).collect(),
    })
}

/// Writes a float32 array in C order.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write(path, shape, data.iter().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fortran_order_is_reordered_to_c_order() {
        // A 2 × 3 array [[0, 1, 2], [3, 4, 5]] stored column-major.
        assert_eq!(
            fortran_to_c(&[2, 3], &[0, 3, 1, 4, 2, 5]),
            vec![0, 1, 2, 3, 4, 5]
        );
        // 2 × 2 × 2: element (i, j, k) at i + 2j + 4k.
        let f: Vec<u32> = (0..8).collect();
        let c = fortran_to_c(&[2, 2, 2], &f);
        assert_eq!(c, vec![0, 4, 2, 6, 1, 5, 3, 7]);
    }
}
