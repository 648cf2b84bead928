"""The JSON schema of a `gpucnn bench --json` document, and a validator.

SCHEMA is written in a subset of JSON Schema (type, properties, required,
additionalProperties, items, enum, minimum, $ref to #/definitions/...), so
any JSON Schema tool can read it too; `validate` checks that subset with no
extra dependency and returns a list of error strings (empty = valid).

Document layout (times in seconds; ratio `vs_<ref>` = our median time over
the reference's median time, below 1 = we are faster; `of_<x>_ceiling` =
our throughput as a fraction of a measured machine ceiling):

    schema, schema_version       "gpucnn-bench", 1
    settings                     suite, ops, device, repeats, warmup, threads, ...
    environment                  date, CPU/GPU names, driver, versions, git commit, ...
    ceilings                     copy_gbps, matmul_gflops (or skipped: reason)
    results[]                    one per (case, op):
        case, op, describe, geometry (shapes, kernel, stride, padding)
        work                     flops (conv) or bytes (pool)
        baselines                cpu_path | torch_cpu | cudnn_tf32_off | cudnn_tf32_on | torch_bf16:
                                 {time} or {skipped: reason}
        versions[]               version, precision (convs: "highest" | "high" | "medium"),
                                 time | skipped, gflops, gbps, ratios, check
    summary                      geomean[ratio key] = {all, count, by_op} from median times,
                                 geomean_min[vs_<ref>] the same from the fastest calls,
                                 entries, failed_checks, crashed (versions that raised)
    e2e (optional)               end-to-end training-step timings (e2e.py), the first model's
    e2e_models (optional)        the same for every --e2e-model and --e2e-batch; each run has
                                 side, device, mode, precision; `ratios` our time over PyTorch's
                                 per (device, precision, our mode) and PyTorch mode
    e2e_epoch (optional)         images/s of a whole epoch over real data (epoch.py)
    profile (optional)           per-phase, per-layer step profiles (profile_step.py)
"""

NUM = ["number", "null"]

SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "gpucnn benchmark run",
    "type": "object",
    "required": ["schema", "schema_version", "settings", "environment", "ceilings", "results", "summary"],
    "definitions": {
        "timing": {
            "type": "object",
            "required": ["median_s", "q1_s", "q3_s", "min_s", "max_s", "repeats", "warmup", "method"],
            "properties": {
                "median_s": {"type": "number", "minimum": 0}, "q1_s": {"type": "number", "minimum": 0},
                "q3_s": {"type": "number", "minimum": 0}, "min_s": {"type": "number", "minimum": 0},
                "max_s": {"type": "number", "minimum": 0}, "repeats": {"type": "integer", "minimum": 1},
                "warmup": {"type": "integer", "minimum": 0},
                "method": {"enum": ["perf_counter", "cuda_events"]}},
            "additionalProperties": False},
        "baseline": {
            "type": "object",
            "properties": {"time": {"$ref": "#/definitions/timing"}, "skipped": {"type": "string"}},
            "additionalProperties": False},
        "check": {
            "type": "object",
            "required": ["max_rel_err", "index_mismatches", "ok", "tolerance", "reference"],
            "properties": {"max_rel_err": {"type": NUM}, "index_mismatches": {"type": "integer", "minimum": 0},
                           "ok": {"type": "boolean"}, "tolerance": {"type": "number"},
                           "reference": {"enum": ["cpu_path", "torch_cpu"]}}},
        "version": {
            "type": "object",
            "required": ["version"],
            "properties": {
                "version": {"type": "string"}, "time": {"$ref": "#/definitions/timing"},
                "precision": {"enum": ["highest", "high", "medium"]},
                "skipped": {"type": "string"}, "gflops": {"type": NUM}, "gbps": {"type": NUM},
                "rotated_copies": {"type": "integer", "minimum": 1},
                "ratios": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
                "check": {"$ref": "#/definitions/check"}}},
        "geomeans": {
            "type": "object", "additionalProperties": {
                "type": "object", "required": ["all", "count", "by_op"],
                "properties": {"all": {"type": NUM}, "count": {"type": "integer", "minimum": 0},
                               "by_op": {"type": "object",
                                         "additionalProperties": {"type": "number", "minimum": 0}}}}},
        "entry": {
            "type": "object",
            "required": ["case", "op", "describe", "geometry", "work", "baselines", "versions"],
            "properties": {
                "case": {"type": "string"},
                "op": {"enum": ["conv_forward", "conv_backward_data", "conv_backward_filter",
                                "max_pool_forward", "max_pool_backward",
                                "avg_pool_forward", "avg_pool_backward"]},
                "describe": {"type": "string"},
                "geometry": {
                    "type": "object",
                    "required": ["family", "nd", "x_shape", "y_shape", "kernel", "stride", "padding"],
                    "properties": {
                        "family": {"enum": ["conv", "pool"]}, "nd": {"enum": [1, 2, 3]},
                        "x_shape": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                        "w_shape": {"type": ["array", "null"], "items": {"type": "integer", "minimum": 1}},
                        "y_shape": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                        "kernel": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                        "stride": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                        "padding": {"type": "array", "items": {"type": "integer", "minimum": 0}}}},
                "work": {"type": "object", "required": ["flops", "bytes"],
                         "properties": {"flops": {"type": ["integer", "null"]},
                                        "bytes": {"type": ["integer", "null"]}}},
                "baselines": {"type": "object",
                              "properties": {k: {"$ref": "#/definitions/baseline"} for k in
                                             ("cpu_path", "torch_cpu", "cudnn_tf32_off", "cudnn_tf32_on",
                                              "torch_bf16")},
                              "additionalProperties": False},
                "versions": {"type": "array", "items": {"$ref": "#/definitions/version"}}}},
    },
    "properties": {
        "schema": {"enum": ["gpucnn-bench"]},
        "schema_version": {"enum": [1]},
        "settings": {
            "type": "object",
            "required": ["suite", "ops", "device", "repeats", "warmup", "threads", "torch"],
            "properties": {"suite": {"type": "string"}, "ops": {"type": "array", "items": {"type": "string"}},
                           "device": {"enum": ["cpu", "gpu"]},
                           "repeats": {"type": "integer", "minimum": 1},
                           "warmup": {"type": "integer", "minimum": 0},
                           "threads": {"type": "integer", "minimum": 1}, "torch": {"type": "boolean"},
                           "precisions": {"type": "array",
                                          "items": {"enum": ["highest", "high", "medium"]}}}},
        "environment": {
            "type": "object",
            "required": ["date", "cpu_name", "numpy", "numba", "cupy", "torch", "git", "numba_threads"],
            "properties": {"date": {"type": "string"}, "cpu_name": {"type": "string"},
                           "gpu_name": {"type": "string"}, "numpy": {"type": "string"},
                           "numba": {"type": "string"}, "cupy": {"type": ["string", "null"]},
                           "torch": {"type": ["string", "null"]},
                           "numba_threads": {"type": "integer", "minimum": 1},
                           "git": {"type": "object", "required": ["commit"],
                                   "properties": {"commit": {"type": ["string", "null"]}}}}},
        "ceilings": {
            "type": "object", "required": ["device"],
            "properties": {"device": {"enum": ["cpu", "gpu"]}, "copy_gbps": {"type": "number", "minimum": 0},
                           "matmul_gflops": {"type": "number", "minimum": 0}, "skipped": {"type": "string"}}},
        "results": {"type": "array", "items": {"$ref": "#/definitions/entry"}},
        "summary": {
            "type": "object", "required": ["geomean", "entries", "failed_checks"],
            "properties": {
                "geomean": {"$ref": "#/definitions/geomeans"},
                "geomean_min": {"$ref": "#/definitions/geomeans"},
                "entries": {"type": "integer", "minimum": 0},
                "failed_checks": {"type": "array", "items": {"type": "string"}},
                "crashed": {"type": "array", "items": {"type": "string"}}}},
        "e2e": {"type": "object"},
        "e2e_models": {"type": "array", "items": {"type": "object"}},
        "e2e_epoch": {"type": "array", "items": {"type": "object"}},
        "profile": {"type": "array", "items": {"type": "object"}},
    },
}

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(value, name):
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def _resolve(schema, root):
    while "$ref" in schema:
        schema = root["definitions"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _check(value, schema, root, path, errors):
    schema = _resolve(schema, root)
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_is_type(value, t) for t in types):
            errors.append(f"{path}: expected {'/'.join(types)}, got {type(value).__name__}")
            return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if "minimum" in schema and _is_type(value, "number") and value < schema["minimum"]:
        errors.append(f"{path}: {value} < minimum {schema['minimum']}")
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                errors.append(f"{path}: missing required key {key!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                _check(item, props[key], root, f"{path}.{key}", errors)
            elif extra is False:
                errors.append(f"{path}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                _check(item, extra, root, f"{path}.{key}", errors)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], root, f"{path}[{i}]", errors)


def validate(doc, schema=SCHEMA):
    """Errors of `doc` against `schema` as strings like '$.results[3].op: ...'."""
    errors = []
    _check(doc, schema, schema, "$", errors)
    return errors
