//! A model's parameters, built once: read straight from the checkpoint at the
//! requested dtype and device (no random f32 copy first), or freshly initialised. Every
//! family built on it shares one load / save / `to` implementation.
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ops::Div;
use std::path::Path;

use mf_core::checkpoint::{load_parameters, preview, LoadSpec, SafeTensors};
use mf_core::{DType, Device, MfError, Result};
use tch::{nn, Kind, Tensor};

/// How a parameter absent from the checkpoint (or built without one) is initialised.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// normal(0, std), HF's `initializer_range`.
    Normal(f64),
    /// All zeros (biases).
    Zeros,
    /// All ones (norm weights).
    Ones,
}

/// Builds the parameter list of one model. Layers take parameters from it through [`Vars`]
/// scopes; `get` borrows it shared, so many scopes can be alive while the model is built.
pub struct ParamBuilder<'a> {
    ckpt: Option<&'a SafeTensors>,
    candidates: &'a dyn Fn(&str) -> Vec<String>,
    may_init: &'a dyn Fn(&str) -> bool,
    strict: bool,
    device: tch::Device,
    kind: Kind,
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    params: Vec<(String, Tensor)>,
    used: HashSet<String>,
    initialised: Vec<String>,
    missing: Vec<String>,
}

fn exact(name: &str) -> Vec<String> {
    vec![name.to_string()]
}

fn never(_: &str) -> bool {
    false
}

impl<'a> ParamBuilder<'a> {
    /// A builder that initialises every parameter (f32 on the CPU unless [`Self::at`]).
    pub fn random() -> Self {
        ParamBuilder {
            ckpt: None,
            candidates: &exact,
            may_init: &never,
            strict: false,
            device: tch::Device::Cpu,
            kind: Kind::Float,
            state: RefCell::default(),
        }
    }

    /// A builder that reads each parameter from `ckpt`. `candidates` lists the checkpoint
    /// names a parameter may be stored under (prefixed or not, old `gamma`/`beta` names), in
    /// order of preference; `may_init` names the parameters (a new task head) that are
    /// initialised, with a warning, when the checkpoint lacks them. Any other missing tensor
    /// is an error.
    pub fn from_checkpoint(
        ckpt: &'a SafeTensors,
        candidates: &'a dyn Fn(&str) -> Vec<String>,
        may_init: &'a dyn Fn(&str) -> bool,
    ) -> Self {
        ParamBuilder {
            ckpt: Some(ckpt),
            candidates,
            may_init,
            ..Self::random()
        }
    }

    /// A causal LM's builder: every parameter read from `ckpt` (initialised when there is
    /// none), nothing initialised for want of a tensor, and a [`Self::strict`] check of what
    /// is left over.
    pub fn causal(
        ckpt: Option<&'a SafeTensors>,
        candidates: &'a dyn Fn(&str) -> Vec<String>,
    ) -> Self {
        match ckpt {
            Some(c) => Self::from_checkpoint(c, candidates, &never).strict(),
            None => Self::random(),
        }
    }

    /// Makes checkpoint tensors that no parameter uses an error rather than a warning: a
    /// causal LM's checkpoint holds exactly its weights, so a stray tensor means another
    /// architecture.
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    /// Places the parameters on `device` in `dtype` as they are read.
    pub fn at(mut self, device: Device, dtype: DType) -> Result<Self> {
        self.device = device.to_tch()?;
        self.kind = dtype.kind();
        Ok(self)
    }

    /// The device parameters are placed on.
    pub fn device(&self) -> tch::Device {
        self.device
    }

    /// The parameter `name` of `shape`: read from the checkpoint, or initialised with `init`.
    pub fn get(&self, name: &str, shape: &[i64], init: Init) -> Result<Tensor> {
        let t = match self.read(name, shape)? {
            Some(t) => t,
            None if self.ckpt.is_some() && !(self.may_init)(name) => {
                // Reported, with every other missing tensor, by `finish`; the placeholder is
                // never filled, so it costs no memory.
                self.state.borrow_mut().missing.push(name.to_string());
                Tensor::f_empty(shape, (self.kind, self.device))?
            }
            None => {
                if self.ckpt.is_some() {
                    self.state.borrow_mut().initialised.push(name.to_string());
                }
                let opts = (Kind::Float, tch::Device::Cpu);
                let t = match init {
                    Init::Normal(std) => Tensor::f_randn(shape, opts)? * std,
                    Init::Zeros => Tensor::f_zeros(shape, opts)?,
                    Init::Ones => Tensor::f_ones(shape, opts)?,
                };
                t.f_to_kind(self.kind)?.f_to_device(self.device)?
            }
        };
        let t = t.set_requires_grad(true);
        self.state
            .borrow_mut()
            .params
            .push((name.to_string(), t.shallow_clone()));
        Ok(t)
    }

