//! The PyO3 binding layer: the only code that touches Python. Thin wrappers over the core,
//! errors mapped to `ferrolm.errors`, the GIL released around every forward pass.

mod errors;

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::error::Error;
use crate::model::adapt::{MergedWeight, WeightDelta};
use crate::kernels::quant::GgufBlock;
use crate::kv_cache::{KvCache, KvDtype};
use crate::model::{Arch, DType, LoadPlan, Model, ModelConfig, Precision, TensorStore};
use crate::sampling::{self, SamplingParams};
use crate::safetensors_file::{SafetensorsFile, WriteEntry};
use crate::session::Session;

fn token_ids(tokens: &[i64], vocab_size: usize) -> Result<Vec<u32>, Error> {
    tokens
        .iter()
        .map(|&t| match u32::try_from(t) {
            Ok(id) if (id as usize) < vocab_size => Ok(id),
            _ => Err(Error::InvalidToken { token: t, vocab_size }),
        })
        .collect()
}

fn f32_bytes<'py>(py: Python<'py>, v: &[f32]) -> Bound<'py, PyBytes> {
    // SAFETY: f32 has no padding; the byte view lives only for this copy.
    let bytes = unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) };
    PyBytes::new(py, bytes)
}

/// Collects checkpoint tensors, then builds a Model.
#[pyclass(module = "ferrolm._core")]
struct ModelBuilder {
    config: ModelConfig,
    store: Option<TensorStore>,
}

impl ModelBuilder {
    fn store(&mut self) -> Result<&mut TensorStore, Error> {
        self.store.as_mut().ok_or_else(|| Error::InvalidArgument("this ModelBuilder was already built".into()))
    }
}

#[pymethods]
impl ModelBuilder {
    /// `precision` ("fp32", "bf16", "int8") is what matmul weights are converted to as they
    /// arrive; `group` is the INT8 group size along the input (a multiple of 32).
    #[new]
    #[pyo3(signature = (config_json, precision="fp32", group=crate::kernels::quant::GROUP))]
    fn new(config_json: &str, precision: &str, group: usize) -> PyResult<Self> {
        let config = ModelConfig::from_hf_json(config_json)?;
        let plan = LoadPlan::new(config.arch, Precision::parse(precision)?, group)?;
        Ok(Self { config, store: Some(TensorStore::new(plan)) })
    }

    /// Reads every tensor of a safetensors file.
    fn add_safetensors(&mut self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let store = self.store()?;
        py.detach(|| store.add_safetensors(&path))?;
        Ok(())
    }

    /// Adds one tensor from little-endian bytes of `dtype` ("F32", "F16", "BF16", "F64"); a
    /// matmul weight is converted to `precision` instead of the builder's when given.
    #[pyo3(signature = (name, dtype, shape, data, precision=None))]
    fn add_tensor(&mut self, py: Python<'_>, name: &str, dtype: &str, shape: Vec<usize>, data: &[u8], precision: Option<&str>) -> PyResult<()> {
        let dtype = DType::parse(dtype)?;
        let precision = precision.map(Precision::parse).transpose()?;
        let store = self.store()?;
        py.detach(|| store.insert_bytes_as(name, dtype, &shape, data, precision))?;
        Ok(())
    }

    /// Adds a GGUF tensor `[rows, cols]` from its raw blocks of `kind` ("Q8_0", "Q4_0",
    /// "Q4_1"): kept exactly where the builder's precision holds them (Q8_0 under INT8 in
    /// groups of 32 or INT4, Q4_0/Q4_1 under INT4), dequantized and converted otherwise.
    fn add_blocks(&mut self, py: Python<'_>, name: &str, kind: &str, shape: Vec<usize>, data: &[u8]) -> PyResult<()> {
        let kind = GgufBlock::parse(kind)?;
        let store = self.store()?;
        py.detach(|| store.insert_blocks(name, kind, &shape, data))?;
        Ok(())
    }

    fn tensor_names(&mut self) -> PyResult<Vec<String>> {
        Ok(self.store()?.names())
    }

    /// Checks every tensor and builds the model, running kernels on `threads` threads.
    fn build(&mut self, py: Python<'_>, threads: usize) -> PyResult<PyModel> {
        let mut store = self.store.take().ok_or_else(|| Error::InvalidArgument("this ModelBuilder was already built".into()))?;
        let config = self.config.clone();
        let model = py.detach(move || Model::from_tensors(config, &mut store, threads))?;
        Ok(PyModel { inner: Arc::new(model) })
    }
}

#[pyclass(name = "Model", module = "ferrolm._core", frozen)]
struct PyModel {
    inner: Arc<Model>,
}

