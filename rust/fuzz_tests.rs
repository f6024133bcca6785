//! Property tests of every input surface of the core: config.json parsing, safetensors files,
//! raw tensor bytes (plain and GGUF Q8_0), sampling knobs and logits, adapter variants, and
//! sessions fed arbitrary token ids, embeddings and context lengths.
//!
//! Each property states that a call returns `Ok` or `Err(Error::..)` for any input (a panic
//! fails the property) and, where the API promises more, that the result holds (nothing changes
//! on error, sizes add up, a sampled token is in the vocabulary and not suppressed).
//!
//! Properties whose input decides how much memory is allocated run each case in a child process
//! (proptest's fork mode) under RLIMIT_AS, so that an allocation failure (an abort) or a hang
//! fails that property instead of ending the test binary or exhausting the machine.
//!
//! Cases per property: a small default (the whole file adds seconds to `cargo test`), or
//! PROPTEST_CASES for a campaign; the seed is fixed (PROPTEST_RNG_SEED overrides it), so every
//! run is reproducible. A failure prints the minimal failing input.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};
use serde_json::{json, Map, Value};

use crate::error::Error;
use crate::kv_cache::KvDtype;
use crate::model::adapt::{MergedWeight, WeightDelta};
use crate::kernels::quant::GgufBlock;
use crate::model::{Arch, DType, LoadPlan, Model, ModelConfig, Precision, TensorStore};
use crate::rng::Rng;
use crate::sampling::{self, SamplingParams};
use crate::session::Session;

const SEED: u64 = 0x6665_7272_6f6c_6d00;
/// Address space of a forked case: far above what a tiny model needs, far below the machine.
const CHILD_ADDRESS_SPACE: u64 = 2 << 30;
/// A forked case that runs longer than this fails as a hang.
const CHILD_TIMEOUT_MS: u32 = 30_000;

fn config(default_cases: u32, fork: bool) -> ProptestConfig {
    let mut c = ProptestConfig::default(); // reads PROPTEST_* from the environment
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = default_cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = RngSeed::Fixed(SEED);
    }
    c.failure_persistence = None; // the minimal input is printed; nothing is written to the tree
    c.fork = fork;
    c.timeout = if fork { CHILD_TIMEOUT_MS } else { 0 };
    c
}

/// In a forked case: cap the address space, so a huge allocation fails at once (and aborts this
/// child) instead of paging the machine.
fn limit_address_space() {
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    {
        #[repr(C)]
        struct Rlimit {
            cur: u64,
            max: u64,
        }
        extern "C" {
            fn setrlimit(resource: i32, rlim: *const Rlimit) -> i32;
        }
        const RLIMIT_AS: i32 = 9;
        let lim = Rlimit { cur: CHILD_ADDRESS_SPACE, max: u64::MAX };
        // SAFETY: setrlimit reads one plain struct; lowering the soft limit is always allowed.
        unsafe {
            setrlimit(RLIMIT_AS, &lim);
        }
    }
}

/// Raw JSON texts at every boundary a config reader might trip on, valid JSON or not.
const HOSTILE_JSON: &[&str] = &[
    "0", "-1", "1", "2", "3", "7", "64", "65", "2147483647", "2147483648", "4294967295", "4294967296", "1099511627776",
    "9007199254740993", "9223372036854775807", "9223372036854775808", "18446744073709551615", "18446744073709551616",
    "100000000000000000000000000000", "-9223372036854775808", "-18446744073709551616", "0.5", "64.0", "-0", "-0.0",
    "1e-45", "1e-46", "5e-324", "3.5e38", "1e39", "1e308", "1e400", "-1e400", "NaN", "Infinity", "-Infinity", "true",
    "false", "null", "\"\"", "\"64\"", "\"silu\"", "\"llama\"", "\"gpt2\"", "\"yarn\"", "[]", "[64]", "[[]]", "{}",
    "{\"rope_type\":\"default\"}", "{\"type\":\"linear\",\"factor\":2}", "{\"rope_theta\":1e39}", "\"\\u0000\"",
    "\"\\ud800\"", "[1,2", "{\"a\":", "0x40", "064", "+64", ".5", "1e", "--1",
];

