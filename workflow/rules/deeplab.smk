"""Stage 7-8: DeepLabV3+ on pseudo-labels (or ground truth for the reference), inference, scores."""


rule train_deeplab:
    input:
        check=f"{RESULTS}/data_check.csv",
        ids=split_list(DATA["train_split"]),
        labels=deeplab_labels,
    output:
        model=f"{RESULTS}/{{experiment}}/deeplab/model.pt",
        curve=report(
            f"{RESULTS}/{{experiment}}/deeplab/curve.csv",
            caption="../report/curve.rst",
            category="Training curves",
            subcategory="{experiment}",
        ),
    log:
        f"{LOGS}/{{experiment}}/train_deeplab.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/train_deeplab.tsv"
    conda:
        "../envs/pcam.yaml"
    resources:
        gpu=GPUS,
    params:
        settings=settings("deeplab"),
        state=lambda w: state_dir(w.experiment, "deeplab", settings("deeplab")(w)),
        labels=lambda w, input: (
            f"--labels {' '.join(input.labels)}" if input.labels else ""
        ),
        dataset=DATASET_JSON,
        compute=COMPUTE_JSON,
        code=code("pcam.stages.deeplab"),
    shell:
        "pcam --log-file {log} train-deeplab --dataset {params.dataset:q}"
        " --settings {params.settings:q} --compute {params.compute:q} {params.labels}"
        " --out-model {output.model} --out-curve {output.curve} --state-dir {params.state}"


rule infer_deeplab:
    input:
        model=f"{RESULTS}/{{experiment}}/deeplab/model.pt",
        ids=lambda w: split_list(w.split),
    output:
        plain=directory(
            f"{RESULTS}/{{experiment}}/deeplab_pred/{{split}}/shard-{{shard}}-of-{N_SHARDS}"
        ),
        crf=directory(
            f"{RESULTS}/{{experiment}}/deeplab_pred_crf/{{split}}/shard-{{shard}}-of-{N_SHARDS}"
        ),
    log:
        f"{LOGS}/{{experiment}}/infer_deeplab-{{split}}-{{shard}}.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/infer_deeplab-{{split}}-{{shard}}.tsv"
    conda:
        "../envs/pcam.yaml"
    threads: CRF_THREADS
    resources:
        gpu=GPUS,
    params:
        settings=settings("deeplab_inference"),
        dataset=DATASET_JSON,
        compute=COMPUTE_JSON,
        n_shards=N_SHARDS,
        server=lambda w: "--server-format" if w.split == DATA["test_split"] else "",
        code=code("pcam.stages.deeplab"),
    shell:
        "pcam --log-file {log} infer-deeplab --dataset {params.dataset:q}"
        " --settings {params.settings:q} --compute {params.compute:q} --model {input.model}"
        " --split {wildcards.split} --shard {wildcards.shard} --num-shards {params.n_shards}"
        " --workers {threads} {params.server} --out {output.plain} --out-crf {output.crf}"


rule eval_deeplab:
    input:
        pred=eval_deeplab_inputs,
        ids=split_list(DATA["val_split"]),
    output:
        f"{RESULTS}/{{experiment}}/eval/{{dl_stage}}.csv",
    log:
        f"{LOGS}/{{experiment}}/eval_{{dl_stage}}.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/eval_{{dl_stage}}.tsv"
    wildcard_constraints:
        dl_stage="deeplab(_full)?(_crf)?",
    conda:
        "../envs/pcam.yaml"
    threads: config["evaluation"]["workers"]
    params:
        dataset=DATASET_JSON,
        split=DATA["val_split"],
        every=config["evaluation"]["every"],
        code=code("pcam.evaluate"),
    shell:
        "pcam --log-file {log} evaluate --dataset {params.dataset:q} --split {params.split}"
        " --pred {input.pred} --every {params.every} --workers {threads} --out {output}"
