"""Write the embedded demo's corpora and instruction data.

Snakemake rule `demo_data`: params.seed, params.sizes; one output per data file.
"""

from quantflow.data import write_demo_data
from quantflow.logs import to_file

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
write_demo_data(dict(sm.output.items()), sm.params.seed, sm.params.sizes)
