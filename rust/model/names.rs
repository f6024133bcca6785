//! The tensor-name table of an architecture: one row per checkpoint tensor, saying under which
//! Hugging Face name it is stored, what it is in the model, how it is laid out, when a checkpoint
//! holds it, and its GGUF name. The tables themselves open llama.rs and gpt2.rs; everything that
//! knows tensor names reads them: loading (load.rs; tensors.rs asks [`Table::matrix_layout`]),
//! saving (export.rs), adapters (adapt.rs through the export entries, the Python layer through
//! `Model.checkpoint_layout`), GPT-2's optional name prefix (`checkpoint_names`) and the GGUF
//! reader's name mapping (`tensor_table`).

use super::config::{Arch, ModelConfig};
use super::tensors::MatrixLayout;
use crate::error::{Error, Result};

/// What a checkpoint tensor is in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Token embeddings [vocab, d] (also the lm_head when tied).
    Embed,
    /// Learned positions [n_positions, d] (GPT-2).
    PosEmbed,
    /// lm_head [vocab, d].
    Head,
    /// The norm after the last layer [d].
    FinalNorm,
    /// The norm before attention [d].
    AttnNorm,
    /// The norm before the MLP [d].
    MlpNorm,
    /// q rows [q_dim, d] of the fused qkv [q_dim + 2·kv_dim, d].
    Q,
    /// k rows [kv_dim, d] of the fused qkv.
    K,
    /// v rows [kv_dim, d] of the fused qkv.
    V,
    /// The whole qkv [q_dim + 2·kv_dim, d] in one checkpoint tensor (GPT-2's c_attn).
    Qkv,
    /// Attention output [d, q_dim].
    O,
    /// gate rows [ffn, d] of the fused up matrix [gate; up] (LLaMA's SwiGLU).
    Gate,
    /// up rows [ffn, d]: after the gate when the table has one, else the whole up matrix.
    Up,
    /// MLP output [d, ffn].
    Down,
}

/// Where a tensor's values live in a model: a matrix, norm or embedding, with its layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Embed,
    PosEmbed,
    Head,
    FinalNorm,
    AttnNorm(usize),
    MlpNorm(usize),
    Qkv(usize),
    O(usize),
    Up(usize),
    Down(usize),
}

/// Which tensor of a module: its weight, its bias, or (exported INT8/INT4 only, never in a
/// table) the scales of its weight and (INT4) its minimums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Weight,
    Bias,
    Scale,
    Min,
}

/// How a tensor is stored in a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A matmul weight `[out, in]` (nn.Linear, nn.Embedding), converted to the load precision.
    Linear,
    /// A matmul weight `[in, out]` (GPT-2's Conv1D), transposed on load and back on export.
    Conv1d,
    /// Values kept in FP32 as they are (norms, biases, learned positions).
    Plain,
}

/// When a checkpoint holds a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Always,
    /// With `qkv_bias` in the config.
    QkvBias,
    /// With `o_bias` in the config.
    OBias,
    /// With `mlp_bias` in the config.
    MlpBias,
    /// Unless `tie_word_embeddings`; a tied checkpoint may still hold a copy, read and dropped.
    Untied,
}

/// One checkpoint tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// The checkpoint name; `{i}` stands for the layer index.
    pub name: &'static str,
    pub role: Role,
    pub part: Part,
    pub layout: Layout,
    pub when: When,
    /// The name in GGUF files (llama.cpp's), where the architecture has one.
    pub gguf: Option<&'static str>,
}

/// A row (for the tables at the top of llama.rs and gpt2.rs).
pub(crate) const fn row(name: &'static str, role: Role, part: Part, layout: Layout, when: When, gguf: Option<&'static str>) -> Row {
    Row { name, role, part, layout, when, gguf }
}

