"""Stage 7-8: DeepLabV3+ on pseudo-labels (or ground truth for the reference), inference, scores."""


rule train_deeplab:
    input:
        manifest=deeplab_data,
        checked=deeplab_checks,
        labels=deeplab_labels,
        init=classifier_init("deeplab"),
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
    threads: TORCH_THREADS
    resources:
        gpu=GPUS,
    params:
        settings=settings("deeplab"),
        state=lambda w: state_dir(w.experiment, "deeplab", settings("deeplab")(w)),
        labels=lambda w, input: flag_with_files("--labels", input.labels),
        dataset=DATASET_JSON,
        compute=compute_json,
        result=result_keys("training"),
        code=code("pcam.stages.deeplab"),
        init=lambda w, input: flag_with_files("--init-from", input.init),
    shell:
        "pcam --log-file {log:q} train-deeplab --dataset {params.dataset:q}"
        " --settings {params.settings:q} --compute {params.compute:q} {params.labels} {params.init}"
        " --out-model {output.model:q} --out-curve {output.curve:q}"
        " --state-dir {params.state:q} --state-inputs {input.manifest:q}"


rule infer_deeplab:
    input:
        model=f"{RESULTS}/{{experiment}}/deeplab/model.pt",
        manifest=manifest("{split}", "images"),
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
    retries: 0
    conda:
        "../envs/pcam.yaml"
    threads: CRF_THREADS
    resources:
        gpu=GPUS,
    params:
        settings=settings("deeplab_inference"),
        dataset=DATASET_JSON,
        compute=compute_json,
        result=result_keys("inference"),
        n_shards=N_SHARDS,
        server=lambda w: "--server-format" if w.split == DATA["test_split"] else "",
        code=code("pcam.stages.deeplab"),
    shell:
        "pcam --log-file {log:q} infer-deeplab --dataset {params.dataset:q}"
        " --settings {params.settings:q} --compute {params.compute:q}"
        " --model {input.model:q} --split {wildcards.split:q} --shard {wildcards.shard}"
        " --num-shards {params.n_shards} --workers {threads} {params.server}"
        " --out {output.plain:q} --out-crf {output.crf:q}"


rule eval_deeplab:
    input:
        pred=eval_pred(),
        truth=eval_truth(),
    output:
        f"{RESULTS}/{{experiment}}/eval/{{stage}}.csv",
    log:
        f"{LOGS}/{{experiment}}/eval_{{stage}}.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/eval_{{stage}}.tsv"
    wildcard_constraints:
        stage=SEGMENTATION_STAGES,
    retries: 0
    conda:
        "../envs/pcam.yaml"
    threads: EVAL["workers"]
    params:
        dataset=DATASET_JSON,
        args=eval_args(),
        code=code("pcam.evaluate"),
    shell:
        "pcam --log-file {log:q} evaluate --dataset {params.dataset:q} {params.args}"
        " --pred {input.pred:q} --workers {threads} --out {output:q}"
