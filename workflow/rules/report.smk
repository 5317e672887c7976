"""The results a user reads: summary table and report figures."""


rule summary:
    input:
        evals=ALL_EVALS,
    output:
        report(
            f"{RESULTS}/summary.csv",
            caption="../report/summary.rst",
            category="Summary",
        ),
    log:
        f"{LOGS}/summary.log",
    benchmark:
        f"{LOGS}/benchmarks/summary.tsv"
    retries: 0
    conda:
        "../envs/pcam.yaml"
    threads: 1
    params:
        splits=json.dumps({"train": DATA["eval_split"], "val": DATA["val_split"]}),
        paper=json.dumps(PAPER),
        code=code("pcam.summary"),
    shell:
        "pcam --log-file {log:q} summarize --evals {input.evals:q}"
        " --splits {params.splits:q} --paper {params.paper:q} --out {output:q}"


rule per_class_figure:
    input:
        evals=lambda w: eval_csvs(w.experiment),
    output:
        report(
            f"{RESULTS}/figures/{{experiment}}/per_class_iou.png",
            caption="../report/per_class.rst",
            category="Per-class IoU",
            subcategory="{experiment}",
        ),
    log:
        f"{LOGS}/{{experiment}}/per_class_figure.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/per_class_figure.tsv"
    retries: 0
    conda:
        "../envs/pcam.yaml"
    threads: 1
    params:
        code=code("pcam.report"),
    shell:
        "pcam --log-file {log:q} figure per-class --evals {input.evals:q} --out {output:q}"


rule curves_figure:
    input:
        curves=lambda w: (
            [f"{RESULTS}/{w.experiment}/deeplab/curve.csv"]
            if config["experiments"][w.experiment]["supervision"] == "full"
            else [
                f"{RESULTS}/{w.experiment}/{stage}/curve.csv"
                for stage in ("classifier", "affinitynet", "deeplab")
            ]
        ),
    output:
        report(
            f"{RESULTS}/figures/{{experiment}}/training_curves.png",
            caption="../report/curves.rst",
            category="Training curves",
            subcategory="{experiment}",
        ),
    log:
        f"{LOGS}/{{experiment}}/curves_figure.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/curves_figure.tsv"
    retries: 0
    conda:
        "../envs/pcam.yaml"
    threads: 1
    params:
        code=code("pcam.report"),
    shell:
        "pcam --log-file {log:q} figure curves --curves {input.curves:q} --out {output:q}"


rule gallery_figure:
    input:
        cams=lambda w: shard_dirs(w.experiment, "cams", DATA["train_split"]),
        rw=lambda w: shard_dirs(w.experiment, "rw", DATA["train_split"]),
        pseudo=lambda w: shard_dirs(w.experiment, "pseudo_labels", DATA["train_split"]),
        deeplab=lambda w: shard_dirs(w.experiment, "deeplab_pred", DATA["eval_split"]),
        manifest=manifest(DATA["eval_split"], "images"),
    output:
        report(
            f"{RESULTS}/figures/{{experiment}}/gallery.png",
            caption="../report/gallery.rst",
            category="Gallery",
            subcategory="{experiment}",
        ),
    log:
        f"{LOGS}/{{experiment}}/gallery_figure.log",
    benchmark:
        f"{LOGS}/benchmarks/{{experiment}}/gallery_figure.tsv"
    retries: 0
    conda:
        "../envs/pcam.yaml"
    threads: 1
    params:
        dataset=DATASET_JSON,
        split=DATA["eval_split"],
        n_images=6,
        code=code("pcam.report"),
    shell:
        "pcam --log-file {log:q} figure gallery --dataset {params.dataset:q}"
        " --split {params.split:q} --n-images {params.n_images} --cams {input.cams:q}"
        " --rw {input.rw:q} --pseudo {input.pseudo:q} --deeplab {input.deeplab:q}"
        " --out {output:q}"
