//! Every kernel the runtime builds, translated for the backends this
//! machine cannot run: Metal (MSL), DX12 (HLSL) and OpenGL (GLSL), and
//! SPIR-V for Vulkan — by naga, at the version wgpu uses, which is what
//! wgpu does on those platforms before handing the text to the driver.
//!
//! The kernels are not listed by hand: a workload touching every op family
//! (forward and backward, the optimisers, fused elementwise chains with
//! broadcasting, the sequence and convolution layers) runs on wgpu's noop
//! adapter, which builds every pipeline as a GPU would, and
//! [`GpuDevice::compiled_kernels`] gives back each one's WGSL, entry point
//! and override constants. It runs twice: with subgroups (the kernels a
//! Metal or DX12 adapter with SIMD-group / wave operations gets), and with
//! them forced off (the workgroup-tiled kernels an adapter without them,
//! and OpenGL, gets). A coverage check makes sure every WGSL file in
//! `shaders/` and every entry point of each was translated, so a new kernel
//! family is checked as soon as it lands — or this test names what the
//! workload misses.
//!
//! What is checked per kernel and backend:
//! - naga's validator, with only the capabilities that adapter class
//!   reports (no `SUBGROUP` for the tiled set: that path must not use one);
//! - override constants substituted as the pipeline does
//!   (`process_overrides`), then written as MSL 2.4 (subgroup set) or MSL 2.1,
//!   HLSL shader model 6.0 (subgroups need wave intrinsics) or 5.1,
//!   GLSL ES 3.10 (the tiled set; OpenGL has no subgroups in wgpu) and
//!   SPIR-V 1.3, with immediates (push constants) bound as each backend
//!   binds them;
//! - the limits the kernels need against what each backend's adapters
//!   guarantee: immediate bytes (DX12 allows 128, GL 256, Metal 4096) and
//!   storage buffers per stage.
//!
//! Not checked here: the platform compilers themselves (Apple's Metal
//! compiler, DXC, the GL driver's GLSL compiler), which only run on those
//! systems. The GL driver is exercised where Mesa's llvmpipe is installed
//! (see the README's backend table).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ModuleInfo, ShaderStages, SubgroupOperationSet, ValidationFlags, Validator};
use wgrad::nn::{self, Module};
use wgrad::optim::{Adam, Optimizer, Sgd};
use wgrad::{CompiledKernel, Conv2dOptions, CrossEntropyOptions, Device, GpuDevice, GpuOptions, Tensor};

/// The immediate bytes a kernel may use: DX12's root-constant budget in
/// wgpu (`wgpu-hal`'s dx12 `MAX_IMMEDIATE_SIZE`), the smallest of the
/// backends (Vulkan's guaranteed minimum is also 128).
const IMMEDIATE_BUDGET: usize = 128;

/// Storage buffers one kernel may bind: the WebGPU default of 8, which
/// every Vulkan, Metal, DX12 and desktop-GL adapter exceeds.
const STORAGE_BUFFER_BUDGET: usize = 8;

/// Invocations per workgroup and bytes of workgroup memory: WebGPU's
/// defaults. These three budgets are what the runtime requires of an
/// adapter when it opens one (`required` in src/backend/gpu/device.rs).
const INVOCATION_BUDGET: u32 = 256;
const WORKGROUP_MEMORY_BUDGET: usize = 16384;

fn noop(subgroups: bool, fusion: bool) -> Device {
    let options = GpuOptions { backends: Some("noop".into()), subgroups, fusion, ..GpuOptions::default() };
    Device::Gpu(GpuDevice::with_options(options).expect("wgpu's noop backend is compiled in"))
}

fn gpu(dev: &Device) -> &GpuDevice {
    match dev {
        Device::Gpu(g) => g,
        _ => unreachable!(),
    }
}

