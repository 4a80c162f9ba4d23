//! Shader sources, and the caches of what is built from them: shader
//! modules, bind group layouts, compute pipelines and bind groups.
//!
//! Every WGSL file is compiled with `shaders/prelude.wgsl` in front of it
//! (the workgroup size override, invocation ids, IEEE-754 classification by
//! bits), so no kernel carries its own copy. Pipelines are built once per
//! (shader, entry point, override constants, binding signature) — or per
//! source, for generated kernels — and bind groups once per (layout,
//! buffers): pooled buffers recur from step to step, so a training loop soon
//! finds every bind group it needs in the cache.
//!
//! Kernel parameters are `#[repr(C)]` structs declared with [`params!`],
//! which also records their field names and offsets; a test compares them
//! with the WGSL `struct Params` of the shader they belong to.

use super::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// The largest number of bytes of immediate data a kernel uses; the Vulkan
/// minimum of 128 bytes is enough.
pub(crate) const IMMEDIATE_BYTES: u32 = 128;

/// Bind groups kept for reuse; the cap only guards against pathological
/// patterns.
const BIND_GROUP_CACHE: usize = 4096;

const PRELUDE: &str = include_str!("../../../shaders/prelude.wgsl");

/// The WGSL sources, one file per kernel family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Shader {
    Copy,
    Fill,
    Reduce,
    Softmax,
    SoftmaxBackward,
    Loss,
    Gather,
    Scatter,
    LayerNorm,
    Rnn,
    Optim,
    Matmul,
    /// The subgroup matmul storing whole vec4s (rows of C a multiple of 4).
    MatmulAligned,
    MatmulTiled,
    Conv,
    ConvTiled,
    Pool,
    Scan,
    Sort,
}

impl Shader {
    /// The file that names the family (the one with its entry points).
    pub fn file(self) -> &'static str {
        match self {
            Shader::Copy => "copy.wgsl",
            Shader::Fill => "fill.wgsl",
            Shader::Reduce => "reduce.wgsl",
            Shader::Softmax => "softmax.wgsl",
            Shader::SoftmaxBackward => "softmax_backward.wgsl",
            Shader::Loss => "loss.wgsl",
            Shader::Gather => "gather.wgsl",
            Shader::Scatter => "scatter.wgsl",
            Shader::LayerNorm => "layer_norm.wgsl",
            Shader::Rnn => "rnn.wgsl",
            Shader::Optim => "optim.wgsl",
            Shader::Matmul | Shader::MatmulAligned => "matmul.wgsl",
            Shader::MatmulTiled => "matmul_tiled.wgsl",
            Shader::Conv | Shader::ConvTiled => "conv.wgsl",
            Shader::Pool => "pool.wgsl",
            Shader::Scan => "scan.wgsl",
            Shader::Sort => "sort.wgsl",
        }
    }

    /// Every shader, for tests that check them all.
    #[cfg(test)]
    pub const ALL: [Shader; 19] = [
        Shader::Scan,
        Shader::Sort,
        Shader::Copy,
        Shader::Fill,
        Shader::Reduce,
        Shader::Softmax,
        Shader::SoftmaxBackward,
        Shader::Loss,
        Shader::Gather,
        Shader::Scatter,
        Shader::LayerNorm,
        Shader::Rnn,
        Shader::Optim,
        Shader::Matmul,
        Shader::MatmulAligned,
        Shader::MatmulTiled,
        Shader::Conv,
        Shader::ConvTiled,
        Shader::Pool,
    ];

    /// The file's text and the shared pieces it uses, in the order they
    /// are concatenated after the prelude.
    fn parts(self) -> &'static [&'static str] {
        const ONLINE_SOFTMAX: &str = include_str!("../../../shaders/online_softmax.wgsl");
        const CHECK: &str = include_str!("../../../shaders/check.wgsl");
        const INDEX_VIEW: &str = include_str!("../../../shaders/index_view.wgsl");
        const ELEMENTWISE: &str = include_str!("../../../shaders/elementwise.wgsl");
        match self {
            Shader::Copy => &[include_str!("../../../shaders/copy.wgsl")],
            Shader::Fill => &[include_str!("../../../shaders/fill.wgsl")],
            Shader::Reduce => &[include_str!("../../../shaders/reduce.wgsl")],
            Shader::Softmax => &[ELEMENTWISE, ONLINE_SOFTMAX, include_str!("../../../shaders/softmax.wgsl")],
            Shader::SoftmaxBackward => &[include_str!("../../../shaders/softmax_backward.wgsl")],
            Shader::Loss => &[ELEMENTWISE, ONLINE_SOFTMAX, CHECK, include_str!("../../../shaders/loss.wgsl")],
            Shader::Gather => &[CHECK, INDEX_VIEW, include_str!("../../../shaders/gather.wgsl")],
            Shader::Scatter => &[CHECK, INDEX_VIEW, include_str!("../../../shaders/scatter.wgsl")],
            Shader::LayerNorm => &[include_str!("../../../shaders/layer_norm.wgsl")],
            Shader::Rnn => &[ELEMENTWISE, include_str!("../../../shaders/rnn.wgsl")],
            Shader::Optim => &[OPTIM_RULES, include_str!("../../../shaders/optim.wgsl")],
            Shader::Matmul => &[
                include_str!("../../../shaders/matmul.wgsl"),
                include_str!("../../../shaders/matmul_store.wgsl"),
                MATMUL_LOAD,
                GEMM_BODY,
            ],
            Shader::MatmulAligned => &[
                include_str!("../../../shaders/matmul.wgsl"),
                include_str!("../../../shaders/matmul_store4.wgsl"),
                MATMUL_LOAD,
                GEMM_BODY,
            ],
            Shader::MatmulTiled => {
                &[include_str!("../../../shaders/matmul_tiled.wgsl"), MATMUL_TILED_LOAD, GEMM_TILED_BODY]
            }
            Shader::Conv => &[include_str!("../../../shaders/conv.wgsl"), CONV_LOAD, GEMM_BODY],
            Shader::ConvTiled => &[include_str!("../../../shaders/conv.wgsl"), CONV_LOAD, GEMM_TILED_BODY],
            Shader::Pool => &[include_str!("../../../shaders/pool.wgsl")],
            Shader::Scan => &[include_str!("../../../shaders/scan.wgsl")],
            Shader::Sort => &[include_str!("../../../shaders/sort.wgsl")],
        }
    }

    /// The complete WGSL source the device compiles.
    pub fn source(self) -> String {
        with_prelude(self.parts())
    }
}

