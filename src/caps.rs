//! What the planner knows about a device: features, limits, and the two
//! host facts that change plans (the CPU's thread count, the f16 storage
//! preference). Plain data, so tests can plan for any adapter.

/// What the library knows about the device it runs on: the numbers the planner
/// reads. Taken from the device (not the adapter's defaults) so that a caller's
/// own device with raised limits is planned for correctly.
#[derive(Debug, Clone)]
pub struct DeviceCaps {
    /// Adapter name, backend, driver.
    pub info: wgpu::AdapterInfo,
    /// `SHADER_F16` is enabled on the device.
    pub shader_f16: bool,
    /// `SUBGROUP` is enabled on the device.
    pub subgroups: bool,
    /// `TIMESTAMP_QUERY` is enabled on the device.
    pub timestamps: bool,
    /// Smallest subgroup size the adapter may use (0 when unknown).
    pub subgroup_min_size: u32,
    /// Largest subgroup size the adapter may use (0 when unknown).
    pub subgroup_max_size: u32,
    /// Bytes of workgroup memory one workgroup may use.
    pub max_workgroup_storage: u32,
    /// Invocations one workgroup may have.
    pub max_invocations: u32,
    /// Largest storage binding, bytes.
    pub max_storage_binding: u64,
    /// Largest buffer, bytes.
    pub max_buffer_size: u64,
    /// Largest dispatch extent per dimension.
    pub max_workgroups_per_dim: u32,
    /// Largest width and height of a 2D texture, texels.
    pub max_texture_dim: u32,
    /// Threads of the host CPU: what a CPU adapter (lavapipe) runs its
    /// workgroups on, and so how many workgroups the split heuristic wants
    /// there ([`crate::ContextOptions::host_threads`]).
    pub host_threads: usize,
    /// Store f16 in u32 words even where the device has `SHADER_F16`
    /// ([`crate::ContextOptions::packed_f16`]).
    pub packed_f16: bool,
    /// Plan as for a discrete GPU even on a CPU adapter
    /// ([`crate::ContextOptions::plan_as_gpu`], `XATTN_PLAN=gpu`).
    pub plan_as_gpu: bool,
}

impl DeviceCaps {
    /// The most bytes one storage binding may hold: the binding size,
    /// capped by the buffer size.
    pub fn binding_limit(&self) -> u64 {
        self.max_storage_binding.min(self.max_buffer_size)
    }

    /// Refuses a binding of `bytes` past [`DeviceCaps::binding_limit`],
    /// naming the tensor and the limit.
    pub fn check_binding(&self, name: &'static str, bytes: u64) -> crate::error::Result<()> {
        let limit = self.binding_limit();
        if bytes > limit {
            return Err(crate::error::Error::BindingTooLarge { name, bytes, limit });
        }
        Ok(())
    }

    /// The caps of a device, with the host facts the planner reads
    /// ([`crate::ContextOptions`] supplies them for a [`crate::Context`]).
    pub fn from_device(device: &wgpu::Device, host_threads: usize, packed_f16: bool) -> Self {
        let f = device.features();
        let l = device.limits();
        let info = device.adapter_info();
        let subgroups = f.contains(wgpu::Features::SUBGROUP);
        Self {
            shader_f16: f.contains(wgpu::Features::SHADER_F16),
            subgroups,
            timestamps: f.contains(wgpu::Features::TIMESTAMP_QUERY),
            subgroup_min_size: if subgroups { info.subgroup_min_size } else { 0 },
            subgroup_max_size: if subgroups { info.subgroup_max_size } else { 0 },
            max_workgroup_storage: l.max_compute_workgroup_storage_size,
            max_invocations: l.max_compute_invocations_per_workgroup,
            max_storage_binding: l.max_storage_buffer_binding_size,
            max_buffer_size: l.max_buffer_size,
            max_workgroups_per_dim: l.max_compute_workgroups_per_dimension,
            max_texture_dim: l.max_texture_dimension_2d,
            info,
            host_threads,
            packed_f16,
            plan_as_gpu: false,
        }
    }

    /// A device with WebGPU's default limits and no optional features: what the
    /// planner must always be able to serve. Used by tests and `xattn info`.
    pub fn webgpu_defaults(info: wgpu::AdapterInfo) -> Self {
        let l = wgpu::Limits::default();
        Self {
            info,
            shader_f16: false,
            subgroups: false,
            timestamps: false,
            subgroup_min_size: 0,
            subgroup_max_size: 0,
            max_workgroup_storage: l.max_compute_workgroup_storage_size,
            max_invocations: l.max_compute_invocations_per_workgroup,
            max_storage_binding: l.max_storage_buffer_binding_size,
            max_buffer_size: l.max_buffer_size,
            max_workgroups_per_dim: l.max_compute_workgroups_per_dimension,
            max_texture_dim: l.max_texture_dimension_2d,
            host_threads: 4,
            packed_f16: false,
            plan_as_gpu: false,
        }
    }

    /// Mesa's lavapipe as this project measures it: a CPU adapter with
    /// subgroups of 8, f16, timestamps, 32 KiB of workgroup memory, 1 024
    /// invocations, 128 MiB bindings, 16 384-texel textures, on `threads` host threads. For planning
    /// and tests without the device.
    pub fn lavapipe(threads: usize) -> Self {
        let mut c = Self::webgpu_defaults(adapter_info(wgpu::DeviceType::Cpu, "llvmpipe"));
        c.shader_f16 = true;
        c.subgroups = true;
        c.timestamps = true;
        c.subgroup_min_size = 8;
        c.subgroup_max_size = 8;
        c.max_workgroup_storage = 32 << 10;
        c.max_invocations = 1024;
        c.max_storage_binding = 128 << 20;
        c.max_texture_dim = 16 << 10;
        c.host_threads = threads;
        c
    }

    /// A discrete GPU through Vulkan with subgroups of `subgroup` lanes (32:
    /// NVIDIA, 64: AMD's wave64): 48 KiB of workgroup memory, 1 024
    /// invocations, 2 GiB bindings, f16 and timestamps, as an H100 reports
    /// them. For planning and tests without the device.
    pub fn discrete_gpu(subgroup: u32) -> Self {
        let mut c = Self::webgpu_defaults(adapter_info(wgpu::DeviceType::DiscreteGpu, "gpu"));
        c.shader_f16 = true;
        c.subgroups = true;
        c.timestamps = true;
        c.subgroup_min_size = subgroup;
        c.subgroup_max_size = subgroup;
        c.max_workgroup_storage = 48 << 10;
        c.max_invocations = 1024;
        c.max_storage_binding = (2 << 30) - 4;
        c.max_buffer_size = 1 << 40;
        c
    }

    /// Whether the adapter is a CPU (lavapipe, llvmpipe): the planner then
    /// keeps under the driver's loop budget, and picks CPU-shaped kernels and
    /// tiles unless [`DeviceCaps::plan_as_gpu`].
    pub fn is_cpu(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Whether the planner picks CPU-shaped kernels, tiles, splits and
    /// workgroup order: a CPU adapter not asked to plan as a GPU.
    pub fn cpu_plans(&self) -> bool {
        self.is_cpu() && !self.plan_as_gpu
    }
}

/// Adapter info for the planning presets.
fn adapter_info(device_type: wgpu::DeviceType, name: &str) -> wgpu::AdapterInfo {
    let mut info = wgpu::AdapterInfo::new(device_type, wgpu::Backend::Vulkan);
    info.name = name.to_string();
    info
}
