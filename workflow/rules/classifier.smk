"""Stage 1-2: Puzzle-CAM classifier, multi-scale CAM dumps and their evaluation."""


rule train_classifier:
    input:
        manifest=[manifest(DATA["train_split"], kind) for kind in ("images", "labels")],
        checked=checked_first(
            *[manifest(DATA["train_split"], kind) for kind in ("images", "labels")]
        ),
        imported=classifier_import,
    output:
        model=f"{RESULTS}/{{experiment}}/classifier/model.pt",
        curve=report(
            f"{RESULTS}/{{experiment}}/classifier/curve.csv",
            caption="../report/curve.rst",
            category="Training curves",
            subcategory="{experiment}",
        ),
    log:
        f"{LOGS}/{{experiment}}/train_classifier.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/train_classifier.tsv"
    conda:
        "../envs/pcam.yaml"
    threads: TORCH_THREADS
    resources:
        gpu=GPUS,
    params:
        settings=settings("classifier"),
        state=lambda w: state_dir(w.experiment, "classifier", settings("classifier")(w)),
        dataset=DATASET_JSON,
        compute=compute_json,
        result=result_keys("training"),
        code=code("pcam.stages.classifier"),
    shell:
        "pcam --log-file {log:q} train-classifier --dataset {params.dataset:q}"
        " --settings {params.settings:q} --compute {params.compute:q}"
        " --out-model {output.model:q} --out-curve {output.curve:q}"
        " --state-dir {params.state:q} --state-inputs {input.manifest:q}"


rule make_cams:
    input:
        model=f"{RESULTS}/{{experiment}}/classifier/model.pt",
        manifest=manifest("{split}", "images"),
    output:
        directory(
            f"{RESULTS}/{{experiment}}/cams/{{split}}/shard-{{shard}}-of-{N_SHARDS}"
        ),
    log:
        f"{LOGS}/{{experiment}}/make_cams-{{split}}-{{shard}}.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/make_cams-{{split}}-{{shard}}.tsv"
    retries: 0
    conda:
        "../envs/pcam.yaml"
    threads: TORCH_THREADS
    resources:
        gpu=GPUS,
    params:
        settings=settings("cams"),
        dataset=DATASET_JSON,
        compute=compute_json,
        result=result_keys("inference"),
        n_shards=N_SHARDS,
        code=code("pcam.stages.cams"),
    shell:
        "pcam --log-file {log:q} make-cams --dataset {params.dataset:q}"
        " --settings {params.settings:q} --compute {params.compute:q}"
        " --model {input.model:q} --split {wildcards.split:q} --shard {wildcards.shard}"
        " --num-shards {params.n_shards} --out {output:q}"


rule eval_cams:
    input:
        pred=eval_pred("cam"),
        truth=eval_truth("cam"),
    output:
        f"{RESULTS}/{{experiment}}/eval/cam.csv",
    log:
        f"{LOGS}/{{experiment}}/eval_cams.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/eval_cams.tsv"
    retries: 0
    conda:
        "../envs/pcam.yaml"
    threads: EVAL["workers"]
    params:
        dataset=DATASET_JSON,
        args=eval_args("cam"),
        code=code("pcam.evaluate"),
    shell:
        "pcam --log-file {log:q} evaluate --dataset {params.dataset:q} {params.args}"
        " --pred {input.pred:q} --workers {threads} --out {output:q}"
