//! [`Context`]: adapter choice, the device and its [`DeviceCaps`], the
//! pipeline cache, and the few host-side helpers (upload, readback,
//! serialised polling) that every kernel shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::caps::DeviceCaps;
use crate::error::{Error, Result};
use crate::source::{FlashSpec, Shader};

/// How [`Context::with_options`] picks an adapter, and the host facts the
/// planner reads ([`DeviceCaps::host_threads`], [`DeviceCaps::packed_f16`]).
/// Every field defaults from the environment: wgpu's own variables, so
/// `WGPU_BACKEND=gl`, `WGPU_ADAPTER_NAME=llvmpipe` and `WGPU_POWER_PREF=low`
/// work unchanged, and `XATTN_F16=packed`.
#[derive(Debug, Clone)]
pub struct ContextOptions {
    /// Backends to search (`WGPU_BACKEND`, default: all compiled in).
    pub backends: wgpu::Backends,
    /// Case-insensitive substring of the adapter name (`WGPU_ADAPTER_NAME`).
    pub adapter_name: Option<String>,
    /// Power preference (`WGPU_POWER_PREF`), breaks ties between hardware adapters.
    pub power_preference: wgpu::PowerPreference,
    /// Store f16 in u32 words even where the device has `SHADER_F16`
    /// (`XATTN_F16=packed`; default off).
    pub packed_f16: bool,
    /// Host threads a CPU adapter runs on (default: the machine's available
    /// parallelism).
    pub host_threads: Option<usize>,
    /// Plan as for a discrete GPU of the adapter's subgroup size
    /// (`XATTN_PLAN=gpu`; default off): the kernels, tiles and splits a GPU
    /// would get, so GPU paths run and are checked on any adapter. The
    /// adapter's real limits and a CPU driver's loop budget still hold.
    pub plan_as_gpu: bool,
}

impl Default for ContextOptions {
    fn default() -> Self {
        Self {
            backends: wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all()),
            adapter_name: std::env::var("WGPU_ADAPTER_NAME")
                .ok()
                .filter(|s| !s.is_empty()),
            power_preference: wgpu::PowerPreference::from_env().unwrap_or_default(),
            packed_f16: std::env::var("XATTN_F16").is_ok_and(|v| v.eq_ignore_ascii_case("packed")),
            host_threads: None,
            plan_as_gpu: std::env::var("XATTN_PLAN").is_ok_and(|v| v.eq_ignore_ascii_case("gpu")),
        }
    }
}

impl ContextOptions {
    /// [`ContextOptions::host_threads`], or the machine's available
    /// parallelism.
    pub fn threads(&self) -> usize {
        self.host_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(4, |n| n.get()))
            .max(1)
    }
}

/// Identifies one compiled pipeline: the shader, the entry point and, for the
/// fused family, the typed spec that writes its generated source. Heuristic
/// choices (which tile to use) live in the planner; only their result
/// appears here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PipelineKey {
    pub shader: Shader,
    pub entry: &'static str,
    pub spec: Option<FlashSpec>,
}

/// How a kernel binds one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Binding {
    Uniform,
    Read,
    ReadWrite,
    /// A 2D texture mirror of a buffer in `format`, read with `textureLoad`
    /// as a read-only storage texture.
    Mirror(wgpu::TextureFormat),
}

impl Binding {
    fn layout_type(self) -> wgpu::BindingType {
        let buffer = |ty| wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: false,
            min_binding_size: None,
        };
        match self {
            Binding::Uniform => buffer(wgpu::BufferBindingType::Uniform),
            Binding::Read => buffer(wgpu::BufferBindingType::Storage { read_only: true }),
            Binding::ReadWrite => buffer(wgpu::BufferBindingType::Storage { read_only: false }),
            Binding::Mirror(format) => wgpu::BindingType::StorageTexture {
                access: wgpu::StorageTextureAccess::ReadOnly,
                format,
                view_dimension: wgpu::TextureViewDimension::D2,
            },
        }
    }
}

/// A compiled pipeline and the explicit layout of its bind group 0 (explicit
/// so that every entry point of a family shares one layout, whatever it uses).
#[derive(Debug)]
pub(crate) struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

impl Kernel {
    /// Records one dispatch of this kernel with `buffers` bound in order.
    pub fn dispatch(
        &self,
        device: &wgpu::Device,
        pass: &mut wgpu::ComputePass<'_>,
        buffers: &[&wgpu::Buffer],
        grid: (u32, u32),
    ) {
        let bind = self.bind(device, buffers);
        self.dispatch_bound(pass, &bind, grid);
    }