    fn read(&self, name: &str, shape: &[i64]) -> Result<Option<Tensor>> {
        let Some(ckpt) = self.ckpt else {
            return Ok(None);
        };
        let found = {
            let st = self.state.borrow();
            (self.candidates)(name)
                .into_iter()
                .find(|c| ckpt.contains(c) && !st.used.contains(c))
        };
        let Some(stored) = found else {
            return Ok(None);
        };
        let stored_shape = ckpt.shape(&stored).unwrap_or_default();
        if stored_shape != shape {
            return Err(MfError::checkpoint(
                ckpt.origin().display(),
                format!(
                    "tensor '{stored}' has shape {stored_shape:?} but the model's '{name}' \
                     expects {shape:?}; the checkpoint does not match this config"
                ),
            ));
        }
        let src = ckpt.get(&stored)?;
        if !matches!(
            src.kind(),
            Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double
        ) {
            return Err(MfError::checkpoint(
                ckpt.origin().display(),
                format!("tensor '{stored}' has dtype {:?}, not a float", src.kind()),
            ));
        }
        self.state.borrow_mut().used.insert(stored);
        // Both conversions are no-ops (no copy) when the stored dtype and device already match.
        Ok(Some(
            src.f_to_kind(self.kind)?.f_to_device(self.device)?.detach(),
        ))
    }

    /// The built parameters. A parameter the checkpoint lacks (and may not initialise) is an
    /// error naming every such tensor. Checkpoint tensors that no parameter used (other than
    /// `ignore`d buffers) are an error for a [`Self::strict`] builder and otherwise, with the
    /// parameters initialised for want of a checkpoint tensor, reported as warnings, as
    /// transformers reports them.
    pub fn finish(self, ignore: &dyn Fn(&str) -> bool) -> Result<Params> {
        let st = self.state.into_inner();
        let mut unused = Vec::new();
        if let Some(ckpt) = self.ckpt {
            let origin = ckpt.origin().display();
            unused = ckpt
                .names()
                .filter(|n| !st.used.contains(*n) && !ignore(n))
                .map(String::from)
                .collect();
            if self.strict && !unused.is_empty() {
                return Err(MfError::checkpoint(
                    origin,
                    format!(
                        "unexpected tensor(s) not in the model: {} (is this checkpoint for \
                         another architecture?)",
                        preview(&unused)
                    ),
                ));
            }
            if !st.missing.is_empty() {
                let mut missing = st.missing;
                missing.sort();
                return Err(MfError::checkpoint(
                    origin,
                    format!(
                        "missing tensor(s): {}; the checkpoint does not hold this model's \
                         weights",
                        preview(&missing)
                    ),
                ));
            }
            if !unused.is_empty() {
                eprintln!(
                    "warning: some weights of {origin} were not used: {} (expected when the \
                     checkpoint was saved with another head)",
                    unused.join(", ")
                );
            }
            if !st.initialised.is_empty() {
                eprintln!(
                    "warning: some weights were not in {origin} and are newly initialized: {}; \
                     train the model on a down-stream task before using it for predictions",
                    st.initialised.join(", ")
                );
            }
        }
        let mut seen = HashSet::new();
        for (n, _) in &st.params {
            if !seen.insert(n.clone()) {
                return Err(mf_core::invalid(format!(
                    "parameter '{n}' is declared twice"
                )));
            }
        }
        let mut params = st.params;
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let var_store = var_store_of(&params, self.device);
        Ok(Params {
            params,
            initialised: st.initialised,
            unused,
            var_store,
        })
    }
}

