//! The folded segmentation network (`model::folded::FoldedSegmenter`, the network `cggm infer`
//! runs) as an ONNX graph, op for op: every folded convolution a `Conv` with its bias, ReLU,
//! max pooling, residual `Add`, ASPP with `GlobalAveragePool`, bilinear `Resize` (align_corners =
//! false is `pytorch_half_pixel`) and `Concat`, and the argmax over classes.

use super::onnx::{attr_int, attr_ints, attr_string, free, Dim, GraphBuilder};
use super::onnx_proto::data_type;
use crate::model::folded::{FoldedBlock, FoldedDecoder, FoldedEncoder, FoldedSegmenter};
use crate::model::resnet::FoldedConv;
use anyhow::{bail, Result};

/// Name of the graph input: [N, M, H, W] fp32, channel i = modality i of the model's order.
pub const INPUT: &str = "image";
/// Graph output: [N, classes, H, W] fp32 logits.
pub const LOGITS: &str = "logits";
/// Graph output: [N, H, W] uint8, the argmax over classes (internal class indices).
pub const LABELS: &str = "labels";

fn conv(g: &mut GraphBuilder, x: &str, c: &FoldedConv, name: &str) -> String {
    let geo = c.geometry;
    let size = c.ws.size();
    let w = g.weight(&format!("{name}.weight"), &c.ws);
    let b =
        c.bs.as_ref()
            .map(|bs| g.weight(&format!("{name}.bias"), bs));
    let mut inputs = vec![x, w.as_str()];
    if let Some(b) = &b {
        inputs.push(b.as_str());
    }
    let (s, p, d) = (geo.stride, geo.padding, geo.dilation);
    g.node(
        "Conv",
        &inputs,
        vec![
            attr_ints("kernel_shape", &size[2..]),
            attr_ints("strides", &[s, s]),
            attr_ints("pads", &[p, p, p, p]),
            attr_ints("dilations", &[d, d]),
            attr_int("group", geo.groups),
        ],
    )
}

fn relu(g: &mut GraphBuilder, x: &str) -> String {
    g.node("Relu", &[x], vec![])
}

fn conv_relu(g: &mut GraphBuilder, x: &str, c: &FoldedConv, name: &str) -> String {
    let y = conv(g, x, c, name);
    relu(g, &y)
}

/// Bilinear resize of `x` [N, C, h, w] to the spatial size of `like` (upsample_bilinear2d with
/// align_corners = false and no scale factors: the scale is the ratio of the sizes).
fn resize_like(g: &mut GraphBuilder, x: &str, like: &str) -> String {
    let nc = g.shape_slice(x, 0, 2);
    let hw = g.shape_slice(like, 2, 4);
    let sizes = g.node("Concat", &[&nc, &hw], vec![attr_int("axis", 0)]);
    g.node(
        "Resize",
        &[x, "", "", &sizes],
        vec![
            attr_string("mode", "linear"),
            attr_string("coordinate_transformation_mode", "pytorch_half_pixel"),
        ],
    )
}

fn block(g: &mut GraphBuilder, x: &str, b: &FoldedBlock, name: &str) -> String {
    let mut ys = conv(g, x, &b.convs[0], &format!("{name}.c1"));
    for (j, c) in b.convs.iter().enumerate().skip(1) {
        ys = relu(g, &ys);
        ys = conv(g, &ys, c, &format!("{name}.c{}", j + 1));
    }
    let shortcut = match &b.downsample {
        Some(down) => conv(g, x, down, &format!("{name}.down")),
        None => x.to_string(),
    };
    let sum = g.node("Add", &[&ys, &shortcut], vec![]);
    relu(g, &sum)
}

