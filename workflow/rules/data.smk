"""The dataset: the procedural demo (when enabled) and the pre-flight checks and manifests."""

if config["demo"]["enabled"]:

    rule demo_data:
        output:
            lists=expand(
                "{dir}/{split}.txt",
                dir=SPLIT_DIR,
                split=["train_aug", "train", "val"],
            ),
            description=f"{ROOT}/dataset.json",
            preview=report(
                f"{RESULTS}/demo_preview.png",
                caption="../report/demo_preview.rst",
                category="Data",
            ),
        log:
            f"{LOGS}/demo_data.log",
        benchmark:
            f"{LOGS}/benchmarks/demo_data.tsv"
        retries: 0
        conda:
            "../envs/pcam.yaml"
        threads: 1
        params:
            root=lambda w, output: os.path.dirname(output.description),
            n_train=config["demo"]["n_train"],
            n_val=config["demo"]["n_val"],
            size=config["demo"]["size"],
            seed=config["demo"]["seed"],
            style=config["demo"]["style"],
            code=code("pcam.data.demo"),
        shell:
            "pcam --log-file {log:q} demo-data --out {params.root:q}"
            " --n-train {params.n_train} --n-val {params.n_val} --size {params.size}"
            " --seed {params.seed} --style {params.style:q} --preview {output.preview:q}"


# One check per split and kind (images; labels = masks, annotations and image-level tags). Its
# manifest is what the rules reading that split depend on; its report and log are logs, which
# Snakemake keeps when the check fails (the history log keeps every attempt). Not retried: bad
# data fails the same way twice.
rule check_data:
    input:
        ids=lambda w: split_list(w.split),
    output:
        manifest=manifest("{split}", "{kind}"),
    log:
        log=f"{LOGS}/check_data/{{split}}-{{kind}}.log",
        report=f"{LOGS}/check_data/{{split}}-{{kind}}.csv",
    benchmark:
        f"{LOGS}/benchmarks/check_data-{{split}}-{{kind}}.tsv"
    retries: 0
    conda:
        "../envs/pcam.yaml"
    threads: 1
    params:
        dataset=DATASET_JSON,
        train_split=DATA["train_split"],
        masks=required_masks,
        data=data_fingerprint,
        code=code("pcam.data.check", "pcam.data.manifest"),
    shell:
        "pcam --log-file {log.log:q} check-data --dataset {params.dataset:q}"
        " --split {wildcards.split:q} --kind {wildcards.kind:q}"
        " --training-split {params.train_split:q} --report {log.report:q}"
        " --manifest {output.manifest:q} {params.masks}"