/// Runs every op family forward and backward, so that the device builds
/// each kernel a training program can reach.
fn workload(dev: &Device) {
    wgrad::manual_seed(7);
    let ids = |v: &[usize]| Tensor::from_vec(v.iter().map(|&i| i as f32).collect(), [v.len()], dev).unwrap();

    // An MLP step with every optimiser, dropout and both CE kernels.
    let mlp = nn::Sequential::new()
        .add(nn::Linear::new(20, 16, dev))
        .add(nn::GELU)
        .add(nn::Dropout::new(0.25))
        .add(nn::Linear::new(16, 5, dev));
    let x = Tensor::randn([6, 20], dev);
    let y = ids(&[0, 1, 2, 3, 4, 0]);
    let mut adam = Adam::new(mlp.parameters(), 1e-3);
    let mut sgd = Sgd::new(mlp.parameters(), 1e-2);
    let mut momentum = Sgd::new(mlp.parameters(), 1e-2).momentum(0.9);
    // One parameter each: the per-parameter kernels (several take the
    // generated multi-tensor one).
    let first = || vec![mlp.parameters()[0].clone()];
    let mut adam1 = Adam::new(first(), 1e-3);
    let mut sgd1 = Sgd::new(first(), 1e-2);
    let mut momentum1 = Sgd::new(first(), 1e-2).momentum(0.9);
    for opt in [&mut adam as &mut dyn Optimizer, &mut sgd, &mut momentum, &mut adam1, &mut sgd1, &mut momentum1] {
        let loss = mlp.forward(&x).cross_entropy(&y);
        opt.step(&loss.backward());
    }
    let logits = Tensor::randn([2, 3, 5], dev).requires_grad();
    let labels = Tensor::from_vec(vec![0.0, 4.0, -100.0, 1.0, 2.0, 3.0], [2, 3], dev).unwrap();
    let ce = logits.cross_entropy_with(&labels, CrossEntropyOptions { ignore_index: Some(-100), ..Default::default() });
    let _ = ce.backward();
    // A classifier's correct predictions (the running accuracy of `fit`).
    let _ = logits.detach().argmax_hits(&labels).to_vec().unwrap();
    // A product past the small cut whose rows are whole vec4s: the store
    // that writes them so.
    let _ = Tensor::randn([64, 64], dev).matmul(&Tensor::randn([64, 32], dev)).to_vec().unwrap();
    // Rows longer than the kernels' short-line cut (32 values, one
    // invocation each) take a workgroup each: their entry points too.
    let long = Tensor::randn([3, 40], dev).requires_grad();
    let t = long.cross_entropy(&ids(&[0, 39, 7])) + long.softmax(-1).sqr().sum() + long.log_softmax(-1).sqr().sum();
    let _ = (t + long.cumsum(-1).sqr().sum()).backward();

    // Elementwise chains with broadcasting, unfused-width shapes, and the
    // ops each kernel family implements.
    let a = Tensor::randn([4, 1, 7], dev).requires_grad();
    let b = Tensor::randn([3, 7], dev).requires_grad();
    let c = (&a * &b).sigmoid().tanh() + (&a - &b).abs().sqrt().exp().log();
    let d = a.gt(&b).where_cond(&c.maximum(&b.relu()), &b.minimum_scalar(0.5)).powf(2.0).clamp(-1.0, 3.0);
    let e = d.masked_fill(&a.lt_scalar(0.0), 0.0) / (b.sqr() + 1.0);
    let t = e.sum_dim(0, false).sum() + e.mean_dim(-1, true).max() + e.var() + e.max_dim(1, false).sum();
    let t = t + e.min_dim(2, false).sum() + e.softmax(-1).sum() + e.softmax(0).sum() + e.log_softmax(1).sum();
    let t = t + e.cumsum(-1).sum() + e.cumsum(0).sum() + e.permute(&[2, 0, 1]).narrow(0, 1, 3).sum();
    let grads = t.backward();
    assert!(grads.get(&a).is_some());
    let _ = e.argmax(-1, false).argmin(0, false).to_vec();
    let (sorted, order) = e.sort(-1, true);
    let _ = (sorted.topk(2, 0, true), order.argsort(1, false));
    let _ = Tensor::cat(&[&e, &e], 2).to_vec();
    // A view of rank above eight (the strided copy's words variant).
    let big = Tensor::randn([2, 2, 2, 2, 2, 2, 2, 2, 3], dev).requires_grad();
    let permuted = big.permute(&[8, 7, 6, 5, 4, 3, 2, 1, 0]).narrow(0, 1, 2).permute(&[1, 0, 2, 3, 4, 5, 6, 7, 8]);
    let _ = (&permuted * &permuted).sum().backward();

    // Losses.
    let p = Tensor::rand_uniform([4, 3], 0.1, 0.9, dev).requires_grad();
    let q = Tensor::rand_uniform([4, 3], 0.0, 1.0, dev);
    let losses = p.mse_loss(&q) + p.l1_loss(&q) + p.huber_loss(&q, 0.5) + p.smooth_l1_loss(&q, 0.5);
    let _ = (losses + p.binary_cross_entropy(&q) + p.binary_cross_entropy_with_logits(&q)).backward();

    // Gather, index_select and their scatter-add backward; embeddings.
    let table = Tensor::randn([10, 4], dev).requires_grad();
    let rows = table.index_select(0, &ids(&[3, 1, 3, 9]));
    let picked = table.gather(1, &Tensor::from_vec(vec![0.0; 10], [10, 1], dev).unwrap());
    let _ = (rows.sum() + picked.sum()).backward();
    let emb = nn::Embedding::new(12, 8, dev);
    let tokens = Tensor::from_vec((0..12).map(|i| (i % 12) as f32).collect(), [2, 6], dev).unwrap();
    let h = emb.forward(&tokens);

    // Sequence layers: layer norm, attention (causal), a transformer block,
    // LSTM and GRU, sampling.
    let block = nn::TransformerBlock::new(8, 2, 16, true, dev);
    let lstm = nn::LSTM::new(8, 8, 1, dev);
    let gru = nn::GRU::new(8, 8, 1, dev);
    let norm = nn::LayerNorm::new(8, dev);
    let out = block.forward(&h) + lstm.forward(&h) + gru.forward(&h) + norm.forward(&h);
    let qkv = out.reshape([2, 6, 2, 4]).permute(&[0, 2, 1, 3]);
    let att = wgrad::scaled_dot_product_attention(&qkv, &qkv, &qkv, true);
    let _ = (att.sum() + out.tril(0).sum() + out.triu(1).sum()).backward();
    let probs = wgrad::sampling_probs(
        &out.narrow(1, 0, 1).squeeze(1),
        wgrad::Sampling { top_k: Some(3), ..Default::default() },
    );
    let _ = wgrad::multinomial(&probs, &mut wgrad::Generator::new(1));

    // Convolutions (plain, strided-dilated, grouped, depthwise), pooling
    // and batch norm, forward and backward.
    let img = Tensor::randn([2, 4, 9, 7], dev).requires_grad();
    let w = Tensor::randn([6, 4, 3, 3], dev).requires_grad();
    let wg = Tensor::randn([4, 2, 2, 3], dev).requires_grad();
    let wd = Tensor::randn([4, 1, 3, 3], dev).requires_grad();
    let bias = Tensor::randn([6], dev).requires_grad();
    let c1 = img.conv2d(&w, Some(&bias), Conv2dOptions::default().padding(1)).relu();
    let c2 = img.conv2d(&wg, None, Conv2dOptions::default().stride((2, 1)).dilation(2).groups(2));
    let c3 = img.conv2d(&wd, None, Conv2dOptions::default().padding(1).groups(4));
    let bn = nn::BatchNorm2d::new(6, dev);
    let pooled = bn.forward(&c1).max_pool2d(2, 2, 0).sum()
        + c2.avg_pool2d(2, 1, 0, true).sum()
        + c3.adaptive_avg_pool2d(1).sum();
    let _ = pooled.backward();
    let eval_bn = nn::BatchNorm1d::new(4, dev);
    eval_bn.eval();
    let _ = eval_bn.forward(&Tensor::randn([3, 4], dev)).to_vec();

    gpu(dev).synchronize().unwrap();
}