#[pymethods]
impl PyModel {
    #[getter]
    fn arch(&self) -> &'static str {
        match self.inner.config.arch {
            Arch::Llama => "llama",
            Arch::Gpt2 => "gpt2",
        }
    }
    #[getter]
    fn model_type(&self) -> String {
        self.inner.config.model_type.clone()
    }
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.config.vocab_size
    }
    #[getter]
    fn max_position_embeddings(&self) -> usize {
        self.inner.config.max_position_embeddings
    }
    #[getter]
    fn num_layers(&self) -> usize {
        self.inner.config.num_layers
    }
    #[getter]
    fn hidden_size(&self) -> usize {
        self.inner.config.hidden_size
    }
    #[getter]
    fn num_heads(&self) -> usize {
        self.inner.config.num_heads
    }
    #[getter]
    fn num_kv_heads(&self) -> usize {
        self.inner.config.num_kv_heads
    }
    #[getter]
    fn head_dim(&self) -> usize {
        self.inner.config.head_dim
    }
    /// Storage precision of the matmul weights: "fp32", "bf16", "int8" or "int4" (an int4
    /// model may keep some matrices in INT8: those a GGUF file stores in 5 to 8 bits).
    #[getter]
    fn precision(&self) -> &'static str {
        self.inner.precision().name()
    }
    /// {precision: number of matmul weights (embedding, fused layer matrices, lm_head)} stored
    /// in it.
    #[getter]
    fn matrix_precisions(&self) -> std::collections::HashMap<&'static str, usize> {
        let mut out = std::collections::HashMap::new();
        for l in self.inner.linears() {
            *out.entry(l.weight.precision().name()).or_insert(0) += 1;
        }
        out
    }
    /// INT8 group size along the input (None unless some matrix is int8).
    #[getter]
    fn group_size(&self) -> Option<usize> {
        self.inner.int8_group()
    }
    #[getter]
    fn num_params(&self) -> usize {
        self.inner.num_params()
    }
    #[getter]
    fn threads(&self) -> usize {
        self.inner.pool.n_threads()
    }
    /// Bytes of every stored weight (a tied lm_head counted once).
    #[getter]
    fn weight_bytes(&self) -> usize {
        self.inner.weight_bytes()
    }
    /// Bytes of matmul weights read per decoded token (all linear layers and the lm_head).
    #[getter]
    fn matmul_bytes_per_token(&self) -> usize {
        self.inner.matmul_bytes_per_token()
    }

    /// [rows, in] of linear weight `name` (a checkpoint name), as an adapter must match it.
    fn adaptable_shape(&self, name: &str) -> PyResult<(usize, usize)> {
        Ok(self.inner.adaptable_shape(name)?)
    }

    /// A model sharing this one's weights except: `merged` (name, original float32 bytes
    /// [rows, in], rank, A, B, scale) rows replaced by W + scale·B·A (computed in FP32, converted
    /// to this precision; rank 0 and empty A/B: W as given), and `deltas` (name, rank, A float32
    /// [rank, in], B float32 [rows, rank], scale) computed at run time. This model is unchanged.
    fn variant(
        &self,
        py: Python<'_>,
        merged: Vec<(String, Bound<'_, PyBytes>, usize, Bound<'_, PyBytes>, Bound<'_, PyBytes>, f32)>,
        deltas: Vec<(String, usize, Bound<'_, PyBytes>, Bound<'_, PyBytes>, f32)>,
    ) -> PyResult<PyModel> {
        let f32s = |b: &Bound<'_, PyBytes>| crate::model::tensors::to_f32(DType::F32, b.as_bytes());
        let merged = merged
            .into_iter()
            .map(|(name, v, rank, a, b, scale)| {
                let lora = (rank > 0).then(|| -> Result<WeightDelta, Error> { Ok(WeightDelta { name: name.clone(), rank, a: f32s(&a)?, b: f32s(&b)?, scale }) }).transpose()?;
                Ok(MergedWeight { values: f32s(&v)?, name, lora })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let deltas = deltas
            .into_iter()
            .map(|(name, rank, a, b, scale)| Ok(WeightDelta { name, rank, a: f32s(&a)?, b: f32s(&b)?, scale }))
            .collect::<Result<Vec<_>, Error>>()?;
        let base = &self.inner;
        let model = py.detach(|| base.variant(merged, deltas))?;
        Ok(PyModel { inner: Arc::new(model) })
    }

    /// (name, dtype, shape) of every tensor under its checkpoint name, in load order: what
    /// `export_tensor` gives and a saved checkpoint holds.
    fn export_entries(&self) -> Vec<(String, &'static str, Vec<usize>)> {
        self.inner.export_entries().into_iter().map(|e| (e.name, e.dtype.name(), e.shape)).collect()
    }

    /// float32 bytes of linear weight `name` as `[rows, in]`, widened or dequantized from the
    /// model's precision.
    fn weight_values<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyBytes>> {
        let model = &self.inner;
        let v = py.detach(|| model.weight_values(name))?;
        Ok(f32_bytes(py, &v))
    }

    /// Little-endian bytes of tensor `name` (one of `export_entries`).
    fn export_tensor<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyBytes>> {
        let model = &self.inner;
        let bytes = py.detach(|| {
            let entry = model.export_entries().into_iter().find(|e| e.name == name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
            model.export_bytes(&entry)
        })?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Writes every tensor (`export_entries`) to the safetensors file `path`, one tensor at a
    /// time, with the GIL released; `progress(done, total, name)` is called after each tensor.
    #[pyo3(signature = (path, metadata=None, progress=None))]
    fn save_safetensors(&self, py: Python<'_>, path: PathBuf, metadata: Option<std::collections::HashMap<String, String>>, progress: Option<Py<PyAny>>) -> PyResult<()> {
        let model = &self.inner;
        let entries = model.export_entries();
        let writes: Vec<WriteEntry> = entries.iter().map(|e| WriteEntry { name: e.name.clone(), dtype: e.dtype, shape: e.shape.clone() }).collect();
        let by_name: std::collections::HashMap<&str, &crate::model::export::ExportEntry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
        let done = std::sync::atomic::AtomicUsize::new(0);
        let callback_error = CallbackError::default();
        let source = |w: &WriteEntry| -> Result<Vec<u8>, Error> {
            let entry = by_name.get(w.name.as_str()).ok_or_else(|| Error::MissingTensor(w.name.clone()))?;
            let bytes = model.export_bytes(entry)?;
            if let Some(cb) = &progress {
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                Python::attach(|py| cb.call1(py, (n, writes.len(), w.name.as_str())).map(drop)).map_err(|e| callback_error.keep("the progress callback", e))?;
            }
            Ok(bytes)
        };
        let result = py.detach(|| crate::safetensors_file::write(&path, &writes, metadata, &source));
        callback_error.raise()?;
        Ok(result?)
    }

    /// The longest context whose KV cache (stored as `kv_cache`: "fp32" or "bf16") fits in this
    /// machine's memory (at most max_position_embeddings).
    #[pyo3(signature = (kv_cache="fp32"))]
    fn max_context_in_memory(&self, kv_cache: &str) -> PyResult<usize> {
        Ok(self.inner.max_context_in_memory(KvDtype::parse(kv_cache)?))
    }

    /// Bytes of one session's KV cache for `context` positions, stored as `kv_cache`.
    #[pyo3(signature = (context, kv_cache="fp32"))]
    fn kv_cache_bytes(&self, context: usize, kv_cache: &str) -> PyResult<usize> {
        let c = &self.inner.config;
        let bytes = KvCache::bytes_for(c.num_layers, context, c.kv_dim(), KvDtype::parse(kv_cache)?);
        Ok(bytes.ok_or_else(|| Error::Memory(format!("a KV cache of {context} positions is too large to count")))?)
    }

    /// How checkpoint tensor `name` is stored: "linear" ([out, in]), "conv1d" ([in, out],
    /// GPT-2) or "plain" (norms, biases, learned positions), from the architecture's table.
    fn checkpoint_layout(&self, name: &str) -> PyResult<&'static str> {
        let arch = self.inner.config.arch;
        let (row, _) = crate::model::names::table(arch).find(name).ok_or_else(|| {
            Error::InvalidArgument(format!("'{name}' is not a {} checkpoint tensor", crate::model::names::arch_name(arch)))
        })?;
        Ok(row.layout.name())
    }

    /// The modules of the forward pass, in order, for a device backend: a list of
    /// (name, dict) — linear: precision, out_features, in_features, group, bias, lora
    /// [(row0, rows, rank, scale)]; norm: eps, bias; table: rows, cols.
    fn device_modules<'py>(&self, py: Python<'py>) -> PyResult<Vec<(String, Bound<'py, PyDict>)>> {
        use crate::model::device::Module;
        let mut out = Vec::new();
        for (name, module) in crate::model::device::modules(&self.inner) {
            let d = PyDict::new(py);
            match module {
                Module::Linear { precision, out_features, in_features, group, bias, lora } => {
                    d.set_item("kind", "linear")?;
                    d.set_item("precision", precision)?;
                    d.set_item("out_features", out_features)?;
                    d.set_item("in_features", in_features)?;
                    d.set_item("group", group)?;
                    d.set_item("bias", bias)?;
                    d.set_item("lora", lora)?;
                }
                Module::Norm { eps, bias } => {
                    d.set_item("kind", "norm")?;
                    d.set_item("eps", eps)?;
                    d.set_item("bias", bias)?;
                }
                Module::Table { rows, cols } => {
                    d.set_item("kind", "table")?;
                    d.set_item("rows", rows)?;
                    d.set_item("cols", cols)?;
                }
            }
            out.push((name, d));
        }
        Ok(out)
    }

    /// Every weight buffer a device backend uploads: (name, dtype, shape, id). Buffers with
    /// equal ids hold the same bytes (shared between variants): upload them once.
    fn device_buffers(&self) -> Vec<(String, &'static str, Vec<usize>, usize)> {
        crate::model::device::buffers(&self.inner).into_iter().map(|b| (b.name, b.dtype.name(), b.shape, b.id)).collect()
    }

    /// The little-endian bytes of one device buffer (one copy of that tensor only).
    fn device_buffer<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &crate::model::device::buffer_bytes(&self.inner, name)?))
    }

    /// RoPE inverse frequencies [head_dim/2] (float64), or None (GPT-2).
    #[getter]
    fn rope_inv_freq(&self) -> Option<Vec<f64>> {
        self.inner.rope.as_ref().map(|r| r.inv_freq().to_vec())
    }

    #[getter]
    fn intermediate_size(&self) -> usize {
        self.inner.config.intermediate_size
    }

    /// A session with its own KV cache of `context_length` positions (default: the model's
    /// maximum), stored as `kv_cache`: "fp32" or "bf16".
    #[pyo3(signature = (context_length=None, kv_cache="fp32"))]
    fn new_session(&self, context_length: Option<usize>, kv_cache: &str) -> PyResult<PySession> {
        Ok(PySession { inner: Session::new(self.inner.clone(), context_length, KvDtype::parse(kv_cache)?)? })
    }
}

