"""Stage 3-6: affinity labels, AffinityNet, random walk, pseudo-labels, and their evaluation."""


rule make_affinity_labels:
    input:
        cams=lambda w: shard_dirs(w.experiment, "cams", w.split),
    output:
        directory(
            f"{RESULTS}/{{experiment}}/affinity_labels/{{split}}/shard-{{shard}}-of-{N_SHARDS}"
        ),
    log:
        f"{LOGS}/{{experiment}}/make_affinity_labels-{{split}}-{{shard}}.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/make_affinity_labels-{{split}}-{{shard}}.tsv"
    conda:
        "../envs/pcam.yaml"
    threads: CRF_THREADS
    params:
        settings=settings("affinity_labels"),
        dataset=DATASET_JSON,
        n_shards=N_SHARDS,
        code=code("pcam.stages.affinity_labels"),
    shell:
        "pcam --log-file {log} make-affinity-labels --dataset {params.dataset:q}"
        " --settings {params.settings:q} --cams {input.cams} --split {wildcards.split}"
        " --shard {wildcards.shard} --num-shards {params.n_shards} --workers {threads}"
        " --out {output}"


rule train_affinitynet:
    input:
        labels=lambda w: shard_dirs(
            w.experiment, "affinity_labels", DATA["train_split"]
        ),
        init=affinitynet_init,
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
    resources:
        gpu=GPUS,
    params:
        settings=settings("affinitynet"),
        state=lambda w: state_dir(
            w.experiment, "affinitynet", settings("affinitynet")(w)
        ),
        dataset=DATASET_JSON,
        compute=COMPUTE_JSON,
        code=code("pcam.stages.affinitynet"),
        init=lambda w, input: f"--init-from {input.init}" if input.init else "",
    shell:
        "pcam --log-file {log} train-affinitynet --dataset {params.dataset:q}"
        " --settings {params.settings:q} --compute {params.compute:q} {params.init}"
        " --labels {input.labels} --out-model {output.model} --out-curve {output.curve}"
        " --state-dir {params.state}"


rule make_rw:
    input:
        model=f"{RESULTS}/{{experiment}}/affinitynet/model.pt",
        cams=lambda w: shard_dirs(w.experiment, "cams", w.split),
    output:
        directory(
            f"{RESULTS}/{{experiment}}/rw/{{split}}/shard-{{shard}}-of-{N_SHARDS}"
        ),
    log:
        f"{LOGS}/{{experiment}}/make_rw-{{split}}-{{shard}}.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/make_rw-{{split}}-{{shard}}.tsv"
    conda:
        "../envs/pcam.yaml"
    resources:
        gpu=GPUS,
    params:
        settings=settings("rw"),
        dataset=DATASET_JSON,
        compute=COMPUTE_JSON,
        n_shards=N_SHARDS,
        code=code("pcam.stages.rw"),
    shell:
        "pcam --log-file {log} make-rw --dataset {params.dataset:q}"
        " --settings {params.settings:q} --compute {params.compute:q} --model {input.model}"
        " --cams {input.cams} --split {wildcards.split} --shard {wildcards.shard}"
        " --num-shards {params.n_shards} --out {output}"


rule make_pseudo_labels:
    input:
        rw=lambda w: shard_dirs(w.experiment, "rw", w.split),
    output:
        directory(
            f"{RESULTS}/{{experiment}}/pseudo_labels/{{split}}/shard-{{shard}}-of-{N_SHARDS}"
        ),
    log:
        f"{LOGS}/{{experiment}}/make_pseudo_labels-{{split}}-{{shard}}.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/make_pseudo_labels-{{split}}-{{shard}}.tsv"
    conda:
        "../envs/pcam.yaml"
    threads: CRF_THREADS
    params:
        settings=settings("pseudo_labels"),
        dataset=DATASET_JSON,
        n_shards=N_SHARDS,
        code=code("pcam.stages.pseudo_labels"),
    shell:
        "pcam --log-file {log} make-pseudo-labels --dataset {params.dataset:q}"
        " --settings {params.settings:q} --rw {input.rw} --split {wildcards.split}"
        " --shard {wildcards.shard} --num-shards {params.n_shards} --workers {threads}"
        " --out {output}"


rule eval_rw:
    input:
        rw=lambda w: shard_dirs(w.experiment, "rw", DATA["train_split"]),
        ids=split_list(DATA["eval_split"]),
    output:
        f"{RESULTS}/{{experiment}}/eval/rw.csv",
    log:
        f"{LOGS}/{{experiment}}/eval_rw.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/eval_rw.tsv"
    conda:
        "../envs/pcam.yaml"
    threads: config["evaluation"]["workers"]
    params:
        dataset=DATASET_JSON,
        split=DATA["eval_split"],
        sweep=" ".join(str(v) for v in config["evaluation"]["thresholds"]),
        threshold=lambda w: stage_settings(config, w.experiment, "rw")["threshold"],
        every=config["evaluation"]["every"],
        code=code("pcam.evaluate"),
    shell:
        "pcam --log-file {log} evaluate --dataset {params.dataset:q} --split {params.split}"
        " --pred {input.rw} --score-key rw --threshold {params.threshold}"
        " --sweep {params.sweep} --every {params.every} --workers {threads} --out {output}"


rule eval_pseudo_labels:
    input:
        labels=lambda w: shard_dirs(w.experiment, "pseudo_labels", DATA["train_split"]),
        ids=split_list(DATA["eval_split"]),
    output:
        f"{RESULTS}/{{experiment}}/eval/rw_crf.csv",
    log:
        f"{LOGS}/{{experiment}}/eval_pseudo_labels.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/eval_pseudo_labels.tsv"
    conda:
        "../envs/pcam.yaml"
    threads: config["evaluation"]["workers"]
    params:
        dataset=DATASET_JSON,
        split=DATA["eval_split"],
        every=config["evaluation"]["every"],
        code=code("pcam.evaluate"),
    shell:
        "pcam --log-file {log} evaluate --dataset {params.dataset:q} --split {params.split}"
        " --pred {input.labels} --every {params.every} --workers {threads} --out {output}"