/// The register-tiled product kernel's body and its loaders for stored
/// matrices, and the workgroup-tiled kernel's: shared with the matmul
/// kernels whose epilogue is generated (epilogue.rs).
pub(crate) const GEMM_BODY: &str = include_str!("../../../shaders/gemm_body.wgsl");
pub(crate) const MATMUL_LOAD: &str = include_str!("../../../shaders/matmul_load.wgsl");
pub(crate) const GEMM_TILED_BODY: &str = include_str!("../../../shaders/gemm_tiled_body.wgsl");
pub(crate) const MATMUL_TILED_LOAD: &str = include_str!("../../../shaders/matmul_tiled_load.wgsl");
pub(crate) const CONV_LOAD: &str = include_str!("../../../shaders/conv_load.wgsl");

/// The optimizer rules, shared with the generated multi-tensor kernels.
pub(crate) const OPTIM_RULES: &str = include_str!("../../../shaders/optim_rules.wgsl");

/// `parts` after the prelude.
pub(crate) fn with_prelude(parts: &[&str]) -> String {
    let mut src = String::with_capacity(PRELUDE.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>());
    src.push_str(PRELUDE);
    for p in parts {
        src.push('\n');
        src.push_str(p);
    }
    src
}

/// What a dispatch runs: an entry point of a WGSL file with its override
/// constants, or a generated kernel (entry `main`, override `WG`) given by
/// its structure (`fusion::structure`), which its pipeline is cached by,
/// and a function generating its source, called only to compile it.
pub(crate) enum Kernel<'a> {
    Static {
        shader: Shader,
        entry: &'static str,
        constants: &'a [(&'static str, f64)],
    },
    Generated {
        family: &'static str,
        structure: Vec<u32>,
        source: &'a dyn Fn() -> String,
        wg: u32,
        /// Override constants besides `WG` (a matmul epilogue's tiling and
        /// layout flags).
        constants: &'a [(&'static str, f64)],
    },
}

