//! `Device::best()` never opens wgpu's noop adapter, even when
//! `WGPU_BACKEND=noop` asks for it: that adapter computes nothing. Its own
//! test binary, so that setting the environment races no other test.

use wgrad::Device;

#[test]
fn device_best_never_picks_the_noop_adapter() {
    // SAFETY: this binary's only test: no other thread reads the
    // environment while it is written.
    unsafe { std::env::set_var("WGPU_BACKEND", "noop") };
    // Device::gpu() takes what it is asked for (and best() looks at it first).
    let gpu = Device::gpu().expect("the noop adapter opens on request");
    assert!(gpu.info().to_string().to_lowercase().contains("noop"), "{}", gpu.info());
    assert!(Device::best().is_cpu(), "Device::best() took the noop adapter, which computes nothing");
}
