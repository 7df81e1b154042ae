// Graphs as data: a models::Graph written as JSON (the "model_graph" metadata
// entry of checkpoints and packed files), read back with every value checked, and
// registered as an architecture, so a network imported from ONNX
// (models/onnx.h) needs neither its .onnx file nor --model once a checkpoint
// holds it. `resolve_model` is the one place a tool's --model NAME-or-path is
// turned into an architecture name. docs/formats.md, "Graph description".
// Tests: tests/test_onnx.cpp.
#pragma once

#include <string>

#include "engine/io/safetensors.h"
#include "models/graph.h"

namespace ttq::models {

// Canonical JSON of `g` (deterministic: the same graph gives the same bytes):
// {"format": "ttq-graph", "version": 1, "arch", "in_channels", "output",
//  "nodes": [{"op", "name", "in": [...], attributes...}, ...], "aliases": [...]}.
std::string graph_to_json(const Graph& g);
// The graph `json` describes. With `config`, the channel and class counts are the
// config's: the first convolutions read config->in_channels, the one classifier
// (Graph::classifiers) gets config->num_classes outputs, and a dropout >= 0 sets
// every Dropout's probability. Every defect (bad JSON, an unknown op, an index
// out of range, an attribute out of bounds, channels that do not fit, a graph too
// large) is one ttq::InputError prefixed by `source`.
Graph graph_from_json(const std::string& json, const std::string& source,
                      const ModelConfig* config = nullptr);

// Registers `g` as an architecture under g.arch() (a builder that rebuilds it for
// each config, as graph_from_json does) and returns the name. Registering the same
// graph again is a no-op; a different graph (or a built-in) under that name is an
// InputError naming `source`.
std::string register_graph(const Graph& g, const std::string& source);
// The JSON of an architecture registered by register_graph, "" for the others.
std::string registered_graph_json(const std::string& arch);

// Metadata a file written for `arch` carries: "model" = arch and, for a registered
// graph, "model_graph" = its JSON.
void describe_arch(io::Metadata& meta, const std::string& arch);
// When `meta` holds a "model_graph", registers it (its "model" must name it) and
// returns the name; otherwise returns meta's "model" or "".
std::string adopt_arch(const io::Metadata& meta, const std::string& source);

// True for a --model value that names a file (ends in .onnx, or holds a '/').
bool is_model_path(const std::string& spec);
// A tool's --model value: a registered name is returned as it is; a path to an
// .onnx file is imported (models/onnx.h) and its graph registered. `flag` names
// the flag in messages.
std::string resolve_model(const std::string& spec, const std::string& flag = "--model");

}  // namespace ttq::models