impl Kernel<'_> {
    /// The kernel's name in profiles: file stem and entry point.
    pub fn name(&self) -> String {
        match self {
            Kernel::Static { entry, .. } => format!("{}::{entry}", self.family()),
            Kernel::Generated { family, .. } => family.to_string(),
        }
    }

    /// The file stem of its family (`"matmul"`), or for a generated
    /// kernel what generated it (`"fused"`, `"optim_multi"`).
    pub fn family(&self) -> &'static str {
        match self {
            Kernel::Static { shader, .. } => shader.file().trim_end_matches(".wgsl"),
            Kernel::Generated { family, .. } => family,
        }
    }
}

/// Parameter structs mirror a WGSL `struct Params` field by field; the
/// field table lets a test check the two against each other.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) trait ParamsLayout: bytemuck::Pod {
    /// (name, byte offset) of each field, in declaration order.
    const FIELDS: &'static [(&'static str, usize)];
}

/// Declares a `#[repr(C)]` parameter struct and its [`ParamsLayout`].
macro_rules! params {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        pub(crate) struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }
        impl $crate::backend::gpu::pipelines::ParamsLayout for $name {
            const FIELDS: &'static [(&'static str, usize)] =
                &[$((stringify!($field), std::mem::offset_of!($name, $field))),*];
        }
    };
}
pub(crate) use params;

/// The key of one pipeline: which code, and the slots it binds (slot,
/// written), sorted.
#[derive(Clone, PartialEq, Eq, Hash)]
enum PipelineKey {
    Static {
        shader: Shader,
        entry: &'static str,
        constants: Vec<(&'static str, u64)>,
        signature: Vec<(u32, bool)>,
    },
    Generated {
        family: &'static str,
        structure: Vec<u32>,
        wg: u32,
        constants: Vec<(&'static str, u64)>,
        signature: Vec<(u32, bool)>,
    },
}

pub(crate) struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    /// A generated kernel's source, to check cache hits against.
    #[cfg(debug_assertions)]
    generated: Option<String>,
}

/// The bind group layout of one binding signature, and its pipeline layout.
type Layout = (wgpu::BindGroupLayout, wgpu::PipelineLayout);

#[derive(Default)]
struct Built {
    modules: HashMap<Shader, (wgpu::ShaderModule, Arc<str>)>,
    layouts: HashMap<Vec<(u32, bool)>, Layout>,
    pipelines: HashMap<PipelineKey, Arc<Pipeline>>,
}

/// One compute pipeline a device has built: what it compiled, so that a
/// user (or a test) can inspect, translate or profile the kernels a
/// program really runs — fused kernels included.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledKernel {
    /// The WGSL file of the family (`"matmul.wgsl"`), or `"generated"` for a
    /// fused elementwise kernel.
    pub file: String,
    /// The entry point.
    pub entry: String,
    /// The override constants it was built with, by name.
    pub constants: Vec<(String, f64)>,
    /// The complete WGSL source compiled (prelude and shared parts included).
    pub source: Arc<str>,
    /// The storage buffers it binds: (binding, written).
    pub bindings: Vec<(u32, bool)>,
}

/// Shader modules, layouts and pipelines, built on first use.
pub(crate) struct Pipelines {
    device: wgpu::Device,
    built: Mutex<Built>,
    /// Every pipeline built, in build order (only at build time: a training
    /// loop's steady state adds nothing).
    compiled: Mutex<Vec<CompiledKernel>>,
}

impl Pipelines {
    pub fn new(device: wgpu::Device) -> Self {
        Pipelines { device, built: Mutex::default(), compiled: Mutex::default() }
    }

    /// Every pipeline built so far.
    pub fn compiled(&self) -> Vec<CompiledKernel> {
        lock(&self.compiled).clone()
    }

