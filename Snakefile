# quantflow: fine-tune -> merge -> GGUF -> quantize -> benchmark -> report.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/common.smk"
include: "workflow/base.smk"
include: "workflow/finetune.smk"
include: "workflow/prompts.smk"
include: "workflow/convert.smk"
include: "workflow/quantize.smk"
include: "workflow/bench.smk"
include: "workflow/report.smk"


rule all:
    input:
        get_final_output(),