/// The entry points a WGSL module declares.
fn entry_points(module: &naga::Module) -> BTreeSet<String> {
    module.entry_points.iter().map(|e| e.name.clone()).collect()
}

fn validate(module: &naga::Module, source: &str, subgroups: bool) -> Result<ModuleInfo, String> {
    let mut caps = Capabilities::IMMEDIATES;
    if subgroups {
        caps |= Capabilities::SUBGROUP;
    }
    let mut v = Validator::new(ValidationFlags::all(), caps);
    if subgroups {
        v.subgroup_stages(ShaderStages::COMPUTE).subgroup_operations(SubgroupOperationSet::all());
    }
    v.validate(module).map_err(|e| e.emit_to_string(source))
}

/// The storage bindings of a module (group 0): binding → written.
fn storage_bindings(module: &naga::Module) -> BTreeMap<u32, bool> {
    module
        .global_variables
        .iter()
        .filter_map(|(_, g)| match (g.space, &g.binding) {
            (naga::AddressSpace::Storage { access }, Some(b)) => {
                Some((b.binding, access.contains(naga::StorageAccess::STORE)))
            }
            _ => None,
        })
        .collect()
}

/// Bytes of the module's globals in `space` (after `process_overrides` the
/// module holds only what its one entry point uses).
fn bytes_in(module: &naga::Module, space: naga::AddressSpace) -> usize {
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).unwrap();
    module.global_variables.iter().filter(|(_, g)| g.space == space).map(|(_, g)| layouter[g.ty].size as usize).sum()
}

