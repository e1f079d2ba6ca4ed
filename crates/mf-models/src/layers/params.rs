//! A model's parameters, built once: read straight from a memory-mapped checkpoint at the
//! requested dtype and device (no random f32 copy first), or freshly initialised. Every
//! family built on it shares one load / save / `to` implementation.
use std::collections::{HashMap, HashSet};
use std::path::Path;

use mf_core::checkpoint::{load_parameters, LoadSpec, SafeTensors};
use mf_core::{DType, Device, MfError, Result};
use tch::{Kind, Tensor};

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

/// Builds the parameter list of one model.
pub struct ParamBuilder<'a> {
    ckpt: Option<&'a SafeTensors>,
    candidates: &'a dyn Fn(&str) -> Vec<String>,
    may_init: &'a dyn Fn(&str) -> bool,
    device: tch::Device,
    kind: Kind,
    params: Vec<(String, Tensor)>,
    used: HashSet<String>,
    initialised: Vec<String>,
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
            device: tch::Device::Cpu,
            kind: Kind::Float,
            params: Vec::new(),
            used: HashSet::new(),
            initialised: Vec::new(),
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

    /// Places the parameters on `device` in `dtype` as they are read.
    pub fn at(mut self, device: Device, dtype: DType) -> Result<Self> {
        self.device = device.to_tch()?;
        self.kind = dtype.kind();
        Ok(self)
    }

    /// The parameter `name` of `shape`: read from the checkpoint, or initialised with `init`.
    pub fn get(&mut self, name: &str, shape: &[i64], init: Init) -> Result<Tensor> {
        let t = match self.read(name, shape)? {
            Some(t) => t,
            None => {
                if self.ckpt.is_some() {
                    self.initialised.push(name.to_string());
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
        self.params.push((name.to_string(), t.shallow_clone()));
        Ok(t)
    }

    fn read(&mut self, name: &str, shape: &[i64]) -> Result<Option<Tensor>> {
        let Some(ckpt) = self.ckpt else {
            return Ok(None);
        };
        let found = (self.candidates)(name)
            .into_iter()
            .find(|c| ckpt.contains(c) && !self.used.contains(c));
        let Some(stored) = found else {
            if (self.may_init)(name) {
                return Ok(None);
            }
            return Err(MfError::checkpoint(
                ckpt.origin().display(),
                format!(
                    "missing tensor '{name}' (shape {shape:?}); the checkpoint does not hold \
                     this model's weights"
                ),
            ));
        };
        let src = ckpt.get(&stored)?;
        if src.size() != shape {
            return Err(MfError::checkpoint(
                ckpt.origin().display(),
                format!(
                    "tensor '{stored}' has shape {:?} but the model's '{name}' expects {shape:?}; \
                     the checkpoint does not match this config",
                    src.size()
                ),
            ));
        }
        if !matches!(
            src.kind(),
            Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double
        ) {
            return Err(MfError::checkpoint(
                ckpt.origin().display(),
                format!("tensor '{stored}' has dtype {:?}, not a float", src.kind()),
            ));
        }
        self.used.insert(stored);
        // Both conversions are no-ops (no copy) when the stored dtype and device already match.
        Ok(Some(
            src.f_to_kind(self.kind)?.f_to_device(self.device)?.detach(),
        ))
    }

    /// The built parameters. Checkpoint tensors that no parameter used (other than
    /// `ignore`d buffers) and parameters initialised for want of a checkpoint tensor are
    /// reported as warnings, as transformers reports them.
    pub fn finish(self, ignore: &dyn Fn(&str) -> bool) -> Result<Params> {
        let mut unused = Vec::new();
        if let Some(ckpt) = self.ckpt {
            unused = ckpt
                .names()
                .filter(|n| !self.used.contains(*n) && !ignore(n))
                .map(String::from)
                .collect();
            let origin = ckpt.origin().display();
            if !unused.is_empty() {
                eprintln!(
                    "warning: some weights of {origin} were not used: {} (expected when the \
                     checkpoint was saved with another head)",
                    unused.join(", ")
                );
            }
            if !self.initialised.is_empty() {
                eprintln!(
                    "warning: some weights were not in {origin} and are newly initialized: {}; \
                     train the model on a down-stream task before using it for predictions",
                    self.initialised.join(", ")
                );
            }
        }
        let mut seen = HashSet::new();
        for (n, _) in &self.params {
            if !seen.insert(n.clone()) {
                return Err(mf_core::invalid(format!(
                    "parameter '{n}' is declared twice"
                )));
            }
        }
        let mut params = self.params;
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Params {
            params,
            initialised: self.initialised,
            unused,
        })
    }
}

/// The parameters of one model under their checkpoint names, sorted.
#[derive(Debug)]
pub struct Params {
    params: Vec<(String, Tensor)>,
    initialised: Vec<String>,
    unused: Vec<String>,
}

impl Params {
    /// Every parameter `(name, tensor)` in name order (handles share storage with the model).
    pub fn list(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
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

    /// Moves every parameter in place (every layer's handle sees the new data).
    pub fn to(&self, device: Device, dtype: DType) -> Result<()> {
        let (d, k) = (device.to_tch()?, dtype.kind());
        tch::no_grad(|| -> Result<()> {
            for (_, t) in &self.params {
                let new = t.f_to_device(d)?.f_to_kind(k)?;
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