/// One modality's encoder on [N, 1, H, W]: (high [N, aspp, H/OS, W/OS], low [N, low, H/4, W/4]).
fn encoder(g: &mut GraphBuilder, x: &str, e: &FoldedEncoder, name: &str) -> (String, String) {
    let ys = conv_relu(g, x, &e.stem, &format!("{name}.backbone.stem"));
    let mut ys = g.node(
        "MaxPool",
        &[&ys],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
    );
    let mut low = None;
    for (s, blocks) in e.stages.iter().enumerate() {
        for (k, b) in blocks.iter().enumerate() {
            ys = block(g, &ys, b, &format!("{name}.backbone.layer{}.{k}", s + 1));
        }
        if s == 0 {
            low = Some(ys.clone());
        }
    }
    let low = low.expect("ResNet has four stages");
    let mut outs: Vec<String> = e
        .aspp_branches
        .iter()
        .enumerate()
        .map(|(k, b)| conv_relu(g, &ys, b, &format!("{name}.aspp.b{k}")))
        .collect();
    let pooled = g.node("GlobalAveragePool", &[&ys], vec![]);
    let pooled = conv_relu(g, &pooled, &e.aspp_pooling, &format!("{name}.aspp.pool"));
    outs.push(resize_like(g, &pooled, &ys));
    let refs: Vec<&str> = outs.iter().map(String::as_str).collect();
    let cat = g.node("Concat", &refs, vec![attr_int("axis", 1)]);
    let high = conv_relu(g, &cat, &e.aspp_project, &format!("{name}.aspp.project"));
    (high, low)
}

fn decoder(
    g: &mut GraphBuilder,
    high: &str,
    low: &str,
    like: &str,
    d: &FoldedDecoder,
    name: &str,
) -> Result<String> {
    if d.groups != 1 {
        bail!("a grouped decoder (the per-modality classifiers) is not exported");
    }
    let hp = conv_relu(g, high, &d.high_proj, &format!("{name}.high_proj"));
    let hp = resize_like(g, &hp, low);
    let lp = conv_relu(g, low, &d.low_proj, &format!("{name}.low_proj"));
    let mut ys = g.node("Concat", &[&hp, &lp], vec![attr_int("axis", 1)]);
    for (k, c) in d.refine.iter().enumerate() {
        ys = conv_relu(g, &ys, c, &format!("{name}.refine{k}"));
    }
    let logits = conv(g, &ys, &d.last, &format!("{name}.last"));
    Ok(resize_like(g, &logits, like))
}

/// The graph's outputs: the logits (`classes` wide) and their argmax as uint8 labels.
fn outputs(g: &mut GraphBuilder, logits: &str, classes: i64) {
    let argmax = g.node(
        "ArgMax",
        &[logits],
        vec![attr_int("axis", 1), attr_int("keepdims", 0)],
    );
    let labels = g.node(
        "Cast",
        &[&argmax],
        vec![attr_int("to", data_type::UINT8 as i64)],
    );
    g.output(
        logits,
        LOGITS,
        data_type::FLOAT,
        &[
            free("batch"),
            Dim::Fixed(classes),
            free("height"),
            free("width"),
        ],
        "class logits per pixel",
    );
    g.output(
        &labels,
        LABELS,
        data_type::UINT8,
        &[free("batch"), free("height"), free("width")],
        "argmax over classes: 0 background, 1 NCR, 2 oedema, 3 enhancing (internal classes)",
    );
}

/// The graph of `net` (folded in fp32): input [`INPUT`], outputs [`LOGITS`] and [`LABELS`].
pub fn graph(net: &FoldedSegmenter, modalities: &[String], classes: i64) -> Result<GraphBuilder> {
    if net.kind() != tch::Kind::Float {
        bail!("the network must be folded in fp32 for export");
    }
    if net.encoders.len() != modalities.len() {
        bail!(
            "{} encoders for {} modalities",
            net.encoders.len(),
            modalities.len()
        );
    }
    let mut g = GraphBuilder::default();
    let m = modalities.len() as i64;
    let image = g.input(
        INPUT,
        data_type::FLOAT,
        &[free("batch"), Dim::Fixed(m), free("height"), free("width")],
        &format!(
            "axial slices, channel i = modality i of {modalities:?}, z-scored per modality over \
             the brain; height and width multiples of 16"
        ),
    );
    let channels = g.node_n(
        "Split",
        &[&image],
        modalities.len(),
        vec![attr_int("axis", 1)],
    );
    let mut highs = Vec::new();
    let mut lows = Vec::new();
    for ((x, e), name) in channels.iter().zip(&net.encoders).zip(modalities) {
        let (high, low) = encoder(&mut g, x, e, &format!("encoders.{name}"));
        highs.push(high);
        lows.push(low);
    }
    let cat = |g: &mut GraphBuilder, parts: &[String]| {
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        g.node("Concat", &refs, vec![attr_int("axis", 1)])
    };
    let high = cat(&mut g, &highs);
    let low = cat(&mut g, &lows);
    let logits = decoder(&mut g, &high, &low, &image, &net.head, "fusion")?;
    outputs(&mut g, &logits, classes);
    Ok(g)
}
