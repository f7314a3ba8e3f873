//! The feature model (`model::features::FeatureNet`, eval mode: every dropout the identity) as an
//! ONNX graph, op for op: per modality the kernel-1 projection (a MatMul), the MulT Transformer
//! encoder (scaled input plus sinusoidal positions computed in the graph for any length,
//! pre-norm layers of multi-head self-attention with the padding mask and a ReLU feed-forward
//! block, `LayerNormalization`), the fusion Transformer over all tokens read at the first token,
//! the residual output block and the output layer.

use super::onnx::{attr_float, attr_int, attr_ints, free, Dim, GraphBuilder};
use super::onnx_proto::data_type;
use crate::model::features::{FeatureNet, ModalityEncoder};
use crate::model::network::MultimodalNetwork;
use crate::model::transformer::{position_frequencies, EncoderLayer, TransformerEncoder};
use anyhow::{bail, Result};
use tch::{nn, Device};

/// Graph output: [N, outputs] fp32 (class logits, or the regression value).
pub const LOGITS: &str = "logits";
/// Classification only: [N] int64, the argmax over classes.
pub const LABELS: &str = "labels";

/// Name of the graph input holding modality `name`'s valid length per sample.
pub fn lengths_input(name: &str) -> String {
    format!("{name}_lengths")
}

/// `x @ W^T + b` for a Linear layer (any leading dims).
fn linear(g: &mut GraphBuilder, x: &str, l: &nn::Linear, name: &str) -> String {
    let w = g.weight(&format!("{name}.weight_t"), &l.ws.tr());
    let y = g.node("MatMul", &[x, &w], vec![]);
    match &l.bs {
        Some(bs) => {
            let b = g.weight(&format!("{name}.bias"), bs);
            g.node("Add", &[&y, &b], vec![])
        }
        None => y,
    }
}

fn layer_norm(g: &mut GraphBuilder, x: &str, n: &nn::LayerNorm, name: &str) -> String {
    let d = *n
        .normalized_shape
        .last()
        .expect("normalized over the last dim");
    let scale = match &n.ws {
        Some(ws) => g.weight(&format!("{name}.weight"), ws),
        None => g.const_f32(&[d], &vec![1.0; d as usize]),
    };
    let bias = match &n.bs {
        Some(bs) => g.weight(&format!("{name}.bias"), bs),
        None => g.const_f32(&[d], &vec![0.0; d as usize]),
    };
    g.node(
        "LayerNormalization",
        &[x, &scale, &bias],
        vec![
            attr_int("axis", -1),
            attr_float("epsilon", nn::LayerNormConfig::default().eps as f32),
        ],
    )
}

fn relu(g: &mut GraphBuilder, x: &str) -> String {
    g.node("Relu", &[x], vec![])
}

/// One pre-norm layer on x [B, T, D] with `mask` [B, T] bool (true = padding).
fn encoder_layer(
    g: &mut GraphBuilder,
    x: &str,
    mask: &str,
    l: &EncoderLayer,
    heads: i64,
    name: &str,
) -> String {
    let d = l.out_proj.ws.size()[0];
    let dh = d / heads;
    let normed = layer_norm(g, x, &l.attn_norm, &format!("{name}.attn_norm"));
    let qkv = linear(g, &normed, &l.in_proj, &format!("{name}.in_proj"));
    let parts = g.node_n("Split", &[&qkv], 3, vec![attr_int("axis", 2)]);
    let heads_shape = g.const_i64(&[4], &[0, 0, heads, dh]);
    let split = |g: &mut GraphBuilder, p: &str| {
        let r = g.reshape(p, &heads_shape);
        g.node("Transpose", &[&r], vec![attr_ints("perm", &[0, 2, 1, 3])])
    };
    let (q, k, v) = (
        split(g, &parts[0]),
        split(g, &parts[1]),
        split(g, &parts[2]),
    );
    let kt = g.node("Transpose", &[&k], vec![attr_ints("perm", &[0, 1, 3, 2])]);
    let scores = g.node("MatMul", &[&q, &kt], vec![]);
    let scale = g.const_f32(&[], &[(dh as f64).sqrt() as f32]);
    let scores = g.node("Div", &[&scores, &scale], vec![]);
    let mask4 = g.unsqueeze(mask, &[1, 2]);
    let minus_inf = g.const_f32(&[], &[f32::NEG_INFINITY]);
    let scores = g.node("Where", &[&mask4, &minus_inf, &scores], vec![]);
    let attn = g.node("Softmax", &[&scores], vec![attr_int("axis", -1)]);
    let mixed = g.node("MatMul", &[&attn, &v], vec![]);
    let mixed = g.node(
        "Transpose",
        &[&mixed],
        vec![attr_ints("perm", &[0, 2, 1, 3])],
    );
    let tokens_shape = g.const_i64(&[3], &[0, 0, d]);
    let mixed = g.reshape(&mixed, &tokens_shape);
    let attended = linear(g, &mixed, &l.out_proj, &format!("{name}.out_proj"));
    let x = g.node("Add", &[x, &attended], vec![]);
    let normed = layer_norm(g, &x, &l.ffn_norm, &format!("{name}.ffn_norm"));
    let hidden = linear(g, &normed, &l.fc1, &format!("{name}.fc1"));
    let hidden = relu(g, &hidden);
    let ffn = linear(g, &hidden, &l.fc2, &format!("{name}.fc2"));
    g.node("Add", &[&x, &ffn], vec![])
}

