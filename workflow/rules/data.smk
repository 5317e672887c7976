"""The dataset: the procedural demo (when enabled) and the pre-flight check."""

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
        conda:
            "../envs/pcam.yaml"
        params:
            root=lambda w, output: os.path.dirname(output.description),
            n_train=config["demo"]["n_train"],
            n_val=config["demo"]["n_val"],
            size=config["demo"]["size"],
            seed=config["demo"]["seed"],
            style=config["demo"]["style"],
            code=code("pcam.data.demo"),
        shell:
            "pcam --log-file {log} demo-data --out {params.root} --n-train {params.n_train}"
            " --n-val {params.n_val} --size {params.size} --seed {params.seed} --style {params.style}"
            " --preview {output.preview}"


rule check_data:
    input:
        lists=[split_list(DATA[k]) for k in ("train_split", "eval_split", "val_split")],
    output:
        report=f"{RESULTS}/data_check.csv",
    log:
        f"{LOGS}/check_data.log",
    benchmark:
        f"{LOGS}/benchmarks/check_data.tsv"
    conda:
        "../envs/pcam.yaml"
    params:
        dataset=DATASET_JSON,
        splits=" ".join(
            f"--split {DATA[k]}" for k in ("train_split", "eval_split", "val_split")
        ),
        train_split=DATA["train_split"],
        code=code("pcam.data.check"),
    shell:
        "pcam --log-file {log} check-data --dataset {params.dataset:q} {params.splits}"
        " --training-split {params.train_split} --report {output.report}"