fn base_config(kind: usize) -> Map<String, Value> {
    let v = match kind % 4 {
        0 => json!({"model_type": "llama", "vocab_size": 40, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32, "rms_norm_eps": 1e-5,
                    "rope_theta": 10000.0, "tie_word_embeddings": false, "attention_bias": false, "mlp_bias": false,
                    "head_dim": 16, "hidden_act": "silu"}),
        1 => json!({"model_type": "gpt2", "vocab_size": 40, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 32,
                    "n_inner": null, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", "tie_word_embeddings": true,
                    "scale_attn_weights": true, "scale_attn_by_inverse_layer_idx": false, "reorder_and_upcast_attn": false}),
        2 => json!({"model_type": "qwen2", "vocab_size": 40, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 1, "max_position_embeddings": 32, "rms_norm_eps": 1e-6,
                    "use_sliding_window": false, "sliding_window": null, "tie_word_embeddings": true,
                    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}}),
        _ => json!({"model_type": "mistral", "vocab_size": 40, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1,
                    "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 32, "sliding_window": 4096,
                    "rope_scaling": null}),
    };
    v.as_object().cloned().unwrap_or_default()
}

const EXTRA_KEYS: &[&str] = &["rope_scaling", "rope_parameters", "head_dim", "num_key_value_heads", "sliding_window", "use_sliding_window",
    "n_inner", "model_type", "hidden_act", "activation_function", "tie_word_embeddings", "rope_theta", "quantization_config"];

/// One field edit: (key index into the base's keys + EXTRA_KEYS, Some(raw JSON) or None to delete).
fn field_edit() -> impl Strategy<Value = (usize, Option<String>)> {
    let raw = prop_oneof![
        6 => prop::sample::select(HOSTILE_JSON).prop_map(str::to_string),
        2 => any::<i64>().prop_map(|n| n.to_string()),
        2 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| format!("{f:?}")),
        1 => "[a-z_]{0,8}".prop_map(|s| format!("\"{s}\"")),
    ];
    (any::<usize>(), prop::option::weighted(0.9, raw))
}

/// config.json texts: a valid base config with fields replaced by hostile raw JSON, deleted,
/// or (rarely) the text itself cut or spliced.
fn config_text() -> impl Strategy<Value = String> {
    (0usize..4, prop::collection::vec(field_edit(), 0..5), prop::option::weighted(0.1, (any::<usize>(), "[\\x00-\\x7f]{0,3}"))).prop_map(
        |(kind, edits, splice)| {
            let base = base_config(kind);
            let keys: Vec<String> = base.keys().cloned().chain(EXTRA_KEYS.iter().map(|k| k.to_string())).collect();
            let mut fields: Vec<(String, String)> = base.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
            for (i, raw) in edits {
                let key = &keys[i % keys.len()];
                fields.retain(|(k, _)| k != key);
                if let Some(raw) = raw {
                    fields.push((key.clone(), raw));
                }
            }
            let mut text = format!("{{{}}}", fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(","));
            if let Some((at, ins)) = splice {
                let at = at % (text.len() + 1);
                let at = (0..=at).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
                text.insert_str(at, &ins);
                text.truncate(text.len() - (at % 3).min(text.len()));
            }
            text
        },
    )
}

/// What an accepted config promises the rest of the core: positive sizes, whole heads, and
/// derived widths that do not overflow (the model and its cache are sized from them).
fn check_accepted(c: &ModelConfig) -> Result<(), TestCaseError> {
    let sizes = [c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, c.max_position_embeddings];
    prop_assert!(sizes.iter().all(|&n| n > 0), "a zero size was accepted: {c:?}");
    prop_assert!(c.num_heads % c.num_kv_heads == 0, "heads not a multiple of kv heads: {c:?}");
    let q = c.num_heads.checked_mul(c.head_dim);
    let kv = c.num_kv_heads.checked_mul(c.head_dim);
    prop_assert!(q.is_some() && kv.is_some(), "num_heads x head_dim overflows usize: {c:?}");
    prop_assert!(kv.and_then(|kv| kv.checked_mul(2)).and_then(|x| x.checked_add(q.unwrap_or(0))).is_some(), "q + 2 kv overflows: {c:?}");
    prop_assert!(c.norm_eps > 0.0 && c.norm_eps.is_finite());
    Ok(())
}