#[pyclass(name = "Session", module = "ferrolm._core")]
struct PySession {
    inner: Session,
}

#[pymethods]
impl PySession {
    #[getter]
    fn context_length(&self) -> usize {
        self.inner.context_length()
    }
    /// How the KV cache stores keys and values: "fp32" or "bf16".
    #[getter]
    fn kv_cache(&self) -> &'static str {
        self.inner.kv_dtype().name()
    }
    #[getter]
    fn position(&self) -> usize {
        self.inner.position()
    }
    fn tokens(&self) -> Vec<u32> {
        self.inner.tokens().to_vec()
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
    /// Forgets the conversation and keeps the cache's memory for the next prompt (see the
    /// core's `Session::restart`).
    fn restart(&mut self) {
        self.inner.restart()
    }
    fn seed(&mut self, seed: u64) {
        self.inner.seed(seed)
    }

    /// Feeds `tokens` (prefill or one decode step). With `all_logits`, returns float32 bytes
    /// of shape [len(tokens), vocab]; otherwise None (the last logits stay inside).
    #[pyo3(signature = (tokens, all_logits=false))]
    fn forward<'py>(&mut self, py: Python<'py>, tokens: Vec<i64>, all_logits: bool) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let ids = token_ids(&tokens, self.inner.model().config.vocab_size)?;
        let session = &mut self.inner;
        let out = py.detach(|| session.forward(&ids, all_logits))?;
        Ok(out.map(|v| f32_bytes(py, &v)))
    }

    /// Feeds `tokens` as rows `start..start + len(tokens)` of a prompt of `total` tokens,
    /// chunked and on the matmul paths one call with the whole prompt would use: a prompt
    /// fed in pieces (after a reused prefix, or chunk by chunk) gives the cache and logits of
    /// one `forward(prompt)`.
    #[pyo3(signature = (tokens, start, total, all_logits=false))]
    fn forward_prompt<'py>(&mut self, py: Python<'py>, tokens: Vec<i64>, start: usize, total: usize, all_logits: bool) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let ids = token_ids(&tokens, self.inner.model().config.vocab_size)?;
        let session = &mut self.inner;
        let out = py.detach(|| session.forward_prompt(&ids, start, total, all_logits))?;
        Ok(out.map(|v| f32_bytes(py, &v)))
    }

    /// How many leading tokens of `prompt` this session holds exactly as a cold run of
    /// `prompt` computes them (at most len(prompt) - 1; 0 after a soft prompt).
    fn reusable_prefix(&self, prompt: Vec<i64>) -> usize {
        let ids: Vec<u32> = prompt.iter().map_while(|&t| u32::try_from(t).ok()).collect();
        self.inner.reusable_prefix(&ids)
    }

    /// Keeps the first `n` tokens and forgets the rest.
    fn truncate(&mut self, n: usize) -> PyResult<()> {
        Ok(self.inner.truncate(n)?)
    }

    /// Cache positions ever written (their memory stays committed while the session lives).
    #[getter]
    fn touched(&self) -> usize {
        self.inner.touched()
    }

    /// (log-probability of `token`, [(id, log-probability)] of the `top` likeliest tokens)
    /// under the last logits, before any sampling processor.
    #[pyo3(signature = (token, top=0))]
    fn logprobs(&self, py: Python<'_>, token: u32, top: usize) -> PyResult<(f32, Vec<(u32, f32)>)> {
        let logits = self.inner.logits()?;
        Ok(py.detach(|| sampling::log_probs(logits, token, top))?)
    }

    /// Feeds float32 embeddings [n, hidden] (a soft prompt) at the start of an empty session.
    #[pyo3(signature = (embeds, all_logits=false))]
    fn forward_embeddings<'py>(&mut self, py: Python<'py>, embeds: &[u8], all_logits: bool) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let values = crate::model::tensors::to_f32(DType::F32, embeds)?;
        let session = &mut self.inner;
        let out = py.detach(|| session.forward_embeddings(&values, all_logits))?;
        Ok(out.map(|v| f32_bytes(py, &v)))
    }

    /// Positions fed as embeddings (a soft prompt).
    #[getter]
    fn prefix_len(&self) -> usize {
        self.inner.prefix_len()
    }

    /// float32 bytes [vocab] of the last token fed.
    fn logits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(f32_bytes(py, self.inner.logits()?))
    }

    /// Picks the next token from the last logits.
    #[pyo3(signature = (params, gen_start=0, suppress=Vec::new()))]
    fn sample(&mut self, py: Python<'_>, params: &PySamplingParams, gen_start: usize, suppress: Vec<u32>) -> PyResult<u32> {
        let session = &mut self.inner;
        let p = &params.inner;
        Ok(py.detach(|| session.sample(p, gen_start, &suppress))?)
    }
}