/// Writes the kernel for every backend; the first failure, named.
fn translate(module: &naga::Module, info: &ModuleInfo, entry: &str, subgroups: bool) -> Result<(), String> {
    let stage = naga::ShaderStage::Compute;
    let bindings = storage_bindings(module);

    // Metal: buffer slot 0 holds the immediates, then each binding in
    // order, then the buffer-sizes buffer — wgpu-hal's metal layout.
    let mut resources = msl::BindingMap::default();
    for (i, (&binding, &written)) in bindings.iter().enumerate() {
        let target = msl::BindTarget { buffer: Some(1 + i as u8), mutable: written, ..Default::default() };
        resources.insert(naga::ResourceBinding { group: 0, binding }, target);
    }
    let ep = msl::EntryPointResources {
        resources,
        immediates_buffer: Some(0),
        sizes_buffer: Some(1 + bindings.len() as u8),
    };
    let options = msl::Options {
        lang_version: if subgroups { (2, 4) } else { (2, 1) },
        per_entry_point_map: [(entry.to_string(), ep)].into_iter().collect(),
        zero_initialize_workgroup_memory: false,
        ..Default::default()
    };
    let pipeline = msl::PipelineOptions { entry_point: Some((stage, entry.to_string())), ..Default::default() };
    msl::write_string(module, info, &options, &pipeline).map_err(|e| format!("MSL: {e:?}"))?;

    // DX12: registers u0.. / t0.. in space 0, immediates as root constants
    // in register b0 (wgpu-hal's dx12 root signature).
    let mut binding_map = hlsl::BindingMap::default();
    for &binding in bindings.keys() {
        let target = hlsl::BindTarget { space: 0, register: binding, ..Default::default() };
        binding_map.insert(naga::ResourceBinding { group: 0, binding }, target);
    }
    let options = hlsl::Options {
        shader_model: if subgroups { hlsl::ShaderModel::V6_0 } else { hlsl::ShaderModel::V5_1 },
        binding_map,
        immediates_target: Some(hlsl::BindTarget { space: 0, register: 0, ..Default::default() }),
        zero_initialize_workgroup_memory: false,
        ..Default::default()
    };
    let pipeline = hlsl::PipelineOptions { entry_point: Some((stage, entry.to_string())) };
    let mut out = String::new();
    hlsl::Writer::new(&mut out, &options, &pipeline).write(module, info, None).map_err(|e| format!("HLSL: {e:?}"))?;

    // Vulkan: SPIR-V 1.3 (subgroup operations need it).
    let options = spv::Options { lang_version: (1, 3), ..Default::default() };
    let pipeline = spv::PipelineOptions { shader_stage: stage, entry_point: entry.to_string() };
    spv::write_vec(module, info, &options, Some(&pipeline)).map_err(|e| format!("SPIR-V: {e:?}"))?;

    // OpenGL ES 3.1 (wgpu's GL backend; no subgroups there).
    if !subgroups {
        let binding_map: glsl::BindingMap =
            bindings.keys().map(|&b| (naga::ResourceBinding { group: 0, binding: b }, b as u8)).collect();
        let options = glsl::Options {
            version: glsl::Version::Embedded { version: 310, is_webgl: false },
            binding_map,
            zero_initialize_workgroup_memory: false,
            ..Default::default()
        };
        let pipeline = glsl::PipelineOptions { shader_stage: stage, entry_point: entry.to_string(), multiview: None };
        let mut out = String::new();
        glsl::Writer::new(&mut out, module, info, &options, &pipeline, naga::proc::BoundsCheckPolicies::default())
            .and_then(|mut w| w.write().map(|_| ()))
            .map_err(|e| format!("GLSL ES 3.10: {e:?}"))?;
    }
    Ok(())
}