proptest! {
    #![proptest_config(config(4096, false))]

    /// config.json: any text gives Ok or Error::Config, and an accepted config is coherent.
    #[test]
    fn config_from_hf_json_accepts_or_refuses(text in config_text()) {
        match ModelConfig::from_hf_json(&text) {
            Ok(c) => check_accepted(&c)?,
            Err(e) => prop_assert!(matches!(e, Error::Config(_)), "{text} gave {e:?}, not Error::Config"),
        }
    }
}

// -- tiny random models -----------------------------------------------------------------------

/// A small config (JSON) and the tensors its checkpoint holds.
#[derive(Debug, Clone)]
struct TinyModel {
    config: Value,
    precision: Precision,
    /// values of every tensor: a seed, and whether some are non-finite
    seed: u64,
    non_finite: bool,
}

fn tiny_model() -> impl Strategy<Value = TinyModel> {
    (
        any::<bool>(),
        1usize..=2,
        prop::sample::select(vec![(1usize, 1usize), (2, 1), (2, 2), (4, 2), (4, 1)]),
        prop::sample::select(vec![2usize, 4, 8]),
        1usize..=48,
        1usize..=24,
        prop::sample::select(vec![Precision::F32, Precision::Bf16, Precision::Int8]),
        (any::<bool>(), any::<bool>(), any::<bool>()),
        any::<u64>(),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(gpt2, layers, (heads, kv), head_dim, vocab, ctx, precision, (tie, attn_bias, mlp_bias), seed, non_finite)| {
            let d = heads * head_dim;
            let config = if gpt2 {
                json!({"model_type": "gpt2", "vocab_size": vocab, "n_embd": d, "n_layer": layers, "n_head": heads, "n_positions": ctx})
            } else {
                json!({"model_type": "llama", "vocab_size": vocab, "hidden_size": d, "intermediate_size": 2 * d + 4, "num_hidden_layers": layers,
                       "num_attention_heads": heads, "num_key_value_heads": kv, "max_position_embeddings": ctx, "head_dim": head_dim,
                       "tie_word_embeddings": tie, "attention_bias": attn_bias, "mlp_bias": mlp_bias})
            };
            TinyModel { config, precision, seed, non_finite }
        })
}

/// (name, shape) of every tensor of a checkpoint with config `c`.
fn checkpoint_tensors(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (d, f, v, q, kv) = (c.hidden_size, c.intermediate_size, c.vocab_size, c.q_dim(), c.kv_dim());
    let mut t: Vec<(String, Vec<usize>)> = Vec::new();
    match c.arch {
        Arch::Llama => {
            t.push(("model.embed_tokens.weight".into(), vec![v, d]));
            if !c.tie_word_embeddings {
                t.push(("lm_head.weight".into(), vec![v, d]));
            }
            t.push(("model.norm.weight".into(), vec![d]));
            for i in 0..c.num_layers {
                let p = format!("model.layers.{i}");
                t.push((format!("{p}.input_layernorm.weight"), vec![d]));
                t.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
                for (n, o) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                    t.push((format!("{p}.self_attn.{n}.weight"), vec![o, d]));
                    if c.qkv_bias {
                        t.push((format!("{p}.self_attn.{n}.bias"), vec![o]));
                    }
                }
                t.push((format!("{p}.self_attn.o_proj.weight"), vec![d, q]));
                if c.o_bias {
                    t.push((format!("{p}.self_attn.o_proj.bias"), vec![d]));
                }
                for (n, s) in [("gate_proj", vec![f, d]), ("up_proj", vec![f, d]), ("down_proj", vec![d, f])] {
                    t.push((format!("{p}.mlp.{n}.weight"), s.clone()));
                    if c.mlp_bias {
                        t.push((format!("{p}.mlp.{n}.bias"), vec![s[0]]));
                    }
                }
            }
        }
        Arch::Gpt2 => {
            t.push(("transformer.wte.weight".into(), vec![v, d]));
            t.push(("transformer.wpe.weight".into(), vec![c.max_position_embeddings, d]));
            t.push(("transformer.ln_f.weight".into(), vec![d]));
            t.push(("transformer.ln_f.bias".into(), vec![d]));
            for i in 0..c.num_layers {
                let p = format!("transformer.h.{i}");
                for n in ["ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "attn.c_proj.bias", "mlp.c_proj.bias"] {
                    t.push((format!("{p}.{n}"), vec![d]));
                }
                t.push((format!("{p}.attn.c_attn.weight"), vec![d, 3 * d]));
                t.push((format!("{p}.attn.c_attn.bias"), vec![3 * d]));
                t.push((format!("{p}.attn.c_proj.weight"), vec![d, d]));
                t.push((format!("{p}.mlp.c_fc.weight"), vec![d, c.intermediate_size]));
                t.push((format!("{p}.mlp.c_fc.bias"), vec![c.intermediate_size]));
                t.push((format!("{p}.mlp.c_proj.weight"), vec![c.intermediate_size, d]));
            }
        }
    }
    t
}