/// Sinusoidal positions [T, D] for the length of x [B, T, D] (`transformer::
/// sinusoidal_positions`: sin of p * f, cos of p * f, a zero column when D is odd).
fn positions(g: &mut GraphBuilder, x: &str, d: i64, name: &str) -> String {
    let t = g.dim_of(x, 1);
    let steps = g.range(&t);
    let steps = g.node(
        "Cast",
        &[&steps],
        vec![attr_int("to", data_type::FLOAT as i64)],
    );
    let pos = g.unsqueeze(&steps, &[1]);
    let freq = position_frequencies(d, Device::Cpu).unsqueeze(0);
    let freq = g.weight(&format!("{name}.position_frequencies"), &freq);
    let angles = g.node("Mul", &[&pos, &freq], vec![]);
    let sin = g.node("Sin", &[&angles], vec![]);
    let cos = g.node("Cos", &[&angles], vec![]);
    let mut parts = vec![sin, cos];
    if d % 2 == 1 {
        let zero = g.const_f32(&[], &[0.0]);
        parts.push(g.node("Mul", &[&pos, &zero], vec![]));
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    g.node("Concat", &refs, vec![attr_int("axis", 1)])
}

fn transformer(
    g: &mut GraphBuilder,
    x: &str,
    mask: &str,
    t: &TransformerEncoder,
    name: &str,
) -> String {
    let d = t.cfg.embed_dim;
    let scale = g.const_f32(&[], &[(d as f64).sqrt() as f32]);
    let scaled = g.node("Mul", &[x, &scale], vec![]);
    let pos = positions(g, x, d, name);
    let mut x = g.node("Add", &[&scaled, &pos], vec![]);
    for (i, l) in t.layers.iter().enumerate() {
        x = encoder_layer(g, &x, mask, l, t.cfg.heads, &format!("{name}.layers.{i}"));
    }
    layer_norm(g, &x, &t.norm, &format!("{name}.norm"))
}

/// The padding mask [B, T] (true = padding: step >= length) of x [B, T, D] and lengths [B].
fn padding_mask(g: &mut GraphBuilder, x: &str, lengths: &str) -> String {
    let t = g.dim_of(x, 1);
    let steps = g.range(&t);
    let steps = g.unsqueeze(&steps, &[0]);
    let lengths = g.unsqueeze(lengths, &[1]);
    g.node("GreaterOrEqual", &[&steps, &lengths], vec![])
}

/// The graph of `net`: per modality (in the model's order) an input `<name>` [N, T, D] fp32 and
/// `<name>_lengths` [N] int64; outputs [`LOGITS`] and, for classification, [`LABELS`].
pub fn graph(net: &FeatureNet, classification: bool) -> Result<GraphBuilder> {
    let names = net.modality_names();
    check_input_names(names)?;
    let mut g = GraphBuilder::default();
    let mut hidden = Vec::new();
    let mut masks = Vec::new();
    for (enc, name) in net.encoders.iter().zip(names) {
        let (h, mask) = encoder(&mut g, enc, name);
        hidden.push(h);
        masks.push(mask);
    }
    let logits = fusion_head(&mut g, net, &hidden, &masks);
    outputs(&mut g, &logits, net.out_layer.ws.size()[0], classification);
    Ok(g)
}

/// Every modality's two graph inputs (features, lengths) have names of their own.
fn check_input_names(names: &[String]) -> Result<()> {
    let mut taken = std::collections::BTreeSet::from([LOGITS.to_string(), LABELS.to_string()]);
    for name in names {
        for input in [name.clone(), lengths_input(name)] {
            if !taken.insert(input.clone()) {
                bail!("modality {name:?}: the graph input name {input:?} is taken twice");
            }
        }
    }
    Ok(())
}

/// One modality's inputs and encoder: its hidden tokens and padding mask.
fn encoder(g: &mut GraphBuilder, enc: &ModalityEncoder, name: &str) -> (String, String) {
    let ws = &enc.proj.ws; // [proj_dim, D, 1]
    let dim = ws.size()[1];
    let x = g.input(
        name,
        data_type::FLOAT,
        &[
            free("batch"),
            free(&format!("{name}_steps")),
            Dim::Fixed(dim),
        ],
        "features [batch, time steps, feature dim]",
    );
    let lengths = g.input(
        &lengths_input(name),
        data_type::INT64,
        &[free("batch")],
        "valid time steps per sample (the rest is padding); the number of steps for none",
    );
    let prefix = format!("encoders.{name}");
    let w = g.weight(&format!("{prefix}.proj.weight_t"), &ws.squeeze_dim(2).tr());
    let mut h = g.node("MatMul", &[&x, &w], vec![]);
    if let Some(bs) = &enc.proj.bs {
        let b = g.weight(&format!("{prefix}.proj.bias"), bs);
        h = g.node("Add", &[&h, &b], vec![]);
    }
    let mask = padding_mask(g, &x, &lengths);
    let hidden = transformer(
        g,
        &h,
        &mask,
        &enc.transformer,
        &format!("{prefix}.transformer"),
    );
    (hidden, mask)
}

/// The fusion transformer over every modality's tokens, its first token through the residual
/// projection and the output layer: the logits.
fn fusion_head(
    g: &mut GraphBuilder,
    net: &FeatureNet,
    hidden: &[String],
    masks: &[String],
) -> String {
    let cat = |g: &mut GraphBuilder, parts: &[String]| {
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        g.node("Concat", &refs, vec![attr_int("axis", 1)])
    };
    let tokens = cat(g, hidden);
    let mask = cat(g, masks);
    let fused = transformer(g, &tokens, &mask, &net.fusion, "fusion.transformer");
    let first = g.const_i64(&[], &[0]);
    let fused = g.node("Gather", &[&fused, &first], vec![attr_int("axis", 1)]);
    let r = linear(g, &fused, &net.proj1, "fusion.proj1");
    let r = relu(g, &r);
    let r = linear(g, &r, &net.proj2, "fusion.proj2");
    let residual = g.node("Add", &[&r, &fused], vec![]);
    linear(g, &residual, &net.out_layer, "fusion.out_layer")
}

/// The graph's outputs: the logits (`outputs` wide) and, for classification, their argmax.
fn outputs(g: &mut GraphBuilder, logits: &str, outputs: i64, classification: bool) {
    g.output(
        logits,
        LOGITS,
        data_type::FLOAT,
        &[free("batch"), Dim::Fixed(outputs)],
        if classification {
            "class logits"
        } else {
            "the predicted value"
        },
    );
    if classification {
        let labels = g.node(
            "ArgMax",
            &[logits],
            vec![attr_int("axis", 1), attr_int("keepdims", 0)],
        );
        g.output(
            &labels,
            LABELS,
            data_type::INT64,
            &[free("batch")],
            "argmax over classes: the index into the class names of the metadata",
        );
    }
}
