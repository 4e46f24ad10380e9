//! The crate's one error type.

use thiserror::Error;

/// Everything that can go wrong in xattn: bad problem descriptions, mismatched
/// buffers, adapter limits and device failures. Every variant names what was
/// wrong and what was expected.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum Error {
    /// No wgpu adapter could be found.
    #[error(
        "no GPU adapter found{detail}. On Linux without a GPU install Mesa's software Vulkan \
         driver: `apt-get install -y mesa-vulkan-drivers libvulkan1` (lavapipe); or select \
         wgpu's GL backend with WGPU_BACKEND=gl"
    )]
    NoAdapter {
        /// Extra context, e.g. the adapter name that was asked for.
        detail: String,
    },

    /// The device could not be created with the features and limits asked for.
    #[error("could not create a device on adapter {adapter:?}: {reason}")]
    DeviceRequest {
        /// Adapter name.
        adapter: String,
        /// wgpu's message.
        reason: String,
    },

    /// A dimension that must be positive is zero.
    #[error("{name} must be at least 1, got 0")]
    ZeroDim {
        /// Which dimension.
        name: &'static str,
    },

    /// Head dimension outside the supported range.
    #[error("{name} = {got} is not supported: head dims must be in 1..={max}")]
    HeadDim {
        /// `d` or `d_v`.
        name: &'static str,
        /// The value given.
        got: usize,
        /// The largest supported value.
        max: usize,
    },

    /// Query heads are not a multiple of key/value heads.
    #[error(
        "query heads ({heads}) must be a multiple of key/value heads ({kv_heads}) for GQA/MQA"
    )]
    HeadsMismatch {
        /// Query heads H.
        heads: usize,
        /// Key/value heads H_kv.
        kv_heads: usize,
    },

    /// The per-batch key lengths have the wrong count.
    #[error("kv_lens has {got} entries, expected one per batch ({expected})")]
    KvLensCount {
        /// Entries given.
        got: usize,
        /// Batch size.
        expected: usize,
    },

    /// A per-batch key length exceeds n_kv.
    #[error("kv_lens[{batch}] = {got} exceeds n_kv = {n_kv}")]
    KvLenTooLong {
        /// Batch index.
        batch: usize,
        /// The length given.
        got: i64,
        /// The number of key rows.
        n_kv: usize,
    },

    /// Query or key lengths, or packed-sequence offsets, that do not match
    /// the problem.
    #[error("{name}: {reason}")]
    BadSeqLens {
        /// Which array.
        name: &'static str,
        /// What is wrong and what was expected.
        reason: String,
    },

    /// A bias or boolean mask that does not match the problem's declaration.
    #[error("{name}: {reason}")]
    BadMask {
        /// `bias` or `mask`.
        name: &'static str,
        /// What is wrong and what was expected.
        reason: String,
    },

    /// A window that the kernels cannot apply, or that does not parse.
    #[error("window: {reason}")]
    BadWindow {
        /// What is wrong and what was expected.
        reason: String,
    },

    /// A command-line argument that does not parse or does not fit.
    #[error("{name}: {reason}")]
    BadArgument {
        /// The flag, e.g. `--shape`.
        name: String,
        /// What is wrong and what was expected.
        reason: String,
    },

    /// A caller's buffer lacks a usage flag the launch needs.
    #[error("{name} buffer lacks BufferUsages::{missing}: {why}")]
    BufferUsage {
        /// Which tensor.
        name: &'static str,
        /// The missing flag.
        missing: &'static str,
        /// Why the launch needs it, and the way around it.
        why: String,
    },

    /// A feature the chosen kernel does not implement.
    #[error("{kernel} does not support {feature}: {hint}")]
    Unsupported {
        /// Kernel family.
        kernel: &'static str,
        /// The feature.
        feature: String,
        /// What to use instead.
        hint: &'static str,
    },

    /// A scale that is NaN or infinite.
    #[error("scale must be finite, got {got}")]
    BadScale {
        /// The value given.
        got: f32,
    },

    /// A host slice or device buffer does not have the size the problem implies.
    #[error("{name} has {got} elements, expected {expected} (shape {shape})")]
    SizeMismatch {
        /// Which tensor.
        name: &'static str,
        /// Elements given.
        got: u64,
        /// Elements expected.
        expected: u64,
        /// The expected shape, for the message.
        shape: String,
    },

    /// A tensor is larger than one storage binding may be on this adapter.
    #[error(
        "{name} needs {bytes} bytes in one storage binding, past this adapter's \
         max_storage_buffer_binding_size of {limit} bytes; split the batch or the heads"
    )]
    BindingTooLarge {
        /// Which tensor.
        name: &'static str,
        /// Bytes needed.
        bytes: u64,
        /// The adapter's limit.
        limit: u64,
    },

    /// A tensor has more elements than 32-bit indexing in the kernels can address.
    #[error("{name} has {elements} elements, past the 2^32 - 1 that the kernels can index")]
    TooManyElements {
        /// Which tensor.
        name: &'static str,
        /// Element count.
        elements: u64,
    },

    /// A layer weight file lacks a tensor or holds one of the wrong shape or
    /// type.
    #[error("weights: {name} {reason}")]
    Weights {
        /// The tensor (with its prefix), or the file.
        name: String,
        /// What is wrong and what was expected.
        reason: String,
    },

    /// No kernel configuration fits the adapter.
    #[error("cannot plan {kernel} for this problem on this adapter: {reason}")]
    Unplannable {
        /// Kernel family.
        kernel: &'static str,
        /// Why no configuration fits.
        reason: String,
    },

    /// An input holds NaN or infinity where the policy forbids it.
    #[error("{name} holds a non-finite value ({value}) at flat index {index}")]
    NonFinite {
        /// Which tensor.
        name: &'static str,
        /// Flat index of the first offending element.
        index: usize,
        /// The value.
        value: f32,
    },

    /// A file (other than a .npy array) could not be written.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's message.
        reason: String,
    },

    /// A .npy file could not be read or written, or holds the wrong thing.
    #[error("{path}: {reason}")]
    Npy {
        /// The file.
        path: String,
        /// What is wrong and what was expected.
        reason: String,
    },

    /// The device reported an error (validation, internal).
    #[error("device error: {0}")]
    Device(String),

    /// The device could not allocate (a buffer past the memory it has).
    #[error("device out of memory: {0}")]
    OutOfMemory(String),

    /// The device is lost (destroyed, reset, removed); nothing more runs on
    /// it: create a new `Context`.
    #[error("device lost ({0}); create a new Context")]
    DeviceLost(String),
}

/// Shorthand for results with [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