fn values(n: usize, seed: u64, non_finite: bool) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let v = (rng.uniform() as f32 - 0.5) * 0.2;
            if non_finite && i % 97 == 5 {
                [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][i % 3]
            } else {
                v
            }
        })
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The tiny model, or None when it is refused because of its non-finite weights (INT8 cannot
/// quantize them); a finite one must build.
fn build_tiny(m: &TinyModel) -> Result<Option<Model>, TestCaseError> {
    match build(m) {
        Ok(model) => Ok(Some(model)),
        Err(_) if m.non_finite => Ok(None),
        Err(e) => Err(TestCaseError::fail(format!("the tiny model did not build: {e}"))),
    }
}

fn build(m: &TinyModel) -> Result<Model, Error> {
    let cfg = ModelConfig::from_hf_json(&m.config.to_string())?;
    let mut store = TensorStore::new(LoadPlan::new(cfg.arch, m.precision, 32)?);
    for (i, (name, shape)) in checkpoint_tensors(&cfg).iter().enumerate() {
        let v = values(shape.iter().product(), m.seed.wrapping_add(i as u64), m.non_finite);
        store.insert_bytes(name, DType::F32, shape, &f32_bytes(&v))?;
    }
    Model::from_tensors(cfg, &mut store, 1)
}

// -- sessions -----------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    Forward(Vec<u32>, bool),
    Embeddings(usize, bool, bool),
    Sample(Knobs, usize, Vec<u32>),
    Reset,
    Seed(u64),
}

fn token() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 0u32..48, 1 => Just(u32::MAX), 1 => any::<u32>()]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (prop::collection::vec(token(), 0..30), any::<bool>()).prop_map(|(t, a)| Step::Forward(t, a)),
        2 => (0usize..40, any::<bool>(), prop::bool::weighted(0.2)).prop_map(|(n, a, nan)| Step::Embeddings(n, a, nan)),
        4 => (knobs(), prop_oneof![Just(0usize), any::<usize>(), 0usize..40], prop::collection::vec(token(), 0..4))
            .prop_map(|(k, g, s)| Step::Sample(k, g, s)),
        1 => Just(Step::Reset),
        1 => any::<u64>().prop_map(Step::Seed),
    ]
}

fn context() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![3 => Just(None), 3 => (1usize..=30).prop_map(Some), 1 => Just(Some(0)), 1 => Just(Some(usize::MAX)),
                1 => any::<usize>().prop_map(Some)]
}

