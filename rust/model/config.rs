//! Model hyper-parameters, read from a Hugging Face `config.json`.

use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// LLaMA family: LLaMA, Mistral-style GQA, SmolLM, Qwen2 (q/k/v biases).
    Llama,
    /// GPT-2: LayerNorm, learned positions, tanh-GELU, Conv1D layout, tied lm_head.
    Gpt2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    /// The `model_type` field as written in config.json.
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f32,
    pub norm_eps: f32,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections (Qwen2, LLaMA `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the attention output projection (LLaMA `attention_bias`).
    pub o_bias: bool,
    /// Biases on gate/up/down (LLaMA `mlp_bias`).
    pub mlp_bias: bool,
}

/// Bounds on config sizes, checked before anything is allocated from them. Each is far above
/// any released checkpoint of the supported architectures (the largest have ~128 layers,
/// hidden 16384–25600, vocabularies of ~256k and contexts of ~10M) and keeps every derived
/// size (q_dim, KV rows, per-layer buffers) far from overflowing.
pub mod limits {
    pub const LAYERS: usize = 1024;
    pub const HIDDEN: usize = 1 << 16;
    pub const INTERMEDIATE: usize = 1 << 18;
    pub const HEADS: usize = 1024;
    pub const HEAD_DIM: usize = 1024;
    pub const VOCAB: usize = 1 << 24;
    pub const POSITIONS: usize = 1 << 24;
}

fn get_usize(v: &Value, key: &str) -> Result<Option<usize>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| Error::Config(format!("'{key}' must be a non-negative integer, got {x}"))),
    }
}

/// `key` as a size in [1, max] (None when absent).
fn get_size(v: &Value, key: &str, max: usize) -> Result<Option<usize>> {
    match get_usize(v, key)? {
        None => Ok(None),
        Some(0) => Err(Error::Config(format!("'{key}' must be positive, got 0"))),
        Some(n) if n > max => Err(Error::Config(format!("'{key}' is {n}; ferrolm supports at most {max}"))),
        Some(n) => Ok(Some(n)),
    }
}

/// A required size in [1, max].
fn size(v: &Value, key: &str, max: usize) -> Result<usize> {
    get_size(v, key, max)?.ok_or_else(|| Error::Config(format!("config.json lacks '{key}'")))
}

fn get_f32(v: &Value, key: &str) -> Result<Option<f32>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(|n| Some(n as f32))
            .ok_or_else(|| Error::Config(format!("'{key}' must be a number, got {x}"))),
    }
}

fn get_bool(v: &Value, key: &str, default: bool) -> Result<bool> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x.as_bool().ok_or_else(|| Error::Config(format!("'{key}' must be true or false, got {x}"))),
    }
}

fn get_str<'a>(v: &'a Value, key: &str, default: &'a str) -> Result<&'a str> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x.as_str().ok_or_else(|| Error::Config(format!("'{key}' must be a string, got {x}"))),
    }
}

impl ModelConfig {
    /// Parses the text of a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::Config(format!("config.json is not valid JSON: {e}")))?;
        if !v.is_object() {
            return Err(Error::Config("config.json must hold a JSON object".into()));
        }
        let model_type = get_str(&v, "model_type", "")?.to_string();
        let cfg = match model_type.as_str() {
            "llama" | "mistral" | "qwen2" => Self::llama_from(&v, &model_type)?,
            "gpt2" => Self::gpt2_from(&v)?,
            "" => return Err(Error::Config("config.json has no 'model_type'".into())),
            other => {
                return Err(Error::Config(format!(
                    "unsupported architecture '{other}' (supported: llama, mistral, qwen2, gpt2)"
                )))
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn llama_from(v: &Value, model_type: &str) -> Result<Self> {
        let hidden_size = size(v, "hidden_size", limits::HIDDEN)?;
        let num_heads = size(v, "num_attention_heads", limits::HEADS)?;
        let num_kv_heads = get_size(v, "num_key_value_heads", limits::HEADS)?.unwrap_or(num_heads);
        let head_dim = get_size(v, "head_dim", limits::HEAD_DIM)?.unwrap_or(hidden_size / num_heads);
        // RoPE settings: top-level `rope_theta` / `rope_scaling` (most checkpoints), or the
        // `rope_parameters` object newer transformers versions write.
        let rope_params = v.get("rope_parameters").filter(|p| p.is_object());
        if let Some(p) = v.get("rope_parameters").filter(|p| !p.is_null() && !p.is_object()) {
            return Err(Error::Config(format!("'rope_parameters' must be an object, got {p}")));
        }
        for scaling in [v.get("rope_scaling"), rope_params].into_iter().flatten() {
            if !scaling.is_null() {
                if !scaling.is_object() {
                    return Err(Error::Config(format!("'rope_scaling' must be an object or null, got {scaling}")));
                }
                let kind = match scaling.get("rope_type").filter(|t| !t.is_null()) {
                    Some(_) => get_str(scaling, "rope_type", "default")?,
                    None => get_str(scaling, "type", "default")?,
                };
                if kind != "default" {
                    return Err(Error::Config(format!("rope scaling of type '{kind}' is not supported")));
                }
            }
        }
        let rope_theta = match get_f32(v, "rope_theta")? {
            Some(t) => t,
            None => rope_params.map(|p| get_f32(p, "rope_theta")).transpose()?.flatten().unwrap_or(10000.0),
        };
        if model_type == "mistral" || model_type == "qwen2" {
            let sliding = get_bool(v, "use_sliding_window", model_type == "mistral")?;
            let window = get_usize(v, "sliding_window")?;
            let max_pos = get_size(v, "max_position_embeddings", limits::POSITIONS)?.unwrap_or(0);
            if sliding && window.is_some_and(|w| w < max_pos) {
                return Err(Error::Config("sliding-window attention is not supported".into()));
            }
        }
        let hidden_act = get_str(v, "hidden_act", "silu")?;
        if hidden_act != "silu" {
            return Err(Error::Config(format!("hidden_act '{hidden_act}' is not supported (expected silu)")));
        }
        let attention_bias = get_bool(v, "attention_bias", false)?;
        Ok(Self {
            arch: Arch::Llama,
            model_type: model_type.to_string(),
            vocab_size: size(v, "vocab_size", limits::VOCAB)?,
            hidden_size,
            intermediate_size: size(v, "intermediate_size", limits::INTERMEDIATE)?,
            num_layers: size(v, "num_hidden_layers", limits::LAYERS)?,
            num_heads,
            num_kv_heads,
            head_dim,
            max_position_embeddings: size(v, "max_position_embeddings", limits::POSITIONS)?,
            rope_theta,
            norm_eps: get_f32(v, "rms_norm_eps")?.unwrap_or(1e-6),
            tie_word_embeddings: get_bool(v, "tie_word_embeddings", false)?,
            qkv_bias: model_type == "qwen2" || attention_bias,
            o_bias: attention_bias,
            mlp_bias: get_bool(v, "mlp_bias", false)?,
        })
    }

    fn gpt2_from(v: &Value) -> Result<Self> {
        let hidden_size = size(v, "n_embd", limits::HIDDEN)?;
        let num_heads = size(v, "n_head", limits::HEADS)?;
        let act = get_str(v, "activation_function", "gelu_new")?;
        if !matches!(act, "gelu_new" | "gelu_pytorch_tanh") {
            return Err(Error::Config(format!("activation_function '{act}' is not supported (expected gelu_new)")));
        }
        for (key, default) in [("scale_attn_by_inverse_layer_idx", false), ("reorder_and_upcast_attn", false)] {
            if get_bool(v, key, default)? {
                return Err(Error::Config(format!("GPT-2 option '{key}' is not supported")));
            }
        }
        if !get_bool(v, "scale_attn_weights", true)? {
            return Err(Error::Config("GPT-2 option scale_attn_weights=false is not supported".into()));
        }
        if !get_bool(v, "tie_word_embeddings", true)? {
            return Err(Error::Config("GPT-2 with an untied lm_head is not supported".into()));
        }
        Ok(Self {
            arch: Arch::Gpt2,
            model_type: "gpt2".into(),
            vocab_size: size(v, "vocab_size", limits::VOCAB)?,
            hidden_size,
            // 4 · n_embd is within limits::INTERMEDIATE for every n_embd within limits::HIDDEN
            intermediate_size: get_size(v, "n_inner", limits::INTERMEDIATE)?.unwrap_or(4 * hidden_size),
            num_layers: size(v, "n_layer", limits::LAYERS)?,
            num_heads,
            num_kv_heads: num_heads,
            head_dim: hidden_size / num_heads,
            max_position_embeddings: size(v, "n_positions", limits::POSITIONS)?,
            rope_theta: 0.0,
            norm_eps: get_f32(v, "layer_norm_epsilon")?.unwrap_or(1e-5),
            tie_word_embeddings: true,
            qkv_bias: true,
            o_bias: true,
            mlp_bias: true,
        })
    }

    fn validate(&self) -> Result<()> {
        if self.num_kv_heads == 0 || self.num_heads % self.num_kv_heads != 0 {
            return Err(Error::Config(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            )));
        }
        if self.head_dim == 0 || self.head_dim > limits::HEAD_DIM || (self.arch == Arch::Llama && self.head_dim % 2 != 0) {
            return Err(Error::Config(format!("head_dim {} must be positive and even", self.head_dim)));
        }
        if self.arch == Arch::Gpt2 && self.hidden_size % self.num_heads != 0 {
            return Err(Error::Config("n_embd must be a multiple of n_head".into()));
        }
        if self.q_dim() > limits::HIDDEN * 4 {
            return Err(Error::Config(format!(
                "num_attention_heads · head_dim = {} · {} is larger than ferrolm supports ({})",
                self.num_heads,
                self.head_dim,
                limits::HIDDEN * 4
            )));
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return Err(Error::Config("the norm epsilon must be a positive number".into()));
        }
        if self.arch == Arch::Llama && !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(Error::Config("rope_theta must be a positive number".into()));
        }
        Ok(())
    }

    /// Width of the q projection output: num_heads · head_dim.
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of each of the k and v projection outputs: num_kv_heads · head_dim.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_llama_with_gqa() {
        let c = ModelConfig::from_hf_json(
            r#"{"model_type":"llama","vocab_size":100,"hidden_size":64,"intermediate_size":128,
                "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
                "max_position_embeddings":64,"rope_theta":500000.0,"rms_norm_eps":1e-5,
                "tie_word_embeddings":true}"#,
        )
        .unwrap();
        assert_eq!(c.arch, Arch::Llama);
        assert_eq!((c.head_dim, c.q_dim(), c.kv_dim()), (16, 64, 32));
        assert!(c.tie_word_embeddings && !c.qkv_bias);
        assert_eq!(c.rope_theta, 500000.0);
    }

    #[test]
    fn qwen2_has_qkv_bias_and_gpt2_defaults() {
        let q = ModelConfig::from_hf_json(
            r#"{"model_type":"qwen2","vocab_size":10,"hidden_size":8,"intermediate_size":8,
                "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,
                "max_position_embeddings":16,"use_sliding_window":false,"sliding_window":4}"#,
        )
        .unwrap();
        assert!(q.qkv_bias && !q.o_bias);
        assert_eq!(q.rope_theta, 10000.0);
        let r = ModelConfig::from_hf_json(
            r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,
                "num_attention_heads":2,"max_position_embeddings":16,"rope_parameters":{"rope_theta":500000.0,"rope_type":"default"}}"#,
        )
        .unwrap();
        assert_eq!(r.rope_theta, 500000.0);
        let g = ModelConfig::from_hf_json(r#"{"model_type":"gpt2","vocab_size":10,"n_embd":8,"n_layer":1,"n_head":2,"n_positions":16}"#).unwrap();
        assert_eq!((g.arch, g.intermediate_size, g.head_dim), (Arch::Gpt2, 32, 4));
    }

    #[test]
    fn rejects_bad_configs() {
        let bad = [
            r#"{"model_type":"bert"}"#,
            r#"not json"#,
            r#"[1,2]"#,
            r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":3,"num_key_value_heads":2,"max_position_embeddings":16}"#,
            r#"{"model_type":"llama","hidden_size":8}"#,
            r#"{"model_type":"llama","vocab_size":-1,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":16}"#,
            r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":16,"rope_scaling":{"rope_type":"yarn"}}"#,
        ];
        for text in bad {
            assert!(matches!(ModelConfig::from_hf_json(text), Err(Error::Config(_))), "{text}");
        }
    }

    #[test]
    fn sizes_are_bounded_and_fields_typed_before_anything_is_allocated() {
        let base = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,
                      "num_attention_heads":2,"max_position_embeddings":16}"#;
        let with = |key: &str, value: &str| {
            let mut v: Value = serde_json::from_str(base).unwrap();
            v[key] = serde_json::from_str(value).unwrap();
            ModelConfig::from_hf_json(&v.to_string())
        };
        assert!(with("num_hidden_layers", "1024").is_ok());
        for (key, value) in [
            ("num_hidden_layers", "2147483648"),
            ("num_hidden_layers", "1025"),
            ("max_position_embeddings", "9223372036854775808"),
            ("max_position_embeddings", "16777217"),
            ("vocab_size", "4294967296"),
            ("hidden_size", "1e30"),
            ("intermediate_size", "-3"),
            ("num_attention_heads", "1.5"),
            ("num_key_value_heads", "true"),
            ("head_dim", "1048576"),
            ("hidden_act", "7"),
            ("model_type", "[\"llama\"]"),
            ("rope_scaling", "\"yarn\""),
            ("rope_scaling", "{\"type\": 3}"),
            ("rope_parameters", "12"),
            ("rms_norm_eps", "\"1e-5\""),
            ("tie_word_embeddings", "\"true\""),
        ] {
            match with(key, value) {
                Err(Error::Config(m)) => assert!(m.contains(key) || (key == "rope_scaling" && m.contains("'type'")), "{key}={value}: {m}"),
                other => panic!("{key}={value}: {other:?}"),
            }
        }
        let g = ModelConfig::from_hf_json(r#"{"model_type":"gpt2","vocab_size":10,"n_embd":65537,"n_layer":1,"n_head":1,"n_positions":16}"#);
        assert!(matches!(g, Err(Error::Config(m)) if m.contains("n_embd")));
    }
}