    fn built(&self) -> MutexGuard<'_, Built> {
        lock(&self.built)
    }

    /// The pipeline of `kernel` binding `signature` (slot, written; sorted).
    pub fn get(&self, kernel: &Kernel, signature: Vec<(u32, bool)>) -> Arc<Pipeline> {
        let key = match kernel {
            Kernel::Static { shader, entry, constants } => PipelineKey::Static {
                shader: *shader,
                entry,
                constants: constants.iter().map(|&(k, v)| (k, v.to_bits())).collect(),
                signature,
            },
            Kernel::Generated { family, structure, wg, constants, .. } => PipelineKey::Generated {
                family,
                structure: structure.clone(),
                wg: *wg,
                constants: constants.iter().map(|&(k, v)| (k, v.to_bits())).collect(),
                signature,
            },
        };
        if let Some(p) = self.built().pipelines.get(&key) {
            #[cfg(debug_assertions)]
            if let Kernel::Generated { source, .. } = kernel {
                let generated = p.generated.as_deref().expect("a generated kernel's pipeline keeps its source");
                assert_eq!(generated, source(), "two generated kernels with one structure key");
            }
            return p.clone();
        }
        // Built outside the lock: compiling can take milliseconds, and two
        // threads building the same pipeline at once only waste one build.
        let (p, record) = match (kernel, &key) {
            (Kernel::Static { shader, entry, constants }, PipelineKey::Static { signature, .. }) => {
                let (module, source) = self.module(*shader);
                let record = CompiledKernel {
                    file: shader.file().into(),
                    entry: entry.to_string(),
                    constants: constants.iter().map(|&(k, v)| (k.to_string(), v)).collect(),
                    source,
                    bindings: signature.clone(),
                };
                (self.build(&module, entry, constants, signature), record)
            }
            (Kernel::Generated { source, wg, constants, .. }, PipelineKey::Generated { signature, .. }) => {
                let source = source();
                let full: Arc<str> = super::fusion::full_source(&source).into();
                let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some("generated"),
                    source: wgpu::ShaderSource::Wgsl(full.as_ref().into()),
                });
                let all: Vec<(&str, f64)> =
                    std::iter::once(("WG", *wg as f64)).chain(constants.iter().copied()).collect();
                let record = CompiledKernel {
                    file: "generated".into(),
                    entry: "main".into(),
                    constants: all.iter().map(|&(k, v)| (k.to_string(), v)).collect(),
                    source: full,
                    bindings: signature.clone(),
                };
                #[allow(unused_mut)]
                let mut pipeline = self.build(&module, "main", &all, signature);
                #[cfg(debug_assertions)]
                {
                    pipeline.generated = Some(source);
                }
                (pipeline, record)
            }
            _ => unreachable!("the key is made from the kernel"),
        };
        let p = Arc::new(p);
        lock(&self.compiled).push(record);
        self.built().pipelines.insert(key, p.clone());
        p
    }

    fn module(&self, shader: Shader) -> (wgpu::ShaderModule, Arc<str>) {
        if let Some(m) = self.built().modules.get(&shader) {
            return m.clone();
        }
        let source: Arc<str> = shader.source().into();
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&format!("{shader:?}")),
            source: wgpu::ShaderSource::Wgsl(source.as_ref().into()),
        });
        self.built().modules.insert(shader, (module.clone(), source.clone()));
        (module, source)
    }

    fn layout(&self, signature: &[(u32, bool)]) -> Layout {
        if let Some(l) = self.built().layouts.get(signature) {
            return l.clone();
        }
        let entries: Vec<wgpu::BindGroupLayoutEntry> = signature
            .iter()
            .map(|&(slot, write)| wgpu::BindGroupLayoutEntry {
                binding: slot,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: !write },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let bgl =
            self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: None, entries: &entries });
        let pl = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: None,
            bind_group_layouts: &[Some(&bgl)],
            immediate_size: IMMEDIATE_BYTES,
        });
        self.built().layouts.entry(signature.to_vec()).or_insert((bgl, pl)).clone()
    }

    fn build(
        &self,
        module: &wgpu::ShaderModule,
        entry: &str,
        constants: &[(&str, f64)],
        signature: &[(u32, bool)],
    ) -> Pipeline {
        let (layout, pipeline_layout) = self.layout(signature);
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&pipeline_layout),
            module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                // Every kernel writes its workgroup memory before reading it.
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        Pipeline {
            pipeline,
            layout,
            #[cfg(debug_assertions)]
            generated: None,
        }
    }
}

/// A bind group's identity: its layout and the buffer at each slot.
#[derive(PartialEq, Eq, Hash)]
struct BindKey {
    layout: wgpu::BindGroupLayout,
    buffers: Vec<(u32, wgpu::Buffer)>,
}

/// Bind groups by (layout, buffers). A cached bind group keeps its buffers
/// alive, so giving memory back to the driver means clearing this too.
pub(crate) struct BindGroups {
    device: wgpu::Device,
    cache: Mutex<HashMap<BindKey, wgpu::BindGroup>>,
}