/// The host sampler: a seeded RNG and the logits processors. Gives the token a CPU session
/// gives for the same logits, parameters, history and seed (device backends sample with it).
#[pyclass(name = "Sampler", module = "ferrolm._core")]
struct PySampler {
    inner: sampling::Sampler,
}

#[pymethods]
impl PySampler {
    #[new]
    fn new(vocab_size: usize) -> PyResult<Self> {
        Ok(Self { inner: sampling::Sampler::new(vocab_size)? })
    }

    fn seed(&mut self, seed: u64) {
        self.inner.seed(seed)
    }

    /// The next token from float32 `logits` bytes [vocab]; `history`: every token fed so
    /// far, generated ones from `gen_start`.
    fn sample(&mut self, py: Python<'_>, logits: &[u8], params: &PySamplingParams, history: Vec<u32>, gen_start: usize, suppress: Vec<u32>) -> PyResult<u32> {
        let v = crate::model::tensors::to_f32(DType::F32, logits)?;
        let (sampler, p) = (&mut self.inner, &params.inner);
        Ok(py.detach(|| sampler.sample(&v, p, &history, gen_start, &suppress))?)
    }
}

#[pyclass(name = "SamplingParams", module = "ferrolm._core", frozen)]
struct PySamplingParams {
    inner: SamplingParams,
}