proptest! {
    #![proptest_config(config(512, true))]

    /// A session fed arbitrary tokens, embeddings, knobs and context lengths: every call is Ok or
    /// an Error, a refused call changes nothing, and the sizes of what comes back add up.
    #[test]
    fn session_survives_any_input(m in tiny_model(), ctx in context(), kv in prop::sample::select(KvDtype::ALL.to_vec()),
                                  steps in prop::collection::vec(step(), 1..12)) {
        limit_address_space();
        let Some(model) = build_tiny(&m)? else { return Ok(()) };
        let model = Arc::new(model);
        let (vocab, d, max) = (model.config.vocab_size, model.config.hidden_size, model.config.max_position_embeddings);
        let mut s = match Session::new(model.clone(), ctx, kv) {
            Ok(s) => s,
            Err(e) => {
                prop_assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
                prop_assert!(ctx.is_some_and(|c| c == 0 || c > max));
                return Ok(());
            }
        };
        prop_assert_eq!((s.context_length(), s.kv_dtype()), (ctx.unwrap_or(max), kv));
        for step in steps {
            let before = (s.position(), s.tokens().to_vec(), s.prefix_len());
            match step {
                Step::Forward(tokens, all) => match s.forward(&tokens, all) {
                    Ok(out) => {
                        prop_assert!(!tokens.is_empty() && tokens.iter().all(|&t| (t as usize) < vocab));
                        prop_assert_eq!(s.position(), before.0 + tokens.len());
                        prop_assert_eq!(out.map(|o| o.len()), all.then_some(tokens.len() * vocab));
                        prop_assert_eq!(s.logits().map(|l| l.len()).ok(), Some(vocab));
                    }
                    Err(_) => prop_assert_eq!((s.position(), s.tokens().to_vec(), s.prefix_len()), before),
                },
                Step::Embeddings(n, all, nan) => {
                    let mut e = values(n * d + usize::from(n % 5 == 4), n as u64, false);
                    if nan && !e.is_empty() {
                        e[0] = f32::NAN;
                    }
                    match s.forward_embeddings(&e, all) {
                        Ok(out) => {
                            prop_assert!(before.0 == 0 && !nan && n > 0 && e.len() == n * d);
                            prop_assert_eq!((s.position(), s.prefix_len()), (n, n));
                            prop_assert_eq!(out.map(|o| o.len()), all.then_some(n * vocab));
                        }
                        Err(_) => prop_assert_eq!((s.position(), s.tokens().to_vec(), s.prefix_len()), before),
                    }
                }
                Step::Sample(k, gen_start, suppress) => {
                    let params = k.params();
                    if let Ok(t) = s.sample(&params, gen_start, &suppress) {
                        prop_assert!((t as usize) < vocab, "sampled {t} with vocab {vocab}");
                        prop_assert!(params.validate(vocab).is_ok(), "sampled with invalid knobs {params:?}");
                    }
                    prop_assert_eq!(s.position(), before.0);
                }
                Step::Reset => {
                    s.reset();
                    prop_assert_eq!(s.position(), 0);
                }
                Step::Seed(seed) => s.seed(seed),
            }
            prop_assert!(s.position() <= s.context_length());
        }
    }
}

// -- huge sizes: validation before allocation ---------------------------------------------------

const SIZE_KEYS: &[&str] = &["num_hidden_layers", "max_position_embeddings", "num_attention_heads", "num_key_value_heads", "hidden_size",
    "intermediate_size", "vocab_size", "head_dim", "n_layer", "n_positions", "n_head", "n_embd", "n_inner"];