/// The `shaders/` files and their text.
fn shader_files() -> BTreeMap<String, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
        .collect()
}

/// Checks every kernel of one run; returns (kernels checked, failures).
fn check(kernels: &[CompiledKernel], subgroups: bool) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut parsed: HashMap<&str, Result<(naga::Module, ModuleInfo), String>> = HashMap::new();
    let mut seen = BTreeSet::new();
    for k in kernels {
        let what = format!("{}::{} {:?}", k.file, k.entry, k.constants);
        // Generated kernels all share file, entry and constants.
        if !seen.insert((what.clone(), k.source.clone())) {
            continue;
        }
        let entry = parsed.entry(&k.source).or_insert_with(|| {
            let module = naga::front::wgsl::parse_str(&k.source).map_err(|e| e.emit_to_string(&k.source))?;
            let info = validate(&module, &k.source, subgroups)?;
            Ok((module, info))
        });
        let (module, info) = match entry {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{what}: does not validate: {e}"));
                continue;
            }
        };
        let constants: naga::back::PipelineConstants = k.constants.iter().cloned().collect();
        let ep = Some((naga::ShaderStage::Compute, k.entry.as_str()));
        let (module, info) = match naga::back::pipeline_constants::process_overrides(module, info, ep, &constants) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{what}: override constants: {e:?}"));
                continue;
            }
        };
        if let Err(e) = translate(&module, &info, &k.entry, subgroups) {
            failures.push(format!("{what}: {e}"));
        }
        let bytes = bytes_in(&module, naga::AddressSpace::Immediate);
        if bytes > IMMEDIATE_BUDGET {
            failures.push(format!("{what}: {bytes} bytes of immediates, DX12 allows {IMMEDIATE_BUDGET}"));
        }
        let shared = bytes_in(&module, naga::AddressSpace::WorkGroup);
        let ep = module.entry_points.iter().find(|e| e.name == k.entry).expect("the entry point");
        if shared > WORKGROUP_MEMORY_BUDGET {
            failures.push(format!("{what}: {shared} bytes of workgroup memory, budget {WORKGROUP_MEMORY_BUDGET}"));
        }
        let invocations: u32 = ep.workgroup_size.iter().product();
        if invocations > INVOCATION_BUDGET || ep.workgroup_size[0] > INVOCATION_BUDGET {
            failures.push(format!("{what}: workgroup {:?}, budget {INVOCATION_BUDGET}", ep.workgroup_size));
        }
        let buffers = k.bindings.len();
        // The multi-tensor optimizer kernel is generated for the adapter's
        // storage-buffer limit (the noop adapter's is unlimited: 8
        // parameters, 32 buffers for Adam; 2 parameters on an adapter with
        // the minimum of 8, see `optim::per_dispatch`'s unit test).
        let multi_tensor = k.file == "generated"
            && ["rule_adam(p0[j]", "rule_sgd(p0[j]", "rule_sgd_momentum(p0[j]"].iter().any(|r| k.source.contains(r));
        if buffers > STORAGE_BUFFER_BUDGET && !multi_tensor {
            failures.push(format!("{what}: binds {buffers} storage buffers, budget {STORAGE_BUFFER_BUDGET}"));
        }
    }
    (seen.len(), failures)
}