/// A VarStore holding the very tensors of `params` (shared storage), so tch optimizers train
/// the model's own parameters.
fn var_store_of(params: &[(String, Tensor)], device: tch::Device) -> nn::VarStore {
    let vs = nn::VarStore::new(device);
    for (name, t) in params {
        // A VarStore path component may not contain the '.' that joins them.
        let mut parts: Vec<&str> = name.split('.').collect();
        let leaf = parts.pop().unwrap_or_default();
        let path = parts.into_iter().fold(vs.root(), |p, c| p.sub(c));
        // The returned handle is the same tensor, already held by the model.
        let _ = path.add(leaf, t.shallow_clone(), true);
    }
    vs
}

/// A named scope of a [`ParamBuilder`], as `tch::nn::Path` is of a VarStore: `&scope / "attn"`
/// opens a sub-scope and `var` declares a parameter under the dotted name.
#[derive(Clone)]
pub struct Vars<'p, 'a> {
    pb: &'p ParamBuilder<'a>,
    prefix: String,
}

impl<'p, 'a> Vars<'p, 'a> {
    /// The unnamed top scope.
    pub fn root(pb: &'p ParamBuilder<'a>) -> Self {
        Vars {
            pb,
            prefix: String::new(),
        }
    }

    /// The full name of `name` in this scope.
    pub fn name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The parameter `name` of `shape` in this scope (see [`ParamBuilder::get`]).
    pub fn var(&self, name: &str, shape: &[i64], init: Init) -> Result<Tensor> {
        self.pb.get(&self.name(name), shape, init)
    }

    /// The sub-scope `name`.
    pub fn sub(&self, name: impl std::fmt::Display) -> Self {
        Vars {
            pb: self.pb,
            prefix: self.name(&name.to_string()),
        }
    }
}

impl<'p, 'a, T: std::fmt::Display> Div<T> for &Vars<'p, 'a> {
    type Output = Vars<'p, 'a>;
    fn div(self, name: T) -> Vars<'p, 'a> {
        self.sub(name)
    }
}

impl<'p, 'a, T: std::fmt::Display> Div<T> for Vars<'p, 'a> {
    type Output = Vars<'p, 'a>;
    fn div(self, name: T) -> Vars<'p, 'a> {
        self.sub(name)
    }
}

/// The parameters of one model under their checkpoint names, sorted.
#[derive(Debug)]
pub struct Params {
    params: Vec<(String, Tensor)>,
    initialised: Vec<String>,
    unused: Vec<String>,
    var_store: nn::VarStore,
}

impl Params {
    /// Every parameter `(name, tensor)` in name order (handles share storage with the model).
    pub fn list(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
    }

