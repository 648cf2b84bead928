"""Kernel benchmarks (`gpucnn bench`): shape suites, timers, machine
ceilings, the runner that times ours against the references side by side,
reports (table, markdown, plot, comparison), the JSON schema and an
end-to-end training-step benchmark. See bench/README.md.
"""
from .ops import OPS
from .runner import Runner
from .schema import SCHEMA, validate
from .suites import SUITES, get_suite
