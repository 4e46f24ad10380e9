//! The bench harness behind the `xattn` command line: device probes and
//! timing ([`mod@bench`], [`timing`]), the JSON and SVG report ([`report`]) and `.npy` files
//! ([`npy`]). Behind the default-on `cli` feature, with the CLI's
//! dependencies (serde_json, plotters, npyz).

pub mod bench;
pub mod heatmap;
pub mod npy;
pub mod report;
pub mod timing;