    /// A VarStore over the same tensors, for tch optimizers.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.var_store
    }

    /// Parameters that the checkpoint lacked and were initialised (a new task head).
    pub fn newly_initialised(&self) -> &[String] {
        &self.initialised
    }

    /// Checkpoint tensors no parameter used.
    pub fn unused(&self) -> &[String] {
        &self.unused
    }

    /// Number of elements in all parameters.
    pub fn numel(&self) -> usize {
        self.params.iter().map(|(_, t)| t.numel()).sum()
    }

    /// Device of the parameters.
    pub fn device(&self) -> tch::Device {
        self.params
            .first()
            .map_or(tch::Device::Cpu, |(_, t)| t.device())
    }

    /// Dtype of the parameters.
    pub fn kind(&self) -> Kind {
        self.params.first().map_or(Kind::Float, |(_, t)| t.kind())
    }

    /// Moves every parameter in place (every layer's handle sees the new data). On the CPU
    /// the weights land on huge pages (`mf_core::memory::cpu_copy_on_huge_pages`), which
    /// decode streams faster; a second move to the same place copies nothing.
    pub fn to(&self, device: Device, dtype: DType) -> Result<()> {
        let (d, k) = (device.to_tch()?, dtype.kind());
        tch::no_grad(|| -> Result<()> {
            for (_, t) in &self.params {
                let placed = t.kind() == k && mf_core::memory::is_huge_page_aligned(t);
                let new = if d == tch::Device::Cpu && !placed {
                    mf_core::memory::cpu_copy_on_huge_pages(t, k)?
                } else {
                    t.f_to_device(d)?.f_to_kind(k)?
                };
                let mut h = t.shallow_clone();
                h.set_data(&new);
            }
            Ok(())
        })
    }

    /// Copies a checkpoint's tensors into the parameters, failing on any missing, unexpected
    /// or mis-shaped tensor (resume, `load_checkpoint`).
    pub fn load(
        &self,
        ckpt: &SafeTensors,
        rename: &dyn Fn(&str) -> Option<String>,
        ignore: &dyn Fn(&str) -> bool,
    ) -> Result<()> {
        let map: HashMap<String, Tensor> = self
            .params
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        load_parameters(ckpt, &map, &LoadSpec { rename, ignore })
    }

    /// Copies every parameter the checkpoint holds (under any of its `candidates` names);
    /// parameters it lacks are kept if `may_miss` allows (a new head) and returned, else an
    /// error. Shapes must match.
    pub fn load_matching(
        &self,
        ckpt: &SafeTensors,
        candidates: &dyn Fn(&str) -> Vec<String>,
        may_miss: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<String>> {
        let origin = ckpt.origin().display().to_string();
        let mut missing = Vec::new();
        for (name, p) in &self.params {
            let Some(stored) = candidates(name).into_iter().find(|c| ckpt.contains(c)) else {
                if may_miss(name) {
                    missing.push(name.clone());
                    continue;
                }
                return Err(MfError::checkpoint(
                    &origin,
                    format!("missing tensor '{name}'"),
                ));
            };
            let src = ckpt.get(&stored)?;
            if src.size() != p.size() {
                return Err(MfError::checkpoint(
                    &origin,
                    format!(
                        "tensor '{stored}' has shape {:?} but the model's '{name}' expects {:?}",
                        src.size(),
                        p.size()
                    ),
                ));
            }
            tch::no_grad(|| -> Result<()> {
                let mut h = p.shallow_clone();
                h.f_copy_(&src.f_to_kind(p.kind())?.f_to_device(p.device())?)?;
                Ok(())
            })?;
        }
        if !missing.is_empty() {
            eprintln!(
                "warning: some weights were not in {origin} and keep their initialization: {}",
                missing.join(", ")
            );
        }
        Ok(missing)
    }

    /// Writes `model.safetensors` and `config.json` (with `torch_dtype`) in the HF layout.
    pub fn save_pretrained(&self, dir: &Path, config: serde_json::Value) -> Result<()> {
        crate::model::save_hf_dir(dir, &self.params, config, self.kind())
    }
}

