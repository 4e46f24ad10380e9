//! Reading and writing the .npy files the command-line tool exchanges.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

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
    Error::Npy {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn open(path: &Path) -> Result<npyz::NpyFile<BufReader<File>>> {
    let f = File::open(path).map_err(|e| err(path, format!("cannot open: {e}")))?;
    let npy = npyz::NpyFile::new(BufReader::new(f))
        .map_err(|e| err(path, format!("not a .npy file: {e}")))?;
    if npy.order() != npyz::Order::C {
        return Err(err(
            path,
            "Fortran-order array; save it in C order (np.ascontiguousarray)",
        ));
    }
    Ok(npy)
}

fn type_str(npy: &npyz::NpyFile<BufReader<File>>) -> Option<npyz::TypeStr> {
    match npy.dtype() {
        npyz::DType::Plain(t) => Some(t),
        _ => None,
    }
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

/// Reads a float32 or float16 ('<f2') array as f32; the flag says float16.
pub fn read_float(path: &Path) -> Result<(Array<f32>, bool)> {
    let npy = open(path)?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let bytes = match type_str(&npy) {
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
    let read = |e: std::io::Error| err(path, format!("cannot read data: {e}"));
    if bytes == Some(2) {
        let data = npy.into_vec::<half::f16>().map_err(read)?;
        let data = data.into_iter().map(half::f16::to_f32).collect();
        Ok((Array { shape, data }, true))
    } else {
        let data = npy.into_vec::<f32>().map_err(read)?;
        Ok((Array { shape, data }, false))
    }
}

/// Writes a float16 ('<f2') array in C order, rounding to nearest.
pub fn write_f16(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write(path, shape, data.iter().map(|&x| half::f16::from_f32(x)))
}

/// Writes `data` as a C-order array of its element type.
fn write<T: npyz::AutoSerialize>(
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
    let npy = open(path)?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let t = type_str(&npy);
    let data = match &t {
        Some(t) if t.type_char() == TypeChar::Int && t.num_bytes() == Some(4) => npy
            .into_vec::<i32>()
            .map(|v| v.into_iter().map(i64::from).collect()),
        Some(t) if t.type_char() == TypeChar::Int && t.num_bytes() == Some(8) => {
            npy.into_vec::<i64>()
        }
        other => {
            return Err(err(
                path,
                format!(
                    "dtype {} is not int32 or int64",
                    other
                        .as_ref()
                        .map_or("structured".to_string(), |t| t.to_string())
                ),
            ))
        }
    }
    .map_err(|e| err(path, format!("cannot read data: {e}")))?;
    Ok(Array { shape, data })
}

/// Reads a boolean array: numpy bool, or int32 / int64 where nonzero is true.
pub fn read_bool(path: &Path) -> Result<Array<bool>> {
    let npy = open(path)?;
    if type_str(&npy).is_some_and(|t| t.type_char() == TypeChar::Bool) {
        let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
        let data = npy
            .into_vec::<bool>()
            .map_err(|e| err(path, format!("cannot read data: {e}")))?;
        return Ok(Array { shape, data });
    }
    let a = read_int(path).map_err(|e| match e {
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
