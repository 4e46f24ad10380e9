//! Failures surface as typed errors, never as panics or hangs: a device
//! created with lowered limits (tensors past a binding are refused naming
//! the limit), a destroyed (lost) device.

mod common;

use xattn::check::inputs;
use xattn::{
    wgpu, AttentionProblem, Context, CrossAttention, Error, FlashAttention, LayerConfig,
    LayerWeights,
};

/// A context on a device whose storage bindings and buffers are capped at
/// `bytes`, on purpose.
fn limited(bytes: u32) -> Context {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle().with_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))
        .expect("an adapter (install mesa-vulkan-drivers for lavapipe)");
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: u64::from(bytes),
        max_buffer_size: u64::from(bytes),
        ..adapter.limits()
    };
    let desc = wgpu::DeviceDescriptor {
        required_limits: limits,
        required_features: adapter.features() & wgpu::Features::SUBGROUP,
        ..Default::default()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&desc)).unwrap();
    Context::from_device(device, queue)
}

#[test]
fn tensors_past_a_lowered_binding_limit_are_refused_naming_it() {
    let ctx = limited(1 << 20);
    assert_eq!(ctx.caps().max_storage_binding, 1 << 20);
    // K and V of 1 × 4 096 × 8 × 64 f32 = 8 MiB each.
    let p = AttentionProblem::new(1, 8, 4, 4096, 64);
    match FlashAttention::new(&ctx, &p) {
        Err(
            e @ Error::BindingTooLarge {
                name: "k",
                limit: 1048576,
                ..
            },
        ) => {
            assert!(e.to_string().contains("1048576"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // A problem that fits runs on the same device.
    let small = AttentionProblem::new(1, 2, 4, 64, 16);
    let (q, k, v) = inputs(&small, 1);
    let out = FlashAttention::new(&ctx, &small)
        .unwrap()
        .run(&q, &k, &v, None)
        .unwrap();
    assert_eq!(out.o.len(), small.o_len());
    // The layer: a context whose K/V would pass the limit, and weights
    // past it.
    let c = LayerConfig::new(256, 256, 4, 4);
    let w = |n: usize| vec![0.01f32; n];
    let weights = LayerWeights {
        w_q: w(256 * 256),
        w_k: w(256 * 256),
        w_v: w(256 * 256),
        w_o: w(256 * 256),
        ..Default::default()
    };
    let layer = CrossAttention::new(&ctx, c, &weights).unwrap();
    assert!(matches!(
        layer.project_context(&vec![0.5; 2048 * 256], 1, 2048),
        Err(Error::BindingTooLarge { .. })
    ));
    let kv = layer.project_context(&vec![0.5; 64 * 256], 1, 64).unwrap();
    assert!(matches!(
        layer.bind(2048, &kv, None),
        Err(Error::BindingTooLarge { .. })
    ));
    let big = LayerConfig::new(1024, 1024, 8, 8);
    let huge = LayerWeights {
        w_q: w(1024 * 1024),
        w_k: w(1024 * 1024),
        w_v: w(1024 * 1024),
        w_o: w(1024 * 1024),
        ..Default::default()
    };
    assert!(matches!(
        CrossAttention::new(&ctx, big, &huge),
        Err(Error::BindingTooLarge { name: "w_q", .. })
    ));
}

#[test]
fn a_lost_device_is_an_error_not_a_panic_or_a_hang() {
    let ctx = Context::new().unwrap_or_else(|e| panic!("{e}"));
    let p = AttentionProblem::new(1, 2, 8, 40, 16);
    let (q, k, v) = inputs(&p, 2);
    let flash = FlashAttention::new(&ctx, &p).unwrap();
    flash.run(&q, &k, &v, None).unwrap();
    ctx.device().destroy();
    let t = std::time::Instant::now();
    let r = flash.run(&q, &k, &v, None);
    assert!(matches!(r, Err(Error::DeviceLost(_))), "{r:?}");
    assert!(t.elapsed().as_secs() < 30, "returned, not hung");
    // A new plan on the lost device fails as cleanly.
    let r = FlashAttention::new(&ctx, &AttentionProblem::new(1, 3, 5, 7, 24));
    assert!(r.is_err() || r.unwrap().run(&q, &k, &v, None).is_err());
}

#[test]
fn an_allocation_the_device_refuses_comes_back_at_the_next_submit() {
    let ctx = Context::new().unwrap_or_else(|e| panic!("{e}"));
    // Past the device's buffer size: wgpu raises the error outside any
    // scope; its default handler would panic, the context keeps it.
    let too_big = ctx.caps().max_buffer_size.saturating_mul(2).max(1 << 40);
    let _ = ctx.storage("too big", too_big);
    let r = ctx.submit(|_| Ok(()));
    assert!(
        matches!(&r, Err(Error::Device(m) | Error::OutOfMemory(m)) if m.contains("too big")),
        "{r:?}"
    );
    // Reported once; the context goes on.
    ctx.submit(|_| Ok(())).unwrap();
    let p = AttentionProblem::new(1, 2, 8, 40, 16);
    let (q, k, v) = inputs(&p, 2);
    FlashAttention::new(&ctx, &p)
        .unwrap()
        .run(&q, &k, &v, None)
        .unwrap();
}