impl BindGroups {
    pub fn new(device: wgpu::Device) -> Self {
        BindGroups { device, cache: Mutex::default() }
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<BindKey, wgpu::BindGroup>> {
        lock(&self.cache)
    }

    /// The bind group of `buffers` (slot, buffer), from the cache or newly
    /// made.
    pub fn get(&self, layout: &wgpu::BindGroupLayout, buffers: &[(u32, &wgpu::Buffer)]) -> wgpu::BindGroup {
        let key = BindKey {
            layout: layout.clone(),
            buffers: buffers.iter().map(|&(slot, buffer)| (slot, buffer.clone())).collect(),
        };
        let mut cache = self.cache();
        if let Some(group) = cache.get(&key) {
            return group.clone();
        }
        let entries: Vec<wgpu::BindGroupEntry> = key
            .buffers
            .iter()
            .map(|(slot, buffer)| wgpu::BindGroupEntry { binding: *slot, resource: buffer.as_entire_binding() })
            .collect();
        let group =
            self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout, entries: &entries });
        if cache.len() >= BIND_GROUP_CACHE {
            cache.clear();
        }
        cache.insert(key, group.clone());
        group
    }

    /// Forgets every bind group (and with them, their hold on buffers).
    pub fn clear(&self) {
        self.cache().clear();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use wgpu::naga;

    /// (name, offset) of every member of the WGSL `struct Params` in
    /// `source`, and the struct's size.
    pub(crate) fn wgsl_params(source: &str) -> (Vec<(String, usize)>, usize) {
        let module = naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{}", e.emit_to_string(source)));
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).unwrap();
        let (handle, ty) = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some("Params"))
            .expect("the shader declares struct Params");
        let naga::TypeInner::Struct { members, .. } = &ty.inner else { panic!("Params is not a struct") };
        let fields = members.iter().map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize)).collect();
        (fields, layouter[handle].size as usize)
    }

    /// Asserts that `P` mirrors the `struct Params` of `source`.
    pub(crate) fn assert_mirrors<P: ParamsLayout>(source: &str, what: &str) {
        let (fields, size) = wgsl_params(source);
        let ours: Vec<(String, usize)> = P::FIELDS.iter().map(|&(n, o)| (n.to_string(), o)).collect();
        assert_eq!(ours, fields, "{what}: the Rust parameter struct does not mirror WGSL's struct Params");
        assert_eq!(std::mem::size_of::<P>(), size, "{what}: sizes differ");
        assert!(size <= IMMEDIATE_BYTES as usize, "{what}: {size} bytes of immediates");
    }

    #[test]
    fn parameter_structs_mirror_their_shaders() {
        use super::super::{conv, copy, elementwise, gather, loss, matmul, norm, optim, reduce, rnn};
        assert_mirrors::<copy::ViewParams>(&Shader::Copy.source(), "copy");
        assert_mirrors::<elementwise::FillParams>(&Shader::Fill.source(), "fill");
        assert_mirrors::<gather::GatherParams>(&Shader::Gather.source(), "gather");
        assert_mirrors::<gather::GatherParams>(&Shader::Scatter.source(), "scatter");
        assert_mirrors::<norm::NormParams>(&Shader::LayerNorm.source(), "layer_norm");
        assert_mirrors::<rnn::RnnParams>(&Shader::Rnn.source(), "rnn");
        assert_mirrors::<reduce::AxisParams>(&Shader::Reduce.source(), "reduce");
        assert_mirrors::<reduce::AxisParams>(&Shader::SoftmaxBackward.source(), "softmax_backward");
        assert_mirrors::<reduce::AxisParams>(&Shader::Softmax.source(), "softmax");
        assert_mirrors::<loss::LossParams>(&Shader::Loss.source(), "loss");
        assert_mirrors::<matmul::MatmulParams>(&Shader::Matmul.source(), "matmul");
        assert_mirrors::<matmul::MatmulParams>(&Shader::MatmulTiled.source(), "matmul_tiled");
        assert_mirrors::<optim::OptimParams>(&Shader::Optim.source(), "optim");
        assert_mirrors::<conv::ConvParams>(&Shader::Conv.source(), "conv");
        assert_mirrors::<conv::PoolParams>(&Shader::Pool.source(), "pool");
        assert_mirrors::<reduce::AxisParams>(&Shader::Scan.source(), "scan");
        assert_mirrors::<reduce::AxisParams>(&Shader::Sort.source(), "sort");
    }

    #[test]
    fn every_shader_parses_with_the_prelude() {
        for shader in Shader::ALL {
            let source = shader.source();
            if let Err(e) = naga::front::wgsl::parse_str(&source) {
                panic!("{shader:?}: {}", e.emit_to_string(&source));
            }
        }
    }
}