#[pymethods]
impl PySamplingParams {
    #[new]
    #[pyo3(signature = (do_sample=false, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
                        frequency_penalty=0.0, presence_penalty=0.0, logit_bias=Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        do_sample: bool,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
        repetition_penalty: f32,
        frequency_penalty: f32,
        presence_penalty: f32,
        logit_bias: Vec<(u32, f32)>,
    ) -> PyResult<Self> {
        let inner = SamplingParams { do_sample, temperature, top_k, top_p, min_p, repetition_penalty, frequency_penalty, presence_penalty, logit_bias };
        inner.validate(usize::MAX)?;
        Ok(Self { inner })
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }

    /// Greedy with no penalty or logit bias: the token is the argmax of the logits (when no
    /// token is suppressed), which a device backend computes where the logits are.
    #[getter]
    fn plain_greedy(&self) -> bool {
        self.inner.is_plain_greedy()
    }
}

/// Applies the logits processors (as used by `Session.sample`) to float32 bytes [vocab];
/// returns the processed float32 bytes. For evaluation and tests.
#[pyfunction]
#[pyo3(signature = (logits, params, history=Vec::new(), generated=Vec::new(), suppress=Vec::new()))]
fn process_logits<'py>(py: Python<'py>, logits: &[u8], params: &PySamplingParams, history: Vec<u32>, generated: Vec<u32>, suppress: Vec<u32>) -> PyResult<Bound<'py, PyBytes>> {
    let mut v = crate::model::tensors::to_f32(DType::F32, logits)?;
    sampling::process_logits(&mut v, &params.inner, &history, &generated, &suppress);
    Ok(f32_bytes(py, &v))
}

