"""Stage 1-2: Puzzle-CAM classifier, multi-scale CAM dumps and their evaluation."""


rule train_classifier:
    input:
        check=f"{RESULTS}/data_check.csv",
        ids=split_list(DATA["train_split"]),
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
    resources:
        gpu=GPUS,
    params:
        settings=settings("classifier"),
        state=lambda w: state_dir(w.experiment, "classifier", settings("classifier")(w)),
        dataset=DATASET_JSON,
        compute=COMPUTE_JSON,
        code=code("pcam.stages.classifier"),
    shell:
        "pcam --log-file {log} train-classifier --dataset {params.dataset:q}"
        " --settings {params.settings:q} --compute {params.compute:q}"
        " --out-model {output.model} --out-curve {output.curve} --state-dir {params.state}"


rule make_cams:
    input:
        model=f"{RESULTS}/{{experiment}}/classifier/model.pt",
        ids=lambda w: split_list(w.split),
    output:
        directory(
            f"{RESULTS}/{{experiment}}/cams/{{split}}/shard-{{shard}}-of-{N_SHARDS}"
        ),
    log:
        f"{LOGS}/{{experiment}}/make_cams-{{split}}-{{shard}}.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/make_cams-{{split}}-{{shard}}.tsv"
    conda:
        "../envs/pcam.yaml"
    resources:
        gpu=GPUS,
    params:
        settings=settings("cams"),
        dataset=DATASET_JSON,
        compute=COMPUTE_JSON,
        n_shards=N_SHARDS,
        code=code("pcam.stages.cams"),
    shell:
        "pcam --log-file {log} make-cams --dataset {params.dataset:q}"
        " --settings {params.settings:q} --compute {params.compute:q} --model {input.model}"
        " --split {wildcards.split} --shard {wildcards.shard} --num-shards {params.n_shards}"
        " --out {output}"


rule eval_cams:
    input:
        cams=lambda w: shard_dirs(w.experiment, "cams", DATA["train_split"]),
        ids=split_list(DATA["eval_split"]),
    output:
        f"{RESULTS}/{{experiment}}/eval/cam.csv",
    log:
        f"{LOGS}/{{experiment}}/eval_cams.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/eval_cams.tsv"
    conda:
        "../envs/pcam.yaml"
    threads: config["evaluation"]["workers"]
    params:
        dataset=DATASET_JSON,
        split=DATA["eval_split"],
        sweep=" ".join(str(v) for v in config["evaluation"]["thresholds"]),
        threshold=config["evaluation"]["cam_threshold"],
        every=config["evaluation"]["every"],
        code=code("pcam.evaluate"),
    shell:
        "pcam --log-file {log} evaluate --dataset {params.dataset:q} --split {params.split}"
        " --pred {input.cams} --score-key hr_cam --threshold {params.threshold}"
        " --sweep {params.sweep} --every {params.every} --workers {threads} --out {output}"