/// The tensors of an architecture in load order: `embeddings`, then `layer` for each layer,
/// then `output`. The parts of a fused matrix (q, k, v; gate, up) are stacked in table order.
#[derive(Debug)]
pub struct Table {
    pub arch: Arch,
    /// A prefix some checkpoints leave out of the names that carry it (GPT-2 saved as
    /// GPT2Model: "h.0.ln_1.weight" for "transformer.h.0.ln_1.weight").
    pub optional_prefix: Option<&'static str>,
    pub embeddings: &'static [Row],
    /// Every layer's tensors; names hold `{i}`.
    pub layer: &'static [Row],
    pub output: &'static [Row],
}

const LAYER: &str = "{i}";

/// The table of `arch`.
pub fn table(arch: Arch) -> &'static Table {
    match arch {
        Arch::Llama => &super::llama::TABLE,
        Arch::Gpt2 => &super::gpt2::TABLE,
    }
}

/// Every architecture with a table.
pub const ARCHS: [Arch; 2] = [Arch::Llama, Arch::Gpt2];

/// "llama" | "gpt2", as the Python layer names architectures.
pub fn arch_name(arch: Arch) -> &'static str {
    match arch {
        Arch::Llama => "llama",
        Arch::Gpt2 => "gpt2",
    }
}

pub fn arch_by_name(name: &str) -> Result<Arch> {
    ARCHS
        .into_iter()
        .find(|&a| arch_name(a) == name)
        .ok_or_else(|| Error::InvalidArgument(format!("unknown architecture '{name}' (known: llama, gpt2)")))
}

/// The layer index when `name` is `template` with `{i}` replaced by a decimal number; Some(None)
/// when `template` has no `{i}` and equals `name`.
fn matches(template: &str, name: &str) -> Option<Option<usize>> {
    let Some((before, after)) = template.split_once(LAYER) else {
        return (template == name).then_some(None);
    };
    let digits = name.strip_prefix(before)?.strip_suffix(after)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Some)
}

impl Row {
    /// The checkpoint name of this row in layer `layer` (ignored by global rows).
    pub fn name_at(&self, layer: usize) -> String {
        self.name.replace(LAYER, &layer.to_string())
    }

    /// Whether a checkpoint of config `c` must hold this tensor.
    pub fn required(&self, c: &ModelConfig) -> bool {
        match self.when {
            When::Always => true,
            When::QkvBias => c.qkv_bias,
            When::OBias => c.o_bias,
            When::MlpBias => c.mlp_bias,
            When::Untied => !c.tie_word_embeddings,
        }
    }

    /// The tensor's shape in the model: `[rows, in]` of a matrix (in nn.Linear orientation,
    /// whatever the checkpoint's), `[rows]` of a bias or norm.
    pub fn shape(&self, c: &ModelConfig) -> Vec<usize> {
        let rows = self.role.rows(c);
        match (self.part, self.role.in_features(c)) {
            (Part::Weight, Some(k)) => vec![rows, k],
            _ => vec![rows],
        }
    }
}

impl Role {
    /// Rows (outputs) of this tensor: of its part, for a part of a fused matrix.
    pub fn rows(self, c: &ModelConfig) -> usize {
        let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
        match self {
            Role::Embed | Role::Head => c.vocab_size,
            Role::PosEmbed => c.max_position_embeddings,
            Role::FinalNorm | Role::AttnNorm | Role::MlpNorm | Role::O | Role::Down => c.hidden_size,
            Role::Q => q_dim,
            Role::K | Role::V => kv_dim,
            Role::Qkv => q_dim + 2 * kv_dim,
            Role::Gate | Role::Up => c.intermediate_size,
        }
    }

    /// Inputs of a matrix (the second dimension of embeddings); None for a norm.
    pub fn in_features(self, c: &ModelConfig) -> Option<usize> {
        match self {
            Role::FinalNorm | Role::AttnNorm | Role::MlpNorm => None,
            Role::O => Some(c.q_dim()),
            Role::Down => Some(c.intermediate_size),
            _ => Some(c.hidden_size),
        }
    }