    /// A bind group with `buffers` bound in order, for [`Kernel::dispatch_bound`].
    pub fn bind(&self, device: &wgpu::Device, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let resources: Vec<_> = buffers.iter().map(|b| b.as_entire_binding()).collect();
        self.bind_resources(device, resources)
    }

    /// A bind group with `resources` bound in order (buffers and textures).
    pub fn bind_resources(
        &self,
        device: &wgpu::Device,
        resources: Vec<wgpu::BindingResource<'_>>,
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry<'_>> = resources
            .into_iter()
            .enumerate()
            .map(|(i, resource)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource,
            })
            .collect();
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &self.layout,
            entries: &entries,
        })
    }

    /// Records one dispatch with a bind group made by [`Kernel::bind`].
    pub fn dispatch_bound(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bind: &wgpu::BindGroup,
        grid: (u32, u32),
    ) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, bind, &[]);
        pass.dispatch_workgroups(grid.0, grid.1, 1);
    }
}

/// A cache entry: the kernel once compiled (`None` before, or after a failed
/// compile, which the next caller retries).
type PipelineSlot = Mutex<Option<Arc<Kernel>>>;

/// A device, its queue, what it can do, and the compiled pipelines.
///
/// Build one per process (it is `Send + Sync`; share it behind an `Arc`) and
/// reuse it: pipelines are compiled on first use and cached by key.
pub struct Context {
    device: wgpu::Device,
    queue: wgpu::Queue,
    caps: DeviceCaps,
    /// One slot per key: the map's lock is held only to find or add a slot,
    /// the slot's own lock while its pipeline compiles, so a cold compile
    /// (seconds on lavapipe) blocks only callers of the same key.
    pipelines: RwLock<HashMap<PipelineKey, Arc<PipelineSlot>>>,
    /// wgpu-core 30 can assert when two threads poll one device at once
    /// (gfx-rs/wgpu#9958); every wait goes through this lock.
    poll_lock: Mutex<()>,
    /// Bound where a kernel's optional input (key lengths) is absent.
    dummy: wgpu::Buffer,
    /// Bound where a kernel's optional scratch (carried state) is absent; a
    /// buffer may not be read-only and read-write in one dispatch.
    dummy_rw: wgpu::Buffer,
    /// What the device raised outside an error scope, and its loss: kept
    /// here (wgpu's default handler panics) and returned by the next
    /// submit, wait or download.
    faults: Arc<Mutex<Faults>>,
}

/// The device's loss and its first error outside an error scope.
#[derive(Debug, Default)]
struct Faults {
    lost: Option<String>,
    uncaptured: Option<Error>,
}

/// A wgpu error as this crate's.
fn device_error(e: wgpu::Error) -> Error {
    match e {
        wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory(e.to_string()),
        e => Error::Device(e.to_string()),
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("caps", &self.caps).finish()
    }
}

/// Rank for adapter choice: hardware first, software last.
fn device_type_rank(t: wgpu::DeviceType, pref: wgpu::PowerPreference) -> u32 {
    use wgpu::DeviceType::*;
    match (t, pref) {
        (IntegratedGpu, wgpu::PowerPreference::LowPower) => 0,
        (DiscreteGpu, _) => 0,
        (IntegratedGpu, _) => 1,
        (VirtualGpu, _) => 2,
        (Other, _) => 3,
        (Cpu, _) => 4,
    }
}

/// Rank for backends: native compute APIs before GL.
fn backend_rank(b: wgpu::Backend) -> u32 {
    match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        wgpu::Backend::Gl => 1,
        _ => 2,
    }
}

impl Context {
    /// Picks an adapter as [`ContextOptions::default`] says (wgpu's environment
    /// variables honoured): a hardware adapter if there is one, else any
    /// (lavapipe, llvmpipe through GL).
    pub fn new() -> Result<Self> {
        Self::with_options(&ContextOptions::default())
    }