/// (log-probability of `token`, [(id, log-probability)] of the `top` likeliest tokens) of
/// float32 `logits` bytes [vocab] (log-softmax, before any sampling processor).
#[pyfunction]
#[pyo3(signature = (logits, token, top=0))]
fn logprobs(py: Python<'_>, logits: &[u8], token: u32, top: usize) -> PyResult<(f32, Vec<(u32, f32)>)> {
    let v = crate::model::tensors::to_f32(DType::F32, logits)?;
    Ok(py.detach(|| sampling::log_probs(&v, token, top))?)
}

/// One decode step of several sessions of the same model: session i is fed `tokens[i]`,
/// through one pass over the weights for all of them (the GIL released). Each session ends
/// exactly as `forward([tokens[i]])` alone would leave it; on error none changes.
#[pyfunction]
fn decode_batch(py: Python<'_>, sessions: Vec<Bound<'_, PySession>>, tokens: Vec<i64>) -> PyResult<()> {
    for (i, a) in sessions.iter().enumerate() {
        if sessions[..i].iter().any(|b| b.is(a)) {
            return Err(Error::InvalidArgument("a session appears twice in the batch".into()).into());
        }
    }
    let mut refs = Vec::with_capacity(sessions.len());
    for s in &sessions {
        refs.push(s.try_borrow_mut().map_err(|_| Error::InvalidArgument("a session of the batch is in use by another call".into()))?);
    }
    let vocab = refs.first().map_or(0, |r| r.inner.model().config.vocab_size);
    let ids = token_ids(&tokens, vocab)?;
    let mut inner: Vec<&mut Session> = refs.iter_mut().map(|r| &mut r.inner).collect();
    py.detach(|| Session::step_batch(&mut inner, &ids))?;
    Ok(())
}

/// A safetensors file, mapped read-only and validated at open (the one reader of the format).
#[pyclass(name = "SafetensorsFile", module = "ferrolm._core", frozen)]
struct PySafetensorsFile {
    inner: SafetensorsFile,
}

#[pymethods]
impl PySafetensorsFile {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        Ok(Self { inner: py.detach(|| SafetensorsFile::open(&path))? })
    }

    /// (name, dtype, shape) of every tensor, in file order; dtype as the header names it.
    fn tensors(&self) -> Vec<(String, String, Vec<usize>)> {
        self.inner.tensors().iter().map(|t| (t.name.clone(), t.dtype.to_string(), t.shape.clone())).collect()
    }

    /// The header's `__metadata__` strings.
    #[getter]
    fn metadata(&self) -> std::collections::HashMap<String, String> {
        self.inner.metadata().clone()
    }

    /// The raw little-endian bytes of tensor `name`.
    fn read<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyBytes>> {
        let entry = self.inner.entry(name)?;
        Ok(PyBytes::new(py, self.inner.bytes(entry)))
    }

    /// float32 bytes of float tensor `name` (F32/F16/BF16/F64 widened exactly); None for int8.
    fn read_f32<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let file = &self.inner;
        let values = py.detach(|| file.f32_values(name))?;
        Ok(values.map(|v| f32_bytes(py, &v)))
    }
}

fn write_entries(entries: Vec<(String, String, Vec<usize>)>) -> Result<Vec<WriteEntry>, Error> {
    entries.into_iter().map(|(name, dtype, shape)| Ok(WriteEntry { name, dtype: DType::parse(&dtype)?, shape })).collect()
}

