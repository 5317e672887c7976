"""Stage 3-6: affinity labels, AffinityNet, random walk, pseudo-labels, and their evaluation."""


rule make_affinity_labels:
    input:
        cams=lambda w: shard_dirs(w.experiment, "cams", w.split),
        manifest=manifest("{split}", "images"),
    output:
        directory(
            f"{RESULTS}/{{experiment}}/affinity_labels/{{split}}/shard-{{shard}}-of-{N_SHARDS}"
        ),
    log:
        f"{LOGS}/{{experiment}}/make_affinity_labels-{{split}}-{{shard}}.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/make_affinity_labels-{{split}}-{{shard}}.tsv"
    retries: 0
    conda:
        "../envs/pcam.yaml"
    threads: CRF_THREADS
    params:
        settings=settings("affinity_labels"),
        dataset=DATASET_JSON,
        n_shards=N_SHARDS,
        code=code("pcam.stages.affinity_labels"),
    shell:
        "pcam --log-file {log:q} make-affinity-labels --dataset {params.dataset:q}"
        " --settings {params.settings:q} --cams {input.cams:q} --split {wildcards.split:q}"
        " --shard {wildcards.shard} --num-shards {params.n_shards} --workers {threads}"
        " --out {output:q}"


rule train_affinitynet:
    input:
        manifest=manifest(DATA["train_split"], "images"),
        labels=lambda w: shard_dirs(
            w.experiment, "affinity_labels", DATA["train_split"]
        ),
        init=classifier_init("affinitynet"),
    output:
        model=f"{RESULTS}/{{experiment}}/affinitynet/model.pt",
        curve=report(
            f"{RESULTS}/{{experiment}}/affinitynet/curve.csv",
            caption="../report/curve.rst",
            category="Training curves",
            subcategory="{experiment}",
        ),
    log:
        f"{LOGS}/{{experiment}}/train_affinitynet.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/train_affinitynet.tsv"
    conda:
        "../envs/pcam.yaml"
    threads: TORCH_THREADS
    resources:
        gpu=GPUS,
    params:
        settings=settings("affinitynet"),
        state=lambda w: state_dir(
            w.experiment, "affinitynet", settings("affinitynet")(w)
        ),
        dataset=DATASET_JSON,
        compute=compute_json,
        result=result_keys("training"),
        code=code("pcam.stages.affinitynet"),
        init=lambda w, input: flag_with_files("--init-from", input.init),
    shell:
        "pcam --log-file {log:q} train-affinitynet --dataset {params.dataset:q}"
        " --settings {params.settings:q} --compute {params.compute:q} {params.init}"
        " --labels {input.labels:q} --out-model {output.model:q}"
        " --out-curve {output.curve:q} --state-dir {params.state:q}"
        " --state-inputs {input.manifest:q}"


rule make_rw:
    input:
        model=f"{RESULTS}/{{experiment}}/affinitynet/model.pt",
        cams=lambda w: shard_dirs(w.experiment, "cams", w.split),
        manifest=manifest("{split}", "images"),
    output:
        directory(
            f"{RESULTS}/{{experiment}}/rw/{{split}}/shard-{{shard}}-of-{N_SHARDS}"
        ),
    log:
        f"{LOGS}/{{experiment}}/make_rw-{{split}}-{{shard}}.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/make_rw-{{split}}-{{shard}}.tsv"
    retries: 0
    conda:
        "../envs/pcam.yaml"
    threads: TORCH_THREADS
    resources:
        gpu=GPUS,
    params:
        settings=settings("rw"),
        dataset=DATASET_JSON,
        compute=compute_json,
        result=result_keys("inference"),
        n_shards=N_SHARDS,
        code=code("pcam.stages.rw"),
    shell:
        "pcam --log-file {log:q} make-rw --dataset {params.dataset:q}"
        " --settings {params.settings:q} --compute {params.compute:q}"
        " --model {input.model:q} --cams {input.cams:q} --split {wildcards.split:q}"
        " --shard {wildcards.shard} --num-shards {params.n_shards} --out {output:q}"


rule make_pseudo_labels:
    input:
        rw=lambda w: shard_dirs(w.experiment, "rw", w.split),
        manifest=manifest("{split}", "images"),
    output:
        directory(
            f"{RESULTS}/{{experiment}}/pseudo_labels/{{split}}/shard-{{shard}}-of-{N_SHARDS}"
        ),
    log:
        f"{LOGS}/{{experiment}}/make_pseudo_labels-{{split}}-{{shard}}.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/make_pseudo_labels-{{split}}-{{shard}}.tsv"
    retries: 0
    conda:
        "../envs/pcam.yaml"
    threads: CRF_THREADS
    params:
        settings=settings("pseudo_labels"),
        dataset=DATASET_JSON,
        n_shards=N_SHARDS,
        code=code("pcam.stages.pseudo_labels"),
    shell:
        "pcam --log-file {log:q} make-pseudo-labels --dataset {params.dataset:q}"
        " --settings {params.settings:q} --rw {input.rw:q} --split {wildcards.split:q}"
        " --shard {wildcards.shard} --num-shards {params.n_shards} --workers {threads}"
        " --out {output:q}"


rule eval_rw:
    input:
        pred=eval_pred("rw"),
        truth=eval_truth("rw"),
    output:
        f"{RESULTS}/{{experiment}}/eval/rw.csv",
    log:
        f"{LOGS}/{{experiment}}/eval_rw.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/eval_rw.tsv"
    retries: 0
    conda:
        "../envs/pcam.yaml"
    threads: EVAL["workers"]
    params:
        dataset=DATASET_JSON,
        args=eval_args("rw"),
        code=code("pcam.evaluate"),
    shell:
        "pcam --log-file {log:q} evaluate --dataset {params.dataset:q} {params.args}"
        " --pred {input.pred:q} --workers {threads} --out {output:q}"


rule eval_pseudo_labels:
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
        stage=PSEUDO_LABEL_STAGES,
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