    /// The model slot this tensor belongs to, in layer `layer` (ignored by global roles).
    pub(crate) fn slot(self, layer: usize) -> Slot {
        match self {
            Role::Embed => Slot::Embed,
            Role::PosEmbed => Slot::PosEmbed,
            Role::Head => Slot::Head,
            Role::FinalNorm => Slot::FinalNorm,
            Role::AttnNorm => Slot::AttnNorm(layer),
            Role::MlpNorm => Slot::MlpNorm(layer),
            Role::Q | Role::K | Role::V | Role::Qkv => Slot::Qkv(layer),
            Role::O => Slot::O(layer),
            Role::Gate | Role::Up => Slot::Up(layer),
            Role::Down => Slot::Down(layer),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Embed => "embed",
            Role::PosEmbed => "pos_embed",
            Role::Head => "head",
            Role::FinalNorm => "final_norm",
            Role::AttnNorm => "attn_norm",
            Role::MlpNorm => "mlp_norm",
            Role::Q => "q",
            Role::K => "k",
            Role::V => "v",
            Role::Qkv => "qkv",
            Role::O => "o",
            Role::Gate => "gate",
            Role::Up => "up",
            Role::Down => "down",
        }
    }
}

impl Part {
    pub fn name(self) -> &'static str {
        match self {
            Part::Weight => "weight",
            Part::Bias => "bias",
            Part::Scale => "scale",
            Part::Min => "min",
        }
    }
}

impl Layout {
    /// The layout of a matmul weight; None for plain values.
    pub fn matrix(self) -> Option<MatrixLayout> {
        match self {
            Layout::Linear => Some(MatrixLayout::OutIn),
            Layout::Conv1d => Some(MatrixLayout::InOut),
            Layout::Plain => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Layout::Linear => "linear",
            Layout::Conv1d => "conv1d",
            Layout::Plain => "plain",
        }
    }
}

impl When {
    pub fn name(self) -> &'static str {
        match self {
            When::Always => "always",
            When::QkvBias => "qkv_bias",
            When::OBias => "o_bias",
            When::MlpBias => "mlp_bias",
            When::Untied => "untied",
        }
    }
}

impl Table {
    /// Every row, in load order (the layer rows once).
    pub fn rows(&self) -> impl Iterator<Item = &'static Row> {
        self.embeddings.iter().chain(self.layer).chain(self.output)
    }

    /// The row of checkpoint name `name` (with or without the optional prefix) and its layer.
    pub fn find(&self, name: &str) -> Option<(&'static Row, Option<usize>)> {
        let found = |name: &str| self.rows().find_map(|r| matches(r.name, name).map(|layer| (r, layer)));
        found(name).or_else(|| {
            let prefix = self.optional_prefix?;
            if name.starts_with(prefix) {
                return None;
            }
            found(&format!("{prefix}{name}"))
        })
    }

    /// The layout of `name` when it is a matmul weight (linear layers, embeddings, lm_head).
    pub fn matrix_layout(&self, name: &str) -> Option<MatrixLayout> {
        self.find(name).and_then(|(r, _)| r.layout.matrix())
    }

    /// `name` without the optional prefix, when the table allows a checkpoint to leave it out.
    pub fn unprefixed<'a>(&self, name: &'a str) -> Option<&'a str> {
        let short = name.strip_prefix(self.optional_prefix?)?;
        self.find(name).map(|_| short)
    }
}

/// Rows `(r0, r1)` of `role`'s part in its matrix: the weights of one slot in `section` stack in
/// table order (q, k, v; gate, up). A whole matrix, norm or embedding spans all its rows.
pub fn part_rows(section: &[Row], role: Role, c: &ModelConfig) -> (usize, usize) {
    let slot = role.slot(0);
    let r0 = section
        .iter()
        .filter(|w| w.part == Part::Weight && w.role.slot(0) == slot)
        .take_while(|w| w.role != role)
        .map(|w| w.role.rows(c))
        .sum();
    (r0, r0 + role.rows(c))
}