/// Writes a safetensors file of `entries` (name, dtype, shape), calling `make(name)` for each
/// tensor's little-endian bytes only when it is written; the file appears complete or not at
/// all. The GIL is released except inside `make`.
#[pyfunction]
#[pyo3(signature = (path, entries, make, metadata=None))]
fn write_safetensors(
    py: Python<'_>,
    path: PathBuf,
    entries: Vec<(String, String, Vec<usize>)>,
    make: Py<PyAny>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> PyResult<()> {
    let entries = write_entries(entries)?;
    let callback_error = CallbackError::default();
    let source = |e: &WriteEntry| -> Result<Vec<u8>, Error> {
        Python::attach(|py| {
            let got = make.call1(py, (e.name.as_str(),)).and_then(|obj| Ok(obj.cast_bound::<PyBytes>(py)?.as_bytes().to_vec()));
            got.map_err(|err| callback_error.keep(&format!("make({:?})", e.name), err))
        })
    };
    let result = py.detach(|| crate::safetensors_file::write(&path, &entries, metadata, &source));
    callback_error.raise()?;
    Ok(result?)
}

/// The exception a Python callback raised inside core work: the core stops with an `Error`,
/// and the binding re-raises the original exception once the work has returned.
#[derive(Default)]
struct CallbackError(std::sync::Mutex<Option<PyErr>>);

impl CallbackError {
    fn keep(&self, what: &str, err: PyErr) -> Error {
        let msg = format!("{what} raised {err}");
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
        Error::InvalidArgument(msg)
    }

    fn raise(self) -> PyResult<()> {
        match self.0.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

/// Checks a Hugging Face config.json text as loading does (types, bounds, consistency), before
/// anything is sized from it; raises ConfigError.
#[pyfunction]
fn check_config(config_json: &str) -> PyResult<()> {
    ModelConfig::from_hf_json(config_json)?;
    Ok(())
}

/// Physical memory of this machine in bytes (the bound on one KV cache or buffer).
#[pyfunction]
fn memory_limit() -> usize {
    crate::memory::memory_limit()
}

/// The tensor-name table of architecture `arch` ("llama" | "gpt2"), in load order: one dict per
/// checkpoint tensor with "name" (`{i}` for the layer index), "role", "part" ("weight" | "bias"),
/// "layout" ("linear" | "conv1d" | "plain"), "when" ("always" | "qkv_bias" | "o_bias" |
/// "mlp_bias" | "untied") and "gguf" (the GGUF name, or None).
#[pyfunction]
fn tensor_table<'py>(py: Python<'py>, arch: &str) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let table = crate::model::names::table(crate::model::names::arch_by_name(arch)?);
    table
        .rows()
        .map(|r| {
            let d = PyDict::new(py);
            d.set_item("name", r.name)?;
            d.set_item("role", r.role.name())?;
            d.set_item("part", r.part.name())?;
            d.set_item("layout", r.layout.name())?;
            d.set_item("when", r.when.name())?;
            d.set_item("gguf", r.gguf)?;
            Ok(d)
        })
        .collect()
}

/// Every name a checkpoint may store tensor `name` under: `name`, then (GPT-2) the same without
/// the "transformer." prefix some checkpoints leave out.
#[pyfunction]
fn checkpoint_names(name: &str) -> Vec<String> {
    crate::model::names::checkpoint_names(name)
}

/// The SIMD instruction set the kernels dispatch to on this CPU.
#[pyfunction]
fn simd_level() -> String {
    crate::kernels::simd_name()
}

/// What the BF16, INT8 and INT4 prefill GEMM multiplies on this CPU: "bf16" (x rounded to bf16,
/// and INT8/INT4 weights dequantized to bf16, for `vdpbf16ps` or AMX: AVX512-BF16 CPUs where
/// that is the faster GEMM, or `FERROLM_BF16_PREFILL=bf16`) or "f32" (x kept in f32 for BF16,
/// quantized to 16 bits for INT8/INT4: other CPUs, Intel's without AMX, or
/// `FERROLM_BF16_PREFILL=f32`). An invalid `FERROLM_BF16_PREFILL` raises `InvalidArgumentError`.
#[pyfunction]
fn bf16_prefill() -> PyResult<String> {
    use crate::kernels::matmul_bf16::{prefill_rounds_x, rounds_x, PREFILL_X_ENV};
    prefill_rounds_x(std::env::var(PREFILL_X_ENV).ok().as_deref()).map_err(crate::error::Error::InvalidArgument)?;
    let level = crate::kernels::simd::detected();
    Ok(if rounds_x(level, usize::MAX, Some(crate::kernels::RowPath::Gemm)) { "bf16" } else { "f32" }.to_string())
}

/// The kernel of the BF16, INT8 and INT4 prefill GEMM on this CPU: "amx-bf16" (AMX tiles) or
/// "avx512-bf16" (`vdpbf16ps`), both multiplying bf16 as [`bf16_prefill`] says, or "f32". An
/// invalid `FERROLM_BF16_PREFILL` or `FERROLM_AMX` raises `InvalidArgumentError`.
#[pyfunction]
fn prefill_gemm() -> PyResult<String> {
    bf16_prefill()?;
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernels::matmul_amx::{amx_allowed, AMX_ENV};
        amx_allowed(std::env::var(AMX_ENV).ok().as_deref()).map_err(crate::error::Error::InvalidArgument)?;
    }
    Ok(crate::kernels::matmul_bf16::prefill_gemm(crate::kernels::simd::detected()).to_string())
}

