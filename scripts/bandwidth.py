"""Measure the machine's memory bandwidth once per run (a multi-threaded copy), for the bench's
bandwidth fractions.

Snakemake rule `bandwidth`: output.json; params.threads (the bench's thread count; null = the job's cores).
"""

from quantflow.atomic import write_json
from quantflow.bandwidth import copy_bandwidth
from quantflow.logs import to_file

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
write_json(sm.output.json, copy_bandwidth(sm.params.threads or sm.threads))