/// Checkpoint names a parameter may be stored under: itself, with `prefix.` added or
/// removed (a base checkpoint in a task head and back), and with LayerNorm's old
/// `gamma`/`beta` names.
pub fn prefixed_candidates(name: &str, prefix: &str) -> Vec<String> {
    let mut v = vec![name.to_string()];
    match name.strip_prefix(&format!("{prefix}.")) {
        Some(rest) => v.push(rest.to_string()),
        None => v.push(format!("{prefix}.{name}")),
    }
    let old: Vec<String> = v
        .iter()
        .filter_map(|n| {
            n.strip_suffix("LayerNorm.weight")
                .map(|s| format!("{s}LayerNorm.gamma"))
                .or_else(|| {
                    n.strip_suffix("LayerNorm.bias")
                        .map(|s| format!("{s}LayerNorm.beta"))
                })
        })
        .collect();
    v.extend(old);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use mf_core::checkpoint::save_safetensors;

    /// Writes `tensors` as a checkpoint directory and opens it.
    fn checkpoint(dir: &Path, tensors: &[(&str, Tensor)]) -> SafeTensors {
        let named: Vec<(String, Tensor)> = tensors
            .iter()
            .map(|(n, t)| (n.to_string(), t.shallow_clone()))
            .collect();
        save_safetensors(dir.join(mf_core::checkpoint::WEIGHTS_NAME), &named, None).unwrap();
        SafeTensors::open(dir).unwrap()
    }

    /// A one-layer "model": `model.layer.weight [3, 2]` and `model.layer.bias [3]`.
    fn build(pb: &ParamBuilder) -> Result<(Tensor, Tensor)> {
        let layer = Vars::root(pb) / "model" / "layer";
        Ok((
            layer.var("weight", &[3, 2], Init::Normal(0.02))?,
            layer.var("bias", &[3], Init::Zeros)?,
        ))
    }

    fn load(ckpt: &SafeTensors) -> Result<Params> {
        let candidates = |n: &str| prefixed_candidates(n, "model");
        let pb = ParamBuilder::causal(Some(ckpt), &candidates).at(Device::Cpu, DType::BF16)?;
        let _ = build(&pb)?;
        pb.finish(&|n| n == "buffer")
    }

    #[test]
    fn reads_each_tensor_at_the_requested_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let w = Tensor::arange(6, (Kind::Float, tch::Device::Cpu)).reshape([3, 2]);
        let b = Tensor::ones([3], (Kind::BFloat16, tch::Device::Cpu));
        // A base-model checkpoint (no `model.` prefix) with a buffer that is not a parameter.
        let st = checkpoint(
            dir.path(),
            &[
                ("layer.weight", w.shallow_clone()),
                ("layer.bias", b.shallow_clone()),
                ("buffer", b.shallow_clone()),
            ],
        );
        let p = load(&st).unwrap();
        let names: Vec<String> = p.list().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["model.layer.bias", "model.layer.weight"]);
        let got = &p.list()[1].1;
        assert_eq!(got.kind(), Kind::BFloat16);
        assert!(got.to_kind(Kind::Float).equal(&w));
        assert!(got.requires_grad());
        // The optimizers' VarStore holds the very same tensors.
        let vs = p.var_store().variables();
        assert_eq!(vs["model.layer.weight"].data_ptr(), got.data_ptr());
        assert_eq!(p.var_store().trainable_variables().len(), 2);
    }

    #[test]
    fn missing_unexpected_and_misshaped_tensors_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let z = |s: &[i64]| Tensor::zeros(s, (Kind::Float, tch::Device::Cpu));
        let err = |st: &SafeTensors| load(st).unwrap_err().to_string();

        let st = checkpoint(dir.path(), &[("model.layer.weight", z(&[3, 2]))]);
        let e = err(&st);
        assert!(e.contains("missing tensor(s): model.layer.bias"), "{e}");

        let st = checkpoint(
            dir.path(),
            &[
                ("model.layer.weight", z(&[3, 2])),
                ("model.layer.bias", z(&[3])),
                ("model.other.weight", z(&[1])),
            ],
        );
        let e = err(&st);
        assert!(
            e.contains("unexpected tensor(s) not in the model: model.other.weight"),
            "{e}"
        );

        let st = checkpoint(
            dir.path(),
            &[
                ("model.layer.weight", z(&[2, 3])),
                ("model.layer.bias", z(&[3])),
            ],
        );
        let e = err(&st);
        assert!(
            e.contains("'model.layer.weight' has shape [2, 3]") && e.contains("expects [3, 2]"),
            "{e}"
        );
    }

    #[test]
    fn moving_to_the_cpu_puts_big_weights_on_huge_pages_once() {
        let pb = ParamBuilder::random();
        let top = Vars::root(&pb);
        let big = top.var("big", &[2048, 768], Init::Normal(0.02)).unwrap();
        let small = top.var("small", &[8], Init::Normal(0.02)).unwrap();
        let p = pb.finish(&|_| false).unwrap();
        let (before_big, before_small) = (big.copy(), small.copy());
        p.to(mf_core::Device::Cpu, DType::F32).unwrap();
        // The model's own handles see the moved data, values unchanged, grads still tracked.
        assert!((big.data_ptr() as usize).is_multiple_of(mf_core::memory::HUGE_PAGE));
        assert!(big.equal(&before_big) && small.equal(&before_small));
        assert!(big.requires_grad());
        let vs = p.var_store().variables();
        assert_eq!(vs["big"].data_ptr(), big.data_ptr());
        // Already in place: a second move copies nothing.
        let ptr = big.data_ptr();
        p.to(mf_core::Device::Cpu, DType::F32).unwrap();
        assert_eq!(big.data_ptr(), ptr);
        // A dtype change still lands on a huge page boundary.
        p.to(mf_core::Device::Cpu, DType::BF16).unwrap();
        assert_eq!(big.kind(), Kind::BFloat16);
        assert!((big.data_ptr() as usize).is_multiple_of(mf_core::memory::HUGE_PAGE));
        assert!(big
            .to_kind(Kind::Float)
            .allclose(&before_big, 1e-2, 1e-2, false));
    }
}