/// Every shader file reached (as a family's file or as a shared part of a
/// compiled source), and every entry point of each family compiled.
fn coverage(kernels: &[CompiledKernel]) -> Vec<String> {
    let mut missing = Vec::new();
    for (name, text) in shader_files() {
        if !kernels.iter().any(|k| k.file == name || k.source.contains(text.as_str())) {
            missing.push(format!("no kernel of the workload uses shaders/{name}"));
        }
    }
    let mut by_file: BTreeMap<&str, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    for k in kernels.iter().filter(|k| k.file != "generated") {
        let (declared, built) = by_file.entry(&k.file).or_default();
        if declared.is_empty() {
            *declared = entry_points(&naga::front::wgsl::parse_str(&k.source).unwrap());
        }
        built.insert(k.entry.clone());
    }
    for (file, (declared, built)) in by_file {
        for e in declared.difference(&built) {
            missing.push(format!("the workload never builds {file}::{e}"));
        }
    }
    missing
}

/// Entry points no public op reaches today, translated with the constants
/// of their family's other kernels instead: the strided scatter of a view
/// of more than 8 axes that do not coalesce (every scatter the ops make —
/// a narrow's gradient, `cat`, `assign` — writes a region of a contiguous
/// tensor, which coalesces to at most 3 axes).
const UNREACHED: [(&str, &str); 1] = [("copy.wgsl", "scatter_strided_words")];

/// `kernels` with each [`UNREACHED`] entry added, built like its sibling.
fn with_unreached(mut kernels: Vec<CompiledKernel>) -> Vec<CompiledKernel> {
    for (file, entry) in UNREACHED {
        if kernels.iter().any(|k| k.file == file && k.entry == entry) {
            continue;
        }
        let sibling = kernels.iter().find(|k| k.file == file).expect("the family is built").clone();
        kernels.push(CompiledKernel { entry: entry.into(), ..sibling });
    }
    kernels
}

/// Builds and checks one kernel set; returns its kernels for the coverage
/// check, which spans both sets (the tiled matmul appears only without
/// subgroups).
fn run(subgroups: bool, fusion: bool) -> (Vec<CompiledKernel>, Vec<String>) {
    let dev = noop(subgroups, fusion);
    workload(&dev);
    let kernels = with_unreached(gpu(&dev).compiled_kernels());
    assert!(
        kernels.iter().any(|k| k.file == "generated"),
        "the workload's elementwise chains produced no fused kernel"
    );
    let (checked, failures) = check(&kernels, subgroups);
    eprintln!("{checked} kernels translated (subgroups: {subgroups})");
    (kernels, failures.into_iter().map(|f| format!("[subgroups: {subgroups}] {f}")).collect())
}

#[test]
fn every_kernel_translates_for_metal_dx12_opengl_and_vulkan() {
    let (with, mut problems) = run(true, true);
    assert!(
        with.iter().any(|k| k.file == "matmul.wgsl"),
        "the noop adapter (32-lane subgroups) did not select the subgroup matmul"
    );
    let (without, failures) = run(false, true);
    assert!(
        without.iter().all(|k| k.file != "matmul.wgsl") && without.iter().any(|k| k.file == "matmul_tiled.wgsl"),
        "subgroups off did not select the workgroup-tiled matmul"
    );
    problems.extend(failures);
    // Fusion off (WGRAD_FUSION=0): views are copied by the strided-copy
    // kernel instead of read by the fused kernel that consumes them.
    let (unfused, failures) = run(true, false);
    problems.extend(failures);
    let all: Vec<CompiledKernel> = with.into_iter().chain(without).chain(unfused).collect();
    problems.extend(coverage(&all));
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}
