//! Building an ONNX graph node by node: named values, weights as initializers (fp32, raw
//! little-endian bytes), attributes, typed graph inputs and outputs with free (named) or fixed
//! dimensions, and the model around the graph (opset, metadata).

use super::onnx_proto::{
    attribute_type, data_type, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    TypeProtoTensor, ValueInfoProto,
};
use prost::Message;
use tch::{Device, Kind, Tensor};

/// The default-domain operator set the graphs are written against (LayerNormalization is 17).
pub const OPSET: i64 = 17;
/// The IR version that goes with opset 17.
pub const IR_VERSION: i64 = 8;

/// One dimension of a graph input or output: fixed, or free with a name.
#[derive(Clone, Debug)]
pub enum Dim {
    Fixed(i64),
    Free(String),
}

pub fn free(name: &str) -> Dim {
    Dim::Free(name.to_string())
}

pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INT,
        i: v,
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INTS,
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::FLOAT,
        f: v,
        ..Default::default()
    }
}

pub fn attr_string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::STRING,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn attr_tensor(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::TENSOR,
        t: Some(t),
        ..Default::default()
    }
}

fn tensor_proto(name: &str, dims: &[i64], elem: i32, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: elem,
        name: name.into(),
        raw_data: raw,
    }
}

/// A tensor's values as fp32 in row-major order (whatever its dtype, device and strides).
pub fn f32_values(t: &Tensor) -> Vec<f32> {
    let t = t
        .detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .view([-1]);
    Vec::<f32>::try_from(&t).expect("a CPU fp32 tensor converts to Vec<f32>")
}

fn value_info(name: &str, elem: i32, dims: &[Dim], doc: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: elem,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| match d {
                            Dim::Fixed(v) => Dimension {
                                dim_value: Some(*v),
                                dim_param: None,
                            },
                            Dim::Free(p) => Dimension {
                                dim_value: None,
                                dim_param: Some(p.clone()),
                            },
                        })
                        .collect(),
                }),
            }),
        }),
        doc_string: doc.into(),
    }
}

/// A graph under construction. Every method that adds a node returns the name(s) of its
/// output value(s), so graphs read like the forward passes they copy.
#[derive(Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    counter: usize,
}

impl GraphBuilder {
    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// A graph input; returns its name.
    pub fn input(&mut self, name: &str, elem: i32, dims: &[Dim], doc: &str) -> String {
        self.inputs.push(value_info(name, elem, dims, doc));
        name.to_string()
    }

    /// Makes `value` the graph output `name` (through an Identity node, so any value can be one).
    pub fn output(&mut self, value: &str, name: &str, elem: i32, dims: &[Dim], doc: &str) {
        self.nodes.push(NodeProto {
            input: vec![value.to_string()],
            output: vec![name.to_string()],
            name: format!("output_{name}"),
            op_type: "Identity".into(),
            ..Default::default()
        });
        self.outputs.push(value_info(name, elem, dims, doc));
    }

    /// The names of the graph's inputs and outputs so far.
    pub fn io_names(&self) -> (Vec<String>, Vec<String>) {
        let names = |v: &[ValueInfoProto]| v.iter().map(|v| v.name.clone()).collect();
        (names(&self.inputs), names(&self.outputs))
    }

    /// A node with `n` outputs.
    pub fn node_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        n: usize,
        attributes: Vec<AttributeProto>,
    ) -> Vec<String> {
        let name = self.fresh(op);
        let output: Vec<String> = (0..n).map(|k| format!("{name}_out{k}")).collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: output.clone(),
            name,
            op_type: op.into(),
            attribute: attributes,
            domain: String::new(),
        });
        output
    }

    /// A node with one output.
    pub fn node(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        self.node_n(op, inputs, 1, attributes).remove(0)
    }

    /// `t` (any dtype) as an fp32 initializer named `name` (names must be unique in the graph).
    pub fn weight(&mut self, name: &str, t: &Tensor) -> String {
        let raw = f32_values(t).iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers
            .push(tensor_proto(name, &t.size(), data_type::FLOAT, raw));
        name.to_string()
    }

    /// An int64 constant of shape `dims` (empty: a scalar).
    pub fn const_i64(&mut self, dims: &[i64], values: &[i64]) -> String {
        let name = self.fresh("const_i64");
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers
            .push(tensor_proto(&name, dims, data_type::INT64, raw));
        name
    }

    /// An fp32 constant of shape `dims` (empty: a scalar).
    pub fn const_f32(&mut self, dims: &[i64], values: &[f32]) -> String {
        let name = self.fresh("const_f32");
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers
            .push(tensor_proto(&name, dims, data_type::FLOAT, raw));
        name
    }

    /// `x.shape[start..end]` as a 1-D int64 tensor.
    pub fn shape_slice(&mut self, x: &str, start: i64, end: i64) -> String {
        let shape = self.node("Shape", &[x], vec![]);
        let starts = self.const_i64(&[1], &[start]);
        let ends = self.const_i64(&[1], &[end]);
        self.node("Slice", &[&shape, &starts, &ends], vec![])
    }

    /// `x.shape[axis]` as an int64 scalar.
    pub fn dim_of(&mut self, x: &str, axis: i64) -> String {
        let shape = self.node("Shape", &[x], vec![]);
        let index = self.const_i64(&[], &[axis]);
        self.node("Gather", &[&shape, &index], vec![attr_int("axis", 0)])
    }

    /// `0, 1, .., n - 1` (int64) for an int64 scalar `n`.
    pub fn range(&mut self, n: &str) -> String {
        let zero = self.const_i64(&[], &[0]);
        let one = self.const_i64(&[], &[1]);
        self.node("Range", &[&zero, n, &one], vec![])
    }

    pub fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> String {
        let axes = self.const_i64(&[axes.len() as i64], axes);
        self.node("Unsqueeze", &[x, &axes], vec![])
    }

    pub fn reshape(&mut self, x: &str, shape: &str) -> String {
        self.node("Reshape", &[x, shape], vec![])
    }

    /// A bool tensor of `shape` (1-D int64), all false.
    pub fn all_false(&mut self, shape: &str) -> String {
        let value = tensor_proto("value", &[1], data_type::BOOL, vec![0]);
        self.node(
            "ConstantOfShape",
            &[shape],
            vec![attr_tensor("value", value)],
        )
    }

    /// The finished model: opset [`OPSET`], `metadata` as `metadata_props`.
    pub fn finish(self, name: &str, doc: &str, metadata: &[(String, String)]) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "cggm-studio".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            domain: String::new(),
            model_version: 1,
            doc_string: doc.into(),
            graph: Some(GraphProto {
                node: self.nodes,
                name: name.into(),
                initializer: self.initializers,
                doc_string: doc.into(),
                input: self.inputs,
                output: self.outputs,
            }),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
        }
    }
}

/// The model's protobuf bytes.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}