    /// Every adapter wgpu can see with these backends, in the order
    /// [`Context::with_options`] prefers them.
    pub fn adapters(options: &ContextOptions) -> Vec<wgpu::Adapter> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle().with_env();
        desc.backends = options.backends;
        let instance = wgpu::Instance::new(desc);
        let mut adapters = pollster::block_on(instance.enumerate_adapters(options.backends));
        adapters.sort_by_key(|a| {
            let i = a.get_info();
            (
                device_type_rank(i.device_type, options.power_preference),
                backend_rank(i.backend),
            )
        });
        adapters
    }

    /// Picks an adapter by `options`, then creates the device with the optional
    /// features xattn can use and the adapter's own limits (not WebGPU's
    /// defaults: more workgroup memory means bigger tiles).
    pub fn with_options(options: &ContextOptions) -> Result<Self> {
        let adapters = Self::adapters(options);
        let adapter = match &options.adapter_name {
            Some(name) => {
                let want = name.to_lowercase();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&want))
                    .ok_or_else(|| Error::NoAdapter {
                        detail: format!(" matching WGPU_ADAPTER_NAME={name:?}"),
                    })?
            }
            None => adapters
                .into_iter()
                .next()
                .ok_or_else(|| Error::NoAdapter {
                    detail: format!(" for backends {:?}", options.backends),
                })?,
        };
        let wanted =
            wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY;
        let features = adapter.features() & wanted;
        let desc = wgpu::DeviceDescriptor {
            label: Some("xattn"),
            required_features: features,
            required_limits: adapter.limits(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| {
            Error::DeviceRequest {
                adapter: adapter.get_info().name,
                reason: e.to_string(),
            }
        })?;
        Ok(Self::from_device_with(device, queue, options))
    }

    /// Wraps a device and queue the caller already owns. The planner reads the
    /// features and limits the device was created with.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        Self::from_device_with(device, queue, &ContextOptions::default())
    }

    /// [`Context::from_device`] with the host facts of `options`.
    pub fn from_device_with(
        device: wgpu::Device,
        queue: wgpu::Queue,
        options: &ContextOptions,
    ) -> Self {
        let mut caps = DeviceCaps::from_device(&device, options.threads(), options.packed_f16);
        caps.plan_as_gpu = options.plan_as_gpu;
        let dummy_buffer = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        let (dummy, dummy_rw) = (dummy_buffer("xattn dummy"), dummy_buffer("xattn dummy rw"));
        let faults = Arc::new(Mutex::new(Faults::default()));
        let f = faults.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut g = f.lock().unwrap_or_else(|e| e.into_inner());
            g.uncaptured.get_or_insert(device_error(e));
        }));
        let f = faults.clone();
        device.set_device_lost_callback(move |reason, message| {
            let mut g = f.lock().unwrap_or_else(|e| e.into_inner());
            g.lost = Some(format!("{reason:?}: {message}"));
        });
        Self {
            device,
            queue,
            caps,
            pipelines: RwLock::new(HashMap::new()),
            poll_lock: Mutex::new(()),
            dummy,
            dummy_rw,
            faults,
        }
    }

    /// The device's loss, or the first error it raised outside an error
    /// scope since the last call (a buffer that could not be allocated,
    /// say), as an error.
    pub fn check_device(&self) -> Result<()> {
        if self.faults.lock().map_or(true, |g| g.uncaptured.is_some()) {
            // An error may come from a loss whose callback runs at the next
            // poll: let it run, so the loss is what is reported.
            let _g = self.poll_lock.lock().unwrap_or_else(|e| e.into_inner());
            let _ = self.device.poll(wgpu::PollType::Poll);
        }
        let mut g = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = &g.lost {
            return Err(Error::DeviceLost(reason.clone()));
        }
        match g.uncaptured.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Features and limits the planner works from.
    pub fn caps(&self) -> &DeviceCaps {
        &self.caps
    }

    /// Number of pipelines compiled so far (for tests and diagnostics).
    pub fn cached_pipelines(&self) -> usize {
        self.pipelines
            .read()
            .map(|m| {
                m.values()
                    .filter(|s| s.lock().is_ok_and(|k| k.is_some()))
                    .count()
            })
            .unwrap_or(0)
    }

    pub(crate) fn dummy_buffer(&self) -> &wgpu::Buffer {
        &self.dummy
    }

    pub(crate) fn dummy_rw_buffer(&self) -> &wgpu::Buffer {
        &self.dummy_rw
    }

    /// Returns the pipeline for `key`, compiling `source()` on first use. The
    /// map's read lock serves the common case; a new key gets its slot under
    /// the write lock, released before compiling; two threads racing on one
    /// key compile it once (the second waits on the slot).
    pub(crate) fn pipeline(
        &self,
        key: PipelineKey,
        bindings: &[Binding],
        source: impl FnOnce() -> String,
    ) -> Result<Arc<Kernel>> {
        let found = self
            .pipelines
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let slot = match found {
            Some(slot) => slot,
            None => self
                .pipelines
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_default()
                .clone(),
        };
        let mut kernel = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = kernel.as_ref() {
            return Ok(k.clone());
        }
        let compiled = Arc::new(self.compile(key, bindings, source())?);
        *kernel = Some(compiled.clone());
        Ok(compiled)
    }

    /// Compiles one pipeline with its explicit bind group layout.
    fn compile(&self, key: PipelineKey, bindings: &[Binding], src: String) -> Result<Kernel> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        // SAFETY: the kernels index only within bounds that `validate` has
        // checked against the bound buffers, and every loop has a bound that the
        // host computed. Loop bounding is off because the counters it adds stop
        // the backend compilers from unrolling the register-tile loops. Bounds
        // checks stay on: they cost little once loops are unrolled.
        let module = unsafe {
            self.device.create_shader_module_trusted(
                wgpu::ShaderModuleDescriptor {
                    label: Some(key.shader.name()),
                    source: wgpu::ShaderSource::Wgsl(src.into()),
                },
                wgpu::ShaderRuntimeChecks {
                    bounds_checks: false,
                    force_loop_bounding: false,
                    ..wgpu::ShaderRuntimeChecks::checked()
                },
            )
        };
        let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: b.layout_type(),
                count: None,
            })
            .collect();
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(key.shader.name()),
                entries: &entries,
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(key.shader.name()),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(key.shader.name()),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(key.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[],
                    // Every tile is written before it is read.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Device(format!(
                "compiling {}::{} {:?}: {e}",
                key.shader.name(),
                key.entry,
                key.spec
            )));
        }
        Ok(Kernel { pipeline, layout })
    }

    /// Blocks until all submitted work is done. Serialised across threads.
    pub fn wait(&self) -> Result<()> {
        let polled = {
            let _g = self.poll_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.device.poll(wgpu::PollType::wait_indefinitely())
        };
        self.check_device()?;
        polled.map(|_| ()).map_err(|e| Error::Device(e.to_string()))
    }

    /// A buffer of `usage` holding `bytes` (padded to a multiple of 4 and at
    /// least 16 bytes), written through the queue: on a lost device or
    /// out of memory the error is kept for the next submit instead of a
    /// panic in a mapped write.
    fn buffer_with(&self, label: &str, bytes: &[u8], usage: wgpu::BufferUsages) -> wgpu::Buffer {
        let size = (bytes.len() as u64).next_multiple_of(4).max(16);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: usage | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let whole = bytes.len() - bytes.len() % 4;
        if whole > 0 {
            self.queue.write_buffer(&buffer, 0, &bytes[..whole]);
        }
        if whole < bytes.len() {
            let mut tail = [0u8; 4];
            tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
            self.queue.write_buffer(&buffer, whole as u64, &tail);
        }
        buffer
    }

    /// A storage buffer holding `data` (also usable as a copy source); at
    /// least one vec4 (wgpu rejects zero-sized bindings, and a kernel may
    /// bind it as `array<vec4<f32>>`).
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        self.buffer_with(
            label,
            bytemuck::cast_slice(data),
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        )
    }

    /// A uniform buffer holding `value`.
    pub fn upload_uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        self.buffer_with(
            label,
            bytemuck::bytes_of(value),
            wgpu::BufferUsages::UNIFORM,
        )
    }

    /// Records with `f` into a fresh encoder, submits it, and waits. Device
    /// validation errors raised meanwhile come back as [`Error::Device`],
    /// a device lost or out of memory (now or since the last check) as
    /// [`Error::DeviceLost`] or [`Error::OutOfMemory`].
    pub fn submit(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<()>) -> Result<()> {
        self.check_device()?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        let recorded = f(&mut enc);
        if recorded.is_ok() {
            self.queue.submit([enc.finish()]);
        }
        let err = pollster::block_on(scope.pop());
        recorded?;
        self.check_device()?;
        if let Some(e) = err {
            return Err(device_error(e));
        }
        self.wait()
    }

    /// An uninitialised storage buffer of `bytes` bytes (at least 4).
    pub fn storage(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(16).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Copies the first `len` elements of `buffer` back to the host.
    pub fn download<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<T>> {
        let bytes = (len * std::mem::size_of::<T>()) as u64;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        self.check_device()?;
        let size = bytes.next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("xattn readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        enc.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|e| Error::Device(e.to_string()))?
            .map_err(|e| Error::Device(e.to_string()))?;
        let view = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::Device(e.to_string()))?;
        let out = bytemuck::cast_slice::<u8, T>(&view[..bytes as usize]).to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }
}