/// Every name a checkpoint may store tensor `name` under: `name` first, then the same without
/// the optional prefix of the architecture whose table holds it.
pub fn checkpoint_names(name: &str) -> Vec<String> {
    let mut out = vec![name.to_string()];
    out.extend(ARCHS.iter().filter_map(|&a| table(a).unprefixed(name)).map(str::to_string));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn config(arch: Arch) -> ModelConfig {
        let json = match arch {
            Arch::Llama => super::super::export::tests::LLAMA,
            Arch::Gpt2 => super::super::export::tests::GPT2,
        };
        ModelConfig::from_hf_json(json).unwrap()
    }

    #[test]
    fn templates_match_layer_numbers_only() {
        let t = "model.layers.{i}.mlp.up_proj.weight";
        assert_eq!(matches(t, "model.layers.12.mlp.up_proj.weight"), Some(Some(12)));
        for bad in ["model.layers..mlp.up_proj.weight", "model.layers.1x.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.bias", "model.layers.+1.mlp.up_proj.weight"] {
            assert_eq!(matches(t, bad), None, "{bad}");
        }
        assert_eq!(matches("model.norm.weight", "model.norm.weight"), Some(None));
        assert_eq!(matches("model.norm.weight", "model.norm.weights"), None);
    }

    #[test]
    fn names_are_unique_and_templated_only_in_layers() {
        for arch in ARCHS {
            let t = table(arch);
            let names: HashSet<&str> = t.rows().map(|r| r.name).collect();
            assert_eq!(names.len(), t.rows().count(), "{arch:?}: a name appears twice");
            assert!(t.layer.iter().all(|r| r.name.contains(LAYER)));
            assert!(t.embeddings.iter().chain(t.output).all(|r| !r.name.contains(LAYER)));
            for r in t.rows() {
                assert_ne!(r.part, Part::Scale, "{}: scales are derived, not listed", r.name);
                assert_eq!(t.find(&r.name_at(3)), Some((r, r.name.contains(LAYER).then_some(3))));
                let suffix = if r.part == Part::Weight { ".weight" } else { ".bias" };
                assert!(r.name.ends_with(suffix), "{}", r.name);
                // a bias is plain and belongs to a weight of the same role
                if r.part == Part::Bias {
                    assert_eq!(r.layout, Layout::Plain);
                    assert!(t.rows().any(|w| w.role == r.role && w.part == Part::Weight), "{}", r.name);
                }
            }
        }
    }

    #[test]
    fn fused_parts_tile_their_matrix_in_order() {
        for arch in ARCHS {
            let c = config(arch);
            let t = table(arch);
            for slot in [Slot::Qkv(0), Slot::Up(0)] {
                let parts: Vec<Role> = t.layer.iter().filter(|r| r.part == Part::Weight && r.role.slot(0) == slot).map(|r| r.role).collect();
                let rows: usize = parts.iter().map(|p| p.rows(&c)).sum();
                let want = match (slot, arch) {
                    (Slot::Qkv(_), _) => c.q_dim() + 2 * c.kv_dim(),
                    (_, Arch::Llama) => 2 * c.intermediate_size,
                    (_, Arch::Gpt2) => c.intermediate_size,
                };
                assert_eq!(rows, want, "{arch:?} {slot:?}: {parts:?}");
                let order = [Role::Q, Role::K, Role::V, Role::Gate, Role::Up];
                let pos: Vec<Option<usize>> = parts.iter().map(|p| order.iter().position(|o| o == p)).collect();
                assert!(pos.windows(2).all(|w| w[0] < w[1]), "{arch:?}: {parts:?} out of order");
            }
        }
    }

    #[test]
    fn parts_take_their_rows_of_the_fused_matrices() {
        let c = config(Arch::Llama);
        let (q, kv, f) = (c.q_dim(), c.kv_dim(), c.intermediate_size);
        let l = table(Arch::Llama).layer;
        let got: Vec<_> = [Role::Q, Role::K, Role::V, Role::O, Role::Gate, Role::Up, Role::Down].iter().map(|&r| part_rows(l, r, &c)).collect();
        assert_eq!(got, [(0, q), (q, q + kv), (q + kv, q + 2 * kv), (0, c.hidden_size), (0, f), (f, 2 * f), (0, c.hidden_size)]);
        let c = config(Arch::Gpt2);
        let l = table(Arch::Gpt2).layer;
        assert_eq!(part_rows(l, Role::Qkv, &c), (0, 3 * c.hidden_size));
        assert_eq!(part_rows(l, Role::Up, &c), (0, c.intermediate_size));
    }

    #[test]
    fn matrix_layouts_come_from_the_table() {
        let llama = table(Arch::Llama);
        let gpt2 = table(Arch::Gpt2);
        for name in ["model.embed_tokens.weight", "lm_head.weight", "model.layers.7.self_attn.o_proj.weight", "model.layers.0.mlp.gate_proj.weight"] {
            assert_eq!(llama.matrix_layout(name), Some(MatrixLayout::OutIn), "{name}");
        }
        for name in ["model.norm.weight", "model.layers.0.self_attn.q_proj.bias", "model.layers.0.input_layernorm.weight", "model.layers.0.self_attn.rotary_emb.inv_freq", "h.0.attn.c_attn.weight"] {
            assert_eq!(llama.matrix_layout(name), None, "{name}");
        }
        for name in ["transformer.h.0.attn.c_attn.weight", "h.0.attn.c_attn.weight", "h.11.mlp.c_proj.weight", "transformer.h.2.mlp.c_fc.weight", "h.0.attn.c_proj.weight"] {
            assert_eq!(gpt2.matrix_layout(name), Some(MatrixLayout::InOut), "{name}");
        }
        for name in ["transformer.wte.weight", "wte.weight", "lm_head.weight"] {
            assert_eq!(gpt2.matrix_layout(name), Some(MatrixLayout::OutIn), "{name}");
        }
        for name in ["transformer.wpe.weight", "wpe.weight", "h.0.attn.c_attn.bias", "ln_f.weight", "transformer.h.0.attn.bias", "transformer.lm_head.weight"] {
            assert_eq!(gpt2.matrix_layout(name), None, "{name}");
        }
    }

    #[test]
    fn only_prefixed_gpt2_names_have_a_short_form() {
        assert_eq!(checkpoint_names("transformer.h.3.ln_2.bias"), ["transformer.h.3.ln_2.bias", "h.3.ln_2.bias"]);
        assert_eq!(checkpoint_names("transformer.wte.weight"), ["transformer.wte.weight", "wte.weight"]);
        for name in ["lm_head.weight", "h.3.ln_2.bias", "model.layers.0.mlp.up_proj.weight", "transformer.unknown.weight"] {
            assert_eq!(checkpoint_names(name), [name], "{name}");
        }
    }

    #[test]
    fn llama_rows_carry_their_gguf_names() {
        let t = table(Arch::Llama);
        let gguf: HashSet<&str> = t.rows().filter_map(|r| r.gguf).collect();
        assert_eq!(gguf.len(), t.rows().count(), "every LLaMA row has its own GGUF name");
        for r in t.rows() {
            let g = r.gguf.unwrap_or_default();
            assert_eq!(g.contains(LAYER), r.name.contains(LAYER), "{g}");
            assert!(g.ends_with(if r.part == Part::Bias { ".bias" } else { ".weight" }), "{g}");
        }
        let by_gguf = |g: &str| t.rows().find(|r| r.gguf == Some(g)).map(|r| r.name);
        assert_eq!(by_gguf("blk.{i}.attn_q.weight"), Some("model.layers.{i}.self_attn.q_proj.weight"));
        assert_eq!(by_gguf("blk.{i}.ffn_norm.weight"), Some("model.layers.{i}.post_attention_layernorm.weight"));
        assert_eq!(by_gguf("output.weight"), Some("lm_head.weight"));
        assert!(table(Arch::Gpt2).rows().all(|r| r.gguf.is_none()));
    }

    #[test]
    fn architectures_by_name() {
        for a in ARCHS {
            assert_eq!(arch_by_name(arch_name(a)), Ok(a));
        }
        assert!(matches!(arch_by_name("bert"), Err(Error::InvalidArgument(_))));
    }
}