/// The layout a model loaded now holds its INT8 weights in: "tiles" (CPUs with AVX-512 VNNI and
/// the BF16 prefill GEMM: without AMX, or with it under `FERROLM_INT8_LAYOUT=tiles`) or "rows"
/// (elsewhere, or `FERROLM_INT8_LAYOUT=rows`). An invalid `FERROLM_INT8_LAYOUT` raises
/// `InvalidArgumentError`.
#[pyfunction]
fn int8_layout() -> PyResult<&'static str> {
    Ok(crate::kernels::matmul_int8_tiles::int8_layout()?)
}

/// Memory read bandwidth in bytes/s: `threads` threads summing a buffer of `bytes` bytes,
/// best of `repeats` passes (for the decode ceiling).
#[pyfunction]
#[pyo3(signature = (bytes=1 << 30, threads=None, repeats=5))]
fn read_bandwidth(py: Python<'_>, bytes: usize, threads: Option<usize>, repeats: usize) -> PyResult<f64> {
    let pool = crate::threadpool::ThreadPool::new(threads.unwrap_or_else(default_threads))?;
    Ok(py.detach(|| crate::bandwidth::read_bandwidth(&pool, bytes, repeats)))
}

/// One precision's matmul kernel on weights streamed from memory (see `bandwidth::MatmulProbe`):
/// each `run()` multiplies `tokens` activation rows by the next of several copies of a random
/// `[rows, cols]` weight (INT8 in groups of 32) that together exceed `min_bytes`.
#[pyclass(name = "MatmulProbe", module = "ferrolm._core")]
struct PyMatmulProbe {
    inner: crate::bandwidth::MatmulProbe,
    pool: crate::threadpool::ThreadPool,
    precision: Precision,
}

#[pymethods]
impl PyMatmulProbe {
    #[new]
    #[pyo3(signature = (precision, rows, cols, tokens=1, threads=None, min_bytes=384 << 20))]
    fn new(py: Python<'_>, precision: &str, rows: usize, cols: usize, tokens: usize, threads: Option<usize>, min_bytes: usize) -> PyResult<Self> {
        let precision = Precision::parse(precision)?;
        let pool = crate::threadpool::ThreadPool::new(threads.unwrap_or_else(default_threads))?;
        let inner = py.detach(|| crate::bandwidth::MatmulProbe::new(precision, rows, cols, tokens, min_bytes))?;
        Ok(Self { inner, pool, precision })
    }
    #[getter]
    fn precision(&self) -> &'static str {
        self.precision.name()
    }
    /// Bytes of one weight, read by each call (INT8 scales included).
    #[getter]
    fn weight_bytes(&self) -> usize {
        self.inner.weight_bytes()
    }
    #[getter]
    fn copies(&self) -> usize {
        self.inner.copies()
    }
    #[getter]
    fn threads(&self) -> usize {
        self.pool.n_threads()
    }
    /// One matmul with the next copy of the weight (the GIL released).
    fn run(&mut self, py: Python<'_>) {
        let (inner, pool) = (&mut self.inner, &self.pool);
        py.detach(|| inner.run(pool));
    }
}

/// The default thread count: the number of CPUs this process may use.
#[pyfunction]
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ModelBuilder>()?;
    m.add_class::<PyModel>()?;
    m.add_class::<PySession>()?;
    m.add_class::<PySamplingParams>()?;
    m.add_class::<PySampler>()?;
    m.add_class::<PySafetensorsFile>()?;
    m.add_class::<PyMatmulProbe>()?;
    m.add_function(wrap_pyfunction!(write_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(memory_limit, m)?)?;
    m.add_function(wrap_pyfunction!(check_config, m)?)?;
    m.add_function(wrap_pyfunction!(process_logits, m)?)?;
    m.add_function(wrap_pyfunction!(logprobs, m)?)?;
    m.add_function(wrap_pyfunction!(decode_batch, m)?)?;
    m.add_function(wrap_pyfunction!(simd_level, m)?)?;
    m.add_function(wrap_pyfunction!(bf16_prefill, m)?)?;
    m.add_function(wrap_pyfunction!(prefill_gemm, m)?)?;
    m.add_function(wrap_pyfunction!(int8_layout, m)?)?;
    m.add_function(wrap_pyfunction!(default_threads, m)?)?;
    m.add_function(wrap_pyfunction!(read_bandwidth, m)?)?;
    m.add_function(wrap_pyfunction!(tensor_table, m)?)?;
    m.add_function(wrap_pyfunction!(checkpoint_names, m)?)?;
    m.add("KV_CACHE_DTYPES", PyTuple::new(m.py(), KvDtype::ALL.map(KvDtype::name))?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