proptest! {
    #![proptest_config(config(256, true))]

    /// A config declaring a huge size (2^31 layers, 2^40 positions, ...) next to the tensors of
    /// a tiny model: building the model, a session and one step must each be Ok or an Error,
    /// never an abort on an allocation nobody checked.
    #[test]
    fn huge_sizes_are_refused_before_allocating(
        base in tiny_model(),
        key in prop::sample::select(SIZE_KEYS),
        huge in prop::sample::select(vec![1u64 << 20, 1 << 24, 100_000_000, (1 << 31) - 1, 1 << 31, 1 << 32, 1 << 40, 1 << 48,
                                          1 << 62, (1 << 63) - 1, 1 << 63, u64::MAX]),
    ) {
        limit_address_space();
        let Ok(cfg) = ModelConfig::from_hf_json(&base.config.to_string()) else { return Err(TestCaseError::fail("base config refused")) };
        let tensors = checkpoint_tensors(&cfg);
        let mut edited = base.config.clone();
        edited[key] = json!(huge);
        let Ok(huge_cfg) = ModelConfig::from_hf_json(&edited.to_string()) else { return Ok(()) };
        let plan = LoadPlan::new(huge_cfg.arch, base.precision, 32).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut store = TensorStore::new(plan);
        for (i, (name, shape)) in tensors.iter().enumerate() {
            let v = values(shape.iter().product(), i as u64, false);
            store.insert_bytes(name, DType::F32, shape, &f32_bytes(&v)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        let Ok(model) = Model::from_tensors(huge_cfg, &mut store, 1) else { return Ok(()) };
        let model = Arc::new(model);
        let Ok(mut s) = Session::new(model, None, KvDtype::F32) else { return Ok(()) };
        let _ = s.forward(&[0], true);
    }
}

// -- safetensors files --------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum StEdit {
    /// header[tensor][field] = raw JSON
    Field(usize, &'static str, String),
    DropField(usize, &'static str),
    Rename(usize, String),
    Drop(usize),
    Metadata(String),
    HeaderLen(u64),
    Byte(usize, u8),
    Truncate(usize),
    Append(Vec<u8>),
}

const ST_RAW: &[&str] = &["\"F32\"", "\"F16\"", "\"BF16\"", "\"F64\"", "\"I8\"", "\"U8\"", "\"I64\"", "\"BOOL\"", "\"F8_E4M3\"", "\"X\"", "[]", "[0]",
    "[4]", "[2,4]", "[4,2]", "[8,1]", "[1,8]", "[2147483648,2147483648]", "[4294967296,4294967296]", "[18446744073709551615]", "[-1,4]",
    "[0,32]", "[0,31]", "[0,33]", "[32,0]", "[0,18446744073709551615]", "[9223372036854775808,9223372036854775840]", "[0]", "[0,32,64]",
    "null", "{}", "\"0\"", "1e400", "[4.0,2.0]", "[\"4\"]"];

fn st_edit() -> impl Strategy<Value = StEdit> {
    let field = prop::sample::select(vec!["dtype", "shape", "data_offsets"]);
    prop_oneof![
        6 => (any::<usize>(), field.clone(), prop::sample::select(ST_RAW).prop_map(str::to_string)).prop_map(|(t, f, v)| StEdit::Field(t, f, v)),
        1 => (any::<usize>(), field).prop_map(|(t, f)| StEdit::DropField(t, f)),
        1 => (any::<usize>(), prop::sample::select(vec!["model.norm.weight", "lm_head.weight", "", "__metadata__", "x"]).prop_map(str::to_string))
            .prop_map(|(t, n)| StEdit::Rename(t, n)),
        1 => any::<usize>().prop_map(StEdit::Drop),
        1 => prop::sample::select(vec!["{\"a\":1}", "[]", "\"x\"", "{\"format\":\"pt\"}"]).prop_map(|s| StEdit::Metadata(s.to_string())),
        2 => prop_oneof![Just(0u64), Just(7), Just(u64::MAX), Just(1 << 63), Just(1 << 32), 0u64..2048].prop_map(StEdit::HeaderLen),
        3 => (any::<usize>(), any::<u8>()).prop_map(|(o, b)| StEdit::Byte(o, b)),
        2 => any::<usize>().prop_map(StEdit::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..16).prop_map(StEdit::Append),
    ]
}

/// A safetensors file holding a tiny model's tensors, edited.
fn safetensors_file(m: &TinyModel, edits: &[StEdit]) -> Vec<u8> {
    let Ok(cfg) = ModelConfig::from_hf_json(&m.config.to_string()) else { return Vec::new() };
    let mut names = Vec::new();
    let mut fields: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut data = Vec::new();
    for (i, (name, shape)) in checkpoint_tensors(&cfg).into_iter().enumerate() {
        let bytes = f32_bytes(&values(shape.iter().product(), i as u64, m.non_finite));
        let entry = vec![
            ("dtype".to_string(), "\"F32\"".to_string()),
            ("shape".to_string(), format!("{shape:?}").replace(' ', "")),
            ("data_offsets".to_string(), format!("[{},{}]", data.len(), data.len() + bytes.len())),
        ];
        data.extend_from_slice(&bytes);
        names.push(name.clone());
        fields.push((name, entry));
    }
    let mut metadata = None;
    let mut header_len = None;
    let mut byte_edits = Vec::new();
    for e in edits {
        let n = fields.len().max(1);
        match e {
            StEdit::Field(t, f, v) => {
                if let Some((_, entry)) = fields.get_mut(t % n) {
                    entry.retain(|(k, _)| k != f);
                    entry.push((f.to_string(), v.clone()));
                }
            }
            StEdit::DropField(t, f) => {
                if let Some((_, entry)) = fields.get_mut(t % n) {
                    entry.retain(|(k, _)| k != f);
                }
            }
            StEdit::Rename(t, to) => {
                if let Some((name, _)) = fields.get_mut(t % n) {
                    *name = to.clone();
                }
            }
            StEdit::Drop(t) => {
                if !fields.is_empty() {
                    fields.remove(t % n);
                }
            }
            StEdit::Metadata(s) => metadata = Some(s.clone()),
            StEdit::HeaderLen(l) => header_len = Some(*l),
            other => byte_edits.push(other.clone()),
        }
    }
    let mut parts: Vec<String> = fields
        .iter()
        .map(|(name, entry)| format!("{:?}:{{{}}}", name, entry.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(",")))
        .collect();
    if let Some(m) = metadata {
        parts.push(format!("\"__metadata__\":{m}"));
    }
    let mut header = format!("{{{}}}", parts.join(",")).into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut file = header_len.unwrap_or(header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&header);
    file.extend_from_slice(&data);
    for e in byte_edits {
        match e {
            StEdit::Byte(o, b) if !file.is_empty() => {
                let i = o % file.len();
                file[i] = b;
            }
            StEdit::Truncate(o) => file.truncate(o % (file.len() + 1)),
            StEdit::Append(bytes) => file.extend_from_slice(&bytes),
            _ => {}
        }
    }
    file
}

fn temp_path(ext: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!("ferrolm-prop-{}-{}.{ext}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

proptest! {
    #![proptest_config(config(1024, true))]

    /// A safetensors file with a corrupted header, wrong dtypes/shapes/offsets, flipped bytes or
    /// cut short: reading it and building the model from it are Ok or an Error.
    #[test]
    fn safetensors_files_are_read_or_refused(m in tiny_model(), edits in prop::collection::vec(st_edit(), 0..4)) {
        limit_address_space();
        let path = temp_path("safetensors");
        std::fs::write(&path, safetensors_file(&m, &edits)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let cfg = ModelConfig::from_hf_json(&m.config.to_string()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut store = TensorStore::new(LoadPlan::new(cfg.arch, m.precision, 32).map_err(|e| TestCaseError::fail(e.to_string()))?);
        let read = store.add_safetensors(&path);
        let _ = std::fs::remove_file(&path);
        if read.is_ok() {
            if let Ok(model) = Model::from_tensors(cfg, &mut store, 1) {
                let mut s = Session::new(Arc::new(model), None, KvDtype::F32).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let _ = s.forward(&[0], true);
            }
        }
    }
}

// -- raw tensor bytes -----------------------------------------------------------------------------

const TENSOR_NAMES: &[&str] = &["model.embed_tokens.weight", "lm_head.weight", "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.mlp.down_proj.weight", "model.norm.weight", "model.layers.0.self_attn.q_proj.bias", "x",
    "transformer.h.0.attn.c_attn.weight", "transformer.wpe.weight", "transformer.wte.weight"];

fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![8 => 0usize..80, 1 => Just(1 << 31), 1 => Just(1 << 32), 1 => Just(usize::MAX), 1 => Just(usize::MAX / 2 + 1),
                1 => any::<usize>()]
}

proptest! {
    #![proptest_config(config(8192, true))]

    /// insert_bytes / insert_blocks with any shape and bytes, then taking the tensor back with any
    /// expected shape: Ok or an Error.
    #[test]
    fn raw_tensor_bytes_are_stored_or_refused(
        arch in prop::sample::select(vec![Arch::Llama, Arch::Gpt2]),
        precision in prop::sample::select(vec![Precision::F32, Precision::Bf16, Precision::Int8, Precision::Int4]),
        group in prop::sample::select(vec![32usize, 64, 128]),
        name in prop::sample::select(TENSOR_NAMES),
        dtype in prop::sample::select(vec![DType::F32, DType::F16, DType::BF16, DType::F64, DType::I8, DType::U8]),
        shape in prop::collection::vec(dim(), 0..4),
        len in prop_oneof![0usize..4096, Just(0usize)],
        blocks in prop::option::of(prop::sample::select(vec![GgufBlock::Q8_0, GgufBlock::Q4_0, GgufBlock::Q4_1])),
        take in (dim(), dim()),
    ) {
        limit_address_space();
        let plan = LoadPlan::new(arch, precision, group).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut store = TensorStore::new(plan);
        let bytes: Vec<u8> = (0..len).map(|i| (i * 131 % 251) as u8).collect();
        let stored = match blocks {
            Some(kind) => store.insert_blocks(name, kind, &shape, &bytes),
            None => store.insert_bytes(name, dtype, &shape, &bytes),
        };
        if stored.is_ok() {
            prop_assert!(store.contains(name));
            let _ = store.take_matrix(name, take.0, take.1);
            let _ = store.take(name, &shape);
        } else {
            prop_assert!(!store.contains(name), "a refused tensor was stored");
        }
    }
}

// -- sampling -----------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Knobs {
    do_sample: bool,
    floats: [f32; 6],
    top_k: usize,
    logit_bias: Vec<(u32, f32)>,
}

impl Knobs {
    fn params(&self) -> SamplingParams {
        let [temperature, top_p, min_p, repetition_penalty, frequency_penalty, presence_penalty] = self.floats;
        SamplingParams {
            do_sample: self.do_sample,
            temperature,
            top_k: self.top_k,
            top_p,
            min_p,
            repetition_penalty,
            frequency_penalty,
            presence_penalty,
            logit_bias: self.logit_bias.clone(),
        }
    }
}

fn knob_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => 0.0f32..2.0,
        2 => prop::sample::select(vec![0.0f32, -0.0, 1.0, -1.0, 1e-45, 1e-30, 3.4e38, f32::MAX, f32::MIN_POSITIVE, f32::NAN,
                                       f32::INFINITY, f32::NEG_INFINITY, 0.999_999_9, 1.000_000_1]),
        1 => any::<f32>(),
    ]
}

fn knobs() -> impl Strategy<Value = Knobs> {
    (
        any::<bool>(),
        prop::array::uniform6(knob_f32()),
        prop_oneof![4 => 0usize..60, 1 => Just(usize::MAX), 1 => any::<usize>()],
        prop::collection::vec((token(), knob_f32()), 0..4),
    )
        .prop_map(|(do_sample, floats, top_k, logit_bias)| Knobs { do_sample, floats, top_k, logit_bias })
}

fn logit() -> impl Strategy<Value = f32> {
    prop_oneof![8 => -20.0f32..20.0, 1 => prop::sample::select(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN, 0.0]),
                1 => any::<f32>()]
}

proptest! {
    #![proptest_config(config(8192, false))]

    /// Sampling knobs and logits of any value: validate, process_logits and sample are Ok or an
    /// Error; a sampled token is in the vocabulary and never a suppressed one.
    #[test]
    fn sampling_is_total(
        k in knobs(),
        logits in prop::collection::vec(logit(), 1..64),
        history in prop::collection::vec(token(), 0..16),
        generated in prop::collection::vec(token(), 0..8),
        suppress in prop::collection::vec(token(), 0..4),
        seed in any::<u64>(),
    ) {
        let p = k.params();
        let vocab = logits.len();
        let valid = p.validate(vocab);
        let mut processed = logits.clone();
        sampling::process_logits(&mut processed, &p, &history, &generated, &suppress);
        prop_assert_eq!(processed.len(), vocab);
        if valid.is_ok() {
            let mut work = logits.clone();
            if let Ok(t) = sampling::sample(&mut work, &p, &history, &generated, &suppress, &mut Rng::new(seed)) {
                prop_assert!((t as usize) < vocab, "token {t} of {vocab}");
                prop_assert!(!suppress.contains(&t), "sampled suppressed token {t} from {logits:?} with {p:?}");
            }
        }
    }
}

// -- adapter variants --------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512, true))]

    /// Merged and unmerged LoRA deltas of any rank and length, on any weight name: Model::variant
    /// is Ok or an Error, and an accepted variant runs.
    #[test]
    fn adapter_variants_are_built_or_refused(
        m in tiny_model(),
        name_pick in any::<usize>(),
        rank in prop_oneof![4 => 0usize..6, 1 => Just(usize::MAX), 1 => Just(1usize << 40), 1 => any::<usize>()],
        lens in (0usize..2048, 0usize..2048, 0usize..4096),
        scale in knob_f32(),
        merged in any::<bool>(),
    ) {
        limit_address_space();
        let Some(model) = build_tiny(&m)? else { return Ok(()) };
        let names: Vec<String> = model.export_entries().into_iter().map(|e| e.name).chain(["nope.weight".to_string()]).collect();
        let name = names[name_pick % names.len()].clone();
        let (a, b) = (values(lens.0, 1, false), values(lens.1, 2, false));
        let delta = WeightDelta { name: name.clone(), rank, a, b, scale };
        let result = if merged {
            model.variant(vec![MergedWeight { name, values: values(lens.2, 3, false), lora: Some(delta) }], vec![])
        } else {
            model.variant(vec![], vec![delta])
        };
        if let Ok(v) = result {
            let mut s = Session::new(Arc::new(v), None, KvDtype::F32).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let _ = s.forward(&[0, 1 % m.config["vocab_size"].as_u64().unwrap_or(1) as u32], true);
        }
    }
}
